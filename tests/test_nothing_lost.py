"""Nothing lost, in-process: damaged checkpoints are found by their checksum and `--resume auto` goes on from the
newest intact one; the output folder is checked before anything is built; metrics rows of a validation run again
are not duplicated; stop reasons (a signal during set-up, a divergence). train.py end to end:
tests/test_train_end_to_end.py."""
import errno
import json
import math
import os
import signal
import zipfile

import pytest
import torch

from training import checkpoint, config, output_dir, resume, stop
from training.distributed import World

DATA_STUB = None  # set by the data_stub fixture


def state_at(step, val_owed=False):
    torch.manual_seed(step)
    return {"model": {"w": torch.randn(64, 64), "b": torch.randn(64)}, "epoch": step // 10, "batch": step % 10,
            "step": step, "val_owed": val_owed, "config": {"lr": 0.1}, "optimizer": {"state": {}}, "scaler": {},
            "rng": {}, "best_prec1": 0.0}


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
    path, ckpt = resume.load_for_resume("auto", out, "T", lines.append)
    assert path == checkpoint.previous_path(out, "T") and ckpt["step"] == 12
    assert lines[0] == f"=> skipped: checkpoint {latest} is damaged: its content does not match the sha256 it " \
                       "was saved with"
    assert lines[1] == f"=> resuming from {path}, the newest intact checkpoint"
    with pytest.raises(checkpoint.DamagedCheckpoint, match=f"checkpoint {latest} is damaged"):
        resume.load_for_resume(latest, out, "T", lines.append)  # named explicitly: refused


def test_resume_auto_skips_a_latest_file_without_training_state_and_resume_path_refuses_it(tmp_path):
    """A file holding weights alone (an average of checkpoints, an export) where the latest checkpoint belongs:
    `--resume auto` goes on from the previous one; `--resume FILE` says what the file is good for."""
    out, lines = str(tmp_path), []
    checkpoint.save(out, "T", state_at(31), is_best=False)
    latest = checkpoint.save(out, "T", state_at(32), is_best=False)
    weights_only = {k: v for k, v in state_at(33).items() if k not in ("optimizer", "rng")}
    checkpoint.save_atomic({**weights_only, "sha256": checkpoint.content_sha256(weights_only)}, latest)
    path, ckpt = resume.load_for_resume("auto", out, "T", lines.append)
    assert path == checkpoint.previous_path(out, "T") and ckpt["step"] == 31
    assert lines[0] == f"=> skipped: checkpoint {latest} holds no training state (optimizer, rng missing)"
    with pytest.raises(config.UsageError, match=r"--resume checkpoint .* holds no training state .*--pretrained"):
        resume.load_for_resume(latest, out, "T", lines.append)
    assert resume.load_for_resume(latest, out, "T", lines.append, training=False)[1]["step"] == 33  # --evaluate


