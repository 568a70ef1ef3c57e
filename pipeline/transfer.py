"""Host-to-device copies that neither the host nor the training stream waits for."""
import torch


class DeviceCopier:
    """Copies CPU tensors to `device`.

    On CUDA a plain .to(device) from pageable memory (shared-memory batch slots, numpy label arrays) is
    synchronous: the CUDA runtime first waits for the training stream to drain, so the host would stop at every
    batch until the GPU had finished all queued work, and the queue would run dry. Here each tensor goes through
    pinned memory (torch's caching host allocator keeps a pinned block until its copy has finished) and crosses on
    the copier's own stream; the training stream waits for that stream on the GPU, not on the host. The source may
    be reused as soon as copy() returns (its bytes are in pinned memory by then).
    Other devices: a blocking .to(device), after which the source may be reused too."""

    def __init__(self, device):
        self.device = torch.device(device)
        self._stream = None

    def copy(self, tensors):
        """The tensors on the device, in order."""
        if self.device.type != "cuda":
            return [t.to(self.device) for t in tensors]
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        training_stream = torch.cuda.current_stream(self.device)
        pinned = [t.pin_memory() for t in tensors]
        with torch.cuda.stream(self._stream):
            on_device = [t.to(self.device, non_blocking=True) for t in pinned]
        training_stream.wait_stream(self._stream)
        for t in on_device:  # allocated on the copy stream, used and freed on the training stream
            t.record_stream(training_stream)
        return on_device
