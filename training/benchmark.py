"""train.py --benchmark: three honest images/sec figures in one run.

- end to end: loader + train step, the way training runs;
- loader alone: batches delivered on the device, nothing else;
- model alone: train steps on one synthetic batch already on the device.
Each: warm-up steps, then timed steps between a device synchronisation and a barrier on every rank; the
elapsed time is the slowest rank's. Images are counted once: timed steps x global batch.
"""
import platform
import sys
import time

import torch
import torch.distributed as dist

from . import distributed


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(loader):
    """Batches from consecutive epochs, so a benchmark may run longer than one epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def timed_rate(fn, warmup, steps, world, global_batch):
    """Global images/sec of `steps` calls of fn() after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    _synchronize(world.device)
    distributed.barrier(world)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _synchronize(world.device)
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    if world.size > 1:  # the run is as fast as its slowest rank
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=world.stop_group)
    return steps * global_batch / float(elapsed)


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads/rank)"


def run(train_step, loader, world, args, cfg, dtype):
    """The three rates and the configuration as one dict (the JSON line train.py prints).

    `dtype` is the loader's image dtype, so the synthetic batch matches the real ones."""
    warmup, steps = args.benchmark_warmup, args.benchmark_steps
    per_rank = loader.batch_size
    global_batch = per_rank * world.size

    if 2 * (warmup + steps) > len(loader) and world.is_main:
        print(f"benchmark: warning: {2 * (warmup + steps)} loader steps span more than one {len(loader)}-batch epoch;"
              " epoch restarts (worker or pipeline start-up) fall inside the timed steps", file=sys.stderr)
    batches = endless(loader)

    def loader_and_step():
        images, labels = next(batches)
        train_step(images, labels)

    # Loader alone first, on a fresh iterator: its warm-up drains whatever the workers had prefetched, so the
    # timed steps measure production, not a full queue. (Measured after the train steps, the queue filled
    # while the model ran would be counted as loader speed.)
    loader_only = timed_rate(lambda: next(batches), warmup, steps, world, global_batch)
    end_to_end = timed_rate(loader_and_step, warmup, steps, world, global_batch)

    images = torch.randn(per_rank, 3, args.image_size, args.image_size, device=world.device)
    images = images.to(dtype=dtype, memory_format=torch.channels_last)  # as the loader delivers them
    labels = torch.randint(0, 2, (per_rank,), device=world.device)
    model_only = timed_rate(lambda: train_step(images, labels), warmup, steps, world, global_batch)

    return {
        "benchmark": True,
        "images_per_sec": round(end_to_end, 2),
        "images_per_sec_per_device": round(end_to_end / world.size, 2),
        "loader_images_per_sec": round(loader_only, 2),
        "model_images_per_sec": round(model_only, 2),
        "bound_by": "loader" if loader_only < model_only else "model",
        "world_size": world.size,
        "device": device_name(world.device),
        "backend": loader.backend,
        "amp": cfg["amp_resolved"],
        "batch_size": global_batch,
        "image_size": args.image_size,
        "depth": args.depth,
        "att_type": args.att_type,
        "cbam_impl": cfg["cbam_impl_resolved"],
        "steps": steps,
        "warmup_steps": warmup,
        "channels_last": args.channels_last,
        "compile": args.compile,
    }


def table(result):
    rows = [("end to end (loader + train step)", result["images_per_sec"]),
            ("loader alone", result["loader_images_per_sec"]),
            ("model alone (synthetic batch on device)", result["model_images_per_sec"])]
    lines = [f"benchmark: ResNet-{result['depth']} {result['att_type']}, global batch {result['batch_size']}, "
             f"{result['image_size']} px, {result['world_size']} x {result['device']}, backend {result['backend']}, "
             f"amp {result['amp']}, CBAM impl {result['cbam_impl']}, {result['steps']} timed steps after "
             f"{result['warmup_steps']} warm-up",
             f"{'measurement':<42}{'images/s':>12}{'per device':>12}"]
    for name, rate in rows:
        lines.append(f"{name:<42}{rate:>12.1f}{rate / result['world_size']:>12.1f}")
    lines.append(f"bound by: {result['bound_by']}")
    return "\n".join(lines)