def test_resume_auto_prefers_the_best_copy_when_it_is_newer_than_the_previous_one(tmp_path):
    out = str(tmp_path)
    checkpoint.save(out, "T", state_at(20, val_owed=True), is_best=False)  # before validation
    latest = checkpoint.save(out, "T", state_at(20), is_best=True)  # after it, copied to _model_best
    with open(latest, "r+b") as f:  # cut short
        f.truncate(os.path.getsize(latest) // 2)
    path, ckpt = resume.load_for_resume("auto", out, "T", lambda line: None)
    assert path == checkpoint.best_path(out, "T") and (ckpt["step"], ckpt["val_owed"]) == (20, False)
    for name in ("T_checkpoint.prev.pth.tar", "T_model_best.pth.tar"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(config.UsageError, match="no intact checkpoint of prefix T in .* is damaged"):
        resume.load_for_resume("auto", out, "T", lambda line: None)


def test_a_crash_between_the_two_renames_leaves_the_previous_checkpoint(tmp_path):
    out = str(tmp_path)
    checkpoint.save(out, "T", state_at(5), is_best=False)
    latest = checkpoint.save(out, "T", state_at(6), is_best=False)
    os.remove(latest)  # as if killed after the first rename
    path, ckpt = resume.load_for_resume("auto", out, "T", lambda line: None)
    assert path == checkpoint.previous_path(out, "T") and ckpt["step"] == 5


def test_a_save_that_fails_keeps_the_checkpoints_before_it_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    out = str(tmp_path)
    checkpoint.save(out, "T", state_at(5), is_best=False)
    latest = checkpoint.save(out, "T", state_at(6), is_best=False)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full_disk)  # the new checkpoint is written, then the disk is full
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.save(out, "T", state_at(7), is_best=True)
    monkeypatch.undo()
    message = str(error.value)
    assert message.startswith(f"cannot save checkpoint {latest}: {os.strerror(errno.ENOSPC)}; ") and "\n" not in message
    assert "bytes needed" in message and message.endswith(f"free in {out}")
    assert sorted(os.listdir(out)) == ["T_checkpoint.prev.pth.tar", "T_checkpoint.pth.tar"]
    assert checkpoint.load(latest)["step"] == 6 and checkpoint.load(checkpoint.previous_path(out, "T"))["step"] == 5


# --- the output folder, checked before anything is built (training/output_dir.py) -----------------------------------

def output_args(folder, *flags):
    return config.parse_args([DATA_STUB, "--output-dir", str(folder), "--prefix", "R", *flags])


@pytest.fixture(scope="module", autouse=True)
def data_stub(tmp_path_factory):
    """The smallest DATA folder parse_args accepts."""
    global DATA_STUB
    folder = tmp_path_factory.mktemp("data")
    (folder / "manifest.json").write_text("{}")
    DATA_STUB = str(folder)


def test_a_folder_holding_a_run_of_the_prefix_is_refused_without_resume_or_overwrite(tmp_path):
    output_dir.check_output_dir(output_args(tmp_path / "new"), writer=False)  # made, writable, empty
    assert os.path.isdir(tmp_path / "new") and os.listdir(tmp_path / "new") == []
    (tmp_path / "R_metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    (tmp_path / "R_model_best.pth.tar").write_bytes(b"x")
    (tmp_path / "other_checkpoint.pth.tar").write_bytes(b"x")  # another prefix's run does not count
    with pytest.raises(config.UsageError) as error:
        output_dir.check_output_dir(output_args(tmp_path), writer=False)
    assert str(error.value) == (f"--output-dir {tmp_path} already holds a run of prefix R (R_model_best.pth.tar, "
                                "R_metrics.jsonl): pass --resume auto to continue it, --overwrite to replace it, "
                                "or another --output-dir or --prefix")
    for flags in (["--resume", "auto"], ["--overwrite"], ["--prefix", "S"], ["--benchmark"]):
        output_dir.check_output_dir(output_args(tmp_path, *flags), writer=False)
    with pytest.raises(config.UsageError, match="--overwrite and --resume exclude each other"):
        output_args(tmp_path, "--overwrite", "--resume", "auto")


def test_overwrite_replaces_the_run_of_the_prefix_only(tmp_path):
    held = ["R_checkpoint.pth.tar", "R_checkpoint.prev.pth.tar", "R_model_best.pth.tar", "R_metrics.jsonl",
            "R_epoch3.pth.tar", "R_epoch11.pth.tar"]  # the last two kept by --keep-epochs
    for name in held + ["S_checkpoint.pth.tar", "S_epoch3.pth.tar"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "R_tensorboard").mkdir()
    run = config.resolve(output_args(tmp_path, "--overwrite", "--workers", "0"), World(0, 0, 1, 1, torch.device("cpu")))
    lines = []
    output_dir.prepare_output_dir(run, lines.append)
    assert sorted(os.listdir(tmp_path)) == ["R_config.json", "S_checkpoint.pth.tar", "S_epoch3.pth.tar"]
    assert lines == [f"removed {tmp_path / name} (--overwrite)" for name in held + ["R_tensorboard"]]


@pytest.mark.parametrize("prefix", ["runs/a", "../up", "..", "a/../b", ""])
def test_a_prefix_that_is_not_a_plain_name_is_refused(prefix):
    with pytest.raises(config.UsageError, match="--prefix must be a plain file-name part"):
        config.parse_args([DATA_STUB, "--prefix", prefix])


def test_an_output_dir_that_is_a_file_or_under_one_is_named(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(config.UsageError, match=f"--output-dir {tmp_path}/plain is a file, not a folder"):
        output_dir.check_output_dir(output_args(tmp_path / "plain"), writer=False)
    with pytest.raises(config.UsageError, match=f"--output-dir {tmp_path}/plain/sub cannot be written: Not a "
                                                "directory"):
        output_dir.check_output_dir(output_args(tmp_path / "plain" / "sub"), writer=False)


# --- metrics (training/metrics.py, tools/plot_metrics.py) ------------------------------------------------------------

def test_a_resume_that_validates_again_drops_the_val_row_of_its_step_only(tmp_path):
    from training.metrics import MetricsFile
    path = tmp_path / "m.jsonl"
    rows = [{"kind": "train", "step": 5}, {"kind": "epoch", "step": 5}, {"kind": "val", "step": 5},
            {"kind": "train", "step": 6}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    MetricsFile(str(path), True, resumed_step=5, val_owed=True)
    assert [json.loads(line)["kind"] for line in path.read_text().splitlines()] == ["train", "epoch"]


def test_plot_metrics_leaves_out_a_torn_last_line_saying_so(tmp_path, capsys):
    from tools.plot_metrics import read_records
    path = tmp_path / "m.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "val", "step": 1}\n{"kind": "tr')
    assert read_records(str(path)) == [{"kind": "train", "step": 1}, {"kind": "val", "step": 1}]
    assert capsys.readouterr().err == f"plot_metrics.py: note: {path}:3: left out a torn last line (the run " \
                                      "was stopped while writing it)\n"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "tr\n{"kind": "val", "step": 1}\n')
    with pytest.raises(SystemExit, match=f"{path}:2: not a JSON line"):
        read_records(str(path))  # damage inside the file is not a torn line


# --- stop reasons (training/stop.py) ---------------------------------------------------------------------------------

def test_a_signal_during_set_up_raises_and_during_training_sets_the_flag(saved_signal_handlers):
    request = stop.StopRequest(at_once=True)
    with pytest.raises(stop.Interrupted, match="stopped by SIGINT before training started: nothing to save yet"):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):  # the Python-level handler runs between bytecodes
            pass
    request.defer()
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):
        if request.signum == signal.SIGINT:  # the first signal is the one that counts
            break
    assert request.requested and stop.stopped_status(World(0, 0, 1, 1, torch.device("cpu")), request) == 130


def test_a_non_finite_loss_or_weight_is_a_divergence_but_an_fp16_skipped_step_is_not():
    from training.learner import Learner
    world = World(0, 0, 1, 1, torch.device("cpu"))
    model = torch.nn.Linear(3, 2)

    def learner(fp16):
        return Learner(model, model, None, torch.amp.GradScaler("cpu", enabled=fp16), None, None)
    stop.check_finite(world, learner(False), 2.5, 0, 3, 10)
    stop.check_finite(world, learner(True), math.inf, 0, 3, 10)  # the scaler skipped the step
    with pytest.raises(stop.Diverged, match=r"the run diverged at epoch 1, step 4/10: the loss is nan; stopped "
                                            "without saving"):
        stop.check_finite(world, learner(False), math.nan, 1, 4, 10)
    with torch.no_grad():
        model.weight[0, 1] = math.inf
    stop.check_finite(world, learner(False), 1.0, 0, 3, 10)  # between checkpoints, the loss decides
    for fp16, saving in ((True, False), (False, True)):
        with pytest.raises(stop.Diverged, match="the weights are not finite"):
            stop.check_finite(world, learner(fp16), 1.0, 0, 3, 10, saving=saving)


def test_an_fp16_run_whose_every_step_is_skipped_is_a_divergence_once_the_loss_scale_falls_below_one():
    """The scaler halves its scale at each skipped step (65536 at the start): after 16 overflowing steps it is 1,
    still a run; after the 17th, 0.5 and a divergence, named as such, although weights and the last loss are
    finite-looking to the other checks (a skipped step changes no weight)."""
    from training.learner import Learner
    world = World(0, 0, 1, 1, torch.device("cpu"))
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    learner = Learner(model, model, optimizer, torch.amp.GradScaler("cpu"), None, None)
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 18):
        learner.scaler.scale(model(torch.ones(1, 3)).sum() * math.inf).backward()  # every gradient overflows
        learner.scaler.step(optimizer)
        learner.scaler.update()
        optimizer.zero_grad()
        if step == 16:
            assert learner.scaler.get_scale() == 1.0
            stop.check_finite(world, learner, math.inf, 0, step, 20)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(stop.Diverged, match=r"step 17/20: the fp16 loss scale fell to 0\.5, below 1: the gradients "
                                            "overflowed at step after step"):
        stop.check_finite(world, learner, math.inf, 0, 17, 20)
