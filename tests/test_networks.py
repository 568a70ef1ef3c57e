"""The CBAM paper's other ImageNet networks (Woo et al., ECCV 2018, Tables 4 and 5): ResNeXt-50/101 (32x4d),
WideResNet-18 (widen 1.5, 2.0) and MobileNet (alpha 0.7; 1.0), plain, with SE and with CBAM: parameter counts to
the digits the paper prints, CBAM in every implementation and compiled equal to the authors' formulation in
float64, the flags, checkpoints that name their network, and train.py with the tools after training."""
import copy
import functools
import json
import os
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import imagenet_sample_files

from model import Network, build_model, build_network, parameter_count
from model.cbam import CBAM
from model.mobilenet import ConvLayer, DepthwiseSeparable
from model.resnet import BasicBlock, Bottleneck
from training import config

# (network, attention) -> (parameters in millions as Tables 4 and 5 print them, the paper's top-1 error %).
PAPER = {
    ("resnext50_32x4d", "none"): (25.03, 22.85), ("resnext50_32x4d", "SE"): (27.56, 21.91),
    ("resnext50_32x4d", "CBAM"): (27.56, 21.92),
    ("resnext101_32x4d", "none"): (44.18, 21.54), ("resnext101_32x4d", "SE"): (48.96, 21.17),
    ("resnext101_32x4d", "CBAM"): (48.96, 21.07),
    ("wrn18_1.5", "none"): (25.88, 26.85), ("wrn18_1.5", "SE"): (26.07, 26.21), ("wrn18_1.5", "CBAM"): (26.08, 26.10),
    ("wrn18_2.0", "none"): (45.62, 25.63), ("wrn18_2.0", "SE"): (45.97, 24.93), ("wrn18_2.0", "CBAM"): (45.97, 24.84),
    ("mobilenet_0.7", "none"): (2.30, 34.86), ("mobilenet_0.7", "SE"): (2.71, 32.50),
    ("mobilenet_0.7", "CBAM"): (2.71, 31.51),
    ("mobilenet_1.0", "none"): (4.23, 31.39), ("mobilenet_1.0", "SE"): (5.07, 29.97),
    ("mobilenet_1.0", "CBAM"): (5.07, 29.01),
}
# Our exact counts (1000 classes), pinned.
EXACT = {
    ("resnext50_32x4d", "none"): 25_028_904, ("resnext50_32x4d", "SE"): 27_559_896,
    ("resnext50_32x4d", "CBAM"): 27_561_496,
    ("resnext101_32x4d", "none"): 44_177_704, ("resnext101_32x4d", "SE"): 48_955_416,
    ("resnext101_32x4d", "CBAM"): 48_958_716,
    ("wrn18_1.5", "none"): 25_875_816, ("wrn18_1.5", "SE"): 26_074_716, ("wrn18_1.5", "CBAM"): 26_075_516,
    ("wrn18_2.0", "none"): 45_618_216, ("wrn18_2.0", "SE"): 45_970_456, ("wrn18_2.0", "CBAM"): 45_971_256,
    ("mobilenet_0.7", "none"): 2_298_747, ("mobilenet_0.7", "SE"): 2_709_854, ("mobilenet_0.7", "CBAM"): 2_712_554,
    ("mobilenet_1.0", "none"): 4_231_976, ("mobilenet_1.0", "SE"): 5_072_276, ("mobilenet_1.0", "CBAM"): 5_074_976,
}
# Table 5's GFLOPs (multiply-adds at 224 px), which fix where MobileNet's attention sits (model/mobilenet.py).
MOBILENET_GFLOPS = {("mobilenet_0.7", "none"): 0.283, ("mobilenet_0.7", "SE"): 0.283,
                    ("mobilenet_0.7", "CBAM"): 0.289, ("mobilenet_1.0", "none"): 0.569,
                    ("mobilenet_1.0", "SE"): 0.570, ("mobilenet_1.0", "CBAM"): 0.576}


