#!/usr/bin/env python
"""ImageNet training of ResNet + CBAM/BAM/SE: `torchrun --nproc-per-node N train.py [flags] DATA`.

Reads top to bottom: flags -> world -> RunConfig -> loaders -> model -> resume -> evaluate | benchmark | fit.
`python train.py --ngpu N ...` (the CBAM authors' command) relaunches itself through torch.distributed.run.
Rank 0 alone prints and writes. The host syncs with the device only at print intervals and epoch ends.
Exit status: 0 done (or stopped by a signal after saving); 1 a checkpoint could not be written or a shard is
damaged (saved first where possible); 2 a flag, file or setting to change. Only main() decides it.
"""
import json
import os
import sys
from dataclasses import replace

import torch
import torch.distributed as dist

from model.cbam_fused import triton_unavailable_reason
from pipeline import ShardError
from training import benchmark, checkpoint, config, distributed
from training import stop as stopping
from training.checkpoint import Position
from training.compile import use_cache_dir
from training.learner import build_learner, prepare_to_run
from training.loaders import build_loaders, warn_about_empty_classes
from training.metrics import EpochProgress, MetricsFile, RunningSums, summarize
from training.optim import set_learning_rate


def train_step(learner, images, labels):
    with torch.autocast(images.device.type, dtype=learner.amp_dtype, enabled=learner.amp_dtype is not None):
        logits = learner.train_net(images)
        loss = learner.criterion(logits.float(), labels)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(loss).backward()
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    return logits, loss


def evaluate(learner, loader, world):
    """(loss, top-1 %, top-5 %, n) over the whole split: sums per rank, one all-reduce at the end."""
    if world.size > 1:
        # DDP keeps the parameters equal but each rank updates its own BatchNorm running statistics after the
        # last broadcast; evaluate rank 0's (the checkpointed) model on every rank.
        for buffer in learner.net.buffers():
            dist.broadcast(buffer, 0)
    learner.net.eval()
    sums = RunningSums(world.device)
    amp = learner.amp_dtype
    with torch.no_grad(), torch.autocast(world.device.type, dtype=amp, enabled=amp is not None):
        for images, labels in loader:
            logits = learner.net(images)
            sums.add(torch.nn.functional.cross_entropy(logits.float(), labels), logits, labels)
    learner.net.train()
    return summarize(distributed.all_reduce_sum(world, sums.take()).cpu())


def train_one_epoch(run, learner, loader, epoch, first_step, stop, metrics, watched):
    """Trains `epoch` from batch `first_step`: (stop reason or 0, steps done, its EpochProgress)."""
    steps = len(loader)
    loader.set_epoch(epoch)
    with EpochProgress(run.world, metrics, epoch=epoch, steps=steps, first_step=first_step,
                       print_freq=run.print_freq) as progress:
        for i, (images, labels) in enumerate(loader):
            if i < first_step:  # exact mid-epoch resume: the order is a function of (seed, epoch)
                progress.waiting_for_data()
                continue
            progress.batch_arrived()
            lr = set_learning_rate(learner.optimizer, run, epoch * steps + i, steps)
            logits, loss = train_step(learner, images, labels)
            progress.step_done(i + 1, epoch * steps + i + 1, lr, loss, logits, labels)
            if i + 1 < steps:  # after the last step, fit() checks at the epoch's end
                reason = stopping.agreed_reason(run.world, stop, stopping.shard_problem(watched))
                if reason:
                    return reason, i + 1, progress
            progress.waiting_for_data()
    return 0, steps, progress


