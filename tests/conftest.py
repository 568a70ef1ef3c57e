"""Shared fixtures: generated JPEG trees and the real ImageNet sample photographs."""
import os
import shutil
import signal
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests and the processes they start keep their caches (verified-shard records, compiled code) to themselves.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="cbam-tests-cache-")
SAMPLE_DIR = os.path.join(ROOT, "..", "shared", "data", "imagenet-sample")


def imagenet_sample_files():
    """Paths of the shared real ImageNet JPEGs, or skip the test with the reason."""
    if not os.path.isdir(SAMPLE_DIR):
        pytest.skip(f"real ImageNet samples not found at {os.path.normpath(SAMPLE_DIR)}")
    files = sorted(f for f in os.listdir(SAMPLE_DIR) if f.upper().endswith(".JPEG"))
    if not files:
        pytest.skip(f"no .JPEG files in {os.path.normpath(SAMPLE_DIR)}")
    return [os.path.join(SAMPLE_DIR, f) for f in files]


def build_sample_tree(dest, limit=None, val_every=0):
    """Copies the shared samples into dest/train/<wnid>/ (and every val_every-th also into dest/val/<wnid>/).

    Returns the sorted list of wnids (= class index order)."""
    files = imagenet_sample_files()[:limit]
    wnids = []
    for i, path in enumerate(files):
        name = os.path.basename(path)
        wnid = name.split("_")[0]
        wnids.append(wnid)
        os.makedirs(os.path.join(dest, "train", wnid), exist_ok=True)
        shutil.copy(path, os.path.join(dest, "train", wnid, name))
        if val_every and i % val_every == 0:
            os.makedirs(os.path.join(dest, "val", wnid), exist_ok=True)
            shutil.copy(path, os.path.join(dest, "val", wnid, name))
    return sorted(set(wnids))


@pytest.fixture
def sample_tree(tmp_path):
    """A small ImageNet-layout tree of real photographs (first 24 samples, val = every 3rd)."""
    root = tmp_path / "imagenet"
    build_sample_tree(str(root), limit=24, val_every=3)
    return root


def run_make_shards(src, out, max_count, *extra):
    """Runs the real tools/make_shards.py as a user would; returns the shard directory as a str."""
    import subprocess
    import sys
    command = [sys.executable, os.path.join(ROOT, "tools", "make_shards.py"), str(src), str(out),
               "--workers", "2", "--max-count", str(max_count), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, f"make_shards failed: {result.stderr[-2000:]}"
    return str(out)


def dali_importable():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


needs_dali = pytest.mark.skipif(not dali_importable(), reason="NVIDIA DALI is not installed")
CPU_BACKENDS = ["torch", pytest.param("dali-cpu", marks=needs_dali)]
UNIQUE_CLASSES = 121  # labels 0..120: one, two and three ASCII digits


@pytest.fixture(scope="session")
def generated_shards(tmp_path_factory):
    """Shards of a generated tree: 4 classes, 48 train samples in 5 shards of 9-10, 20 val samples in 2 shards."""
    from shards.synthetic import write_tree
    root = tmp_path_factory.mktemp("generated")
    write_tree(str(root / "src"), classes=4, train_per_class=12, val_per_class=5, size=64, seed=1)
    return run_make_shards(root / "src", root / "shards", 10, "--skip-bad")


@pytest.fixture(scope="session")
def unique_shards(tmp_path_factory):
    """121 classes x 1 sample per split, so a label identifies a sample: 7 uneven train shards (17 or 18 samples),
    7 val shards."""
    from shards.synthetic import write_tree
    root = tmp_path_factory.mktemp("unique")
    write_tree(str(root / "src"), classes=UNIQUE_CLASSES, train_per_class=1, val_per_class=1, size=20, seed=2)
    return run_make_shards(root / "src", root / "shards", 18, "--skip-bad")


@pytest.fixture(scope="session")
def real_shards(tmp_path_factory):
    """Real ImageNet photographs, one per class: 24 train (3 shards), 8 val (1 shard)."""
    root = tmp_path_factory.mktemp("real")
    build_sample_tree(str(root / "src"), limit=24, val_every=3)
    return run_make_shards(root / "src", root / "shards", 10, "--skip-bad")


def manifest(shard_dir):
    import json
    with open(os.path.join(shard_dir, "manifest.json")) as handle:
        return json.load(handle)


def epoch_batches(shard_dir, split, batch_size, backend, *, rank=0, world_size=1, epoch=0, workers=2,
                  image_size=16, **kwargs):
    """(loader, [(images, labels), ...]) for one epoch on CPU."""
    import pipeline
    loader = pipeline.build_loader(shard_dir, split, batch_size, backend=backend, rank=rank, world_size=world_size,
                                   workers=workers, device="cpu", image_size=image_size, **kwargs)
    loader.set_epoch(epoch)
    return loader, list(loader)


def labels_of(batches):
    return [int(v) for _, labels in batches for v in labels]


@pytest.fixture
def saved_signal_handlers():
    """SIGTERM's and SIGINT's handlers restored after a test that installs its own."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


# Fixtures that run train.py (a trained checkpoint, a reference run): a test that uses one is slow whatever its own
# body costs, so that `make test-fast` (-m "not slow") never builds them.
SLOW_FIXTURES = {"trained", "reference_run", "two_tasks"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
