"""Train-step speed of each network for each attention variant and CBAM implementation; with --blocks, the speed
of one residual block tail at each ResNet-50 stage, counted in memory passes.

Model benchmark (default): train steps (forward, backward, SGD step) of each network of --networks (default:
ResNet-`depth`; model/networks.py tags such as resnext50_32x4d, wrn18_1.5, mobilenet_0.7, or `cbam-paper` for the
CBAM paper's ResNeXt, WideResNet and MobileNet rows) on a fixed random batch, channels_last, bf16 autocast on a
GPU and fp32 on the CPU, eager and torch.compile. Variants: none, SE, CBAM (implementation auto; its row names
what auto chose), CBAM-triton, CBAM-torch and CBAM-ref (the authors' formulation), the implementations of
model/cbam.py. For each network, in each mode, `none` runs first and every later row gives its time ratio to it.
Default variants: none, CBAM-triton (on CUDA, when the Triton kernels run), CBAM-torch, CBAM-ref. SE is left out of
the default (add it with --variants): the fused-CBAM work does not change it, and every further case costs a
compilation in the 4 minutes that a cold-cache default run on one H100 is meant to take.

Block benchmark (--blocks): forward + backward of one block tail with its last BatchNorm, relu(bn(z) + identity)
(`none`) or relu(attention(bn(z)) + identity), with gradients for z, identity and the parameters, at ResNet-50's stage
shapes (channels x side) 256x56, 512x28, 1024x14 and 2048x7, batch 256 on a GPU (bf16 activations, autocast as
in training) and 8 on the CPU (fp32), channels_last. Each stage first times a device copy of one such tensor
(one read + one write = 2 passes); every tail is reported in ms and in passes = time / (copy time / 2), the
number of single reads or writes of the gate's input tensor its time is worth (the unit of BENCHMARKS.md's
bytes-moved models).

Every case is warmed up first (torch.compile compiles here; the warm-up seconds print when it ends), then timed:
--repeats loops of --steps calls between device synchronizations, median per call reported. Each row prints the
moment it is measured, so a run stopped at a time limit still shows what it measured; the whole table and a JSON
line follow. --profile runs torch.profiler over 3 more calls right after each case is timed (never inside the
timed loops) and prints its top 15 kernels by self CUDA time (GPU) or ops by self CPU time (CPU).

    .venv/bin/python benchmarks/model_speed.py [--depth 50 | --networks resnext50_32x4d,mobilenet_0.7,...]
        [--variants none,SE,CBAM,CBAM-torch] [--modes eager] [--time-limit 240] [--profile] [--record]
    .venv/bin/python benchmarks/model_speed.py --blocks [--stage-shapes 256x56,2048x7] [--batch-size 256] [--profile]
"""
import argparse
import json
import operator
import sys
import time

import torch
from torch.autograd import DeviceType

from benchmarks.common import markdown_row, markdown_table, median_time, record
from model import Network, build_network, parameter_count
from model.cbam import CBAM
from model.resnet import residual_tail
from model.se import SqueezeExcite
from training.compile import compile_model, resolve_cbam
from training.config import OneLineParser, UsageError

# variant -> (att_type, CBAM implementation of model/cbam.py)
VARIANTS = {"none": ("none", None), "SE": ("SE", None), "CBAM": ("CBAM", "auto"),
            "CBAM-triton": ("CBAM", "triton"), "CBAM-torch": ("CBAM", "torch"), "CBAM-ref": ("CBAM", "reference")}
MODES = ("eager", "compiled", "eager+graph", "compiled+graph")
# Where ResNet-50's block tails run at 224 px: (channels, side) of conv2_x..conv5_x (He et al. 2016, table 1).
RESNET50_STAGES = ((256, 56), (512, 28), (1024, 14), (2048, 7))
# --networks cbam-paper: the networks of the CBAM paper's Tables 4 and 5 beyond ResNet.
CBAM_PAPER_NETWORKS = ("resnext50_32x4d", "resnext101_32x4d", "wrn18_1.5", "wrn18_2.0", "mobilenet_0.7")
PROFILE_STEPS = 3  # enough to see every kernel of a step; the times that count come from the timed loops
PROFILE_TOP = 15


