"""An exponential moving average of the model's weights, kept on the device (--ema-decay).

After every optimizer step each averaged parameter moves towards the trained one: ema = decay * ema + (1 - decay)
* weight, one fused multi-tensor update (torch.optim.swa_utils.get_ema_multi_avg_fn) on the device, with no host
synchronisation. BatchNorm's running statistics are not averaged (they already are running averages): they are
copied from the trained model whenever the average is evaluated or saved.
"""
import copy

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightAverage:
    """The averaged copy of `model` (a plain, uncompiled module: evaluated eagerly or compiled apart)."""

    def __init__(self, model, decay):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._source = model
        self._update = get_ema_multi_avg_fn(decay)
        self._averaged = [p for p in self.model.parameters()]
        self._trained = [p for p in model.parameters()]

    @torch.no_grad()
    def update(self):
        """One step of the average towards the trained weights (call after each optimizer step)."""
        self._update(self._averaged, [p.detach() for p in self._trained], None)

    @torch.no_grad()
    def restart(self):
        """The average becomes the trained weights as they are now (after a checkpoint without one loaded)."""
        for averaged, trained in zip(self.model.parameters(), self._trained):
            averaged.copy_(trained)
        self.sync_buffers()

    @torch.no_grad()
    def sync_buffers(self):
        """Copies the trained model's buffers (BatchNorm running statistics) into the average."""
        for averaged, trained in zip(self.model.buffers(), self._source.buffers()):
            averaged.copy_(trained)

    def state_dict(self):
        self.sync_buffers()
        return self.model.state_dict()

    def load_state_dict(self, state):
        self.model.load_state_dict(state)
