"""torch.compile for training: what gets compiled, and a compile cache that persists between runs.

--compile blocks (the default on CUDA) compiles each residual block (MobileNet: each depthwise separable block;
model/networks.py BLOCKS) on its own (torch.nn.Module.compile, in place, so state-dict names do not change).
Within a stage every block but the first has the same structure and shapes, so dynamo reuses one compiled graph
for all of them: ResNet-50 compiles 8 distinct blocks (4 stages x first/rest) instead of one graph of 16 blocks,
and ResNet-101 still 8 instead of 33 ("regional compilation", PyTorch tutorial "Reducing torch.compile cold start
compilation time with regional compilation"). The stem and the classifier stay eager: one convolution, one
pooling, one linear layer. --compile model compiles the whole model as
one graph (cross-block fusion, longest compile). Shapes are static: every block shape gets its own kernels, as
train.py's fixed batch and image size allow.

The cache: inductor's compiled graphs and Triton's binaries go to one folder (TORCHINDUCTOR_CACHE_DIR and
TRITON_CACHE_DIR), by default the user's cache folder, so a second run of the same configuration skips code
generation.
"""
import os

import torch

from model.cbam import resolve_impl
from model.networks import BLOCKS
from model.triton_env import triton_unavailable_reason
from shards.files import user_cache_dir

COMPILE_CHOICES = ("auto", "off", "blocks", "model")
CUDA_GRAPH_CHOICES = ("auto", "on", "off")
# --cuda-graphs auto: whether CUDA graphs win has not been measured on a GPU yet (BENCHMARKS.md, "CBAM the compiler
# can see"); benchmarks/model_speed.py's +graph modes measure what they can gain.
CUDA_GRAPHS_BY_DEFAULT = False
# Distinct compiled variants one code object may hold: 8 block kinds x train/eval x a second image size for val,
# with room to spare (dynamo's default of 8 would send the rest to eager, with a warning).
RECOMPILE_LIMIT = 64


def resolve_compile(choice, device, att_type="none", cbam_choice="auto"):
    """--compile auto -> "blocks" on CUDA when Triton (inductor's GPU code generator) imports, else "off" (a CPU
    compile of a ResNet-50 takes minutes on few cores and gains little there). With --cbam-impl triton it is "off":
    the opaque fused op ran slower compiled than eager on an H100 (BENCHMARKS.md, GPU run of 2026-11-27). An
    explicit choice is always kept."""
    if choice != "auto":
        return choice
    device = torch.device(device)
    if device.type != "cuda" or triton_unavailable_reason(device) or (att_type == "CBAM" and cbam_choice == "triton"):
        return "off"
    return "blocks"


def resolve_cbam(choice, device, compile_how):
    """--cbam-impl auto -> the CBAM implementation measured fastest for how the model runs: compiled on CUDA,
    "torch" (inductor fuses it with BatchNorm folded in, model/cbam.py folded_block_tail; compiled plain-PyTorch
    gates beat the fused Triton op eager on an H100: BENCHMARKS.md, "CBAM the compiler can see");
    eager on CUDA, "triton"; elsewhere "torch". RuntimeError when an explicit choice cannot run on `device`."""
    if choice == "auto" and torch.device(device).type == "cuda" and compile_how != "off":
        return "torch"
    return resolve_impl(choice, device)


def resolve_cuda_graphs(choice, device, compile_how, accum_steps=1):
    """--cuda-graphs -> True or False. "on" needs a compiled model on CUDA (inductor's CUDA graph trees), and one
    backward per optimizer step: accumulated gradients would live in graph memory that the next replay
    overwrites. ValueError naming the flag otherwise."""
    if choice == "auto":
        return CUDA_GRAPHS_BY_DEFAULT and torch.device(device).type == "cuda" and compile_how != "off" \
            and accum_steps == 1
    if choice == "off":
        return False
    if torch.device(device).type != "cuda":
        raise ValueError(f"--cuda-graphs on needs a CUDA device, this run is on {torch.device(device).type}")
    if compile_how == "off":
        raise ValueError("--cuda-graphs on replays the compiled model: it needs --compile blocks or model")
    if accum_steps != 1:
        raise ValueError(f"--cuda-graphs on needs --accum-steps 1 (got {accum_steps}): accumulated gradients "
                         "would live in memory that each graph replay overwrites")
    return True


def default_cache_dir():
    return user_cache_dir("torch-compile")


def use_cache_dir(path):
    """Points inductor's and Triton's on-disk caches at `path` (created if needed). Must run before the first
    compilation of the process. Raises OSError naming the folder when it cannot be created."""
    try:
        os.makedirs(os.path.join(path, "triton"), exist_ok=True)
    except OSError as exc:
        raise OSError(f"--compile-cache folder cannot be created: {path}: {exc.strerror}") from exc
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    os.environ["TRITON_CACHE_DIR"] = os.path.join(path, "triton")
    torch._inductor.config.fx_graph_cache = True  # on by default in recent torch; stated, not assumed


def compile_model(model, how, backend="inductor", cuda_graphs=False):
    """Compiles `model` in place as `how` says ("off", "blocks" or "model") and returns it; with `cuda_graphs`,
    in inductor's reduce-overhead mode (each compiled graph recorded once in a CUDA graph, then replayed)."""
    if how == "off":
        return model
    _raise_recompile_limit(RECOMPILE_LIMIT)
    options = dict(dynamic=False, backend=backend, mode="reduce-overhead" if cuda_graphs else None)
    if how == "model":
        model.compile(**options)
    elif how == "blocks":
        for module in model.modules():
            if isinstance(module, BLOCKS):
                module.compile(**options)
    else:
        raise ValueError(f"--compile must be one of {', '.join(COMPILE_CHOICES)}, got {how!r}")
    return model


def _raise_recompile_limit(limit):
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.7
    setattr(config, name, max(getattr(config, name), limit))


def cache_counters():
    """The compile caches' hits and misses so far in this process ({} where torch does not count them)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    inductor, aot = counters.get("inductor", {}), counters.get("aot_autograd", {})
    # hits/misses: inductor graphs (a forward and a backward per compiled block); autograd_hits: AOTAutograd's
    # cache, which holds both of a block and is looked up first.
    return {"hits": int(inductor.get("fxgraph_cache_hit", 0)), "misses": int(inductor.get("fxgraph_cache_miss", 0)),
            "autograd_hits": int(aot.get("autograd_cache_hit", 0))}
