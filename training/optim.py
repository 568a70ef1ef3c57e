"""The optimizer and its learning rate: SGD with momentum as in the CBAM authors' train_imagenet.py."""
import torch

from .schedule import learning_rate


def param_groups(model, weight_decay, no_bn_weight_decay):
    """With no_bn_weight_decay, BatchNorm weights and all biases (1-D tensors) get no weight decay."""
    if not no_bn_weight_decay:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, run):
    return torch.optim.SGD(param_groups(model, run.weight_decay, run.no_bn_weight_decay), lr=run.lr,
                           momentum=run.momentum)


def set_learning_rate(optimizer, run, global_step, steps_per_epoch):
    """Sets and returns the learning rate of 0-based `global_step` (a pure function of it: resumes continue)."""
    lr = learning_rate(global_step, steps_per_epoch, run.lr, run.epochs, run.lr_schedule, run.warmup_epochs,
                       run.lr_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
