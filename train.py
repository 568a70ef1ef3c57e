#!/usr/bin/env python
"""ImageNet training of ResNet + CBAM/BAM/SE: `torchrun --nproc-per-node N train.py [flags] DATA`.

Reads top to bottom: flags -> world -> RunConfig -> loaders -> model -> resume -> evaluate | benchmark | fit.
`python train.py --ngpu N ...` (the CBAM authors' command) relaunches itself through torch.distributed.run.
Rank 0 alone prints and writes. The host syncs with the device only at print intervals and epoch ends.
Exit status: 0 done; 1 a checkpoint could not be written, a shard is damaged (saved first where possible), a
loader worker failed (out of memory, killed), the run diverged (a loss or weight not finite; the last checkpoint is
kept) or a collective failed (another rank stuck past --collective-timeout, or gone: torchrun --max-restarts then
restarts the run); 2 a flag, file or setting to change;
128 + N stopped by signal N (SIGTERM 143, SIGINT 130): saved, or before training started with nothing to save.
Only cli() decides it.
"""
import json
import os
import sys
import time
from dataclasses import replace

if __name__ == "__main__":  # before torch imports: a signal in those seconds is a clean stop too
    import training.early_signals
    training.early_signals.keep()

import torch

from model import parameter_count
from pipeline import LoaderFailed, ShardError
from training import benchmark, checkpoint, config, distributed, early_signals, elastic, output_dir, resume
from training import stop as stopping
from training.learner import build_learner, prepare_to_run
from training.metrics import EpochProgress, MetricsFile, RunningSums, summarize
from training.optim import set_learning_rate
from training.resume import Position
from training.run_loaders import build_loaders


def evaluate(learner, loader, world, weights="raw", tta="none"):
    """(loss, top-1 %, top-5 %, n) over the whole split for the trained ("raw") or averaged ("ema") weights:
    sums per rank, one all-reduce at the end. A damaged shard found by a rank's reader ends it on every rank.
    tta "flip" averages each image's logits with its mirror's."""
    world.where = f"evaluation of the {weights} weights"
    # DDP keeps the parameters equal but each rank updates its own BatchNorm running statistics after the last
    # broadcast; evaluate rank 0's (the checkpointed) model on every rank.
    distributed.broadcast(world, list(learner.model.buffers()), "the broadcast of rank 0's BatchNorm statistics")
    if weights == "ema":
        learner.ema.sync_buffers()
    evaluated = learner.ema.model if weights == "ema" else learner.model
    evaluated.eval()
    sums, problem = RunningSums(world.device), None
    amp = learner.amp_dtype
    with torch.no_grad(), torch.autocast(world.device.type, dtype=amp, enabled=amp is not None), learner.evaluation():
        for batch, problem in stopping.until_damaged(loader):
            if problem:
                break
            images, labels = batch
            logits = evaluated(images)
            if tta == "flip":
                logits = (logits + evaluated(images.flip(3))) / 2
            sums.add(torch.nn.functional.cross_entropy(logits.float(), labels), logits, labels)
    learner.model.train()
    stopping.raise_if_damaged(world, problem)
    return summarize(distributed.all_reduce_sum(world, sums.take(), "the sum of the validation counts").cpu())


