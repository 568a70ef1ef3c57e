"""The training loss (--loss): cross-entropy, or binary cross-entropy over one-vs-all targets as in "ResNet
strikes back" (Wightman, Touvron, Jegou, 2021; timm.loss.BinaryCrossEntropy), which trains each class as its own
sigmoid. Both take hard labels (B,) or the soft targets (B, classes) of mixup/cutmix, with label smoothing on top.
"""
import torch
import torch.nn.functional as F

LOSSES = ("ce", "bce")


class BinaryCrossEntropy(torch.nn.Module):
    """BCE with logits, averaged over every (sample, class). Targets are smoothed towards smoothing / classes (the
    true class keeps 1 - smoothing + smoothing / classes, timm's on/off values); with `target_threshold`, each
    target then becomes 1 where it exceeds the threshold and 0 elsewhere (RSB: 0.2, so a mixed-in partner whose
    share is below it counts as absent, and one above it as fully present)."""

    def __init__(self, num_classes, smoothing=0.0, target_threshold=None):
        super().__init__()
        self.num_classes, self.smoothing, self.target_threshold = num_classes, smoothing, target_threshold

    def targets(self, targets, dtype):
        if targets.ndim == 1:
            targets = F.one_hot(targets, self.num_classes).to(dtype)
        if self.smoothing:
            targets = targets * (1.0 - self.smoothing) + self.smoothing / self.num_classes
        if self.target_threshold is not None:
            targets = (targets > self.target_threshold).to(dtype)
        return targets

    def forward(self, logits, targets):
        return F.binary_cross_entropy_with_logits(logits, self.targets(targets, logits.dtype))


def make_criterion(run, num_classes):
    if run.loss == "bce":
        return BinaryCrossEntropy(num_classes, run.label_smoothing, run.bce_target_thresh)
    return torch.nn.CrossEntropyLoss(label_smoothing=run.label_smoothing)
