"""Nothing lost: damaged checkpoints are found by their checksum and `--resume auto` goes on from the newest
intact one (training/checkpoint.py)."""
import os
import zipfile

import pytest
import torch

from training import checkpoint, config


def state_at(step, val_owed=False):
    torch.manual_seed(step)
    return {"model": {"w": torch.randn(64, 64), "b": torch.randn(64)}, "epoch": step // 10, "batch": step % 10,
            "step": step, "val_owed": val_owed, "config": {"lr": 0.1}}


def damage_tensor_bytes(path, size, at=0.5):
    """`size` random bytes inside the largest tensor record of a torch.save zip: torch.load still reads it
    (it checks no CRC), and the weights differ."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = (int.from_bytes(f.read(2), "little") for _ in range(2))
    start = info.header_offset + 30 + name_length + extra_length + int(info.file_size * at)
    size = min(size, info.file_size // 3)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(os.urandom(size))


def test_changed_bytes_inside_a_tensor_are_found_and_named(tmp_path):
    path = checkpoint.save(str(tmp_path), "T", state_at(7), is_best=False)
    damage_tensor_bytes(path, 1000, at=0.3)
    torch.load(path, map_location="cpu", weights_only=True)  # torch itself reads it without complaint
    with pytest.raises(checkpoint.DamagedCheckpoint) as error:
        checkpoint.load(path)
    assert str(error.value) == f"checkpoint {path} is damaged: its content does not match the sha256 it was " \
                               "saved with"


def test_a_checkpoint_without_checksum_loads_unchecked(tmp_path):
    """The CBAM authors' released checkpoints have none."""
    path = tmp_path / "original.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet50", "state_dict": {"module.fc.weight": torch.ones(2, 2)}}, path)
    assert checkpoint.load(str(path))["epoch"] == 90


def test_resume_auto_skips_a_damaged_latest_checkpoint_for_the_previous_one(tmp_path):
    out, lines = str(tmp_path), []
    checkpoint.save(out, "T", state_at(12), is_best=False)
    latest = checkpoint.save(out, "T", state_at(13), is_best=False)
    assert checkpoint.load(checkpoint.previous_path(out, "T"))["step"] == 12  # the one before is kept
    damage_tensor_bytes(latest, 3000, at=0.6)
    path, ckpt = checkpoint.load_for_resume("auto", out, "T", lines.append)
    assert path == checkpoint.previous_path(out, "T") and ckpt["step"] == 12
    assert lines[0] == f"=> skipped: checkpoint {latest} is damaged: its content does not match the sha256 it " \
                       "was saved with"
    assert lines[1] == f"=> resuming from {path}, the newest intact checkpoint"
    with pytest.raises(checkpoint.DamagedCheckpoint, match=f"checkpoint {latest} is damaged"):
        checkpoint.load_for_resume(latest, out, "T", lines.append)  # named explicitly: refused


def test_resume_auto_prefers_the_best_copy_when_it_is_newer_than_the_previous_one(tmp_path):
    out = str(tmp_path)
    checkpoint.save(out, "T", state_at(20, val_owed=True), is_best=False)  # before validation
    latest = checkpoint.save(out, "T", state_at(20), is_best=True)  # after it, copied to _model_best
    with open(latest, "r+b") as f:  # cut short
        f.truncate(os.path.getsize(latest) // 2)
    path, ckpt = checkpoint.load_for_resume("auto", out, "T", lambda line: None)
    assert path == checkpoint.best_path(out, "T") and (ckpt["step"], ckpt["val_owed"]) == (20, False)
    for name in ("T_checkpoint.prev.pth.tar", "T_model_best.pth.tar"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(config.UsageError, match="no intact checkpoint of prefix T in .* is damaged"):
        checkpoint.load_for_resume("auto", out, "T", lambda line: None)


def test_a_crash_between_the_two_renames_leaves_the_previous_checkpoint(tmp_path):
    out = str(tmp_path)
    checkpoint.save(out, "T", state_at(5), is_best=False)
    latest = checkpoint.save(out, "T", state_at(6), is_best=False)
    os.remove(latest)  # as if killed after the first rename
    path, ckpt = checkpoint.load_for_resume("auto", out, "T", lambda line: None)
    assert path == checkpoint.previous_path(out, "T") and ckpt["step"] == 5
