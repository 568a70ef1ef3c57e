"""Renders a {prefix}_metrics.jsonl written by train.py to one PNG: loss, top-1/top-5, learning rate, images/s,
and val top-1 against wall-clock hours (time to accuracy; with the weight average's top-1 when it was kept).

    python tools/plot_metrics.py checkpoints/RESNET50_CBAM_metrics.jsonl [-o metrics.png]
"""
import argparse
import json
import os
import sys


def read_records(path):
    """The rows of a metrics file. A torn last line (a run killed while writing it; train.py drops it when the
    run resumes) is left out, saying so; any other line that is not JSON is an error naming it."""
    records = []
    with open(path) as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines) and not line.endswith("\n"):
                print(f"plot_metrics.py: note: {path}:{number}: left out a torn last line (the run was stopped "
                      "while writing it)", file=sys.stderr)
                continue
            raise SystemExit(f"plot_metrics.py: error: {path}:{number}: not a JSON line ({exc.msg})") from exc
    if not records:
        raise SystemExit(f"plot_metrics.py: error: {path} holds no metrics")
    return records


def plot(records, out):
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 7))
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val")
    ax.set(title="loss", xlabel="step")
    ax.legend()
    ax = axes[0][1]
    for kind, rows, style in (("train", train, "-"), ("val", val, "o-")):
        ax.plot([r["step"] for r in rows], [r["top1"] for r in rows], style, label=f"{kind} top-1")
        ax.plot([r["step"] for r in rows], [r["top5"] for r in rows], style, alpha=0.5, label=f"{kind} top-5")
    ax.set(title="accuracy (%)", xlabel="step")
    ax.legend()
    ax = axes[1][0]
    ax.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax.set(title="learning rate", xlabel="step")
    ax = axes[1][1]
    ax.plot([r["step"] for r in train], [r["images_per_sec"] for r in train])
    ax.set(title="images/s (all ranks)", xlabel="step")
    ax = axes[0][2]
    timed = [r for r in val if "elapsed_s" in r]
    ax.plot([r["elapsed_s"] / 3600 for r in timed], [r["top1"] for r in timed], "o-", label="val top-1")
    averaged = [r for r in timed if "top1_ema" in r]
    if averaged:
        ax.plot([r["elapsed_s"] / 3600 for r in averaged], [r["top1_ema"] for r in averaged], "s--",
                label="val top-1, weight average")
    ax.set(title="time to accuracy (%)", xlabel="hours of training")
    ax.legend()
    axes[1][2].axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="the {prefix}_metrics.jsonl file written by train.py")
    parser.add_argument("-o", "--output", help="PNG to write (default: beside the metrics file, .png)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.metrics):
        parser.error(f"metrics file not found: {args.metrics}")
    out = args.output or os.path.splitext(args.metrics)[0] + ".png"
    plot(read_records(args.metrics), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
