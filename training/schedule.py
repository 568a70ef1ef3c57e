"""Schedules as pure functions of the step or epoch, so a resumed run continues the same curve: the learning rate
(per optimizer step) and the train image size (per epoch, progressive resizing)."""
import math
from dataclasses import dataclass

AUTHORS_LR_STEPS = (30, 60, 90)  # github.com/Jongchan/attention-module train_imagenet.py: x0.1 every 30 epochs
SIZE_MULTIPLE = 32  # progressive sizes are rounded to this (FFCV's ImageNet example does the same)


def learning_rate(step, steps_per_epoch, base_lr, epochs, schedule="step", warmup_epochs=0.0,
                  milestones=AUTHORS_LR_STEPS):
    """LR for global step `step` (0-based).

    step:   base_lr * 0.1 ** (number of milestones <= epoch), constant within an epoch.
    cosine: base_lr * 0.5 * (1 + cos(pi * progress)), updated every step, 0 after the last step.
    Warm-up: linear from base_lr / warmup_steps to the schedule's value over the first warmup_epochs.
    """
    epoch = step // steps_per_epoch
    if schedule == "step":
        lr = base_lr * (0.1 ** sum(1 for milestone in milestones if epoch >= milestone))
    else:
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * min(step / (epochs * steps_per_epoch), 1.0)))
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr


def epoch_list(text):
    """'30,60,90' -> (30, 60, 90): increasing epochs >= 1; ValueError naming the value otherwise."""
    try:
        epochs = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"not a comma-separated list of epochs: {text!r}") from None
    if any(e < 1 for e in epochs) or list(epochs) != sorted(set(epochs)):
        raise ValueError(f"epochs must be increasing and >= 1: {text!r}")
    return epochs


@dataclass(frozen=True)
class ImageSizeSchedule:
    """The train crop side per epoch: `start` px until `first_epoch`, then a linear ramp reaching `end` px at
    `last_epoch`, rounded to the nearest multiple of 32 (halves up); a fixed size when start == end. Written
    START or START:END@FIRST:LAST (e.g. 160:192@28:34)."""
    start: int
    end: int
    first_epoch: int = 0
    last_epoch: int = 0

    def at(self, epoch):
        if self.start == self.end or epoch <= self.first_epoch:
            return self.start
        if epoch >= self.last_epoch:
            return self.end
        progress = (epoch - self.first_epoch) / (self.last_epoch - self.first_epoch)
        size = self.start + progress * (self.end - self.start)
        return int(size / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE  # halves round up, in every Python

    @property
    def largest(self):
        return max(self.start, self.end)

    def __str__(self):
        if self.start == self.end:
            return str(self.start)
        return f"{self.start}:{self.end}@{self.first_epoch}:{self.last_epoch}"


def image_size_schedule(text):
    """Parses --image-size: SIZE or START:END@FIRST:LAST; ValueError with the reason otherwise."""
    sizes, at, epochs = str(text).partition("@")
    try:
        if not at:
            size = int(sizes)
            return ImageSizeSchedule(size, size)
        start, end = (int(v) for v in sizes.split(":"))
        first, last = (int(v) for v in epochs.split(":"))
    except ValueError:
        raise ValueError(f"expected SIZE or START:END@FIRST_EPOCH:LAST_EPOCH (e.g. 160:192@28:34), "
                         f"got {text!r}") from None
    if start % SIZE_MULTIPLE or end % SIZE_MULTIPLE:
        raise ValueError(f"progressive sizes must be multiples of {SIZE_MULTIPLE}, got {start} and {end}")
    if not 0 <= first < last:
        raise ValueError(f"the ramp's epochs must satisfy 0 <= FIRST < LAST, got {first}:{last}")
    return ImageSizeSchedule(start, end, first, last)
