"""Checks that need an NVIDIA GPU (skipped without one; `bash benchmarks/gpu_suite.sh .whl RESULTS check` runs
them on a GPU machine): the compiled Triton kernels against the authors' formulation, the torch backend's
side-stream copies, fp16 with a gradient scaler and bf16 end to end."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from model import build_model, set_cbam_impl
from model.cbam import SpatialGate
from model.resnet import Bottleneck
from tests.cbam_cases import compare_with_reference, fused_tail
from training.compile import compile_model

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


def _bf16_errors(att_type, cbam_impl, compile_how):
    """A bf16 train step's distance from float64: (relative error of the logits, of all gradients together, median
    of the per-parameter relative errors) of ResNet-50 `att_type` run as `cbam_impl`/`compile_how` in bf16
    autocast, against the same weights in float64, eager, with the authors' CBAM formulation."""
    torch.manual_seed(0)
    model = build_model(50, att_type, num_classes=10, cbam_impl=cbam_impl or "auto").cuda()
    for module in model.modules():
        if isinstance(module, SpatialGate):
            torch.nn.init.normal_(module.bn.weight)  # initialised to 0, which would hide the spatial branch
        if isinstance(module, Bottleneck):
            # Small residual branches of both signs: a randomly initialised ResNet-50 in training mode is otherwise
            # so ill-conditioned that bf16 and float64 gradients differ by more than their size.
            torch.nn.init.uniform_(module.bn3.weight, -0.3, 0.3)
    reference = set_cbam_impl(copy.deepcopy(model), "reference").double()
    model = compile_model(model.to(memory_format=torch.channels_last), compile_how)
    x = torch.randn(8, 3, 96, 96, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x.contiguous(memory_format=torch.channels_last)).float()
    logits.logsumexp(1).sum().backward()
    expected = reference(x.double())
    expected.logsumexp(1).sum().backward()

    def relative(a, b):
        return float((a.double() - b).norm() / b.norm().clamp_min(1e-30))
    pairs = [(p.grad, q.grad) for p, q in zip(model.parameters(), reference.parameters())]
    everything = relative(torch.cat([g.flatten() for g, _ in pairs]), torch.cat([r.flatten() for _, r in pairs]))
    return relative(logits, expected), everything, float(torch.tensor([relative(g, r) for g, r in pairs]).median())


@pytest.mark.parametrize("cbam_impl,compile_how", [("torch", "blocks"), ("triton", "off"), ("triton", "blocks")])
def test_bf16_cbam_is_as_close_to_float64_as_plain_resnet50_in_bf16(cbam_impl, compile_how):
    """The tolerance is what bf16 itself costs: plain ResNet-50 (eager, bf16) against its float64 twin, measured in
    the same run; each CBAM implementation, eager or compiled, may be at most 3x as far from its float64 twin."""
    plain = _bf16_errors("none", None, "off")
    cbam = _bf16_errors("CBAM", cbam_impl, compile_how)
    for what, got, allowed in zip(("logits", "all gradients", "median parameter gradient"), cbam, plain):
        assert got <= 3 * allowed + 1e-3, f"{what}: relative error {got:.3g}, plain ResNet-50 in bf16 {allowed:.3g}"


def test_cuda_graphs_train_the_same_weights_as_the_compiled_model_without_them():
    """--cuda-graphs on (reduce-overhead mode, one step marked per iteration) against the same compiled blocks
    without graphs: three SGD steps in fp32, then an evaluation forward with the graphs stood down."""
    torch.manual_seed(0)
    models = [build_model(18, "CBAM", num_classes=10).cuda().to(memory_format=torch.channels_last)]
    models.append(copy.deepcopy(models[0]))
    x = torch.randn(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (8,), device="cuda")
    for model, graphs in zip(models, (False, True)):
        torch._dynamo.reset()
        compile_model(model, "blocks", cuda_graphs=graphs)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(3):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            loss = torch.nn.functional.cross_entropy(model(x), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, p), q in zip(models[1].named_parameters(), models[0].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        torch.testing.assert_close(models[1].eval()(x), models[0].eval()(x), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from shards.synthetic import write_tree
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
                             "--amp", amp, "--compile", "off", "--print-freq", "2", "--prefix", "G",
                             "--output-dir", str(tmp_path), str(shards)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "G_metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows and all(row["loss"] == row["loss"] and row["loss"] < 100 for row in rows)  # finite, not diverged
    config = json.loads(result.stdout.split("config ", 1)[1].splitlines()[0])
    assert (config["amp_resolved"], config["cbam_impl_resolved"], config["compile_resolved"]) == (amp, "triton", "off")
