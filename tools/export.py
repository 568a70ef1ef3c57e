#!/usr/bin/env python
"""A checkpoint as a self-contained inference graph, checked against the eager model in the same command.

    python tools/export.py --checkpoint CKPT --format onnx|torchscript|exported-program --out FILE

The graph is the model in eval mode with CBAM on plain PyTorch ops (cbam_impl "torch": no Triton kernel in
the graph, so it runs wherever its runtime does), input `images` (N, 3, S, S) float32 normalised as the loaders
deliver them (pipeline/normalize.py) with a dynamic batch dimension N, output `logits` (N, classes). S is the
checkpoint's val image size unless --image-size is given (the global average pool takes any S >= 32 in eager
mode; the graph is checked at S).

- onnx: torch.onnx.export's TorchScript-based exporter (opset --opset), checked with onnxruntime.
- torchscript: torch.jit.trace, checked by torch.jit.load.
- exported-program: torch.export with a dynamic batch dimension, saved with torch.export.save (a .pt2 file),
  checked by torch.export.load.
The check runs the saved file on a batch of another size than the one traced and compares with the eager
model: the largest difference is printed; beyond --atol (relative to the logits' scale) the command exits 1.
"""
import argparse
import importlib.util
import os
import sys
import tempfile
import warnings

import torch

from pipeline.augment import image_size_problem
from training import load
from training.config import OneLineParser, UsageError
from training.errors import run_reporting_usage_errors
from training.output_dir import refuse_run_file

FORMATS = ("onnx", "torchscript", "exported-program")
TRACE_BATCH, CHECK_BATCH = 2, 3  # the check uses another batch size than the export, so N is proven dynamic


def export_onnx(model, example, out, opset):
    # The TorchScript-based exporter: torch's newer torch.export-based one needs the onnxscript package too.
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
    torch.onnx.export(model, (example,), out, dynamo=False, opset_version=opset, input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})

    def onnx_logits(images):
        import onnxruntime
        session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
    return onnx_logits


def export_torchscript(model, example, out, opset):
    warnings.filterwarnings("ignore", ".*torch.jit.*is deprecated", FutureWarning)  # still what C++ users load
    torch.jit.trace(model, example).save(out)
    return lambda images: torch.jit.load(out)(images)


def export_program(model, example, out, opset):
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), out)
    return lambda images: torch.export.load(out).module()(images)


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript, "exported-program": export_program}


def export(model, fmt, out, image_size, opset=17):
    """Writes `model` to `out`; returns (the largest |saved - eager| logit difference on a batch of CHECK_BATCH,
    the largest |eager| logit)."""
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(TRACE_BATCH, 3, image_size, image_size, generator=generator)
    check = torch.randn(CHECK_BATCH, 3, image_size, image_size, generator=generator)
    with torch.no_grad():
        run_saved = EXPORTERS[fmt](model, example, out, opset)
        expected = model(check)
        got = run_saved(check)
    if got.shape != expected.shape:
        raise RuntimeError(f"{out}: output shape {tuple(got.shape)} for a batch of {CHECK_BATCH}, eager "
                           f"{tuple(expected.shape)}")
    return float((got - expected).abs().max()), float(expected.abs().max())


def writable_temporary(out):
    """A new temporary file beside `out` (same suffix: the exporters and loaders go by it) that the export writes
    before it is renamed to `out`; UsageError naming the folder when it cannot be written (read-only, full)."""
    folder, name = os.path.split(os.path.abspath(out))
    root, suffix = os.path.splitext(name)
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{root}.", suffix=f".tmp{suffix}")
        os.close(handle)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write in {folder}: {exc.strerror or exc}") from None
    return temporary


def parse_args(argv):
    p = OneLineParser(prog="export.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .pth.tar of train.py, or a state dict of the authors' code")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--image-size", type=int, default=None, help="input side S in pixels (default: the checkpoint's)")
    p.add_argument("--eval-weights", default="raw", choices=["raw", "ema"],
                   help="the trained weights or their moving average (--ema-decay)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest allowed |saved - eager| logit difference, times max(1, largest |logit|)")
    args = p.parse_args(argv)
    if args.image_size is not None and image_size_problem("--image-size", args.image_size):
        p.error(image_size_problem("--image-size", args.image_size))
    return args


def export_checkpoint(args):
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"checkpoint not found: {args.checkpoint}")
    if args.format == "exported-program" and not args.out.endswith(".pt2"):
        raise UsageError(f"--out {args.out}: an exported program is a .pt2 archive (torch.export.save); name it .pt2")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise UsageError(f"--out folder does not exist: {folder}")
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a folder: name the file to write")
    refuse_run_file(args.out, "--out")
    temporary = writable_temporary(args.out)
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if args.format == "onnx" and missing:
        raise UsageError(f"--format onnx needs {' and '.join(missing)}: pip install -e '.[onnx]'")
    trained = load.read(args.checkpoint)
    model = trained.build("torch", args.eval_weights)
    size = args.image_size or trained.image_size
    try:
        difference, scale = export(model, args.format, temporary, size, args.opset)
        os.replace(temporary, args.out)  # a complete, checked file or none: never a torn one
    except OSError as exc:  # a full disk while writing, or the rename refused
        raise UsageError(f"--out {args.out}: cannot write: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    ok = difference <= args.atol * max(1.0, scale)
    print(f"{args.out}: {args.format}, {trained.arch}, {trained.num_classes} classes, input (N, 3, {size}, {size}); "
          f"batch of {CHECK_BATCH} vs eager: max |difference| {difference:.2e} (logits up to {scale:.2f})"
          f"{'' if ok else ', above --atol'}")
    return 0 if ok else 1


def main(argv=None):
    return run_reporting_usage_errors("export.py", lambda: export_checkpoint(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
