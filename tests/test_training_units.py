"""Unit tests of the training/ package's pure parts, each in a fraction of a second on CPU: the learning-rate
schedule and weight decay groups (optim), accuracy counting, the log line and the metrics file (metrics), RNG
state and resume (resume), checkpoint files (checkpoint), flags and the RunConfig (config), and stop requests
(stop)."""
import dataclasses
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from training import checkpoint, config, resume, stop
from training.distributed import World
from training.learner import Learner
from training.metrics import EpochProgress, MetricsFile, RunningSums, authors_log_line, correct_counts, summarize
from training.optim import make_optimizer, param_groups, set_learning_rate

CPU = torch.device("cpu")


# --- training/metrics.py: MetricsFile (moved from tests/test_metrics_file.py) ---------------------------------------
# A resumed run does not duplicate the rows of the steps it trains again.

def test_rows_after_the_resumed_checkpoint_are_dropped(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, 11)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "train", "st')  # torn by a kill
    metrics = MetricsFile(str(path), True, resumed_step=6)
    metrics.write(kind="train", step=7, loss=0.5)
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]


def test_a_fresh_run_appends_and_other_ranks_write_nothing(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"kind": "train", "step": 3}\n')
    MetricsFile(str(path), True).write(kind="val", step=4)
    MetricsFile(str(path), False, resumed_step=0).write(kind="val", step=5)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [3, 4]


# --- shared: a real RunConfig on a CPU World ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The smallest DATA folder parse_args accepts (it only checks that manifest.json exists)."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "manifest.json").write_text("{}")
    return str(folder)


def cpu_world(size=1, local_size=1):
    return World(0, 0, size, local_size, CPU)


def make_run(data_dir, *flags, world=None):
    return config.resolve(config.parse_args([data_dir, "--workers", "0", *flags]), world or cpu_world())


