"""What a run trains: the model (compiled, wrapped in DDP), its optimizer, gradient scaler and loss, built once."""
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from model import build_model

from .compile import compile_model
from .optim import make_optimizer


@dataclass
class Learner:
    model: torch.nn.Module       # the module whose state dict is saved
    net: torch.nn.Module         # the model as run (compiled in place, same parameters)
    train_net: torch.nn.Module   # net, wrapped in DDP when there are several ranks
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module
    amp_dtype: torch.dtype


def build_learner(run, num_classes):
    """The Learner of a training.config.RunConfig. Compile and DDP come last, after a resume may have loaded
    weights into the plain model (compiling in place keeps the state-dict names)."""
    device = run.world.device
    model = build_model(run.depth, run.att_type, num_classes=num_classes, cbam_impl=run.cbam_impl)
    model = model.to(device, memory_format=run.memory_format)
    optimizer = make_optimizer(model, run)
    scaler = torch.amp.GradScaler(device.type, enabled=run.amp == "fp16")
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=run.label_smoothing)
    return Learner(model, model, model, optimizer, scaler, criterion, run.amp_dtype)


def prepare_to_run(learner, run):
    """Compiles the model and wraps it in DDP for several ranks (in place on `learner`)."""
    learner.net = compile_model(learner.model, run.compile)
    learner.train_net = learner.net
    if run.world.size > 1:
        device = run.world.device
        learner.train_net = DistributedDataParallel(learner.net,
                                                    device_ids=[device] if device.type == "cuda" else None,
                                                    gradient_as_bucket_view=True)  # no gradient copy into buckets
