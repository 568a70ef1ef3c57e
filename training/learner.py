"""What a run trains and how one batch trains it: the model (compiled, wrapped in DDP), its optimizer, gradient
scaler, loss, and the optional weight average (--ema-decay) and batch mixing (--mixup/--cutmix), built once."""
import contextlib
import math
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from model import build_network
from model.triton_env import triton_unavailable_reason

from .compile import compile_model
from .ema import WeightAverage
from .load import load_pretrained
from .losses import make_criterion
from .mixing import BatchMixer
from .optim import make_optimizer


@dataclass
class Learner:
    model: torch.nn.Module        # the module run and saved (prepare_to_run compiles it in place: same state dict)
    train_model: torch.nn.Module  # what a training step calls: the model in DDP with several ranks, else the model
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module
    amp_dtype: torch.dtype
    mixer: BatchMixer = None      # mixup/cutmix, or None
    ema: WeightAverage = None     # the weight average (--ema-decay), or None; resume.restore loads or restarts it
    clip_grad: float = 0.0        # the gradients' global norm is clipped to this before each optimizer step; 0 = off
    cuda_graphs: bool = False     # the compiled model replays CUDA graphs (set by prepare_to_run)

    def evaluation(self):
        """The context evaluation runs in: without CUDA graphs, whose replays would reuse the memory of one block's
        output for the next block's under no_grad (each compiled block is its own graph), the model runs eagerly
        there; a few batches of evaluation per epoch do not need the launch savings."""
        if self.cuda_graphs:
            return torch.compiler.set_stance("force_eager")
        return contextlib.nullcontext()

    def step(self, images, labels, step=0, share=1.0, last=True):
        """One batch's forward and backward, its loss weighted by `share` of the optimizer step that follows
        when `last` (gradient accumulation: DDP synchronises gradients only then). Returns (logits, loss, the
        labels the logits are scored against: each sample's dominant label under mixup/cutmix)."""
        targets = labels
        if self.cuda_graphs:  # one training iteration: the previous step's graph outputs may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
        if self.mixer is not None:
            images, targets, labels = self.mixer(images, labels, step)
        no_sync = getattr(self.train_model, "no_sync", None)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with torch.autocast(images.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.train_model(images)
                loss = self.criterion(logits.float(), targets)
            self.scaler.scale(loss * share if share != 1.0 else loss).backward()
        if last:
            if self.clip_grad:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the loss-scaled ones
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update()
        return logits, loss, labels

    def weights_finite(self):
        """True when every floating parameter and buffer (BatchNorm statistics too) is finite: one host sync. The
        max-abs norm is inf or nan exactly when a tensor holds one, and never overflows; torch's multi-tensor
        kernel computes all of them in a few launches."""
        tensors = [t.detach() for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        return bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors, math.inf))).all())

    def buffers_snapshot(self):
        """Copies of the model's buffers (BatchNorm statistics), which every forward pass updates."""
        return [b.clone() for b in self.model.buffers()]

    def restore_buffers(self, snapshot):
        for buffer, saved in zip(self.model.buffers(), snapshot):
            buffer.copy_(saved)


def build_learner(run, num_classes, log=print, classes=None):
    """The Learner of a training.config.RunConfig. With --pretrained, its weights are loaded first (`classes`, the
    data's class names, decide whether the classifier is kept). Compile and DDP come last, after a resume may
    have loaded weights into the plain model (compiling in place keeps the state-dict names)."""
    device = run.world.device
    fell_back = run.cbam_impl == "torch" and run.flags["cbam_impl"] == "auto" and run.compile == "off"
    if run.att_type == "CBAM" and device.type == "cuda" and fell_back:
        log(f"note: CBAM runs on plain PyTorch ops, slower: {triton_unavailable_reason(device)}")
    model = build_network(run.network, run.att_type, num_classes=num_classes, cbam_impl=run.cbam_impl)
    loaded = ()
    if run.pretrained:
        loaded, line = load_pretrained(model, run.pretrained, classes)
        log(line)
    model = model.to(device, memory_format=run.memory_format)
    if run.sync_bn and run.world.size > 1:  # before DDP; the same parameters and state-dict names
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif run.sync_bn:
        log("note: --sync-bn with one process: there is nothing to synchronise, BatchNorm stays as it is")
    optimizer = make_optimizer(model, run, loaded)
    scaler = torch.amp.GradScaler(device.type, enabled=run.amp == "fp16")
    mixer = BatchMixer(run.mixup, run.cutmix, num_classes, run.seed)
    ema = WeightAverage(model, run.ema_decay) if run.ema_decay and not run.evaluate else None
    return Learner(model, model, optimizer, scaler, make_criterion(run, num_classes), run.amp_dtype,
                   mixer if mixer.enabled else None, ema, clip_grad=run.clip_grad)


def prepare_to_run(learner, run):
    """Compiles the model in place (the saved state dict keeps its names) and wraps it in DDP for several ranks
    (in place on `learner`)."""
    compiled = compile_model(learner.model, run.compile, cuda_graphs=run.cuda_graphs)
    assert compiled is learner.model, "compile_model compiles in place and returns the module it was given"
    learner.cuda_graphs = run.cuda_graphs
    learner.train_model = learner.model
    if run.world.size > 1:
        device = run.world.device
        learner.train_model = DistributedDataParallel(learner.model,
                                                      device_ids=[device] if device.type == "cuda" else None,
                                                      gradient_as_bucket_view=True)  # no gradient copy into buckets
