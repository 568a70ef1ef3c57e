"""Each file a run needs is read once per process and handed on: the checkpoint --evaluate scores, and the
manifest (on s3:// or https:// every read is a request). Counted with Python's audit hook for `open`, which sees
every file the process opens, torch.load's included."""
import os
import sys

import pytest

import train
from model import build_model
from training.checkpoint import save

_watched = {}  # path -> times opened, while a test watches it


def _count_opens(event, args):
    if event == "open" and _watched and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path in _watched:
            _watched[path] += 1


sys.addaudithook(_count_opens)  # an audit hook cannot be removed: it counts only while _watched names files


@pytest.fixture
def opens():
    def watch(*paths):
        for path in paths:
            _watched[os.path.realpath(path)] = 0
        return _watched
    yield watch
    _watched.clear()


def test_evaluate_reads_its_checkpoint_once_and_the_manifest_once(generated_shards, tmp_path, opens):
    import json
    classes = json.load(open(os.path.join(generated_shards, "manifest.json")))["classes"]
    state = {"model": build_model(18, "CBAM", num_classes=len(classes)).state_dict(),
             "config": {"depth": 18, "att_type": "CBAM", "val_image_size": 32}, "epoch": 1, "classes": classes}
    path = save(str(tmp_path), "E", state, is_best=False)
    manifest = os.path.join(generated_shards, "manifest.json")
    counted = opens(path, manifest)
    assert train.cli(["--evaluate", "--resume", path, "-j", "0", "-b", "10", "--backend", "torch",
                      generated_shards]) == 0
    assert counted == {os.path.realpath(path): 1, os.path.realpath(manifest): 1}


def test_a_training_run_reads_the_manifest_once(generated_shards, tmp_path, opens):
    manifest = os.path.join(generated_shards, "manifest.json")
    counted = opens(manifest)
    assert train.cli(["--depth", "18", "--image-size", "32", "-j", "0", "-b", "24", "--epochs", "1", "--backend",
                      "torch", "--output-dir", str(tmp_path), generated_shards]) == 0
    assert counted == {os.path.realpath(manifest): 1}
