#!/usr/bin/env python
"""ImageNet training of ResNet + CBAM/BAM/SE: `torchrun --nproc-per-node N train.py [flags] DATA`.

Reads top to bottom: flags -> distributed -> loaders -> model -> optimizer -> resume -> loop -> checkpoint.
`python train.py --ngpu N ...` (the seed's command) relaunches itself through torch.distributed.run.
Rank 0 alone prints and writes. The host syncs with the device only at print intervals and epoch ends.
"""
import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model import build_model
from model.cbam import resolve_impl
from model.cbam_fused import triton_unavailable_reason
from pipeline import BackendUnavailable, ShardError, build_loader
from pipeline.shards import read_manifest
from training import benchmark, checkpoint, config, distributed
from training.compile import compile_model, resolve_compile, use_cache_dir
from training.metrics import MetricsFile, Window, seed_log_line, summarize
from training.schedule import learning_rate


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, writes a checkpoint and exits 0."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def resolve_amp(amp, device):
    """The autocast dtype for --amp (None = full fp32)."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp], amp


def param_groups(model, weight_decay, no_bn_weight_decay):
    """With --no-bn-weight-decay, BatchNorm weights and all biases (1-D tensors) get no weight decay."""
    if not no_bn_weight_decay:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_step(net, images, labels, criterion, optimizer, scaler, amp_dtype):
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = net(images)
        loss = criterion(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return logits, loss


def validate(net, loader, world, amp_dtype):
    """(loss, top-1 %, top-5 %, n) over the whole split: sums per rank, one all-reduce at the end."""
    if world.size > 1:
        # DDP keeps the parameters equal but each rank updates its own BatchNorm running statistics after the
        # last broadcast; evaluate rank 0's (the checkpointed) model on every rank.
        for buffer in net.buffers():
            dist.broadcast(buffer, 0)
    net.eval()
    window = Window(world.device)
    with torch.no_grad(), torch.autocast(world.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for images, labels in loader:
            logits = net(images)
            window.add(torch.nn.functional.cross_entropy(logits.float(), labels), logits, labels)
    sums = distributed.all_reduce_sum(world, window.take())
    net.train()
    return summarize(sums.cpu())


def main():
    args = config.parse_args()
    if args.ngpu > 1 and not distributed.launched_by_torchrun():
        config.check_world(args, args.ngpu)
        return distributed.relaunch_with_torchrun(args.ngpu)

    # Distributed.
    world = distributed.setup()
    config.check_world(args, world.size)
    amp_dtype, amp_name = resolve_amp(args.amp, world.device)
    try:  # recorded even without CBAM in the model: the config says what would have run
        cbam_impl = resolve_impl(args.cbam_impl, world.device)
    except RuntimeError as exc:  # e.g. triton on a CPU: one line, exit 2
        config.fail(str(exc))
    compile_how = resolve_compile(args.compile, world.device)
    if compile_how != "off" and args.compile_cache != "none":
        try:
            use_cache_dir(args.compile_cache)
        except OSError as exc:
            config.fail(str(exc))
    # Fixed input shapes: cuDNN may time its convolution algorithms once and keep the fastest.
    cudnn_benchmark = args.cudnn_benchmark and world.device.type == "cuda"
    torch.backends.cudnn.benchmark = cudnn_benchmark
    cfg = config.as_dict(args)
    cfg.update(amp_resolved=amp_name, cbam_impl_resolved=cbam_impl, compile_resolved=compile_how,
               cudnn_benchmark_resolved=cudnn_benchmark, world_size=world.size, device=str(world.device))
    log = print if world.is_main else (lambda *a, **k: None)
    log("config " + json.dumps(cfg, sort_keys=True))
    if args.att_type == "CBAM" and world.device.type == "cuda" and cbam_impl == "torch" and args.cbam_impl == "auto":
        log(f"note: CBAM runs on plain PyTorch ops, slower: {triton_unavailable_reason(world.device)}")
    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP broadcasts them anyway)

    # Loaders. --batch-size is global; --workers is per node, shared by the node's ranks.
    per_rank_batch = args.batch_size // world.size
    workers = max(1, args.workers // world.local_size) if args.workers else 0
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    loader_args = dict(rank=world.rank, world_size=world.size, workers=workers, device=world.device,
                       seed=args.seed, dtype=amp_dtype or torch.float32, backend=args.backend)
    try:  # a bad shard folder or a backend that cannot run here: one line, exit 2
        manifest = read_manifest(args.data)
        train_loader = None  # --evaluate needs only val
        if not args.evaluate:
            train_loader = build_loader(args.data, "train", per_rank_batch, image_size=args.image_size,
                                        **loader_args)
        val_loader = None
        if "val" in manifest["splits"]:
            val_loader = build_loader(args.data, "val", per_rank_batch, image_size=args.val_image_size,
                                      **loader_args)
    except (ShardError, BackendUnavailable, ValueError) as exc:
        config.fail(str(exc))
    first_loader = train_loader or val_loader
    if first_loader is None:
        config.fail(f"{args.data} has no val split to evaluate on")
    cfg["backend_resolved"] = first_loader.backend
    log(f"loader: {first_loader!r}")
    if train_loader is not None and len(train_loader) == 0:
        config.fail(f"the train split has {train_loader.num_samples} samples, fewer than "
                    f"one global batch of {args.batch_size}")

    # Model and optimizer.
    model = build_model(args.depth, args.att_type, num_classes=len(manifest["classes"]),
                        cbam_impl=args.cbam_impl)
    model = model.to(world.device, memory_format=memory_format)
    optimizer = torch.optim.SGD(param_groups(model, args.weight_decay, args.no_bn_weight_decay),
                                lr=args.lr, momentum=args.momentum)
    scaler = torch.amp.GradScaler(world.device.type, enabled=amp_name == "fp16")
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    # Resume.
    start_epoch, skip_batches, best_top1, resumed_step = args.start_epoch, 0, 0.0, None
    resume_path = checkpoint.resolve_resume(args.resume, args.output_dir, args.prefix)
    if resume_path:
        ckpt = checkpoint.load(resume_path)
        checkpoint.load_model_weights(model, ckpt, resume_path, cfg)
        if not args.evaluate and not checkpoint.is_original_format(ckpt):
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            start_epoch, skip_batches, best_top1 = ckpt["epoch"], ckpt["batch"], ckpt["best_prec1"]
            resumed_step = ckpt["step"]
            checkpoint.set_rng_state(ckpt["rng"])
            if skip_batches:
                checkpoint.check_mid_epoch_resume(ckpt["config"], cfg, resume_path)
        log(f"=> loaded checkpoint {resume_path} (next: epoch {start_epoch}, batch {skip_batches})")

    net = compile_model(model, compile_how)  # in place: state-dict names unchanged
    train_net = net
    if world.size > 1:
        train_net = DistributedDataParallel(net, device_ids=[world.device] if world.device.type == "cuda" else None,
                                            gradient_as_bucket_view=True)  # no gradient copy into the buckets

    if args.evaluate:
        if val_loader is None:
            config.fail(f"{args.data} has no val split to evaluate on")
        loss, top1, top5, n = validate(net, val_loader, world, amp_dtype)
        log(f" * Prec@1 {top1:.3f} Prec@5 {top5:.3f}  (loss {loss:.4f}, {n} images)")
        distributed.cleanup(world)
        return 0

    if args.benchmark:
        step = lambda images, labels: train_step(train_net, images, labels, criterion, optimizer, scaler, amp_dtype)  # noqa: E731
        result = benchmark.run(step, train_loader, world, args, cfg, amp_dtype or torch.float32)
        log(benchmark.table(result))
        log(json.dumps(result))
        distributed.cleanup(world)
        return 0

    # Loop.
    if world.is_main:
        os.makedirs(args.output_dir, exist_ok=True)
        for path in checkpoint.sweep_temporaries(args.output_dir, args.prefix):
            log(f"removed {path}, left by an interrupted save")
        with open(os.path.join(args.output_dir, f"{args.prefix}_config.json"), "w") as f:
            json.dump(cfg, f, indent=1, sort_keys=True)
    metrics = MetricsFile(os.path.join(args.output_dir, f"{args.prefix}_metrics.jsonl"), world.is_main,
                          resumed_step)
    stop = StopRequest()
    steps_per_epoch = len(train_loader)
    for epoch in range(start_epoch, args.epochs):
        train_loader.set_epoch(epoch)
        window, epoch_sums = Window(world.device), torch.zeros(4)
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", unit="batch", disable=not world.is_main,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        bar.update(skip_batches)
        epoch_start = interval_start = time.perf_counter()
        data_time = interval_data = 0.0
        steps_done, interval_steps, epoch_skipped = skip_batches, 0, skip_batches
        lr = learning_rate(epoch * steps_per_epoch, steps_per_epoch, args.lr, args.epochs, args.lr_schedule,
                           args.warmup_epochs)
        fetch_start = time.perf_counter()
        for i, (images, labels) in enumerate(train_loader):
            if i < skip_batches:  # exact mid-epoch resume: the order is a function of (seed, epoch)
                fetch_start = time.perf_counter()
                continue
            interval_data += time.perf_counter() - fetch_start
            global_step = epoch * steps_per_epoch + i
            lr = learning_rate(global_step, steps_per_epoch, args.lr, args.epochs, args.lr_schedule,
                               args.warmup_epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits, loss = train_step(train_net, images, labels, criterion, optimizer, scaler, amp_dtype)
            window.add(loss, logits, labels)
            steps_done = i + 1
            bar.update(1)
            interval_steps += 1
            if steps_done % args.print_freq == 0 or steps_done == steps_per_epoch:
                # The one host sync of the interval: all ranks reduce their window sums here.
                sums = distributed.all_reduce_sum(world, window.take()).cpu()
                epoch_sums += sums
                now = time.perf_counter()
                data_time += interval_data
                epoch_steps = steps_done - skip_batches
                loss_i, top1_i, top5_i, n_i = summarize(sums)
                loss_e, top1_e, top5_e, _ = summarize(epoch_sums)
                images_per_sec = n_i / max(now - interval_start, 1e-9)
                line = seed_log_line(epoch, steps_done, steps_per_epoch,
                                     ((now - interval_start) / interval_steps, (now - epoch_start) / epoch_steps),
                                     (interval_data / interval_steps, data_time / epoch_steps),
                                     (loss_i, loss_e), (top1_i, top1_e), (top5_i, top5_e))
                if world.is_main:
                    bar.write(line)
                    bar.set_postfix(loss=f"{loss_i:.3f}", img_s=f"{images_per_sec:.0f}")
                metrics.write(kind="train", epoch=epoch, step=global_step + 1, lr=lr, loss=loss_i, top1=top1_i,
                              top5=top5_i, images_per_sec=images_per_sec, data_time=interval_data / interval_steps)
                interval_start, interval_data, interval_steps = now, 0.0, 0
            # On the epoch's last step the epoch-end path below validates, saves and stops instead.
            if steps_done < steps_per_epoch and distributed.any_rank(world, stop.requested):
                bar.close()
                state = make_state(model, optimizer, scaler, epoch, steps_done, global_step + 1, best_top1, cfg)
                if world.is_main:
                    path = checkpoint.save(args.output_dir, args.prefix, state, is_best=False)
                    log(f"=> stop requested: saved {path} at epoch {epoch}, batch {steps_done}; exiting")
                distributed.barrier(world)
                distributed.cleanup(world)
                return 0
            fetch_start = time.perf_counter()
        bar.close()
        skip_batches = 0

        top1 = 0.0
        if world.is_main and val_loader is not None:
            # Saved before validation as well, so that a failure there (a damaged val shard) loses no training;
            # the save after validation replaces it.
            state = make_state(model, optimizer, scaler, epoch + 1, 0, (epoch + 1) * steps_per_epoch, best_top1, cfg)
            checkpoint.save(args.output_dir, args.prefix, state, is_best=False)
        if val_loader is not None:
            val_loss, top1, top5, n = validate(net, val_loader, world, amp_dtype)
            log(f" * Prec@1 {top1:.3f} Prec@5 {top5:.3f}")
            metrics.write(kind="val", epoch=epoch, step=(epoch + 1) * steps_per_epoch, lr=lr, loss=val_loss,
                          top1=top1, top5=top5, images=n)
        epoch_loss, epoch_top1, epoch_top5, n = summarize(epoch_sums)
        metrics.write(kind="epoch", epoch=epoch, step=(epoch + 1) * steps_per_epoch, lr=lr, loss=epoch_loss,
                      top1=epoch_top1, top5=epoch_top5,
                      images_per_sec=n / max(time.perf_counter() - epoch_start, 1e-9),
                      data_time=data_time / max(steps_per_epoch - epoch_skipped, 1))
        is_best = top1 > best_top1 or best_top1 == 0.0
        best_top1 = max(top1, best_top1)
        if world.is_main:
            state = make_state(model, optimizer, scaler, epoch + 1, 0, (epoch + 1) * steps_per_epoch, best_top1, cfg)
            checkpoint.save(args.output_dir, args.prefix, state, is_best)
        distributed.barrier(world)
        if distributed.any_rank(world, stop.requested):
            log("=> stop requested: checkpoint of the finished epoch is saved; exiting")
            break
    distributed.cleanup(world)
    return 0


def make_state(model, optimizer, scaler, next_epoch, next_batch, step, best_top1, cfg):
    """The checkpoint: plain data only, so torch.load(weights_only=True) reads it."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": next_epoch, "batch": next_batch, "step": step, "best_prec1": best_top1,
            "arch": f"resnet{cfg['depth']}", "rng": checkpoint.rng_state(), "config": cfg}


def run():
    """main(), with a failed checkpoint save (full disk, quota, permissions) or a shard found damaged while training
    as one line and exit status 1."""
    status = 1  # what an uncaught exception leaves
    try:
        status = main()
    except (checkpoint.CheckpointError, ShardError) as exc:
        sys.stderr.write(f"train.py: error: {exc}\n")
    except SystemExit as exc:  # a one-line user error (config.fail): exit status 2
        status = exc.code if isinstance(exc.code, int) else 1
    finally:
        distributed.record_exit_status(status)
    return status


if __name__ == "__main__":
    sys.exit(run())
