"""build_loader's door: backend selection, argument checks, tiny splits, a cheap import, `pipeline.info`."""
import json
import logging
import subprocess
import sys

import pytest
import torch
from conftest import CPU_BACKENDS, ROOT, dali_importable
from PIL import Image

import pipeline


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_gpu_dali_without_a_gpu_is_a_clear_error(generated_shards):
    with pytest.raises(pipeline.BackendUnavailable, match="CUDA"):
        pipeline.build_loader(generated_shards, "train", 4, backend="dali")


def test_auto_logs_its_choice(generated_shards, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline"):
        loader = pipeline.build_loader(generated_shards, "val", 4, backend="auto", workers=0)
    expected = "dali" if torch.cuda.is_available() and dali_importable() else "torch"
    assert loader.backend == expected
    assert f"auto -> {expected}" in caplog.text


@pytest.mark.parametrize("kwargs, match", [
    (dict(backend="tensorflow"), "backend must be one of"),
    (dict(rank=2, world_size=2), "rank must be in"),
    (dict(per_rank_batch=0), "per_rank_batch"),
    (dict(workers=-1), "workers"),
    (dict(dtype=torch.int8), "dtype"),
])
def test_bad_arguments_are_value_errors(generated_shards, kwargs, match):
    arguments = dict(per_rank_batch=4, backend="torch", device="cpu")
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pipeline.build_loader(generated_shards, "train", arguments.pop("per_rank_batch"), **arguments)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_train_split_smaller_than_one_batch_per_rank_yields_nothing(generated_shards, caplog, backend):
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        loader = pipeline.build_loader(generated_shards, "train", 13, backend=backend, rank=3, world_size=4,
                                       workers=1, device="cpu", image_size=16)
    assert len(loader) == 0 and list(loader) == []
    assert "yields no batches" in caplog.text


def test_import_pipeline_is_cheap():
    code = ("import sys, pipeline; heavy = [m for m in ('torch', 'nvidia.dali', 'PIL') if m in sys.modules]; "
            "sys.exit(f'imported {heavy}' if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.slow
def test_info_reports_the_active_pil():
    result = subprocess.run([sys.executable, "-m", "pipeline.info"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["pil"].split()[0] in ("pillow", "pillow-simd") and Image.__version__ in info["pil"]


def test_the_backend_registry_is_what_the_flag_offers_and_build_loader_takes_a_resolved_backend(generated_shards):
    from pipeline.backends import AUTO_ORDER, BACKENDS, CHOICES, resolve
    from training.config import build_parser
    flag = next(a for a in build_parser()._actions if "--backend" in a.option_strings)
    assert tuple(flag.choices) == CHOICES == ("auto", *BACKENDS) and set(AUTO_ORDER) <= set(BACKENDS)
    cpu = torch.device("cpu")
    torch_backend = resolve("torch", cpu, generated_shards)
    assert resolve(torch_backend, cpu) is torch_backend  # resolved once, passed down as it is
    loader = pipeline.build_loader(generated_shards, "val", 4, backend=torch_backend, workers=0, device="cpu")
    assert loader.backend == "torch" == torch_backend.name


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/shards", "https://example.org/imagenet"])
def test_a_backend_that_cannot_read_the_location_is_named_with_the_one_that_can(url):
    """The URL schemes each backend reads are one fact of the registry: auto skips DALI for http(s), and naming
    a DALI backend for it is one line saying what it reads and which backend does read it (before DALI is
    imported or anything is fetched)."""
    from pipeline.backends import BACKENDS, resolve
    cpu = torch.device("cpu")
    assert resolve("auto", cpu, url).name == "torch"
    for name in ("dali", "dali-cpu"):
        with pytest.raises(pipeline.BackendUnavailable) as error:
            resolve(name, cpu, url)
        message = str(error.value)
        assert f"backend {name!r} cannot read {url.split(':')[0]}://" in message and url in message, message
        assert "local folders, s3:// only; use backend 'torch'" in message and "\n" not in message, message
    for local in (None, "/data/shards", "file:///data/shards"):
        assert resolve("torch", cpu, local).reads(local)
    dali_cpu = BACKENDS["dali-cpu"]  # a Backend resolved for a folder, then handed a URL it cannot read
    with pytest.raises(pipeline.BackendUnavailable, match=rf"backend 'dali-cpu' cannot read .*\({url}\)"):
        pipeline.build_loader(url, "train", 4, backend=dali_cpu, device="cpu")