def train_one_epoch(run, learner, loader, epoch, first_step, stop, metrics, watched, save_at=None):
    """Trains `epoch` from batch `first_step`: (stop reason or 0, the batch to go on from, its EpochProgress,
    this rank's damaged-shard message or None). Before every step the ranks agree whether to stop: at once for a
    damaged shard (the reader's error on any rank, or the background check), at the start of an accumulation
    group for a signal, so that a checkpoint never holds half-accumulated gradients. There too, when --save-every
    minutes have passed, `save_at` (a resume.Saver) saves the epoch's position and training goes on."""
    steps = len(loader)
    loader.set_epoch(epoch)
    loader.set_image_size(run.image_size.at(epoch))
    with EpochProgress(run.world, metrics, epoch=epoch, steps=steps, first_step=first_step,
                       print_freq=run.print_freq) as progress:
        group_buffers = None
        for i, (batch, problem) in enumerate(stopping.until_damaged(loader)):
            if problem and i >= steps:  # found after the last batch: the epoch's end check stops the run
                return 0, steps, progress, problem
            if i < first_step and not problem:  # exact mid-epoch resume: the order is a function of (seed, epoch)
                progress.waiting_for_data()
                continue
            group_start = max(i - i % run.accum, first_step)
            run.world.where = f"epoch {epoch}, step {i}"
            reason = stopping.agreed_reason(run.world, stop, problem or stopping.shard_problem(watched),
                                            at_group_start=i == group_start,
                                            save_due=save_at is not None and save_at.due())
            if reason == stopping.SAVE_DUE:
                stopping.check_finite(run.world, learner, progress.unreported_loss(), epoch, i, steps, saving=True)
                path = save_at.save(Position(epoch, i, epoch * steps + i, save_at.best_top1))
                progress.note(f"=> saved {path} at epoch {epoch}, batch {i} (--save-every {run.save_every:g} min)")
            elif reason:
                if i > group_start:  # the group's forward passes changed the BatchNorm statistics: undone
                    learner.restore_buffers(group_buffers)
                stopping.check_finite(run.world, learner, progress.unreported_loss(), epoch, i, steps, saving=True)
                return reason, group_start, progress, problem
            if i == group_start and run.accum > 1:
                group_buffers = learner.buffers_snapshot()
            images, labels = batch
            progress.batch_arrived(images.shape[-1])
            group_end = min(group_start + run.accum, steps)
            step = epoch * steps + i
            lr = set_learning_rate(learner.optimizer, run, step, steps)
            with distributed.collective(run.world, "the step's DDP exchange (gradients, buffers)"):
                logits, loss, scored = learner.step(images, labels, step, 1.0 / (group_end - group_start),
                                                    i + 1 == group_end)
            if progress.step_done(i + 1, step + 1, lr, loss, logits, scored):
                stopping.check_finite(run.world, learner, progress.interval_loss, epoch, i + 1, steps,
                                      saving=i + 1 == steps)  # the epoch's checkpoint follows its last step
            progress.waiting_for_data()
    return 0, steps, progress, None


def validate(learner, val_loader, world, metrics, log, epoch, position, lr):
    """Evaluates the trained weights and, with --ema-decay, their average: one val row; returns the raw top-1."""
    loss, top1, top5, n = evaluate(learner, val_loader, world)
    log(f" * Prec@1 {top1:.3f} Prec@5 {top5:.3f}")
    row = dict(kind="val", epoch=epoch, step=position.step, lr=lr, loss=loss, top1=top1, top5=top5, images=n)
    if learner.ema is not None:
        ema_loss, ema_top1, ema_top5, _ = evaluate(learner, val_loader, world, "ema")
        log(f" * EMA Prec@1 {ema_top1:.3f} Prec@5 {ema_top5:.3f}")
        row.update(loss_ema=ema_loss, top1_ema=ema_top1, top5_ema=ema_top5)
    metrics.write(**row)
    return top1


def validate_and_save(learner, val_loader, world, saver, metrics, log, position, lr):
    """Validates the epoch that ends at `position` (with a val split), keeps the best top-1 and saves the
    epoch as validated; returns the new Position."""
    top1 = 0.0
    if val_loader is not None:
        top1 = validate(learner, val_loader, world, metrics, log, position.epoch - 1, position, lr)
    is_best = top1 > position.best_top1 or position.best_top1 == 0.0
    position = replace(position, best_top1=max(top1, position.best_top1), val_owed=False)
    saver.save(position, is_best, epoch_end=True)
    return position


