"""training/compile.py: what --compile resolves to, regional compilation sharing one graph among identical blocks,
and the cache folder."""
import os

import pytest
import torch

from model import build_model
from training.compile import (
    compile_model,
    default_cache_dir,
    resolve_cbam,
    resolve_compile,
    resolve_cuda_graphs,
    use_cache_dir,
)


def test_auto_compiles_blocks_on_cuda_unless_the_fused_cbam_op_is_asked_for():
    from model.triton_env import triton_unavailable_reason
    cuda_compiles = "off" if triton_unavailable_reason(torch.device("cuda")) else "blocks"
    assert resolve_compile("auto", "cuda") == cuda_compiles
    assert resolve_compile("auto", "cuda", "CBAM", "auto") == cuda_compiles
    assert resolve_compile("auto", "cuda", "CBAM", "torch") == cuda_compiles
    assert resolve_compile("auto", "cuda", "SE", "auto") == cuda_compiles
    assert resolve_compile("auto", "cuda", "CBAM", "triton") == "off"
    assert resolve_compile("auto", "cpu") == "off"
    assert resolve_compile("model", "cpu") == "model" and resolve_compile("off", "cuda") == "off"
    assert resolve_compile("blocks", "cuda", "CBAM", "triton") == "blocks"  # asked for: kept


def test_auto_cbam_is_the_compiled_torch_formulation_when_compiled_on_cuda():
    assert resolve_cbam("auto", "cuda", "blocks") == "torch"
    assert resolve_cbam("auto", "cuda", "model") == "torch"
    assert resolve_cbam("auto", "cpu", "blocks") == "torch"
    assert resolve_cbam("auto", "cpu", "off") == "torch"
    assert resolve_cbam("reference", "cuda", "blocks") == "reference"
    with pytest.raises(RuntimeError, match="'triton' cannot run on cpu"):
        resolve_cbam("triton", "cpu", "off")


def test_cuda_graphs_need_a_compiled_model_on_cuda_and_one_backward_per_step():
    assert resolve_cuda_graphs("auto", "cuda", "blocks") is False  # not yet measured faster on a GPU
    assert resolve_cuda_graphs("on", "cuda", "blocks") is True and resolve_cuda_graphs("off", "cuda", "model") is False
    with pytest.raises(ValueError, match="needs --compile blocks or model"):
        resolve_cuda_graphs("on", "cuda", "off")
    with pytest.raises(ValueError, match="needs --accum-steps 1 \\(got 4\\)"):
        resolve_cuda_graphs("on", "cuda", "blocks", accum_steps=4)
    with pytest.raises(ValueError, match="needs a CUDA device, this run is on cpu"):
        resolve_cuda_graphs("on", "cpu", "blocks")


@pytest.mark.slow
@pytest.mark.parametrize("how,expected_graphs", [("blocks", 7), ("model", 1)])
def test_identical_blocks_share_one_compiled_graph(how, expected_graphs):
    """ResNet-34: 16 blocks of 7 kinds (each stage's first block, then the rest of it; stage 1 has no first kind
    of its own). Compiled per block, dynamo builds one graph per kind, not per block."""
    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    torch.manual_seed(0)
    eager = build_model(34, "CBAM", num_classes=10).eval()
    compiled = build_model(34, "CBAM", num_classes=10).eval()
    compiled.load_state_dict(eager.state_dict())
    keys = list(compiled.state_dict())
    assert compile_model(compiled, how, backend=counting_backend) is compiled
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x))
    assert len(graphs) == expected_graphs
    assert list(compiled.state_dict()) == keys  # compiled in place: checkpoints keep their names


def test_off_leaves_the_model_alone_and_unknown_values_are_errors():
    model = build_model(18, "none", num_classes=2)
    assert compile_model(model, "off") is model
    with pytest.raises(ValueError, match="auto, off, blocks, model"):
        compile_model(model, "everything")


def test_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "cbam-imagenet" / "torch-compile")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # restored after the test, as use_cache_dir sets them
    monkeypatch.setenv("TRITON_CACHE_DIR", "")
    use_cache_dir(str(tmp_path / "cache"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    assert os.path.isdir(tmp_path / "cache" / "triton")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=f"--compile-cache folder cannot be created: {blocker}/x"):
        use_cache_dir(str(blocker / "x"))
