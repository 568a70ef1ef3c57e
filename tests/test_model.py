"""Model: shapes, gradients, parameter counts, CBAM gate numerics, original-checkpoint loading, and the fused
Triton op staying an optional package."""
import ast
import itertools
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

from model import build_model, load_original_checkpoint, set_cbam_impl
from model.cbam import CBAM, ChannelGate, SpatialGate

DEPTHS = (18, 34, 50, 101)
ATTENTIONS = ("none", "SE", "BAM", "CBAM")

# Parameter counts of the authors' implementation (github.com/Jongchan/attention-module); SE from Hu et al.'s
# SE-ResNet definition with reduction 16 (SE-ResNet-50: 28.09 M in the SE paper's Table).
EXPECTED_PARAMS = {
    (18, "none"): 11_689_512, (18, "BAM"): 11_712_503, (18, "CBAM"): 11_779_392, (18, "SE"): 11_778_592,
    (34, "none"): 21_797_672, (34, "BAM"): 21_820_663, (34, "CBAM"): 21_960_468, (34, "SE"): 21_958_868,
    (50, "none"): 25_557_032, (50, "BAM"): 25_915_099, (50, "CBAM"): 28_089_624, (50, "SE"): 28_088_024,
    (101, "none"): 44_549_160, (101, "BAM"): 44_907_227, (101, "CBAM"): 49_330_172, (101, "SE"): 49_326_872,
}


@pytest.mark.parametrize("depth,att", list(itertools.product(DEPTHS, ATTENTIONS)))
def test_parameter_count(depth, att):
    model = build_model(depth, att)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[(depth, att)]


# Parameters whose gradient is exactly zero at initialisation, by construction:
# - CBAM's 7x7 spatial conv: the BN after it starts with weight 0 (gate starts uniform at 0.5);
# - BAM biases of a layer followed by BatchNorm: BN subtracts the batch mean, so such a bias has no effect.
ZERO_GRAD_BY_DESIGN = re.compile(r"spatial_gate\.conv\.weight$"
                                 r"|bam\d\.(channel_gate\.mlp\.0|spatial_gate\.layers\.[036])\.bias$")


def _by_size(depth, *rest):
    """A parameter set, marked slow for the bottleneck depths (50, 101: seconds each on a CPU)."""
    return pytest.param(depth, *rest, marks=[pytest.mark.slow] if depth >= 50 else [])


@pytest.mark.parametrize("depth,att", [_by_size(d, a) for d, a in itertools.product(DEPTHS, ATTENTIONS)])
def test_forward_backward_every_parameter_gets_gradient(depth, att):
    torch.manual_seed(0)
    model = build_model(depth, att, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        if not ZERO_GRAD_BY_DESIGN.search(name):
            assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("size", [(32, 32), (47, 47), (64, 96), (224, 224)])
def test_any_input_size_at_least_32(size):
    model = build_model(18, "CBAM", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 5)


def test_invalid_arguments_name_the_allowed_values():
    with pytest.raises(ValueError, match="none, SE, BAM, CBAM"):
        build_model(50, "eca")
    with pytest.raises(ValueError, match=r"\[18, 34, 50, 101\]"):
        build_model(42, "CBAM")
    assert build_model(18, "cbam").att_type == "CBAM"
    assert build_model(18, "Se").att_type == "SE"


def test_initialisation_matches_authors_code():
    model = build_model(50, "CBAM")
    gates = [m for m in model.modules() if isinstance(m, SpatialGate)]
    assert len(gates) == 16
    assert all(float(g.bn.weight.detach().abs().sum()) == 0.0 for g in gates)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert float(p.detach().abs().sum()) == 0.0, name
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.num_features > 1]
    assert all(bool((m.weight == 1).all()) for m in bns)
    # Kaiming normal fan_out: std = sqrt(2 / (out_channels * k * k)).
    conv = model.layer3[0].conv2
    expected = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert abs(float(conv.weight.detach().std()) - expected) / expected < 0.05
    fc_expected = (2.0 / model.fc.in_features) ** 0.5
    assert abs(float(model.fc.weight.detach().std()) - fc_expected) / fc_expected < 0.05


def _direct_channel_gate(gate, x):
    """Formula of the paper, written out per sample: sigmoid(MLP(avg) + MLP(max)) * x."""
    w1, b1 = gate.mlp[0].weight, gate.mlp[0].bias
    w2, b2 = gate.mlp[2].weight, gate.mlp[2].bias
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        avg = x[n].reshape(x.shape[1], -1).sum(1) / (x.shape[2] * x.shape[3])
        mx = x[n].reshape(x.shape[1], -1).max(1).values
        mlp = lambda v: w2 @ torch.clamp(w1 @ v + b1, min=0) + b2  # noqa: E731
        out[n] = x[n] * (1 / (1 + torch.exp(-(mlp(avg) + mlp(mx)))))[:, None, None]
    return out