def fit(run, learner, train_loader, val_loader, position, stop, log):
    """Trains from `position` to the last epoch; returns the exit status (0, or 128 + N after signal N)."""
    world = run.world
    output_dir.prepare_output_dir(run, log)
    board = output_dir.tensorboard_path(run.output_dir, run.prefix) if run.tensorboard else None
    metrics = MetricsFile(output_dir.metrics_path(run.output_dir, run.prefix), world.is_main,
                          position.step, position.elapsed_s, board, position.val_owed)
    saver = resume.Saver(run, learner, metrics.elapsed_s, train_loader.split.classes)
    saver.best_top1 = position.best_top1
    stop.defer()  # from here on a signal stops the run after saving
    if position.val_owed:
        log(f"=> validating epoch {position.epoch - 1} first: the run stopped before its validation ended")
        position = validate_and_save(learner, val_loader, world, saver, metrics, log, position,
                                     learner.optimizer.param_groups[0]["lr"])
    watched = [train_loader] + ([val_loader] if val_loader is not None else [])
    steps = len(train_loader)
    for epoch in range(position.epoch, run.epochs):
        first_step = position.batch if epoch == position.epoch else 0
        reason, done, progress, problem = train_one_epoch(run, learner, train_loader, epoch, first_step, stop,
                                                          metrics, watched, saver)
        if reason:
            if stop.why:
                log(f"=> {stop.why}: stopping as for SIGTERM")
            position = Position(epoch, done, epoch * steps + done, position.best_top1)
            trained = done > first_step  # else what is on disk (or nothing, on a fresh start) is this state
            if reason == stopping.DAMAGED_SHARD:
                saver.stop_for_damage(position, problem or stopping.shard_problem(watched), log, save=trained)
            if trained:
                log(f"=> stop requested: saved {saver.save(position)} at epoch {epoch}, batch {done}; exiting")
            else:
                log(f"=> stop requested at epoch {epoch}, batch {done}, before a step: nothing new to save; exiting")
            return stopping.stopped_status(world, stop)
        position = Position(epoch + 1, 0, (epoch + 1) * steps, position.best_top1, val_owed=val_loader is not None)
        # The epoch's shards have all been read: their checksums are waited for before its checkpoint counts.
        problem = problem or stopping.shard_problem(watched, wait=True)
        if distributed.any_rank(world, problem):
            saver.stop_for_damage(position, problem, log)
        progress.write_epoch_row(position.step)
        if val_loader is not None:
            saver.save(position)  # validation owed: a failure or a kill during it loses no training
        position = validate_and_save(learner, val_loader, world, saver, metrics, log, position, progress.lr)
        saver.best_top1 = position.best_top1
        if distributed.any_rank(world, stop.requested):
            log("=> stop requested: checkpoint of the finished epoch is saved; exiting")
            return stopping.stopped_status(world, stop)
    metrics.close()
    return 0


