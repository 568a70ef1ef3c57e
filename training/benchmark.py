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
from .compile import cache_counters


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


def _slowest(world, seconds):
    """The largest of every rank's `seconds`: a run is as fast as its slowest rank."""
    value = torch.tensor([seconds], dtype=torch.float64)
    if world.size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=world.stop_group)
    return float(value)


def timed_seconds(fn, calls, world):
    """Seconds of `calls` calls of fn(), the device synchronised at the end, on the slowest rank."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _synchronize(world.device)
    return _slowest(world, time.perf_counter() - start)


def timed_rate(fn, warmup, steps, world, global_batch):
    """(global images/sec of `steps` calls of fn() after `warmup` untimed ones, seconds of the warm-up calls).

    The warm-up is where torch.compile compiles and cuDNN times its algorithms: reported, never in the rate."""
    warmup_seconds = timed_seconds(fn, warmup, world)
    distributed.barrier(world)
    return steps * global_batch / timed_seconds(fn, steps, world), warmup_seconds


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads/rank)"


def measure(train_step, loader, run):
    """The three rates and the configuration (`run`, a training.config.RunConfig) as one dict: the JSON line
    train.py prints."""
    world = run.world
    warmup, steps = run.benchmark_warmup, run.benchmark_steps
    per_rank = loader.per_rank_batch
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
    loader_only, loader_warmup = timed_rate(lambda: next(batches), warmup, steps, world, global_batch)
    # The first train step compiles (with --compile); timed alone, it is the compile time users wait for.
    first_step_seconds = timed_seconds(loader_and_step, 1, world) if warmup else None
    end_to_end, end_to_end_warmup = timed_rate(loader_and_step, max(warmup - 1, 0), steps, world, global_batch)

    images = torch.randn(per_rank, 3, loader.image_size, loader.image_size, device=world.device)
    # As the loader delivers them: its dtype, channels_last.
    images = images.to(dtype=loader.dtype, memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (per_rank,), device=world.device)
    model_only, model_warmup = timed_rate(lambda: train_step(images, labels), warmup, steps, world, global_batch)

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
        "amp": run.amp,
        "batch_size": global_batch,
        "image_size": loader.image_size,
        "network": run.network.name,
        "arch": run.arch,
        "depth": run.depth,
        "widen": run.widen,
        "width_mult": run.width_mult,
        "att_type": run.att_type,
        "parameters": run.parameters,
        "cbam_impl": run.cbam_impl,
        "steps": steps,
        "warmup_steps": warmup,
        "channels_last": run.channels_last,
        "compile": run.compile,
        "cudnn_benchmark": run.cudnn_benchmark,
        "first_step_seconds": first_step_seconds and round(first_step_seconds, 2),
        "warmup_seconds": {"loader": round(loader_warmup, 2), "end_to_end": round(end_to_end_warmup, 2),
                           "model": round(model_warmup, 2)},
        "compile_cache": cache_counters(),
    }


def table(result):
    rows = [("end to end (loader + train step)", result["images_per_sec"]),
            ("loader alone", result["loader_images_per_sec"]),
            ("model alone (synthetic batch on device)", result["model_images_per_sec"])]
    lines = [f"benchmark: {result['network']} {result['att_type']} ({result['parameters']:,} parameters), global "
             f"batch {result['batch_size']}, "
             f"{result['image_size']} px, {result['world_size']} x {result['device']}, backend {result['backend']}, "
             f"amp {result['amp']}, CBAM impl {result['cbam_impl']}, {result['steps']} timed steps after "
             f"{result['warmup_steps']} warm-up",
             f"{'measurement':<42}{'images/s':>12}{'per device':>12}"]
    for name, rate in rows:
        lines.append(f"{name:<42}{rate:>12.1f}{rate / result['world_size']:>12.1f}")
    lines.append(f"bound by: {result['bound_by']}")
    warm = result["warmup_seconds"]
    cache = result["compile_cache"]
    first = result["first_step_seconds"]
    lines.append(f"compile {result['compile']}: first train step "
                 + (f"{first:.1f} s (compilation included)" if first is not None else "timed (no warm-up)")
                 + f", then warm-up {warm['end_to_end']:.1f} s end to end, {warm['model']:.1f} s model alone"
                 + (f"; compile cache {cache['hits']} hits, {cache['misses']} misses" if cache else ""))
    return "\n".join(lines)
