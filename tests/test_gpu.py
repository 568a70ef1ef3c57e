"""Checks that need an NVIDIA GPU (skipped without one; `bash benchmarks/gpu_suite.sh .whl RESULTS check` runs
them on a GPU machine): the compiled Triton kernels against the authors' formulation, the torch backend's
side-stream copies, fp16 with a gradient scaler and bf16 end to end."""
import json
import os
import subprocess
import sys

import pytest
import torch

from model import build_model
from tests.cbam_cases import compare_with_reference, fused_tail

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [
    dict(shape=(2, 150, 9, 11)),
    dict(shape=(3, 256, 56, 56)),
    dict(shape=(2, 2048, 7, 7), channels_last=False),
    dict(shape=(1, 40, 7, 7), training=False),
    dict(shape=(2, 72, 6, 5), with_identity=False),
    dict(shape=(4, 512, 28, 28), dtype=torch.bfloat16),
    dict(shape=(2, 1024, 14, 14), dtype=torch.float16, training=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_compiled_triton_kernels_match_the_reference(case):
    assert compare_with_reference(fused_tail, device="cuda", **case) == []


def test_auto_is_triton_on_cuda_and_a_compiled_resnet_matches_eager():
    from model.cbam import resolve_impl
    assert resolve_impl("auto", "cuda") == "triton"
    torch.manual_seed(0)
    eager = build_model(50, "CBAM", num_classes=10).cuda().to(memory_format=torch.channels_last)
    compiled = build_model(50, "CBAM", num_classes=10).cuda().to(memory_format=torch.channels_last)
    compiled.load_state_dict(eager.state_dict())
    from training.compile import compile_model
    compile_model(compiled, "blocks")
    x = torch.randn(8, 3, 96, 96, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outs = [model(x).float() for model in (eager, compiled)]
    for out in outs:
        out.logsumexp(1).sum().backward()
    torch.testing.assert_close(outs[1], outs[0], rtol=2e-2, atol=2e-2)
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        scale = q.grad.abs().max().item()
        torch.testing.assert_close(p.grad, q.grad, rtol=5e-2, atol=5e-2 * scale + 1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from tools.make_demo_data import write_tree
    base = tmp_path_factory.mktemp("gpu")
    write_tree(str(base / "images"), classes=4, train_per_class=32, val_per_class=8, size=64, seed=3)
    result = subprocess.run([sys.executable, "tools/make_shards.py", str(base / "images"), str(base / "shards"),
                             "--workers", "2", "--max-count", "40"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return base / "shards"


def test_torch_backend_batches_on_cuda_equal_those_on_cpu(shards):
    from pipeline import build_loader
    batches = {}
    for device in ("cpu", "cuda"):
        loader = build_loader(str(shards), "val", 8, backend="torch", rank=0, world_size=1, workers=2,
                              device=torch.device(device), image_size=48, seed=0, dtype=torch.float32)
        batches[device] = [(images.cpu(), labels.cpu()) for images, labels in loader]
    assert len(batches["cpu"]) == len(batches["cuda"]) > 0
    for (images_cpu, labels_cpu), (images_gpu, labels_gpu) in zip(batches["cpu"], batches["cuda"]):
        assert torch.equal(labels_cpu, labels_gpu)
        torch.testing.assert_close(images_gpu, images_cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_one_epoch_with_each_autocast_dtype(shards, tmp_path, amp):
    """fp16 runs with the gradient scaler, bf16 without; the loop is the same for both and for every backend."""
    result = subprocess.run([sys.executable, "train.py", "--depth", "18", "--att-type", "CBAM", "--image-size", "64",
                             "--backend", "torch", "--workers", "2", "--batch-size", "16", "--epochs", "1",
                             "--amp", amp, "--print-freq", "2", "--prefix", "G", "--output-dir", str(tmp_path),
                             str(shards)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "G_metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows and all(row["loss"] == row["loss"] and row["loss"] < 100 for row in rows)  # finite, not diverged
    config = json.loads(result.stdout.split("config ", 1)[1].splitlines()[0])
    assert (config["amp_resolved"], config["cbam_impl_resolved"], config["compile_resolved"]) == (amp, "triton", "off")
