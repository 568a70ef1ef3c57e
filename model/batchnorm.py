"""BatchNorm's running statistics, updated from batch statistics computed elsewhere (the fused CBAM op and the
compiled CBAM tail compute them inside their own kernels)."""
import torch


def update_running_stats(bn, mean, var, count):
    """nn.BatchNorm2d's update of `bn` from a batch's per-channel `mean` and biased `var` over `count` values:
    an exponential average with bn.momentum (cumulative when None), the variance made unbiased."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked
        # lerp_: (1 - momentum) * running + momentum * batch in one kernel per statistic.
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_((var * (count / (count - 1))).to(bn.running_var.dtype), momentum)