def small_model():
    """Conv (weight + bias), BatchNorm (weight + bias), Linear (weight + bias)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 5))



def test_a_new_row_never_lands_on_a_torn_or_unterminated_line(tmp_path):
    path = tmp_path / "m.jsonl"
    for tail in ('{"kind": "train", "st', '{"kind": "train", "step": 2}', "3", "[]"):
        path.write_text('{"kind": "train", "step": 1}\n' + tail)
        MetricsFile(str(path), True).write(kind="val", step=3)
        records = [json.loads(line) for line in path.read_text().splitlines()]
        expected = [1, 2, 3] if tail.endswith("}") and "step" in tail else [1, 3]
        assert [r["step"] for r in records] == expected, tail
        path.write_text('{"kind": "train", "step": 1}\n' + tail)
        MetricsFile(str(path), True, resumed_step=1).write(kind="val", step=2)
        assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2], tail


def test_an_empty_window_counts_no_images():
    assert summarize(torch.zeros(4)) == (0.0, 0.0, 0.0, 0)


# --- training/optim.py: learning-rate schedule and weight decay -----------------------------------------------------

def lr_at(run, step, steps_per_epoch):
    optimizer = make_optimizer(small_model(), run)
    lr = set_learning_rate(optimizer, run, step, steps_per_epoch)
    assert all(group["lr"] == lr for group in optimizer.param_groups)  # every group, not only the first
    return lr


def test_step_schedule_divides_by_ten_every_30_epochs(data_dir):
    run = make_run(data_dir, "--lr", "0.4", "--epochs", "90")
    spe = 10
    expected = {0: 0.4, 29: 0.4, 30: 0.04, 59: 0.04, 60: 0.004, 89: 0.004}
    for epoch, lr in expected.items():
        first, last = lr_at(run, epoch * spe, spe), lr_at(run, epoch * spe + spe - 1, spe)
        assert first == last == pytest.approx(lr), epoch  # constant within an epoch


def test_warm_up_ramps_linearly_to_the_peak_then_the_schedule_takes_over(data_dir):
    run = make_run(data_dir, "--lr", "0.4", "--warmup-epochs", "2")
    spe = 10  # 20 warm-up steps
    ramp = [lr_at(run, s, spe) for s in range(20)]
    assert ramp[0] == pytest.approx(0.4 / 20)
    assert ramp[-1] == pytest.approx(0.4)
    assert np.allclose(np.diff(ramp), 0.4 / 20)  # linear: equal increments
    assert lr_at(run, 20, spe) == pytest.approx(0.4) and lr_at(run, 25, spe) == pytest.approx(0.4)


def test_fractional_warm_up_counts_in_steps(data_dir):
    run = make_run(data_dir, "--lr", "0.1", "--warmup-epochs", "0.5")
    assert lr_at(run, 0, 10) == pytest.approx(0.1 / 5)
    assert lr_at(run, 4, 10) == pytest.approx(0.1)
    assert lr_at(run, 5, 10) == pytest.approx(0.1)


def test_cosine_starts_at_the_peak_halves_midway_and_ends_near_zero(data_dir):
    run = make_run(data_dir, "--lr", "0.2", "--epochs", "4", "--lr-schedule", "cosine")
    spe = 25
    total = 4 * spe
    lrs = [lr_at(run, s, spe) for s in range(total)]
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[total // 2] == pytest.approx(0.1)
    assert 0 < lrs[-1] < 1e-3 * 0.2  # the last step trained is one step before 0
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # updated every step, decreasing
    assert lrs[37] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 37 / total)))


def test_the_learning_rate_of_a_step_does_not_depend_on_the_steps_before(data_dir):
    """A resumed run sets the LR of its first step from the step number alone and continues the same curve."""
    run = make_run(data_dir, "--lr-schedule", "cosine", "--warmup-epochs", "1", "--epochs", "3")
    optimizer = make_optimizer(small_model(), run)
    continued = [set_learning_rate(optimizer, run, s, 7) for s in range(21)]
    resumed = [set_learning_rate(make_optimizer(small_model(), run), run, s, 7) for s in range(12, 21)]
    assert continued[12:] == resumed


def test_the_learning_rate_reaches_the_exempt_group_too(data_dir):
    run = make_run(data_dir, "--lr", "0.4", "--warmup-epochs", "1", "--no-bn-wd")
    optimizer = make_optimizer(small_model(), run)
    assert len(optimizer.param_groups) == 2
    lr = set_learning_rate(optimizer, run, 4, 10)
    assert lr == pytest.approx(0.2) and [g["lr"] for g in optimizer.param_groups] == [lr, lr]


def test_no_bn_weight_decay_exempts_batchnorm_and_biases():
    model = small_model()
    conv, bn, _, linear = model
    groups = param_groups(model, 1e-4, True)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    exempt = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed == {id(conv.weight), id(linear.weight)}
    assert exempt == {id(conv.bias), id(bn.weight), id(bn.bias), id(linear.bias)}
    everything = param_groups(model, 1e-4, False)
    assert [g["weight_decay"] for g in everything] == [1e-4]
    assert {id(p) for p in everything[0]["params"]} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("flag", [True, False])
def test_sgd_step_decays_exactly_the_parameters_the_flag_says(data_dir, flag):
    """With zero gradients, one SGD step multiplies a decayed parameter by (1 - lr * wd) and leaves the rest."""
    flags = ["--lr", "0.5", "--weight-decay", "0.1"] + (["--no-bn-wd"] if flag else [])
    model = small_model()
    conv, bn, _, linear = model
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.bias.fill_(1.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = make_optimizer(model, make_run(data_dir, *flags))
    assert optimizer.defaults["momentum"] == pytest.approx(0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        exempt = flag and p.ndim == 1
        expected = before[name] * (1.0 if exempt else 1 - 0.5 * 0.1)
        assert torch.allclose(p.detach(), expected), name


# --- training/metrics.py: accuracy, sums, log line, epoch rows ------------------------------------------------------

def labelled_logits():
    """4 samples, 6 classes: the true class ranks 1st, 3rd, 6th and 5th."""
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5],
                           [1.0, 9, 8, 7, 2, 3],
                           [6.0, 5, 4, 3, 2, 1],
                           [1.0, 2, 3, 4, 5, 6]])
    labels = torch.tensor([0, 3, 5, 1])
    return logits, labels


def test_correct_counts_top1_and_top5():
    logits, labels = labelled_logits()
    assert correct_counts(logits, labels).tolist() == [1.0, 3.0]
    assert correct_counts(logits, labels, ks=(1, 2, 3, 6)).tolist() == [1.0, 1.0, 2.0, 4.0]


def test_top5_with_fewer_than_5_classes_counts_every_sample():
    logits = torch.tensor([[0.0, 1, 2], [2.0, 1, 0]])
    labels = torch.tensor([0, 0])  # ranks 3rd and 1st
    assert correct_counts(logits, labels).tolist() == [1.0, 2.0]


def test_running_sums_average_over_samples_not_batches():
    logits, labels = labelled_logits()
    sums = RunningSums(CPU)
    sums.add(torch.tensor(2.0), logits[:1], labels[:1])  # 1 sample, top-1 and top-5 right
    sums.add(torch.tensor(0.5), logits[1:], labels[1:])  # 3 samples, top-5 right for 2
    loss, top1, top5, n = summarize(sums.take())
    assert (loss, n) == (pytest.approx((2.0 * 1 + 0.5 * 3) / 4), 4)
    assert (top1, top5) == (pytest.approx(25.0), pytest.approx(75.0))
    assert summarize(sums.take())[:3] == (0.0, 0.0, 0.0)  # take() starts a fresh window


def test_authors_log_line_matches_their_train_imagenet_format():
    """The format string of the CBAM authors' train_imagenet.py, with their AverageMeter's .val and .avg."""
    meter = types.SimpleNamespace
    batch_time, data_time = meter(val=0.5123, avg=0.25), meter(val=0.01, avg=0.0204)
    losses, top1, top5 = meter(val=6.91234, avg=6.95), meter(val=0.1, avg=12.3456), meter(val=0.5, avg=60.0)
    theirs = ('Epoch: [{0}][{1}/{2}]\t'
              'Time {batch_time.val:.3f} ({batch_time.avg:.3f})\t'
              'Data {data_time.val:.3f} ({data_time.avg:.3f})\t'
              'Loss {loss.val:.4f} ({loss.avg:.4f})\t'
              'Prec@1 {top1.val:.3f} ({top1.avg:.3f})\t'
              'Prec@5 {top5.val:.3f} ({top5.avg:.3f})'.format(
                  3, 10, 5005, batch_time=batch_time, data_time=data_time, loss=losses, top1=top1, top5=top5))
    ours = authors_log_line(3, 10, 5005, *[(m.val, m.avg) for m in (batch_time, data_time, losses, top1, top5)])
    assert ours == theirs
    assert ours.startswith("Epoch: [3][10/5005]\tTime 0.512 (0.250)\t")


def test_an_epoch_writes_a_row_every_print_freq_steps_at_its_end_and_a_summary(tmp_path, capsys):
    """Three steps with print_freq 2: the authors' line and a train row after steps 2 and 3, then the epoch row."""
    path = tmp_path / "m.jsonl"
    logits, labels = labelled_logits()
    losses = [4.0, 2.0, 1.0]
    with EpochProgress(cpu_world(), MetricsFile(str(path), True), epoch=2, steps=3, first_step=0,
                       print_freq=2) as progress:
        for step, loss in enumerate(losses, 1):
            progress.waiting_for_data()
            progress.batch_arrived(32)
            progress.step_done(step, 60 + step, 0.1 * step, torch.tensor(loss), logits, labels)
    progress.write_epoch_row(63)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["kind"], r["epoch"], r["step"]) for r in rows] == [("train", 2, 62), ("train", 2, 63), ("epoch", 2, 63)]
    assert [r["loss"] for r in rows] == pytest.approx([3.0, 1.0, 7.0 / 3])
    assert [r["top1"] for r in rows] == pytest.approx([25.0] * 3) and rows[0]["top5"] == pytest.approx(75.0)
    assert rows[0]["lr"] == pytest.approx(0.2) and rows[2]["lr"] == pytest.approx(0.3)
    assert all(r["images_per_sec"] > 0 and r["data_time"] >= 0 and r["elapsed_s"] >= 0 for r in rows)
    assert [r.get("image_size") for r in rows] == [32, 32, None]
    printed = capsys.readouterr()
    log = [line for line in (printed.out + printed.err).splitlines() if line.startswith("Epoch: ")]
    assert [line.split("\t")[0] for line in log] == ["Epoch: [2][2/3]", "Epoch: [2][3/3]"]
    assert "Loss 1.0000 (2.3333)" in log[1]  # this interval (step 3), the epoch so far (steps 1-3)


