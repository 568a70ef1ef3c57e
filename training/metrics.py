"""Accuracy counting on the device, the progress of a train epoch (bar, the authors' log line, timings), and a
JSON-lines metrics file on rank 0."""
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from shards.files import write_atomic

from . import distributed


def correct_counts(logits, labels, ks=(1, 5)):
    """Tensor [correct@k for k in ks] on the device (no host sync); k is capped at the number of classes."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(labels[:, None])
    return torch.stack([hits[:, :min(k, maxk)].any(dim=1).sum() for k in ks]).float()


class RunningSums:
    """Sums of loss, correct@1, correct@5 and sample count, kept on the device (no host sync) until taken."""

    def __init__(self, device):
        self.sums = torch.zeros(4, device=device)  # loss*n, top1, top5, n

    def add(self, loss, logits, labels):
        n = labels.shape[0]
        self.sums[0] += loss.detach().float() * n
        self.sums[1:3] += correct_counts(logits.detach(), labels)
        self.sums[3] += n

    def take(self):
        """The sums so far (still on the device), and a fresh window."""
        sums, self.sums = self.sums, torch.zeros_like(self.sums)
        return sums


def summarize(sums):
    """(loss, top-1 %, top-5 %, n) from host-side sums."""
    loss, c1, c5, n = (float(v) for v in sums)
    divisor = max(n, 1.0)  # an empty window reports zeros and n = 0
    return loss / divisor, 100.0 * c1 / divisor, 100.0 * c5 / divisor, int(n)


def authors_log_line(epoch, i, n, batch_time, data_time, loss, top1, top5):
    """The log line of the CBAM authors' train_imagenet.py; each pair is (this interval, epoch so far)."""
    return (f"Epoch: [{epoch}][{i}/{n}]\t"
            f"Time {batch_time[0]:.3f} ({batch_time[1]:.3f})\t"
            f"Data {data_time[0]:.3f} ({data_time[1]:.3f})\t"
            f"Loss {loss[0]:.4f} ({loss[1]:.4f})\t"
            f"Prec@1 {top1[0]:.3f} ({top1[1]:.3f})\t"
            f"Prec@5 {top5[0]:.3f} ({top5[1]:.3f})")


def clock(seconds):
    """Seconds as H:MM:SS."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class EpochProgress:
    """One train epoch's reporting: the progress bar and, every `print_freq` steps and at the epoch's end, the
    authors' log line (with the global step and the training time so far appended) and a metrics row. That report
    is the interval's one host sync (the sums of all ranks are reduced there). The bar is drawn only on a terminal:
    in a log file (Slurm's, Kubernetes') its frames would be mixed into the lines. Use as a context manager, so
    that the bar is closed before any error message."""

    def __init__(self, world, metrics, *, epoch, steps, first_step, print_freq):
        self.world, self.metrics, self.epoch, self.steps = world, metrics, epoch, steps
        self.first_step, self.print_freq = first_step, print_freq
        self.window, self.epoch_sums = RunningSums(world.device), torch.zeros(4)
        self.bar = tqdm(total=steps, initial=first_step, desc=f"epoch {epoch}", unit="batch",
                        disable=not world.is_main or not sys.stderr.isatty(), mininterval=1.0, dynamic_ncols=True)
        self.epoch_start = self.interval_start = self.fetch_start = time.perf_counter()
        self.data_time = self.interval_data = 0.0
        self.interval_steps = 0
        self.lr = None  # of the last step taken
        self.image_size = None  # of the last batch

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.bar.close()

    def waiting_for_data(self):
        """Called before the next batch is fetched: the time until step_done's batch arrives is data time."""
        self.fetch_start = time.perf_counter()

    def note(self, line):
        """A line for the log (rank 0), printed above the bar."""
        if self.world.is_main:
            self.bar.write(line)

    def batch_arrived(self, image_size):
        self.interval_data += time.perf_counter() - self.fetch_start
        self.image_size = image_size

    def step_done(self, step, global_step, lr, loss, logits, labels):
        """After train step number `step` (1-based within the epoch) of `global_step` (1-based). Returns whether
        it reported; the interval's mean loss over all ranks is then `interval_loss`."""
        self.lr = lr
        self.window.add(loss, logits, labels)
        self.bar.update(1)
        self.interval_steps += 1
        if step % self.print_freq == 0 or step == self.steps:
            self._report(step, global_step, lr)
            return True
        return False

    def unreported_loss(self):
        """The mean loss over all ranks of the steps since the last report (0.0 if none): a host sync,
        for the check before a checkpoint."""
        loss, _, _, _ = summarize(distributed.all_reduce_sum(self.world, self.window.sums.clone()).cpu())
        return loss

    def _report(self, step, global_step, lr):
        sums = distributed.all_reduce_sum(self.world, self.window.take()).cpu()
        self.epoch_sums += sums
        now = time.perf_counter()
        self.data_time += self.interval_data
        epoch_steps = step - self.first_step
        interval = summarize(sums)
        self.interval_loss = interval[0]
        so_far = summarize(self.epoch_sums)
        images_per_sec = interval[3] / max(now - self.interval_start, 1e-9)
        line = authors_log_line(self.epoch, step, self.steps,
                                ((now - self.interval_start) / self.interval_steps,
                                 (now - self.epoch_start) / epoch_steps),
                                (self.interval_data / self.interval_steps, self.data_time / epoch_steps),
                                (interval[0], so_far[0]), (interval[1], so_far[1]), (interval[2], so_far[2]))
        line += f"\tStep {global_step}\tElapsed {clock(self.metrics.elapsed_s())}"
        if self.world.is_main:
            self.bar.write(line)
            self.bar.set_postfix(loss=f"{interval[0]:.3f}", img_s=f"{images_per_sec:.0f}")
        self.metrics.write(kind="train", epoch=self.epoch, step=global_step, lr=lr, loss=interval[0],
                           top1=interval[1], top5=interval[2], images_per_sec=images_per_sec,
                           data_time=self.interval_data / self.interval_steps, image_size=self.image_size)
        self.interval_start, self.interval_data, self.interval_steps = now, 0.0, 0
        self.train_end = now

    def write_epoch_row(self, step):
        """The epoch's summary row (after its last step's report)."""
        loss, top1, top5, n = summarize(self.epoch_sums)
        self.metrics.write(kind="epoch", epoch=self.epoch, step=step, lr=self.lr, loss=loss, top1=top1, top5=top5,
                           images_per_sec=n / max(self.train_end - self.epoch_start, 1e-9),
                           data_time=self.data_time / max(self.steps - self.first_step, 1))


