"""Accuracy counting on the device and the seed-format log line; a JSON-lines metrics file on rank 0."""
import json
import os

import torch


def correct_counts(logits, labels, ks=(1, 5)):
    """Tensor [correct@k for k in ks] on the device (no host sync); k is capped at the number of classes."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(labels[:, None])
    return torch.stack([hits[:, :min(k, maxk)].any(dim=1).sum() for k in ks]).float()


class Window:
    """Sums of loss, correct@1, correct@5 and sample count kept on the device between print intervals."""

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
    n = max(n, 1.0)
    return loss / n, 100.0 * c1 / n, 100.0 * c5 / n, int(n)


def seed_log_line(epoch, i, n, batch_time, data_time, loss, top1, top5):
    """The seed's log line; each pair is (this interval, epoch so far)."""
    return (f"Epoch: [{epoch}][{i}/{n}]\t"
            f"Time {batch_time[0]:.3f} ({batch_time[1]:.3f})\t"
            f"Data {data_time[0]:.3f} ({data_time[1]:.3f})\t"
            f"Loss {loss[0]:.4f} ({loss[1]:.4f})\t"
            f"Prec@1 {top1[0]:.3f} ({top1[1]:.3f})\t"
            f"Prec@5 {top5[0]:.3f} ({top5[1]:.3f})")


class MetricsFile:
    """Appends one JSON object per line to {output}/{prefix}_metrics.jsonl (rank 0 only; else a no-op)."""

    def __init__(self, path, enabled, resumed_step=None):
        """resumed_step: the step of the checkpoint a run resumes from. Rows written after it (by a run killed
        before its next checkpoint) describe steps that are trained again: they are dropped, not duplicated."""
        self.path = path if enabled else None
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if resumed_step is not None and os.path.exists(path):
                self._keep_until(resumed_step)

    def _keep_until(self, step):
        with open(self.path) as f:
            lines = f.readlines()
        kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
        if len(kept) < len(lines):
            tmp = f"{self.path}.tmp.{os.getpid()}"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)

    def write(self, **record):
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _step_of(line):
    """The step of one metrics line; None for a torn line (a run killed while writing it)."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return None