# --- training/checkpoint.py and training/resume.py: RNG state, files, resume ----------------------------------------

def draws():
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), np.random.standard_normal(), \
        [random.random() for _ in range(4)], random.gauss(0, 1)


def test_rng_state_round_trip_through_a_file_repeats_every_stream(tmp_path):
    random.gauss(0, 1)  # leaves a cached second normal in Python's state...
    np.random.standard_normal()  # ...and in numpy's legacy state: both must be restored too
    state = resume.rng_state()
    expected = draws()
    torch.save(state, tmp_path / "rng.pt")
    draws()  # move every stream on
    resume.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected


def learner_of(model, optimizer, scaler=None):
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    return Learner(model, model, optimizer, scaler, torch.nn.CrossEntropyLoss(), None)


def test_save_then_load_round_trips_the_state_and_copies_the_best(tmp_path, data_dir):
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()  # momentum buffers exist
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    run = make_run(data_dir, "--depth", "18")
    cfg = run.as_dict()
    position = resume.Position(epoch=3, batch=5, step=305, best_top1=71.5, elapsed_s=12.5)
    state = resume.make_state(learner_of(model, optimizer, scaler), position, run)
    path = checkpoint.save(str(tmp_path), "T", state, is_best=True)
    assert path == str(tmp_path / "T_checkpoint.pth.tar")
    assert sorted(os.listdir(tmp_path)) == ["T_checkpoint.pth.tar", "T_model_best.pth.tar"]  # no temporaries
    assert (tmp_path / "T_model_best.pth.tar").read_bytes() == (tmp_path / "T_checkpoint.pth.tar").read_bytes()
    loaded = checkpoint.load(path)
    assert (loaded["epoch"], loaded["batch"], loaded["step"], loaded["best_prec1"]) == (3, 5, 305, 71.5)
    assert loaded["elapsed_s"] == 12.5 and "ema" not in loaded
    assert loaded["arch"] == "resnet18" and loaded["config"] == cfg
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded["model"][name], tensor), name
    momentum = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"], momentum)
    checkpoint.save(str(tmp_path), "T", {**state, "epoch": 4}, is_best=False)
    assert checkpoint.load(path)["epoch"] == 4
    assert checkpoint.load(str(tmp_path / "T_model_best.pth.tar"))["epoch"] == 3  # the best stays