@pytest.mark.parametrize("tag,att", list(PAPER))
def test_parameter_count_equals_the_cbam_papers_tables(tag, att):
    with torch.device("meta"):  # no memory, no initialisation
        count = parameter_count(build_network(Network.from_tag(tag), att))
    assert count == EXACT[tag, att]
    assert round(count / 1e6, 2) == PAPER[tag, att][0]


def multiply_adds(model, side=224):
    """Multiply-adds of one image's forward: every conv and linear layer (the CBAM MLP counts twice, once per
    pooled descriptor, as it runs on both), as the papers count FLOPs."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * module.in_channels // module.groups * kernel
        elif isinstance(module, torch.nn.Linear):
            total += output.numel() * module.in_features
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                       torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("tag,att", list(MOBILENET_GFLOPS))
def test_mobilenet_multiply_adds_equal_table_5(tag, att):
    assert round(multiply_adds(build_network(Network.from_tag(tag), att)) / 1e9, 3) == MOBILENET_GFLOPS[tag, att]


def test_networks_are_laid_out_as_their_papers():
    resnext = build_model(50, "CBAM", arch="resnext")
    conv = resnext.layer1[0].conv2
    assert (conv.groups, conv.in_channels, conv.out_channels) == (32, 128, 128)  # 32 groups of 4 (32x4d)
    assert resnext.layer4[0].conv2.out_channels == 1024 and resnext.fc.in_features == 2048
    wrn = build_model(None, "SE", arch="wrn", widen=1.5)
    assert wrn.conv1.out_channels == 64  # the stem stays ResNet-18's
    assert [stage[0].conv1.out_channels for stage in (wrn.layer1, wrn.layer2, wrn.layer3, wrn.layer4)] == \
        [96, 192, 384, 768]
    mobilenet = build_model(None, "CBAM", arch="mobilenet", width_mult=0.7)
    attention = [m for m in mobilenet.modules() if isinstance(m, CBAM)]
    assert len(attention) == 27  # after the stem, every depthwise and every pointwise layer
    assert [m.channel_gate.mlp[0].out_features for m in attention[:3]] == [1, 1, 3]  # round(22/16), round(44/16)
    assert mobilenet.fc.in_features == 716  # int(1024 * 0.7)
    bam = build_model(None, "BAM", arch="mobilenet", width_mult=0.7)
    assert [b.channel_gate.mlp[0].in_features for b in (bam.bam1, bam.bam2, bam.bam3)] == [89, 179, 358]


@pytest.mark.parametrize("arch,depth,widen,width_mult,message", [
    ("resnext", 18, None, None, "--depth 18: --arch resnext has depths [50, 101]"),
    ("wrn", 50, None, None, "--depth 50: --arch wrn has depths [18]"),
    ("mobilenet", 50, None, None, "--depth 50: --arch mobilenet has no depth setting"),
    ("resnet", None, 1.5, None, "--widen 1.5: only --arch wrn is widened (this is --arch resnet)"),
    ("wrn", None, 0.5, None, "--widen must be in [1, 8]"),
    ("mobilenet", None, None, 0.0, "--width-mult must be in [0.25, 2] (MobileNet's alpha), got 0.0"),
    ("resnext", None, None, 0.7, "--width-mult 0.7: only --arch mobilenet has a width multiplier"),
])
def test_a_setting_that_names_no_network_is_one_line_naming_the_flag(tmp_path, arch, depth, widen, width_mult,
                                                                      message):
    (tmp_path / "manifest.json").write_text("{}")
    argv = ["--arch", arch, *(["--depth", str(depth)] if depth else []), *(["--widen", str(widen)] if widen else []),
            *(["--width-mult", str(width_mult)] if width_mult is not None else []), str(tmp_path)]
    with pytest.raises(config.UsageError) as error:
        config.parse_args(argv)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match=message.split(" (")[0].replace("[", r"\[").replace("]", r"\]")):
        build_model(depth, arch=arch, widen=widen, width_mult=width_mult)


def test_flags_resolve_to_the_network_and_a_resnet_recipe_fits_every_network(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    data = str(tmp_path)
    cases = [([], Network("resnet", 50), "RESNET50_NONE"),
             (["--arch", "resnext", "--att-type", "cbam"], Network("resnext", 50), "RESNEXT50_32X4D_CBAM"),
             (["--arch", "wrn", "--widen", "1.5"], Network("wrn", 18, widen=1.5), "WRN18_1.5_NONE"),
             (["--arch", "wrn"], Network("wrn", 18, widen=2.0), "WRN18_2.0_NONE"),
             (["--arch", "mobilenet", "--width-mult", "0.7", "--att-type", "SE"],
              Network("mobilenet", None, width_mult=0.7), "MOBILENET_0.7_SE")]
    for flags, network, prefix in cases:
        args = config.parse_args([*flags, data])
        assert (config.network_of(args), args.prefix) == (network, prefix), flags
    # recipes/seed.yaml (written for ResNet-50: depth 50) with another network: its depth applies to ResNeXt, and
    # does not to MobileNet, where it is left out.
    recipe = os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", "seed.yaml")
    args = config.parse_args(["--config", recipe, "--arch", "resnext", "--depth", "101", data])
    assert config.network_of(args) == Network("resnext", 101) and args.epochs == 100
    args = config.parse_args(["--config", recipe, "--arch", "mobilenet", "--width-mult", "0.7", "--prefix", "M",
                              data])
    assert config.network_of(args) == Network("mobilenet", None, width_mult=0.7)


# --- CBAM in every implementation equals the authors' formulation ------------------------------------------------

def _randomised(module):
    """Every BatchNorm affine random (signs included) and its statistics moved; the spatial gates' BN weight away
    from its initial 0, so that their branch carries gradient."""
    torch.manual_seed(3)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            torch.nn.init.normal_(m.weight)
            torch.nn.init.normal_(m.bias)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return module


def _with_impl(module, impl):
    """A copy of `module` whose CBAM modules run `impl`: "torch", "reference", or "fused" = the Triton op on its
    kernels' PyTorch mirror (tests/cbam_kernels_torch.py; the kernels themselves need CUDA or the interpreter)."""
    module = copy.deepcopy(module)
    for m in module.modules():
        if isinstance(m, CBAM):
            m.impl = "reference" if impl == "reference" else "torch"
            if impl == "fused":
                from model.triton_cbam import fused_cbam
                m.forward = functools.partial(fused_cbam, m)
                m.fused_tail = lambda z, bn, identity, m=m: fused_cbam(m, bn(z), identity)
    return module


