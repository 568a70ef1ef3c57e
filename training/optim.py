"""The optimizer and its learning rate: SGD with momentum as in the CBAM authors' train_imagenet.py, or (--opt)
AdamW or LAMB (You et al., ICLR 2020; "ResNet strikes back" trains ResNet-50 with it at large batches), taken from
timm, whose Lamb is the one RSB used: it clips the global gradient norm to 1.0 itself and applies the layer-wise
trust ratio only to parameters with weight decay (so --no-bn-weight-decay also exempts BatchNorm from it)."""
import torch

from .schedule import learning_rate


def param_groups(model, weight_decay, no_bn_weight_decay, pretrained=(), pretrained_lr_scale=1.0):
    """With no_bn_weight_decay, BatchNorm weights and all biases (1-D tensors) get no weight decay. Parameters
    named in `pretrained` (loaded by --pretrained) learn at pretrained_lr_scale times the schedule's rate."""
    groups = {}
    for name, param in model.named_parameters():
        exempt = no_bn_weight_decay and param.ndim <= 1
        scale = pretrained_lr_scale if name in pretrained else 1.0
        groups.setdefault((exempt, scale), []).append(param)
    return [{"params": params, "weight_decay": 0.0 if exempt else weight_decay, "lr_scale": scale}
            for (exempt, scale), params in groups.items()]


OPTIMIZERS = ("sgd", "lamb", "adamw")
ADAM_BETAS = (0.9, 0.999)  # AdamW and LAMB: the papers' and timm's defaults, which RSB keeps


def make_optimizer(model, run, pretrained=()):
    """The --opt optimizer over param_groups(): `pretrained` names the parameters --pretrained loaded, whose
    learning rate is scaled by --pretrained-lr-scale."""
    groups = param_groups(model, run.weight_decay, run.no_bn_weight_decay, pretrained,
                          run.pretrained_lr_scale if pretrained else 1.0)
    if run.opt == "adamw":
        return torch.optim.AdamW(groups, lr=run.lr, betas=ADAM_BETAS)
    if run.opt == "lamb":
        from timm.optim import Lamb  # imported only when asked for: timm takes a second to import
        return Lamb(groups, lr=run.lr, betas=ADAM_BETAS)
    return torch.optim.SGD(groups, lr=run.lr, momentum=run.momentum)


def set_learning_rate(optimizer, run, global_step, steps_per_epoch):
    """Sets and returns the learning rate of 0-based `global_step` (a pure function of it: resumes continue);
    groups with an lr_scale (--pretrained-lr-scale) get that multiple of it."""
    lr = learning_rate(global_step, steps_per_epoch, run.lr, run.epochs, run.lr_schedule, run.warmup_epochs,
                       run.lr_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