def test_restore_resumes_position_weights_optimizer_and_rngs(tmp_path, data_dir):
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    out = str(tmp_path / "out")
    run = make_run(data_dir, "--output-dir", out, "--prefix", "T", "--resume", "auto")
    state = resume.make_state(learner_of(model, optimizer, scaler), resume.Position(2, 7, 27, 50.0, 9.0), run)
    expected_draws = draws()
    checkpoint.save(out, "T", state, is_best=False)

    fresh = small_model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    position, path = resume.restore(run, learner_of(fresh, fresh_optimizer))
    assert position == resume.Position(epoch=2, batch=7, step=27, best_top1=50.0, elapsed_s=9.0)
    assert path == checkpoint.checkpoint_path(out, "T")
    assert draws() == expected_draws
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])

    # Stopped mid-epoch (batch 7): another global batch size would skip other samples than those trained on.
    other = make_run(data_dir, "--output-dir", out, "--prefix", "T", "--resume", "auto", "--batch-size", "128")
    with pytest.raises(config.UsageError) as error:
        resume.restore(other, learner_of(fresh, fresh_optimizer))
    assert "stopped mid-epoch" in str(error.value) and "batch_size (saved 256, now 128)" in str(error.value)


def test_restore_without_a_checkpoint_starts_at_start_epoch(tmp_path, data_dir):
    run = make_run(data_dir, "--output-dir", str(tmp_path), "--resume", "auto", "--start-epoch", "4")
    model = small_model()
    position, path = resume.restore(run, learner_of(model, torch.optim.SGD(model.parameters(), lr=0.1)))
    assert (position, path) == (resume.Position(epoch=4), None)
    assert (position.batch, position.step, position.best_top1) == (0, 0, 0.0)


def test_load_for_resume(tmp_path):
    out = str(tmp_path)
    assert resume.load_for_resume("", out, "T", print) == (None, {})
    assert resume.load_for_resume("auto", out, "T", print) == (None, {})  # nothing saved yet: a fresh start
    path = checkpoint.save(out, "T", {"epoch": 3}, is_best=False)
    assert resume.load_for_resume("auto", out, "T", print) == (path, {"epoch": 3})
    assert resume.load_for_resume(path, "elsewhere", "U", print) == (path, {"epoch": 3})
    with pytest.raises(config.UsageError, match="--resume checkpoint not found: .*missing.pth"):
        resume.load_for_resume(str(tmp_path / "missing.pth"), out, "T", print)


class NotPlainData:
    """An object whose unpickling could run code: weights_only loading must refuse it."""