def fit(run, learner, train_loader, val_loader, position, log):
    world = run.world
    if world.is_main:
        os.makedirs(run.output_dir, exist_ok=True)
        for path in checkpoint.sweep_temporaries(run.output_dir, run.prefix):
            log(f"removed {path}, left by an interrupted save")
        with open(os.path.join(run.output_dir, f"{run.prefix}_config.json"), "w") as f:
            json.dump(run.as_dict(), f, indent=1, sort_keys=True)
    metrics = MetricsFile(os.path.join(run.output_dir, f"{run.prefix}_metrics.jsonl"), world.is_main,
                          position.step if position.step else None)

    def save(position, is_best=False):
        """The one checkpoint path: rank 0 writes, every rank waits for it."""
        path = None
        if world.is_main:
            state = checkpoint.make_state(learner.model, learner.optimizer, learner.scaler, position, run.as_dict())
            path = checkpoint.save(run.output_dir, run.prefix, state, is_best)
        distributed.barrier(world)
        return path

    def stop_for_damage(position, problem):
        path = save(position)
        log(f"=> a damaged shard: saved {path} at epoch {position.epoch}, batch {position.batch}; exiting")
        error = ShardError(distributed.first_message(world, problem) or stopping.OTHER_RANK_DAMAGED)
        error.same_on_every_rank = True
        raise error

    stop = stopping.StopRequest()
    watched = [train_loader] + ([val_loader] if val_loader is not None else [])
    steps = len(train_loader)
    for epoch in range(position.epoch, run.epochs):
        first_step = position.batch if epoch == position.epoch else 0
        reason, done, progress = train_one_epoch(run, learner, train_loader, epoch, first_step, stop, metrics, watched)
        if reason:
            position = Position(epoch, done, epoch * steps + done, position.best_top1)
            if reason == stopping.DAMAGED_SHARD:
                stop_for_damage(position, stopping.shard_problem(watched))
            path = save(position)
            log(f"=> stop requested: saved {path} at epoch {epoch}, batch {done}; exiting")
            return
        position = Position(epoch + 1, 0, (epoch + 1) * steps, position.best_top1)
        # The epoch's shards have all been read: their checksums are waited for before its checkpoint counts.
        problem = stopping.shard_problem(watched, wait=True)
        if distributed.any_rank(world, problem):
            stop_for_damage(position, problem)
        top1 = 0.0
        if val_loader is not None:
            save(position)  # also before validation, so that a failure there loses no training
            val_loss, top1, top5, n = evaluate(learner, val_loader, world)
            log(f" * Prec@1 {top1:.3f} Prec@5 {top5:.3f}")
            metrics.write(kind="val", epoch=epoch, step=position.step, lr=progress.lr, loss=val_loss, top1=top1,
                          top5=top5, images=n)
        progress.write_epoch_row(position.step)
        is_best = top1 > position.best_top1 or position.best_top1 == 0.0
        position = replace(position, best_top1=max(top1, position.best_top1))
        save(position, is_best)
        if distributed.any_rank(world, stop.requested):
            log("=> stop requested: checkpoint of the finished epoch is saved; exiting")
            return


def main():
    args = config.parse_args()
    if args.ngpu > 1 and not distributed.launched_by_torchrun():
        config.check_world(args, args.ngpu)
        return distributed.relaunch_with_torchrun(args.ngpu)
    world = distributed.setup()
    run = config.resolve(args, world)
    if run.compile != "off" and run.compile_cache != "none":
        try:
            use_cache_dir(run.compile_cache)
        except OSError as exc:
            raise config.UsageError(str(exc)) from None
    torch.backends.cudnn.benchmark = run.cudnn_benchmark
    log = print if world.is_main else (lambda *a, **k: None)
    log("config " + json.dumps(run.as_dict(), sort_keys=True))
    if run.att_type == "CBAM" and world.device.type == "cuda" and run.cbam_impl == "torch" and args.cbam_impl == "auto":
        log(f"note: CBAM runs on plain PyTorch ops, slower: {triton_unavailable_reason(world.device)}")
    torch.manual_seed(run.seed)  # same initial weights on every rank (DDP broadcasts them anyway)

    train_loader, val_loader = build_loaders(run)
    loader = train_loader or val_loader
    log(f"loader: {loader!r}")
    warn_about_empty_classes(run.data, log)
    learner = build_learner(run, num_classes=len(loader.split.classes))
    position, resumed_from = checkpoint.restore(run, learner.model, learner.optimizer, learner.scaler)
    if resumed_from:
        log(f"=> loaded checkpoint {resumed_from} (next: epoch {position.epoch}, batch {position.batch})")
    prepare_to_run(learner, run)

    if run.evaluate:
        loss, top1, top5, n = evaluate(learner, val_loader, world)
        log(f" * Prec@1 {top1:.3f} Prec@5 {top5:.3f}  (loss {loss:.4f}, {n} images)")
    elif run.benchmark:
        result = benchmark.run(lambda images, labels: train_step(learner, images, labels), train_loader, run)
        log(benchmark.table(result))
        log(json.dumps(result))
    else:
        fit(run, learner, train_loader, val_loader, position, log)
    distributed.cleanup(world)
    return 0


def cli():
    """main() with its errors as one line each and the exit status: 2 for a setting to change, 1 for a failed
    checkpoint save or a damaged shard. An error every rank has alike is printed by each node's first rank."""
    status = 1  # what an uncaught exception leaves
    try:
        status = main()
    except (config.UsageError, checkpoint.CheckpointError, ShardError) as exc:
        status = 2 if isinstance(exc, config.UsageError) else 1
        alike = isinstance(exc, config.UsageError) or getattr(exc, "same_on_every_rank", False)
        if not alike or os.environ.get("LOCAL_RANK", "0") == "0":
            sys.stderr.write(f"train.py: error: {exc}\n")
    finally:
        distributed.record_exit_status(status)
    return status


if __name__ == "__main__":
    sys.exit(cli())