def main(argv=None):
    # Until training starts a signal ends the rank where it is (one that came while imports ran: at once).
    stop = stopping.StopRequest(at_once=True, earlier=early_signals.take())
    args, trained = config.parse_command_line(argv)  # trained: the checkpoint --evaluate scores, read once
    restarted = elastic.continue_own_run(args, output_dir.config_name(args.prefix))
    relaunch = args.ngpu > 1 and not distributed.launched_by_torchrun()
    config.check_rank_batch(args, args.batch_size, distributed.world_size_from_environment(args.ngpu))
    output_dir.check_output_dir(args, writer=not relaunch and distributed.rank_from_environment() == 0)
    if relaunch:
        config.check_world(args, args.ngpu)
        return distributed.relaunch_with_torchrun(args.ngpu)
    world = distributed.setup(args.collective_timeout)
    log = print if world.is_main else (lambda *a, **k: None)
    if restarted:
        log(restarted)
    chosen = None
    if not args.evaluate:  # read once, before the batch is resolved: a world of another size keeps its batch
        chosen = resume.load_for_resume(args.resume, args.output_dir, args.prefix, log)
        resume.check_same_start(world, chosen)
    run = config.resolve(args, world, (chosen[1] or {}).get("config") if chosen else None)
    torch.backends.cudnn.benchmark = run.cudnn_benchmark
    torch.manual_seed(run.seed)  # same initial weights on every rank (DDP broadcasts them anyway)

    train_loader, val_loader = build_loaders(run, trained, log)
    loader = train_loader or val_loader
    if trained:
        learner = build_learner(run, trained.num_classes, log)
    else:
        learner = build_learner(run, len(loader.split.classes), log, loader.split.classes)
    # The configuration once the model is built (its size depends on the data's classes): the config line, the
    # config file and every checkpoint record the parameter count, to hold against the papers' tables.
    run = replace(run, parameters=parameter_count(learner.model))
    log("config " + json.dumps(run.as_dict(), sort_keys=True))
    for note in run.notes:
        log(note)
    log(f"loader: {loader!r}")
    if trained:
        trained.load_into(learner.model, run.eval_weights)
        log(f"=> evaluating checkpoint {trained.path}: {trained.summary()}")
    else:
        position, resumed_from = resume.restore(run, learner, log, chosen)
        if resumed_from:
            log(f"=> loaded checkpoint {resumed_from} (next: epoch {position.epoch}, batch {position.batch})")
    prepare_to_run(learner, run)

    status = 0
    if run.evaluate:
        loss, top1, top5, n = evaluate(learner, val_loader, world, tta=run.tta)
        which = ("EMA " if run.eval_weights == "ema" else "") + ("flip TTA " if run.tta == "flip" else "")
        log(f" * {which}Prec@1 {top1:.3f} Prec@5 {top5:.3f}  (loss {loss:.4f}, {n} images)")
    elif run.benchmark:
        result = benchmark.measure(learner.step, train_loader, run)
        log(benchmark.table(result))
        log(json.dumps(result))
    else:
        status = fit(run, learner, train_loader, val_loader, position, stop, log)
    for each in (train_loader, val_loader):  # their worker processes, which serve every epoch, end here
        if each is not None:
            each.close()
    distributed.cleanup(world)
    return status


def cli(argv=None, prog="train.py"):
    """main() with its errors as one line each ("{prog}: error: ...") and the exit status: 2 for a setting to
    change, 1 for a failed checkpoint save, a damaged shard or a diverged run, 128 + N for signal N (see the
    module docstring). An error every rank has alike is printed by each node's first rank."""
    status = 1  # what an uncaught exception leaves
    try:
        try:
            status = main(argv)
        except (config.UsageError, checkpoint.CheckpointError, ShardError, LoaderFailed, stopping.Diverged,
                distributed.CollectiveFailed) as exc:
            status = 2 if isinstance(exc, config.UsageError) else 1
            alike = isinstance(exc, (config.UsageError, stopping.AgreedError))
            if not alike or os.environ.get("LOCAL_RANK", "0") == "0":
                sys.stderr.write(f"{prog}: error: {exc}\n")
        except RuntimeError:
            # A signal during set-up stops each rank where it is; a rank inside a collective (DDP's check of the
            # parameters) sees its peer gone (gloo: "Connection closed by peer") before the signal reaches it or
            # its handler runs, and would report a crash instead of the stop. It waits for that signal a moment:
            # the handler's Interrupted ends the wait and is taken below; no signal, the error is what it was.
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                time.sleep(_SIGNAL_WAIT_S)
            raise
    except stopping.Interrupted as exc:  # every rank has it: the launcher signals them all
        status = _interrupted(exc, prog)
    finally:
        try:
            distributed.record_exit_status(status)
        except stopping.Interrupted as exc:  # the signal's handler ran only now
            status = _interrupted(exc, prog)
            distributed.record_exit_status(status)
    return status


_SIGNAL_WAIT_S = 2.0  # how long a rank whose set-up collective broke waits for the signal that stopped its peers


def _interrupted(exc, prog):
    """The exit status of a run stopped by a signal during set-up; each node's first rank prints its line."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        sys.stderr.write(f"{prog}: {exc}\n")
    return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(cli())