@pytest.mark.parametrize("kind, message", [
    ("empty", "the file is empty (0 bytes)"),
    ("text", "not a checkpoint of plain tensors and numbers, or damaged"),
    ("torn", "not a checkpoint of plain tensors and numbers, or damaged"),
    ("object", "not a checkpoint of plain tensors and numbers, or damaged"),
])
def test_an_unloadable_file_is_one_line_naming_it(tmp_path, kind, message):
    path = tmp_path / f"{kind}.pth.tar"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a checkpoint\nsecond line\n")
    elif kind == "torn":  # a checkpoint cut short, as by a copy that did not finish
        torch.save({"model": {"w": torch.randn(1000)}, "epoch": 1}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        torch.save({"model": NotPlainData()}, path)
    with pytest.raises(config.UsageError) as error:
        checkpoint.load(str(path))
    text = str(error.value)
    assert "\n" not in text and str(path) in text and message in text, text
    assert "weights_only=False" not in text  # never advise running the file's code


def test_sweep_removes_only_temporaries_of_dead_writers_and_the_checkpoint_still_loads(tmp_path):
    dead_pid = subprocess.Popen([sys.executable, "-c", ""])
    dead_pid.wait()
    path = checkpoint.save(str(tmp_path), "T", {"epoch": 5}, is_best=False)
    torn = tmp_path / f"T_checkpoint.pth.tar.{dead_pid.pid}.tmp"
    torn.write_bytes(b"PK\x03\x04 half a checkpoint")  # a save killed mid-write
    live = tmp_path / f"T_model_best.pth.tar.{os.getpid()}.tmp"  # a save in progress
    live.write_bytes(b"")
    assert checkpoint.sweep_temporaries(str(tmp_path), "T") == [str(torn)]
    assert sorted(os.listdir(tmp_path)) == sorted(["T_checkpoint.pth.tar", live.name])
    assert checkpoint.load(path)["epoch"] == 5
    assert checkpoint.sweep_temporaries(str(tmp_path / "absent"), "T") == []


def test_check_mid_epoch_resume_names_every_changed_setting():
    saved = {"world_size": 2, "batch_size": 256, "backend_resolved": "torch", "workers": 4, "seed": 1,
             "image_size": 224, "shuffle_block_resolved": 1}
    resume.check_mid_epoch_resume(saved, {**saved, "lr": 9.0}, "c.pth")  # other settings may change
    with pytest.raises(config.UsageError) as error:
        resume.check_mid_epoch_resume(saved, {**saved, "world_size": 4, "seed": 2}, "c.pth")
    assert "world_size (saved 2, now 4)" in str(error.value) and "seed (saved 1, now 2)" in str(error.value)
    assert "batch_size" not in str(error.value)
    with pytest.raises(config.UsageError, match=r"--shuffle-block \(saved 1, now 64\)"):
        resume.check_mid_epoch_resume(saved, {**saved, "shuffle_block_resolved": 64}, "c.pth")
    # A checkpoint from before the order was recorded read the storage order of every epoch (block 0).
    older = {k: v for k, v in saved.items() if k != "shuffle_block_resolved"}
    resume.check_mid_epoch_resume(older, {**saved, "shuffle_block_resolved": 0}, "c.pth")
    with pytest.raises(config.UsageError, match=r"--shuffle-block \(saved 0, now 1\)"):
        resume.check_mid_epoch_resume(older, saved, "c.pth")


# --- training/flags.py, recipe.py and config.py: flags, recipes and RunConfig --------------------------------------

@pytest.mark.parametrize("flags, named", [
    (["--lr-schedule", "linear"], "--lr-schedule"),
    (["--epochs", "x"], "--epochs"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "0"], "--lr"),
    (["--momentum", "1"], "--momentum"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--start-epoch", "90"], "--start-epoch"),
    (["--image-size", "16"], "--image-size"),
    (["--evaluate"], "--evaluate"),
    (["--bogus"], "--bogus"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--lr", "-0.3"], "--lr must be > 0"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
    (["--weight-decay=-5e-5"], "--weight-decay must be >= 0"),
    (["--momentum", "-0.9"], "--momentum must be in [0, 1)"),
    (["--ema-decay=-inf"], "--ema-decay must be a finite number"),
    (["--cache-size", "inf"], "--cache-size must be a finite number"),
    (["--seed=-3"], "--seed must be >= 0, got -3"),
])
def test_a_bad_flag_is_one_line_naming_it(data_dir, flags, named):
    with pytest.raises(config.UsageError) as error:
        config.parse_args([data_dir, *flags])
    assert "\n" not in str(error.value) and named in str(error.value), str(error.value)


def test_a_data_folder_without_manifest_or_missing_is_named(tmp_path):
    with pytest.raises(config.UsageError, match="DATA has no manifest.json"):
        config.parse_args([str(tmp_path)])
    with pytest.raises(config.UsageError, match="DATA folder not found"):
        config.parse_args([str(tmp_path / "absent")])


def test_the_global_batch_must_divide_over_the_ranks(data_dir):
    with pytest.raises(config.UsageError, match="--batch-size 256 .* world size 3"):
        make_run(data_dir, world=cpu_world(size=3, local_size=3))
    run = make_run(data_dir, "--workers", "4", world=cpu_world(size=2, local_size=2))
    assert (run.per_rank_batch, run.loader_workers) == (128, 2)  # --workers counts per node


def test_flags_are_normalised_and_the_config_resolves_for_cpu(data_dir):
    run = make_run(data_dir, "--att-type", "CbAm", "--depth", "18")
    assert (run.att_type, run.prefix, run.val_image_size) == ("CBAM", "RESNET18_CBAM", 224)
    assert (run.amp, run.amp_dtype, run.compile, run.cudnn_benchmark) == ("off", None, "off", False)
    assert run.memory_format == torch.channels_last
    with pytest.raises(AttributeError):
        run.no_such_flag  # noqa: B018


def test_cuda_graphs_are_off_by_default_and_on_is_refused_where_it_cannot_run(data_dir):
    assert make_run(data_dir).cuda_graphs is False
    assert make_run(data_dir).as_dict()["cuda_graphs_resolved"] is False
    with pytest.raises(config.UsageError, match="--cuda-graphs on needs a CUDA device, this run is on cpu"):
        make_run(data_dir, "--cuda-graphs", "on")
    with pytest.raises(config.UsageError, match="invalid choice: 'maybe'"):
        make_run(data_dir, "--cuda-graphs", "maybe")


def test_help_groups_the_flags_and_states_each_default_once():
    text = config.build_parser().format_help()
    for title in ("DATA and how it is read:", "the model:", "optimisation:", "schedule:", "speed (", "output, resume",
                  "evaluation only:", "benchmark:", "recipes ("):
        assert title in text, title
    entries = re.split(r"\n  (?=-)", text)  # one entry per flag
    assert entries and all(entry.count("default") <= 1 for entry in entries), \
        [entry for entry in entries if entry.count("default") > 1]
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 0.0)" in next(entry for entry in entries if entry.startswith("--warmup-epochs"))


def test_run_config_is_frozen(data_dir):
    run = make_run(data_dir)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.lr = 1.0
    with pytest.raises(TypeError):
        run.flags["lr"] = 1.0
    assert run.lr == 0.1


def test_as_dict_is_json_and_holds_what_checkpoints_compare(data_dir):
    """Checkpoints record as_dict(); resume compares its depth, att_type and data-order settings. A renamed key
    would compare None with None and let a wrong resume through."""
    cfg = make_run(data_dir, "--seed", "7").as_dict()
    assert json.loads(json.dumps(cfg)) == cfg
    needed = {"depth", "att_type", "lr", "epochs", "lr_schedule", "warmup_epochs", *resume.DATA_ORDER_SETTINGS}
    assert needed <= cfg.keys()
    assert (cfg["seed"], cfg["world_size"], cfg["backend_resolved"], cfg["device"]) == (7, 1, "torch", "cpu")
    assert all(cfg[k] is not None for k in needed)


# --- training/stop.py: stop requests --------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_this_process_requests_a_stop(saved_signal_handlers, signum):
    request = stop.StopRequest()
    assert not request.requested
    os.kill(os.getpid(), signum)
    for _ in range(100):  # the Python-level handler runs between bytecodes
        if request.requested:
            break
    assert request.requested


def test_a_damaged_shard_outranks_a_signal():
    world = cpu_world()
    asked, not_asked = types.SimpleNamespace(requested=True), types.SimpleNamespace(requested=False)
    assert stop.agreed_reason(world, not_asked, None) == 0
    assert stop.agreed_reason(world, asked, None) == stop.SIGNAL
    assert stop.agreed_reason(world, asked, "shard 3 is damaged") == stop.DAMAGED_SHARD


def test_a_damaged_shard_comes_as_the_problem_beside_no_batch_and_ends_the_batches():
    from shards.errors import ShardError

    def loader():
        yield "first"
        yield "second"
        raise ShardError("shard train-000003.tar: sample 'n01_7': CRC mismatch")
    assert list(stop.until_damaged(loader())) == [("first", None), ("second", None),
                                                  (None, "shard train-000003.tar: sample 'n01_7': CRC mismatch")]
    assert list(stop.until_damaged(iter(["only"]))) == [("only", None)]
