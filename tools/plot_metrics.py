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
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"plot_metrics.py: error: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not line.endswith("\n"):
                print(f"plot_metrics.py: note: {path}:{number}: left out a torn last line (the run was stopped "
                      "while writing it)", file=sys.stderr)
                continue
            raise SystemExit(f"plot_metrics.py: error: {path}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict):
            raise SystemExit(f"plot_metrics.py: error: {path}:{number}: not a metrics row (a JSON object): "
                             f"{line.strip()[:60]}")
        records.append(record)
    if not records:
        raise SystemExit(f"plot_metrics.py: error: {path} holds no metrics")
    return records


def series(rows, x, y, scale=1.0):
    """(xs, ys) of the rows holding a number under both keys: a row without one (top-5 of a run of fewer than 5
    classes, a rate not yet measured, a row of an older version) is left out of that curve alone."""
    points = [(row[x] / scale, row[y]) for row in rows
              if isinstance(row.get(x), (int, float)) and isinstance(row.get(y), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot(records, out):
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 7))
    ax = axes[0][0]
    ax.plot(*series(train, "step", "loss"), label="train")
    ax.plot(*series(val, "step", "loss"), "o-", label="val")
    ax.set(title="loss", xlabel="step")
    ax.legend()
    ax = axes[0][1]
    for kind, rows, style in (("train", train, "-"), ("val", val, "o-")):
        ax.plot(*series(rows, "step", "top1"), style, label=f"{kind} top-1")
        ax.plot(*series(rows, "step", "top5"), style, alpha=0.5, label=f"{kind} top-5")
    ax.set(title="accuracy (%)", xlabel="step")
    ax.legend()
    ax = axes[1][0]
    ax.plot(*series(train, "step", "lr"))
    ax.set(title="learning rate", xlabel="step")
    ax = axes[1][1]
    ax.plot(*series(train, "step", "images_per_sec"))
    ax.set(title="images/s (all ranks)", xlabel="step")
    ax = axes[0][2]
    ax.plot(*series(val, "elapsed_s", "top1", scale=3600), "o-", label="val top-1")
    averaged = series(val, "elapsed_s", "top1_ema", scale=3600)
    if averaged[0]:
        ax.plot(*averaged, "s--", label="val top-1, weight average")
    ax.set(title="time to accuracy (%)", xlabel="hours of training")
    ax.legend()
    axes[1][2].axis("off")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=90)
    except OSError as exc:
        raise SystemExit(f"plot_metrics.py: error: cannot write {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"plot_metrics.py: error: {message}\n")


def main(argv=None):
    parser = _OneLineParser(prog="plot_metrics.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="the {prefix}_metrics.jsonl file written by train.py")
    parser.add_argument("-o", "--output", help="PNG to write (default: beside the metrics file, .png)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.metrics):
        parser.error(f"metrics file not found: {args.metrics}")
    if args.output and os.path.isdir(args.output):
        parser.error(f"-o {args.output} is a folder: name the PNG to write")
    if args.output:
        from training.errors import UsageError
        from training.output_dir import refuse_run_file  # (imports torch: only when -o names a file)
        try:
            refuse_run_file(args.output, "-o")
        except UsageError as exc:
            parser.error(str(exc))
    out = args.output or os.path.splitext(args.metrics)[0] + ".png"
    plot(read_records(args.metrics), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
