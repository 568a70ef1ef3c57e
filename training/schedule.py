"""Learning-rate schedules as a pure function of the global step, so a resumed run continues the same curve."""
import math


def learning_rate(step, steps_per_epoch, base_lr, epochs, schedule="step", warmup_epochs=0.0):
    """LR for global optimizer step `step` (0-based).

    step:   base_lr * 0.1 ** (epoch // 30), the seed's schedule (constant within an epoch).
    cosine: base_lr * 0.5 * (1 + cos(pi * progress)), updated every step, reaching 0 at the end.
    Warm-up: linear from base_lr / warmup_steps to the schedule's value over the first warmup_epochs.
    """
    epoch = step // steps_per_epoch
    if schedule == "step":
        lr = base_lr * (0.1 ** (epoch // 30))
    else:
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * min(step / (epochs * steps_per_epoch), 1.0)))
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr
