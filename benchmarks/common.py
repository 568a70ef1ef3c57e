"""Shared by the benchmark scripts: median timing, machine description, and --record into BENCHMARKS.md."""
import datetime
import os
import platform
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")


def median_time(fn, repeats):
    """Median wall time of `repeats` calls of fn() (seconds), and all the samples."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples


def machine():
    """One line naming the machine, the device and the library versions."""
    import torch

    from pipeline.info import summary
    info = summary()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    roi = "not built" if info["roi_jpeg"].startswith("not built") else "built"
    return (f"{platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}), {device}; "
            f"torch {info['torch']}, torchvision {info['torchvision']}, {info['pil']}, DALI {info['dali']}, "
            f"ROI JPEG decoder {roi}")


def record(title, table_markdown, note=""):
    """Appends a dated section with the machine line and a markdown table to BENCHMARKS.md."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    with open(BENCHMARKS_MD, "a") as f:
        f.write(f"\n### {title} — {stamp}\n\n{machine()}\n\n{table_markdown}\n")
        if note:
            f.write(f"\n{note}\n")
    print(f"recorded in {BENCHMARKS_MD}")


def markdown_row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header, rows):
    lines = [markdown_row(header), "|" + "---|" * len(header)]
    lines += [markdown_row(row) for row in rows]
    return "\n".join(lines)