def stage_shapes(text):
    """--stage-shapes 'CxS,CxS' -> ((C, S), ...)."""
    try:
        shapes = tuple(tuple(int(n) for n in item.split("x")) for item in text.split(","))
    except ValueError:
        shapes = ()
    if not shapes or any(len(s) != 2 or s[0] < 16 or s[1] < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected CHANNELSxSIDE[,...] with channels >= 16 (the gates reduce "
                                         f"channels 16-fold) and side >= 1, got {text!r}")
    return shapes


def default_variants(device):
    """none and the CBAM implementations that run on `device` (why SE is not here: the module docstring)."""
    if device.type == "cuda":
        try:
            resolve_cbam("triton", device, "off")
            return ["none", "CBAM-triton", "CBAM-torch", "CBAM-ref"]
        except RuntimeError as exc:
            print(f"note: CBAM-triton left out of the default variants: {exc}", flush=True)
    return ["none", "CBAM-torch", "CBAM-ref"]


def parse_args(argv):
    """Flags, checked and resolved for this machine; one line on stderr and exit status 2 when invalid."""
    cuda = torch.cuda.is_available()
    p = OneLineParser(prog="model_speed.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", action="store_true",
                   help="time block tails per ResNet-50 stage (forward + backward) instead of whole train steps")
    p.add_argument("--depth", type=int, default=50, choices=[18, 34, 50, 101],
                   help="ResNet depth (model benchmark without --networks; default: 50)")
    p.add_argument("--networks", default=None, metavar="TAG,...",
                   help="model benchmark: comma list of networks (resnet50, resnext101_32x4d, wrn18_2.0, "
                        f"mobilenet_0.7, ...), or cbam-paper = {','.join(CBAM_PAPER_NETWORKS)} (default: "
                        "ResNet---depth)")
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels (model benchmark; default: 224)")
    p.add_argument("--stage-shapes", type=stage_shapes, default=RESNET50_STAGES, metavar="CxS,...",
                   help="--blocks: comma list of channels x side in pixels (default: ResNet-50's four stages)")
    p.add_argument("--batch-size", type=int, default=256 if cuda else 8,
                   help="images per step, or the block tensors' batch (default: 256 GPU, 8 CPU)")
    p.add_argument("--variants", default=None,
                   help=f"comma list from {','.join(VARIANTS)} (default: none,CBAM-triton,CBAM-torch,CBAM-ref on "
                        "CUDA when the Triton kernels run there, else none,CBAM-torch,CBAM-ref)")
    p.add_argument("--modes", default="eager,compiled",
                   help=f"comma list from {','.join(MODES)}; +graph = the same call captured once in a CUDA graph "
                        "and replayed (no host work, no launch overhead: what CUDA graphs could gain; CUDA only) "
                        "(default: eager,compiled)")
    p.add_argument("--compile-how", default="blocks", choices=("blocks", "model"),
                   help="compiled modes of the model benchmark: each residual block (train.py's --compile blocks, "
                        "the default) or the whole model as one graph")
    p.add_argument("--repeats", type=int, default=3, help="timed loops per case, the median reported (default: 3)")
    p.add_argument("--steps", type=int, default=20 if cuda else 2,
                   help="calls per timed loop (default: 20 GPU, 2 CPU)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed calls per case first, compilation included (default: 3)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="once the run has taken this many seconds, the cases not yet started are skipped")
    p.add_argument("--profile", action="store_true",
                   help=f"after each case is timed, profile {PROFILE_STEPS} more calls and print the top "
                        f"{PROFILE_TOP} kernels (GPU) or ops (CPU) by self time")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args(argv)
    args.device = torch.device("cuda" if cuda else "cpu")
    tags = CBAM_PAPER_NETWORKS if args.networks == "cbam-paper" else (args.networks or "").split(",")
    try:
        args.networks = [Network.from_tag(tag) for tag in tags] if args.networks else [Network(depth=args.depth)]
    except ValueError as exc:
        p.error(f"--networks: {exc}")
    args.amp_dtype = torch.bfloat16 if cuda else None  # what train.py's --amp auto picks
    args.modes = args.modes.split(",")
    args.variants = args.variants.split(",") if args.variants else default_variants(args.device)
    bad = [v for v in args.variants if v not in VARIANTS] + [m for m in args.modes if m not in MODES]
    if bad:
        p.error(f"unknown variant or mode: {', '.join(bad)}")
    for variant in args.variants:
        try:
            cbam_impl(variant, args.device, "off")
        except RuntimeError as exc:  # e.g. CBAM-triton on a CPU: refused before anything is measured
            p.error(f"variant {variant}: {exc}")
    graphed = [m for m in args.modes if m.endswith("+graph")]
    if graphed and not cuda:
        p.error(f"modes {', '.join(graphed)} capture CUDA graphs and need a CUDA GPU")
    for flag, lowest in (("batch_size", 1), ("repeats", 1), ("steps", 1), ("warmup", 0)):
        if getattr(args, flag) < lowest:
            p.error(f"--{flag.replace('_', '-')} must be >= {lowest}, got {getattr(args, flag)}")
    # none first in every mode (and once): the rows after it are ratios to it.
    args.variants = sorted(dict.fromkeys(args.variants), key=lambda v: v != "none")
    return args


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compiled(module, mode, how="model"):
    """module itself (eager modes) or compiled afresh, in place, as training/compile.py does (`how`: "blocks" or
    "model"). Each case is compiled after a reset of dynamo's caches, so it never reuses another case's code nor
    runs into the recompile limit (a case is never called again once timed); static shapes, as train.py's fixed
    batches get."""
    if not mode.startswith("compiled"):
        return module
    torch.compiler.reset()
    return compile_model(module, how)


def cuda_graph_replay(fn, device, warmup=3):
    """fn captured once in a CUDA graph after `warmup` calls on a side stream (autotuning and cuDNN's algorithm
    search happen there, outside the capture): the graph's replay, which reruns every kernel of fn with no host
    work. Raises RuntimeError naming the reason when fn cannot be captured."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:  # capture refuses host syncs, CPU tensors, unsupported ops: report and skip the case
        reason = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise RuntimeError(f"CUDA graph capture failed: {type(exc).__name__}: {reason}") from exc
    return graph.replay


def out_of_time(args, name):
    """True, after a printed note, once the run has taken --time-limit seconds: `name` is skipped."""
    if args.time_limit is None or time.perf_counter() - args.start < args.time_limit:
        return False
    print(f"skipped {name}: --time-limit {args.time_limit:g} s used up", flush=True)
    return True


def measure(name, fn, args, mode="eager"):
    """Warm-up (its time printed when it ends; a +graph mode captures fn in a CUDA graph there and times its
    replay), then --repeats loops of --steps calls between device synchronizations: {seconds: median per call,
    spread: (min, max) per call, warmup_s, host_s: median host time to issue one call, fn: what was timed}."""
    start = time.perf_counter()
    for _ in range(args.warmup):
        fn()
    if mode.endswith("+graph"):
        fn = cuda_graph_replay(fn, args.device)
    synchronize(args.device)
    warmup_s = time.perf_counter() - start
    print(f"warm-up {name}: {warmup_s:.1f} s for {args.warmup} calls", flush=True)

    issue = []

    def timed_loop():
        begin = time.perf_counter()
        for _ in range(args.steps):
            fn()
        issue.append(time.perf_counter() - begin)
        synchronize(args.device)
    median, samples = median_time(timed_loop, args.repeats)
    return {"seconds": median / args.steps, "spread": (min(samples) / args.steps, max(samples) / args.steps),
            "warmup_s": warmup_s, "host_s": sorted(issue)[len(issue) // 2] / args.steps, "fn": fn}


def profile(name, fn, device, seconds_per_call):
    """Prints the top kernels (GPU: by self CUDA time) or ops (CPU: by self CPU time) of PROFILE_STEPS calls and,
    on a GPU, the kernels per call and how busy they kept the GPU: kernel time / the timed wall time per call."""
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(PROFILE_STEPS):
            fn()
        synchronize(device)
    events = prof.key_averages()
    if cuda:  # the kernels only: the CPU ops that launched them carry the same device time again
        events = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    self_us = operator.attrgetter("self_device_time_total" if cuda else "self_cpu_time_total")
    total = sum(map(self_us, events)) or 1
    top = sorted(events, key=self_us, reverse=True)[:PROFILE_TOP]
    clock, what = ("CUDA", "kernel") if cuda else ("CPU", "op")
    rows = [(e.key[:100], e.count, f"{self_us(e) / 1000 / PROFILE_STEPS:.3f}", f"{100 * self_us(e) / total:.1f}%")
            for e in top]
    print(f"profile {name}: top {len(top)} {what}s by self {clock} time over {PROFILE_STEPS} calls", flush=True)
    if cuda:
        kernel_ms = total / 1000 / PROFILE_STEPS
        launches = sum(e.count for e in events) / PROFILE_STEPS
        print(f"profile {name}: {launches:.0f} kernels per call, {kernel_ms:.2f} ms of kernel time per call = GPU "
              f"busy {100 * kernel_ms / (seconds_per_call * 1000):.0f}% of the timed {seconds_per_call * 1000:.2f} ms",
              flush=True)
    print(markdown_table((what, "calls", f"self {clock} ms per call", "share"), rows), flush=True)


def compile_how(mode, args):
    return args.compile_how if mode.startswith("compiled") else "off"


def variant_label(variant, device, how="off"):
    """The variant's name; CBAM's says what auto resolved to (train.py's choice for the same compile setting)."""
    if variant == "CBAM":
        return f"CBAM (auto: {resolve_cbam('auto', device, how)})"
    return variant


def cbam_impl(variant, device, how="off"):
    """The CBAM implementation the variant runs on `device` compiled `how` (None without CBAM)."""
    att_type, impl = VARIANTS[variant]
    return resolve_cbam(impl, device, how) if att_type == "CBAM" else None


def make_train_step(network, variant, mode, args):
    """(One train step (forward, backward, SGD step) of `network` with `variant` on a fixed random batch, the
    model's parameter count)."""
    torch.manual_seed(0)
    att_type = VARIANTS[variant][0]
    how = compile_how(mode, args)
    model = build_network(network, att_type, cbam_impl=cbam_impl(variant, args.device, how) or "auto")
    model = model.to(args.device, memory_format=torch.channels_last)
    net = compiled(model, mode, args.compile_how)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    images = torch.randn(shape, device=args.device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch_size,), device=args.device)

    def step():
        with torch.autocast(args.device.type, dtype=args.amp_dtype, enabled=args.amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step, parameter_count(model)


def measure_models(args):
    """Times every (network, mode, variant) train step, printing each row as it is measured; returns the table."""
    header = ("model", "parameters", "mode", "ms/step (median)", "images/s", "time / none", "host ms/step",
              "warm-up s")
    print(markdown_table(header, []), flush=True)
    rows, results, none_seconds = [], [], {}
    cases = [(network, mode, variant) for network in args.networks for mode in args.modes for variant in args.variants]
    for network, mode, variant in cases:
        how = compile_how(mode, args)
        name = f"{network.name} {variant_label(variant, args.device, how)}"
        if out_of_time(args, f"{name} ({mode})"):
            continue
        step, parameters = make_train_step(network, variant, mode, args)
        try:
            timing = measure(f"{name} ({mode})", step, args, mode)
        except RuntimeError as exc:
            print(f"skipped {name} ({mode}): {exc}", flush=True)
            continue
        seconds = timing["seconds"]
        if variant == "none":
            none_seconds[network, mode] = seconds
        ratio = seconds / none_seconds[network, mode] if (network, mode) in none_seconds else None
        rows.append((name, f"{parameters:,}", mode, f"{seconds * 1000:.1f}", f"{args.batch_size / seconds:.1f}",
                     f"{ratio:.3f}x" if ratio else "-", f"{timing['host_s'] * 1000:.1f}",
                     f"{timing['warmup_s']:.1f}"))
        print(markdown_row(rows[-1]), flush=True)
        results.append({"network": network.tag, "parameters": parameters, "variant": variant,
                        "cbam_impl": cbam_impl(variant, args.device, how), "mode": mode,
                        "ms_per_step": round(seconds * 1000, 2),
                        "images_per_sec": round(args.batch_size / seconds, 2),
                        "time_ratio_vs_none": ratio and round(ratio, 3),
                        "spread_ms": [round(s * 1000, 2) for s in timing["spread"]],
                        "host_ms_per_step": round(timing["host_s"] * 1000, 2),
                        "warmup_s": round(timing["warmup_s"], 1)})
        if args.profile:
            profile(f"{name} ({mode})", timing["fn"], args.device, seconds)
    table = markdown_table(header, rows)
    print(table)
    print(json.dumps({"benchmark": "model", "device": str(args.device), "amp": "bf16" if args.amp_dtype else "off",
                      "batch_size": args.batch_size, "image_size": args.image_size, "repeats": args.repeats,
                      "steps": args.steps, "warmup": args.warmup, "channels_last": True, "results": results}))
    return (f"{', '.join(network.name for network in args.networks)} train step, batch {args.batch_size}, "
            f"{args.image_size} px", table,
            f"Median of {args.repeats} repeats of {args.steps} steps after {args.warmup} warm-up steps, each case "
            "in turn; time / none against `none` of the same network and mode; host ms/step = the time to issue a "
            f"step's work (compiled modes: --compile {args.compile_how}).")


def block_tensor(channels, side, args):
    """A random (batch, channels, side, side) activation, channels_last, in the dtype training feeds the tail."""
    shape = (args.batch_size, channels, side, side)
    dtype = args.amp_dtype or torch.float32
    return torch.randn(shape, device=args.device, dtype=dtype).contiguous(memory_format=torch.channels_last)


def make_copy(channels, side, args):
    """dst.copy_(src) of one activation (one read + one write: the calibration of a stage), and the bytes of one
    pass over it."""
    src = block_tensor(channels, side, args)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), src.numel() * src.element_size()


class BlockTail(torch.nn.Module):
    """The end of a residual block: relu(attention(bn(z)) + identity), as model/resnet.py's residual_tail runs it
    (the attention module gets the BatchNorm too, so that the compiled CBAM can fold it in)."""

    def __init__(self, channels, attention=None):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(channels)
        self.attn = attention

    def forward(self, z, identity):
        return residual_tail(self.attn, self.bn, z, identity)


def make_tail_step(variant, channels, side, mode, args):
    """Forward + backward of one block tail (its BatchNorm included) with a random grad_output.
    torch.autograd.grad returns the gradients of z, identity and the parameters without accumulating them, so
    every call moves the same bytes."""
    torch.manual_seed(0)
    att_type = VARIANTS[variant][0]
    attention = None
    if att_type == "SE":
        attention = SqueezeExcite(channels)
    elif att_type == "CBAM":
        attention = CBAM(channels, impl=cbam_impl(variant, args.device, compile_how(mode, args)))
    tail = BlockTail(channels, attention).to(args.device, memory_format=torch.channels_last)
    parameters = list(tail.parameters())
    net = compiled(tail, mode)
    z, identity, grad_out = (block_tensor(channels, side, args) for _ in range(3))
    inputs = (z.requires_grad_(), identity.requires_grad_(), *parameters)

    def step():
        with torch.autocast(args.device.type, dtype=args.amp_dtype, enabled=args.amp_dtype is not None):
            out = net(z, identity)
        torch.autograd.grad(out, inputs, grad_out)
    return step


def measure_blocks(args):
    """Per stage: the copy calibration, then every (mode, variant) block tail, each row printed as it is
    measured; returns the table."""
    header = ("stage: channels x side", "case", "mode", "ms (median)", "passes", "warm-up s")
    print(markdown_table(header, []), flush=True)
    rows, results = [], []
    for channels, side in args.stage_shapes:
        stage = f"{channels} x {side}x{side}"
        if out_of_time(args, f"stage {stage}"):
            continue
        copy, bytes_per_pass = make_copy(channels, side, args)
        timing = measure(f"stage {stage}: copy", copy, args)
        copy_seconds = timing["seconds"]
        rows.append((stage, f"copy ({2 * bytes_per_pass / copy_seconds / 1e9:.0f} GB/s)", "-",
                     f"{copy_seconds * 1000:.3f}", "2.00", f"{timing['warmup_s']:.1f}"))
        print(markdown_row(rows[-1]), flush=True)
        results.append(block_result(channels, side, "copy", None, None, timing, copy_seconds))
        if args.profile:
            profile(f"stage {stage}: copy", copy, args.device, copy_seconds)
        for mode in args.modes:
            for variant in args.variants:
                how = "model" if mode.startswith("compiled") else "off"
                label = variant_label(variant, args.device, how)
                name = f"stage {stage}: {label} ({mode})"
                if out_of_time(args, name):
                    continue
                step = make_tail_step(variant, channels, side, mode, args)
                try:
                    timing = measure(name, step, args, mode)
                except RuntimeError as exc:
                    print(f"skipped {name}: {exc}", flush=True)
                    continue
                results.append(block_result(channels, side, variant, cbam_impl(variant, args.device, how), mode,
                                            timing, copy_seconds))
                rows.append((stage, f"{label} tail", mode,
                             f"{timing['seconds'] * 1000:.3f}", f"{results[-1]['pass_equivalents']:.2f}",
                             f"{timing['warmup_s']:.1f}"))
                print(markdown_row(rows[-1]), flush=True)
                if args.profile:
                    profile(name, timing["fn"], args.device, timing["seconds"])
    table = markdown_table(header, rows)
    print(table)
    print(json.dumps({"benchmark": "model-blocks", "device": str(args.device),
                      "dtype": "bf16" if args.amp_dtype else "fp32", "batch_size": args.batch_size,
                      "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup, "channels_last": True,
                      "results": results}))
    return (f"block tails forward + backward per stage, batch {args.batch_size}", table,
            f"Median of {args.repeats} repeats of {args.steps} calls after {args.warmup} warm-up calls. passes = "
            "time / (copy time / 2): single reads or writes of the gate's input tensor the time is worth.")


def block_result(channels, side, variant, impl, mode, timing, copy_seconds):
    """One JSON row of the block benchmark."""
    return {"stage": [channels, side], "variant": variant, "cbam_impl": impl, "mode": mode,
            "ms": round(timing["seconds"] * 1000, 4), "copy_ms": round(copy_seconds * 1000, 4),
            "pass_equivalents": round(timing["seconds"] / (copy_seconds / 2), 3),
            "spread_ms": [round(s * 1000, 4) for s in timing["spread"]], "warmup_s": round(timing["warmup_s"], 1)}


def main(argv=None):
    start = time.perf_counter()
    try:
        args = parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(f"model_speed.py: error: {exc}\n")
        return 2
    args.start = start
    torch.backends.cudnn.benchmark = args.device.type == "cuda"  # as train.py: fixed shapes, fastest algorithms
    what, table, note = measure_blocks(args) if args.blocks else measure_models(args)
    if args.record:
        command = " ".join(argv if argv is not None else sys.argv[1:])
        record(f"benchmarks/model_speed.py: {what}, channels_last, {'bf16' if args.amp_dtype else 'fp32'} on "
               f"{args.device.type}", table, f"{note} Command: `.venv/bin/python benchmarks/model_speed.py {command}`")


if __name__ == "__main__":
    sys.exit(main())
