"""The optimizer and its learning rate: SGD with momentum as in the CBAM authors' train_imagenet.py, or (--opt)
AdamW or LAMB (You et al., ICLR 2020; "ResNet strikes back" trains ResNet-50 with it at large batches), taken from
timm, whose Lamb is the one RSB used: it clips the global gradient norm to 1.0 itself and applies the layer-wise
trust ratio only to parameters with weight decay (so --no-bn-weight-decay also exempts BatchNorm from it)."""
import torch

from .schedule import learning_rate


def param_groups(model, weight_decay, no_bn_weight_decay):
    """With no_bn_weight_decay, BatchNorm weights and all biases (1-D tensors) get no weight decay."""
    if not no_bn_weight_decay:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


OPTIMIZERS = ("sgd", "lamb", "adamw")
ADAM_BETAS = (0.9, 0.999)  # AdamW and LAMB: the papers' and timm's defaults, which RSB keeps


def make_optimizer(model, run):
    groups = param_groups(model, run.weight_decay, run.no_bn_weight_decay)
    if run.opt == "adamw":
        return torch.optim.AdamW(groups, lr=run.lr, betas=ADAM_BETAS)
    if run.opt == "lamb":
        from timm.optim import Lamb  # imported only when asked for: timm takes a second to import
        return Lamb(groups, lr=run.lr, betas=ADAM_BETAS)
    return torch.optim.SGD(groups, lr=run.lr, momentum=run.momentum)


def set_learning_rate(optimizer, run, global_step, steps_per_epoch):
    """Sets and returns the learning rate of 0-based `global_step` (a pure function of it: resumes continue)."""
    lr = learning_rate(global_step, steps_per_epoch, run.lr, run.epochs, run.lr_schedule, run.warmup_epochs,
                       run.lr_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
