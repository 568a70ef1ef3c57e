"""Train-step images/s (forward, backward, SGD step) of ResNet with att-type none, SE, CBAM, and the authors'
straightforward CBAM formulation ("CBAM-ref"), eager and torch.compile, channels_last.

CPU by default here; on a GPU, bf16 autocast. Baseline and candidates are interleaved in every repeat and the
figure is the median over repeats; ratios (time per step / time of `none` in the same mode) come from the same
run.

    .venv/bin/python benchmarks/model.py [--depth 50] [--batch-size 8] [--modes eager,compiled] [--record]
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import markdown_table, record  # noqa: E402
from model import build_model  # noqa: E402
from model.reference import use_reference_cbam  # noqa: E402

VARIANTS = ("none", "SE", "CBAM", "CBAM-ref")


def make_step(variant, depth, batch, size, device, mode, amp_dtype):
    torch.manual_seed(0)
    model = build_model(depth, variant.split("-")[0])
    if variant == "CBAM-ref":
        use_reference_cbam(model)
    model = model.to(device, memory_format=torch.channels_last)
    net = torch.compile(model) if mode == "compiled" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=50, choices=[18, 34, 50, 101], help="ResNet depth")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: 8 on CPU, 256 on GPU)")
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list from {','.join(VARIANTS)}")
    p.add_argument("--modes", default="eager,compiled", help="comma list from eager,compiled")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (median reported)")
    p.add_argument("--steps", type=int, default=None, help="train steps per repeat (default: 2 CPU, 20 GPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    modes = args.modes.split(",")
    bad = [v for v in variants if v not in VARIANTS] + [m for m in modes if m not in ("eager", "compiled")]
    if bad:
        p.error(f"unknown variant or mode: {', '.join(bad)}")

    cuda = torch.cuda.is_available()
    torch.backends.cudnn.benchmark = cuda  # as train.py: fixed shapes, fastest algorithms
    device = torch.device("cuda" if cuda else "cpu")
    amp_dtype = torch.bfloat16 if cuda else None
    batch = args.batch_size or (256 if cuda else 8)
    steps = args.steps or (20 if cuda else 2)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    cases = [(v, m) for m in modes for v in variants]
    fns = {}
    for case in cases:
        print(f"building and warming up {case[0]} ({case[1]}) ...", file=sys.stderr, flush=True)
        fns[case] = make_step(case[0], args.depth, batch, args.image_size, device, case[1], amp_dtype)
        for _ in range(args.warmup):
            fns[case]()
        sync()
    samples = {case: [] for case in cases}
    for _ in range(args.repeats):  # interleaved: every case once per repeat
        for case in cases:
            start = time.perf_counter()
            for _ in range(steps):
                fns[case]()
            sync()
            samples[case].append((time.perf_counter() - start) / steps)

    per_step = {case: statistics.median(s) for case, s in samples.items()}
    rows, results = [], []
    for variant, mode in cases:
        t = per_step[(variant, mode)]
        base = per_step.get(("none", mode))
        ratio = t / base if base else None
        results.append({"variant": variant, "mode": mode, "ms_per_step": round(t * 1000, 2),
                        "images_per_sec": round(batch / t, 2), "time_ratio_vs_none": ratio and round(ratio, 3),
                        "spread_ms": [round(min(samples[(variant, mode)]) * 1000, 2),
                                      round(max(samples[(variant, mode)]) * 1000, 2)]})
        rows.append((f"ResNet-{args.depth} {variant}", mode, f"{t * 1000:.1f}", f"{batch / t:.1f}",
                     f"{ratio:.3f}x" if ratio else "-"))
    header = ("model", "mode", "ms/step (median)", "images/s", "time / none")
    table = markdown_table(header, rows)
    print(table)
    summary = {"benchmark": "model", "device": str(device), "amp": "bf16" if amp_dtype else "off",
               "batch_size": batch, "image_size": args.image_size, "repeats": args.repeats, "steps": steps,
               "channels_last": True, "results": results}
    print(json.dumps(summary))
    if args.record:
        record(f"benchmarks/model.py: ResNet-{args.depth} train step, batch {batch}, {args.image_size} px, "
               f"channels_last, {'bf16' if amp_dtype else 'fp32'} on {device.type}",
               table, f"Median of {args.repeats} interleaved repeats of {steps} steps. Command: "
               f"`.venv/bin/python benchmarks/model.py {' '.join(argv if argv is not None else sys.argv[1:])}`")


if __name__ == "__main__":
    main()