def _values_and_gradients(module, x):
    x = x.clone().requires_grad_()
    out = module(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
    return out.detach(), grads, [b.clone() for b in module.buffers()]


def _assert_equal_in_float64(got, want, names, rtol=1e-9):
    """Equal within float64 rounding: `rtol` for the gradients, a hundredth of it for outputs and statistics."""
    (out, grads, buffers), (ref_out, ref_grads, ref_buffers) = got, want
    torch.testing.assert_close(out, ref_out, rtol=rtol / 100, atol=rtol / 1000)
    for name, g, r in zip(["input", *names], grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=rtol, atol=rtol / 100, msg=lambda m, name=name: f"{name}: {m}")
    for g, r in zip(buffers, ref_buffers):
        torch.testing.assert_close(g, r, rtol=rtol / 100, atol=rtol / 1000)


# The blocks the new networks add: ResNeXt's grouped bottleneck, WideResNet's wide basic block, MobileNet's
# depthwise separable block (CBAM after each layer, no residual).
NEW_BLOCKS = {
    "resnext": lambda attention: Bottleneck(128, 32, attention=attention, groups=32, base_width=4),
    "wrn": lambda attention: BasicBlock(96, 96, attention=attention),
    "mobilenet": lambda attention: DepthwiseSeparable(44, 89, attention=attention),
}


def _block_and_input(kind):
    block = NEW_BLOCKS[kind](functools.partial(CBAM, impl="reference"))
    block = _randomised(block).double().to(memory_format=torch.channels_last)
    channels = block.conv1.in_channels if kind != "mobilenet" else block.depthwise.conv.in_channels
    torch.manual_seed(4)
    x = torch.randn(3, channels, 7, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    return block, x


@pytest.mark.parametrize("kind", list(NEW_BLOCKS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_every_cbam_implementation_equals_the_authors_formulation_in_every_new_block(kind, training, monkeypatch):
    from model.triton_cbam import op
    from tests import cbam_kernels_torch
    monkeypatch.setattr(op, "kernels", cbam_kernels_torch)  # the fused op on its kernels' PyTorch mirror
    block, x = _block_and_input(kind)
    block.train(training)
    names = [name for name, _ in block.named_parameters()]
    want = _values_and_gradients(_with_impl(block, "reference"), x)  # on a copy: the running statistics move
    for impl in ("torch", "fused"):
        _assert_equal_in_float64(_values_and_gradients(_with_impl(block, impl), x), want, names)


@pytest.mark.slow
def test_compiled_cbam_after_a_mobilenet_layer_equals_the_authors_formulation():
    """The compiled path the new networks add: CBAM on a layer's output with no residual tail (MobileNet; ResNeXt's
    and WideResNet's blocks end in the residual tail that tests/test_cbam_compiled.py compiles), as --compile blocks
    runs it, in float64, training mode: outputs, every gradient, running statistics."""
    layer = _randomised(ConvLayer(44, 44, 3, groups=44, attention=functools.partial(CBAM, impl="reference")))
    layer = layer.double().to(memory_format=torch.channels_last)
    torch.manual_seed(4)
    x = torch.randn(3, 44, 7, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    names = [name for name, _ in layer.named_parameters()]
    want = _values_and_gradients(_with_impl(layer, "reference"), x)
    torch._dynamo.reset()
    compiled = _with_impl(layer, "torch")
    compiled.compile(dynamic=False)
    _assert_equal_in_float64(_values_and_gradients(compiled, x), want, names)


def test_compile_blocks_compiles_every_block_of_every_network():
    from training.compile import compile_model
    for network in (Network("resnext", 50), Network("wrn", 18, widen=1.5), Network("mobilenet", None, None, 0.25)):
        model = compile_model(build_network(network, "CBAM", num_classes=3), "blocks", backend="eager")
        blocks = [m for m in model.modules() if isinstance(m, (Bottleneck, BasicBlock, DepthwiseSeparable))]
        assert len(blocks) == {"resnext": 16, "wrn": 8, "mobilenet": 13}[network.arch]
        assert all(m._compiled_call_impl is not None for m in blocks), network


def test_mobilenet_with_cbam_equals_the_authors_formulation_end_to_end():
    """The whole network (27 CBAM modules, no residual) in float64: logits and every parameter's gradient."""
    reference = _randomised(build_model(None, "CBAM", num_classes=5, cbam_impl="reference", arch="mobilenet",
                                        width_mult=0.25)).double()
    torch.manual_seed(5)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    want = _values_and_gradients(_with_impl(reference, "reference"), x)
    names = [name for name, _ in reference.named_parameters()]
    # 27 gates deep, a few gradients round apart by up to ~3e-9 relative (a max pool's tie-free choice is the same;
    # the sums are ordered differently).
    _assert_equal_in_float64(_values_and_gradients(_with_impl(reference, "torch"), x), want, names, rtol=1e-7)


# --- training -------------------------------------------------------------------------------------------------------

SMALL = {"resnext": Network("resnext", 50), "wrn": Network("wrn", 18, widen=1.5),
         "mobilenet": Network("mobilenet", None, width_mult=0.7)}


def _cases():
    """Every attention type on WideResNet and MobileNet; ResNeXt-50 (seconds on a CPU) with CBAM and BAM alone."""
    for arch in SMALL:
        for att in ("CBAM", "BAM") if arch == "resnext" else ("none", "SE", "BAM", "CBAM"):
            yield pytest.param(arch, att, marks=[pytest.mark.slow] if arch == "resnext" else [])


# Gradients that are exactly zero at initialisation by construction (tests/test_model.py states why).
ZERO_GRAD_BY_DESIGN = re.compile(r"spatial_gate\.conv\.weight$"
                                 r"|bam\d\.(channel_gate\.mlp\.0|spatial_gate\.layers\.[036])\.bias$")


@pytest.mark.parametrize("arch,att", list(_cases()))
def test_a_train_step_reaches_every_parameter_and_bam_trains(arch, att):
    """Forward and backward at 32 px reach every parameter (SE, CBAM and BAM where they sit); a few SGD steps on
    one batch lower its loss (BAM, which the CBAM paper's tables leave out, is tested this far and no further)."""
    torch.manual_seed(0)
    model = build_network(SMALL[arch], att, num_classes=4)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    # A gate MLP of one hidden unit (MobileNet's 22-channel stem: round(22/16) = 1) may start with that unit's ReLU
    # closed for every image: no gradient through it until the unit opens, as in any ReLU layer.
    single_unit = {id(p) for m in model.modules() if hasattr(m, "mlp") and m.mlp[0].out_features == 1
                   for p in m.mlp.parameters()}
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not ZERO_GRAD_BY_DESIGN.search(name) and id(p) not in single_unit:
            assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    if att == "BAM":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for _ in range(6):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0], losses


# --- checkpoints name their network; the tools build it from the checkpoint alone -----------------------------------

def _save(path, model, network, att, classes):
    from training import checkpoint
    cfg = {"arch": network.arch, "depth": network.depth, "widen": network.widen, "width_mult": network.width_mult,
           "att_type": att, "val_image_size": 32}
    state = {"model": model.state_dict(), "config": cfg, "epoch": 1, "batch": 0, "classes": classes,
             "arch": network.tag}
    checkpoint.save_atomic({**state, checkpoint.CHECKSUM_KEY: checkpoint.content_sha256(state)}, str(path))
    return cfg


@pytest.mark.parametrize("arch", list(SMALL))
def test_a_checkpoint_records_its_network_and_builds_it_alone(tmp_path, arch):
    from training import load
    network = SMALL[arch]
    torch.manual_seed(1)
    source = _randomised(build_network(network, "CBAM", num_classes=3)).eval()
    path = tmp_path / "c.pth.tar"
    _save(path, source, network, "CBAM", ["a", "b", "c"])
    trained = load.read(str(path))
    assert trained.network == network and trained.arch == f"{network.name} CBAM"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trained.build("torch")(x), source(x))
    # --pretrained: the same network takes every weight (another class count: the classifier alone is new);
    # another network is refused naming the flags to pass.
    _, line = load.load_pretrained(build_network(network, "CBAM", num_classes=5), str(path))
    assert f"({network.name} CBAM, 3 classes" in line and "classifier replaced (3 -> 5 classes)" in line, line
    with pytest.raises(config.UsageError) as error:
        load.load_pretrained(build_model(18, "CBAM", num_classes=3), str(path))
    assert f"is {network.name} CBAM, this run ResNet-18: pass --arch {arch} " in str(error.value)


def test_an_older_checkpoint_without_the_network_fields_is_a_resnet(tmp_path):
    from training import checkpoint, load
    model = build_model(18, "SE", num_classes=3)
    state = {"model": model.state_dict(), "config": {"depth": 18, "att_type": "SE"}, "epoch": 1}
    checkpoint.save_atomic({**state, checkpoint.CHECKSUM_KEY: checkpoint.content_sha256(state)},
                           str(tmp_path / "old.pth.tar"))
    trained = load.read(str(tmp_path / "old.pth.tar"))
    assert trained.network == Network("resnet", 18) and trained.arch == "ResNet-18 SE"


def test_a_bare_resnext_or_wide_state_dict_is_recognised_by_its_shapes(tmp_path):
    from training import load
    for network in (Network("resnext", 50), Network("wrn", 18, widen=1.5)):
        torch.save(build_network(network, "none", num_classes=3).state_dict(), tmp_path / "bare.pth")
        assert load.read(str(tmp_path / "bare.pth")).network == network


@pytest.fixture(scope="module")
def mobilenet_run(real_shards, tmp_path_factory):
    """(checkpoint, shards, the config line's JSON): MobileNet (alpha 0.25) + CBAM trained by train.py for one
    epoch of 3 steps on 24 photographs at 64 px."""
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("mobilenet")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root)
    result = subprocess.run([sys.executable, "train.py", "--arch", "mobilenet", "--width-mult", "0.25", "--att-type",
                             "CBAM", "--image-size", "64", "-b", "8", "--epochs", "1", "-j", "1", "--backend", "torch",
                             "--output-dir", str(out), real_shards], cwd=root, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads(result.stdout.split("config ", 1)[1].splitlines()[0])
    return out / "MOBILENET_0.25_CBAM_checkpoint.pth.tar", real_shards, line


@pytest.mark.slow
def test_train_evaluate_predict_export_and_attention_maps_of_a_mobilenet(mobilenet_run, tmp_path, capsys):
    import train
    from tools import attention_maps, export, predict
    from training import load
    ckpt, shards, line = mobilenet_run
    expected = parameter_count(build_model(None, "CBAM", num_classes=24, arch="mobilenet", width_mult=0.25))
    assert (line["arch"], line["depth"], line["width_mult"], line["parameters"]) == ("mobilenet", None, 0.25,
                                                                                    expected)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["arch"] == "mobilenet_0.25" and saved["config"]["parameters"] == expected
    # From the checkpoint alone: evaluation (no --arch given), prediction, export, attention maps.
    assert train.cli(["--evaluate", "--resume", str(ckpt), "-b", "8", "-j", "0", "--backend", "torch", shards]) == 0
    out = capsys.readouterr().out
    assert "MobileNet (alpha 0.25) CBAM, 24 classes" in out and " * Prec@1 " in out
    assert train.cli(["--evaluate", "--resume", str(ckpt), "--arch", "resnext", shards]) == 2
    assert "this run asks for --arch resnext" in capsys.readouterr().err
    photos = imagenet_sample_files()[:2]
    assert predict.main(["--checkpoint", str(ckpt), "--json", "--top-k", "2", *photos]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert export.main(["--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert "torchscript, MobileNet (alpha 0.25) CBAM, 24 classes" in capsys.readouterr().out
    from pipeline.folder import load_image, stack_images
    images = stack_images([load_image(path, 64) for path in photos], "cpu").contiguous()
    explained = attention_maps.explain(load.read(str(ckpt)).build("torch"), images)
    assert sorted(explained.spatial) == list(attention_maps.STAGES)
    assert [explained.spatial[stage].shape[-1] for stage in attention_maps.STAGES] == [16, 8, 4, 2]


@pytest.mark.slow
def test_benchmark_json_reports_the_network_and_its_parameters(real_shards, capsys):
    import train
    assert train.cli(["--arch", "wrn", "--widen", "1.5", "--att-type", "CBAM", "--benchmark", "--benchmark-warmup",
                      "1", "--benchmark-steps", "1", "--image-size", "32", "-b", "4", "-j", "0", "--backend", "torch",
                      real_shards]) == 0
    out = capsys.readouterr().out
    result = json.loads(next(line for line in out.splitlines() if line.startswith('{"benchmark"')))
    expected = parameter_count(build_model(None, "CBAM", num_classes=24, arch="wrn", widen=1.5))
    assert (result["network"], result["parameters"]) == ("WideResNet-18 (widen 1.5)", expected)
    assert f"benchmark: WideResNet-18 (widen 1.5) CBAM ({expected:,} parameters)" in out