class MetricsFile:
    """The metrics rows of a run, on rank 0 only (else a no-op): each row gets `elapsed_s`, the wall-clock seconds
    of training so far (over resumed runs too), and goes to every sink: {output}/{prefix}_metrics.jsonl always,
    TensorBoard with a folder. Another logger is one sink class (write(record), close()) added here."""

    def __init__(self, path, enabled, resumed_step=None, elapsed_before=0.0, tensorboard_dir=None, val_owed=False):
        """resumed_step: the step of the checkpoint a run resumes from. Rows written after it (by a run killed
        before its next checkpoint) describe steps that are trained again: they are dropped, not duplicated.
        elapsed_before: the seconds that checkpoint had trained for. val_owed: that checkpoint was saved before
        its epoch's validation, which runs again: a val row of its step is dropped too."""
        self.path = path if enabled else None
        self._started, self._elapsed_before = time.monotonic(), elapsed_before
        self.sinks = []
        if self.path:
            self.sinks.append(JsonLinesSink(path, resumed_step, val_owed))
            if tensorboard_dir:
                self.sinks.append(TensorBoardSink(tensorboard_dir, resumed_step))

    def elapsed_s(self):
        return self._elapsed_before + time.monotonic() - self._started

    def write(self, **record):
        if not self.sinks:
            return
        record.setdefault("elapsed_s", round(self.elapsed_s(), 3))
        for sink in self.sinks:
            sink.write(record)

    def close(self):
        for sink in self.sinks:
            sink.close()


class JsonLinesSink:
    """One JSON object per line, appended; a resumed run first drops the rows it will write again."""

    def __init__(self, path, resumed_step=None, val_owed=False):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            self._keep_until(resumed_step, val_owed)

    def _keep_until(self, step, val_owed):
        """Keeps the complete rows (of steps up to `step` unless it is None; with `val_owed`, no val row of
        `step`), each ending in a newline, so that the next row never lands on a torn line. The file is replaced
        atomically: a crash here leaves the old one or the new one."""
        with open(self.path) as f:
            lines = f.readlines()
        rows = [(line, _row(line)) for line in lines]
        kept = [line.rstrip("\n") + "\n" for line, row in rows
                if row is not None and (step is None or row["step"] < step or row["step"] == step
                                        and not (val_owed and row.get("kind") == "val"))]
        if kept != lines:
            write_atomic(self.path, "".join(kept).encode())

    def write(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self):
        pass


class TensorBoardSink:
    """Every numeric field of a row as the TensorBoard scalar {kind}/{key} at the row's step (--tensorboard)."""

    def __init__(self, folder, resumed_step=None):
        from torch.utils.tensorboard import SummaryWriter  # optional dependency, checked by config
        self._board = SummaryWriter(folder, purge_step=resumed_step)

    def write(self, record):
        for key, value in record.items():
            if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)) and value is not None:
                self._board.add_scalar(f"{record['kind']}/{key}", value, record.get("step", 0))
        if record["kind"] != "train":  # an epoch's end: make it visible now
            self._board.flush()

    def close(self):
        self._board.close()


def _row(line):
    """One metrics line as a dict with its "step" (0 when it has none); None for a torn line (a run killed while
    writing it) or any other line that is not a row."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return {"step": 0, **record} if isinstance(record, dict) else None