def _direct_spatial_gate(gate, x):
    """[max over C, mean over C] -> 7x7 conv (padding 3) -> BN (eval: running stats) -> sigmoid -> scale."""
    pooled = torch.stack([x.max(1).values, x.sum(1) / x.shape[1]], 1)
    w = gate.conv.weight
    padded = F.pad(pooled, (3, 3, 3, 3))
    conv = torch.zeros(x.shape[0], x.shape[2], x.shape[3], dtype=x.dtype)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            conv[:, i, j] = (padded[:, :, i:i + 7, j:j + 7] * w[0]).sum(dim=(1, 2, 3))
    bn = gate.bn
    normed = (conv - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return x * torch.sigmoid(normed)[:, None]


def test_channel_gate_matches_direct_formula():
    torch.manual_seed(1)
    gate = ChannelGate(32).double()
    x = torch.randn(3, 32, 5, 6, dtype=torch.double)
    torch.testing.assert_close(gate(x), _direct_channel_gate(gate, x))


def test_spatial_gate_matches_direct_formula():
    torch.manual_seed(2)
    gate = SpatialGate().double().eval()
    with torch.no_grad():  # non-trivial BN so every term of the formula matters
        gate.bn.weight.fill_(1.3)
        gate.bn.bias.fill_(-0.2)
        gate.bn.running_mean.fill_(0.1)
        gate.bn.running_var.fill_(2.0)
    x = torch.randn(2, 8, 9, 7, dtype=torch.double)
    torch.testing.assert_close(gate(x), _direct_spatial_gate(gate, x))


def test_cbam_is_channel_then_spatial():
    torch.manual_seed(3)
    cbam = CBAM(32).double().eval()
    with torch.no_grad():
        cbam.spatial_gate.bn.weight.fill_(0.7)
    x = torch.randn(2, 32, 6, 6, dtype=torch.double)
    expected = _direct_spatial_gate(cbam.spatial_gate, _direct_channel_gate(cbam.channel_gate, x))
    torch.testing.assert_close(cbam(x), expected)


def _to_original_names(state):
    """Our state dict renamed as the authors' code names it (written independently of model/authors_checkpoint.py)."""
    renames = {
        "attn.channel_gate.mlp.0.": "cbam.ChannelGate.mlp.1.",
        "attn.channel_gate.mlp.2.": "cbam.ChannelGate.mlp.3.",
        "attn.spatial_gate.conv.": "cbam.SpatialGate.spatial.conv.",
        "attn.spatial_gate.bn.": "cbam.SpatialGate.spatial.bn.",
        "channel_gate.mlp.0.": "channel_att.gate_c.gate_c_fc_0.",
        "channel_gate.mlp.1.": "channel_att.gate_c.gate_c_bn_1.",
        "channel_gate.mlp.3.": "channel_att.gate_c.gate_c_fc_final.",
        "spatial_gate.layers.0.": "spatial_att.gate_s.gate_s_conv_reduce0.",
        "spatial_gate.layers.1.": "spatial_att.gate_s.gate_s_bn_reduce0.",
        "spatial_gate.layers.3.": "spatial_att.gate_s.gate_s_conv_di_0.",
        "spatial_gate.layers.4.": "spatial_att.gate_s.gate_s_bn_di_0.",
        "spatial_gate.layers.6.": "spatial_att.gate_s.gate_s_conv_di_1.",
        "spatial_gate.layers.7.": "spatial_att.gate_s.gate_s_bn_di_1.",
        "spatial_gate.layers.9.": "spatial_att.gate_s.gate_s_conv_final.",
    }
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # old PyTorch checkpoints (the released ones) have no such buffers
        for ours, theirs in renames.items():
            key = key.replace(ours, theirs)
        out["module." + key] = value.clone()
    return out


def _randomised(model):
    torch.manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("depth,att", [_by_size(*case) for case in ((18, "CBAM"), (50, "CBAM"), (34, "BAM"),
                                                                     (50, "none"))])
def test_original_checkpoint_gives_identical_logits(tmp_path, depth, att):
    source = _randomised(build_model(depth, att, num_classes=7))
    original = _to_original_names(source.state_dict())
    assert any("cbam.SpatialGate.spatial.bn.running_mean" in k for k in original) == (att == "CBAM")
    path = tmp_path / "orig.pth.tar"
    torch.save({"epoch": 90, "arch": f"resnet{depth}", "state_dict": original, "best_prec1": 77.6}, path)
    x = torch.randn(2, 3, 64, 64)
    for src in (str(path), {"state_dict": original},
                {k[len("module."):]: v for k, v in original.items()}):
        target = build_model(depth, att, num_classes=7).eval()
        load_original_checkpoint(target, src)
        with torch.no_grad():
            assert torch.equal(target(x), source(x))


def test_original_checkpoint_mismatch_lists_keys():
    original = _to_original_names(build_model(18, "CBAM").state_dict())
    del original["module.layer1.0.cbam.ChannelGate.mlp.1.weight"]
    original["module.layer9.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['layer1.0.attn.channel_gate.mlp.0.weight'\]"
                                         r".*unexpected keys \['layer9.extra.weight'\]"):
        load_original_checkpoint(build_model(18, "CBAM"), original)


@pytest.mark.parametrize("att", ATTENTIONS)
def test_channels_last_and_autocast(att):
    torch.manual_seed(5)
    model = build_model(18, att, num_classes=10).to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=dtype):
                out = model(x)
            assert torch.isfinite(out).all()
            torch.testing.assert_close(out.float(), ref, atol=0.15 * float(ref.abs().max()), rtol=0.1)
    # channels_last survives the attention modules (no silent layout copy back to NCHW).
    feats = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
    assert feats.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch.manual_seed(6)
    model = build_model(18, "CBAM", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_cbam_matches_reference_formulation(channels_last):
    """Our CBAM forward (adaptive/indexed pooling, one MLP call) vs the authors' straightforward formulation:
    logits within fp32 tolerance; gradients equal in float64 (in fp32 the BN-bias gradients of the spatial
    gates are sums that nearly cancel, so their rounding differs by up to ~1e-2 relative)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fast = _randomised(build_model(50, "CBAM", num_classes=10)).train().to(memory_format=fmt)
    ref = set_cbam_impl(build_model(50, "CBAM", num_classes=10), "reference").train().to(memory_format=fmt)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 64, 80).to(memory_format=fmt)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-4)
    fast, ref, x = fast.double(), ref.double(), x.double()
    fast(x).square().sum().backward()
    ref(x).square().sum().backward()
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.slow
def test_compiled_cbam_gates_match_eager_values_and_gradients():
    """Under torch.compile the gates take their max with amax (see model/cbam.py): same outputs and gradients."""
    from model.cbam import CBAM

    torch.manual_seed(7)
    block = CBAM(32).train()
    torch.nn.init.normal_(block.spatial_gate.bn.weight)  # the BN weight starts at 0, which would hide the gate
    x = torch.randn(2, 32, 9, 11).to(memory_format=torch.channels_last).requires_grad_()
    eager_out = block(x)
    eager_out.square().sum().backward()
    eager_grads = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad()
    compiled_out = torch.compile(block)(x)
    compiled_out.square().sum().backward()
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-5)
    for eager, compiled in zip(eager_grads, [x.grad] + [p.grad for p in block.parameters()]):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


OPTIONAL_PACKAGE = "triton_cbam"  # model/triton_cbam/: the fused Triton op, CBAM's optional "triton" implementation


@pytest.mark.slow
def test_the_model_runs_without_importing_triton_or_the_optional_package():
    """Importing the model, building ResNet-18-CBAM as "torch" and as "auto", and a training step of each on the CPU
    import neither Triton nor model/triton_cbam/ (a fresh process: this one may have imported both already)."""
    code = textwrap.dedent(f"""
        import sys
        import torch
        import model
        def loaded():
            return sorted(m for m in sys.modules
                          if m.split(".")[0] == "triton" or m.startswith("model.{OPTIONAL_PACKAGE}"))
        print("import", loaded())
        for impl in ("torch", "auto"):
            net = model.build_model(18, "CBAM", num_classes=2, cbam_impl=impl)
            print("build", impl, loaded())
            net(torch.randn(2, 3, 32, 32)).sum().backward()
            print("step", impl, loaded())
        """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter would make "auto" Triton
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["import []", "build torch []", "step torch []", "build auto []",
                                          "step auto []"]


def test_the_model_names_the_optional_package_in_its_one_lazy_import_alone():
    """Outside model/triton_cbam/, the package's name appears only inside model/cbam.py's _fused_op, which imports it
    when the "triton" implementation runs: deleting the package touches that function (and the choice) alone."""
    model_dir = os.path.join(ROOT, "model")
    with open(os.path.join(model_dir, "cbam.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    lazy = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "_fused_op")
    imports = [node for node in ast.walk(lazy) if isinstance(node, ast.ImportFrom)]
    assert [(node.level, node.module) for node in imports] == [(1, OPTIONAL_PACKAGE)]
    outside = []
    for folder, subfolders, files in os.walk(model_dir):
        subfolders[:] = [d for d in subfolders if d != OPTIONAL_PACKAGE]
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    inside = path == os.path.join(model_dir, "cbam.py") and lazy.lineno <= number <= lazy.end_lineno
                    if OPTIONAL_PACKAGE in line and not inside:
                        outside.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert outside == []
