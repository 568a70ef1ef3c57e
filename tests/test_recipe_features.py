"""The time-to-accuracy switches: LR milestones, gradient accumulation, the weight average (EMA), mixup/cutmix,
progressive resizing, TensorBoard and wall-clock metrics; unit tests, then train.py under torchrun with 2 gloo
processes on generated learnable data."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import CPU_BACKENDS, ROOT, epoch_batches, needs_dali, run_make_shards

from model import build_model
from training.ema import WeightAverage
from training.learner import Learner
from training.mixing import BatchMixer
from training.schedule import ImageSizeSchedule, image_size_schedule, learning_rate

PY = sys.executable

# ---------------------------------------------------------------------------------------------------------------
# Schedules


def test_step_schedule_decays_at_each_milestone():
    def lr(epoch, milestones=(30, 60, 90)):
        return learning_rate(epoch * 10, 10, 1.0, 100, "step", 0.0, milestones)

    assert [lr(e) for e in (0, 29, 30, 59, 60, 89, 90, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert [lr(e, (30, 60, 80)) for e in (79, 80)] == pytest.approx([0.01, 0.001])
    assert lr(120) == pytest.approx(0.001)  # no decay beyond the last milestone


def test_image_size_schedule_ramps_in_multiples_of_32_and_parses_back():
    schedule = image_size_schedule("160:224@2:6")
    assert [schedule.at(e) for e in range(9)] == [160, 160, 160, 192, 192, 224, 224, 224, 224]
    assert str(schedule) == "160:224@2:6" and image_size_schedule(str(schedule)) == schedule
    assert image_size_schedule("224") == ImageSizeSchedule(224, 224) and str(ImageSizeSchedule(224, 224)) == "224"
    for bad, reason in (("160:200@0:4", "multiples of 32"), ("160:192@4:4", "FIRST < LAST"), ("big", "expected")):
        with pytest.raises(ValueError, match=reason):
            image_size_schedule(bad)


# ---------------------------------------------------------------------------------------------------------------
# Gradient accumulation, weight average, mixing: the Learner's step


def tiny_learner(seed=0, num_classes=4):
    torch.manual_seed(seed)
    model = build_model(18, "CBAM", num_classes=num_classes, cbam_impl="torch").eval()  # BN statistics fixed
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return Learner(model, model, optimizer, scaler, torch.nn.CrossEntropyLoss(), None)


def test_accumulating_n_batches_equals_one_step_of_n_times_the_batch():
    images = torch.randn(12, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 4, (12,))
    one, accumulated = tiny_learner(), tiny_learner()
    for _ in range(2):  # two optimizer steps: momentum carries the first into the second
        one.step(images, labels)
        for part in range(3):
            chunk = slice(4 * part, 4 * part + 4)
            accumulated.step(images[chunk], labels[chunk], share=1 / 3, last=part == 2)
    for a, b in zip(one.model.parameters(), accumulated.model.parameters()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert all(p.grad is None for p in accumulated.model.parameters())  # nothing carried over


def test_weight_average_follows_the_formula_and_copies_batchnorm_statistics():
    learner = tiny_learner()
    learner.model.train()
    learner.ema = WeightAverage(learner.model, 0.9)
    before = [p.detach().clone() for p in learner.ema.model.parameters()]
    images = torch.randn(8, 3, 32, 32)
    learner.step(images, torch.randint(0, 4, (8,)))
    for averaged, old, trained in zip(learner.ema.model.parameters(), before, learner.model.parameters()):
        torch.testing.assert_close(averaged, 0.9 * old + 0.1 * trained.detach())
        assert not averaged.requires_grad
    state = learner.ema.state_dict()
    for name, buffer in learner.model.named_buffers():
        assert torch.equal(state[name], buffer)  # running statistics copied, not averaged
    assert any(not torch.equal(state[name], value) for name, value in learner.model.state_dict().items()
               if name.endswith("weight"))
    # A checkpoint without an average (trained without --ema-decay) restarts it from the weights just loaded.
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(1.0)
    learner.ema.restart()
    for name, value in learner.model.state_dict().items():
        assert torch.equal(learner.ema.model.state_dict()[name], value), name


def test_mixing_keeps_the_label_mass_and_pastes_exactly_the_share_it_claims():
    num_classes, batch = 10, 8
    labels = torch.arange(batch)  # distinct labels: each target column belongs to one sample
    images = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 3, 16, 16).contiguous()
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0), (0.2, 1.0)):
        mixer = BatchMixer(mixup, cutmix, num_classes, seed=5)
        for step in range(20):
            mixed, targets, dominant = mixer(images, labels, step)
            assert torch.allclose(targets.sum(0)[:batch], torch.ones(batch))  # each label's mass kept
            assert torch.allclose(targets.sum(1), torch.ones(batch))
            lam = float(targets[0, 0])
            partner = batch - 1  # the batch reversed along N
            share_own = float((mixed[0] == 0).float().mean())
            if share_own not in (0.0, 1.0) or cutmix and not mixup:  # cutmix: pixels are the own or the partner's
                assert share_own == pytest.approx(lam, abs=1e-6)
            else:  # mixup: every pixel is lam * own + (1 - lam) * partner's
                assert torch.allclose(mixed[0], torch.full_like(mixed[0], (1 - lam) * partner), atol=1e-5)
            assert int(dominant[0]) == (0 if lam >= 0.5 else partner)
            again = mixer(images, labels, step)
            assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)  # a function of the step


# ---------------------------------------------------------------------------------------------------------------
# Progressive resizing in every backend


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_each_epoch_yields_the_image_size_it_was_given(generated_shards, backend):
    loader, _ = epoch_batches(generated_shards, "train", 4, backend, image_size=16)
    schedule = image_size_schedule("32:64@0:2")
    for epoch in range(3):
        loader.set_epoch(epoch)
        loader.set_image_size(schedule.at(epoch))
        shapes = {tuple(images.shape) for images, _ in loader}
        assert shapes == {(4, 3, schedule.at(epoch), schedule.at(epoch))}, (epoch, shapes)


# ---------------------------------------------------------------------------------------------------------------
# train.py with every switch, under torchrun


def run(args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def rows(out, kind):
    with open(os.path.join(out, "T_metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


@pytest.fixture(scope="module")
def learnable_shards(tmp_path_factory):
    from shards.synthetic import write_tree
    base = tmp_path_factory.mktemp("recipe")
    write_tree(str(base / "images"), classes=4, train_per_class=40, val_per_class=10, size=48, seed=11)
    return run_make_shards(base / "images", base / "shards", 60)  # 160 train samples, 40 val


FAST_SWITCHES = ["--depth", "18", "--att-type", "CBAM", "--backend", "torch", "--workers", "2", "--print-freq", "5",
                 "--prefix", "T", "--batch-size", "16", "--accum-steps", "2", "--lr", "0.2", "--lr-schedule", "cosine",
                 "--warmup-epochs", "1", "--label-smoothing", "0.1", "--no-bn-weight-decay", "--ema-decay", "0.9",
                 "--mixup", "0.2", "--cutmix", "1.0", "--image-size", "32:64@2:4", "--val-image-size", "64",
                 "--tensorboard"]


@pytest.mark.slow
def test_the_fast_recipes_switches_together_still_learn(learnable_shards, tmp_path):
    out = tmp_path / "out"
    result = run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py",
                  *FAST_SWITCHES, "--epochs", "6", "--output-dir", str(out), learnable_shards])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    val = rows(out, "val")
    # Chance is 25 %. 40 val samples move in steps of 2.5 %: with a fresh order every epoch, seeds 1234, 1 and 2
    # reached 77.5, 100 and 100 % (the storage order of every epoch: 95 % with seed 1234).
    assert len(val) == 6 and max(r["top1"] for r in val) >= 75.0, [r["top1"] for r in val]
    # The weight average is evaluated beside the raw weights and, at the end, no worse than them.
    assert all("top1_ema" in r for r in val)
    assert val[-1]["top1_ema"] >= val[-1]["top1"] - 5.0, val[-1]
    ckpt = torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert any(not torch.equal(ckpt["ema"][k], v) for k, v in ckpt["model"].items() if k.endswith("conv1.weight"))
    # Progressive resizing: 32 px until epoch 2, 64 px from epoch 4 on (48 would not be a multiple of 32).
    train = rows(out, "train")
    assert {r["epoch"]: r["image_size"] for r in train} == {0: 32, 1: 32, 2: 32, 3: 64, 4: 64, 5: 64}
    # 160 samples / 16 per batch = 10 batches per epoch, 5 optimizer steps of 2 accumulated batches each.
    assert train[-1]["step"] == 60
    # Wall-clock time in every row, growing; the evaluation picks either set of weights.
    assert all(r["elapsed_s"] > 0 for r in train + val)
    assert [r["elapsed_s"] for r in val] == sorted(r["elapsed_s"] for r in val)
    assert ckpt["elapsed_s"] >= val[-1]["elapsed_s"] - 1.0
    for weights, top1 in (("raw", val[-1]["top1"]), ("ema", val[-1]["top1_ema"])):
        evaluated = run([PY, "train.py", *FAST_SWITCHES, "--evaluate", "--eval-weights", weights, "--resume",
                         str(out / "T_checkpoint.pth.tar"), "--output-dir", str(tmp_path / "eval"), learnable_shards])
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
        assert f"Prec@1 {top1:.3f}" in evaluated.stdout, (weights, top1, evaluated.stdout[-1500:])
    # TensorBoard holds the same scalars as the JSONL.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = glob.glob(str(out / "T_tensorboard" / "events.out.tfevents.*"))
    assert events
    board = EventAccumulator(str(out / "T_tensorboard"))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"train/loss", "train/top1", "train/lr", "val/top1", "val/top1_ema", "epoch/elapsed_s"} <= tags
    assert [e.value for e in board.Scalars("val/top1")] == pytest.approx([r["top1"] for r in val])


@pytest.mark.slow
def test_a_resume_mid_schedule_trains_at_the_scheduled_size(learnable_shards, tmp_path):
    args = [PY, "train.py", "--depth", "18", "--att-type", "none", "--backend", "torch", "--workers", "1",
            "--prefix", "T", "--batch-size", "4", "--print-freq", "1", "--lr", "0.05", "--accum-steps", "2",
            "--image-size", "32:64@0:1", "--epochs", "2", "--output-dir", str(tmp_path), learnable_shards]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics_file = tmp_path / "T_metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics_file.exists() and '"epoch": 1' in metrics_file.read_text()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "stop requested" in stdout, stderr[-3000:]
    ckpt = torch.load(tmp_path / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and 0 < ckpt["batch"] < 40 and ckpt["batch"] % 2 == 0, ckpt["batch"]  # whole groups
    resumed = run(args + ["--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    train = rows(tmp_path, "train")
    assert {r["image_size"] for r in train if r["epoch"] == 0} == {32}
    assert {r["image_size"] for r in train if r["epoch"] == 1} == {64}
    assert sorted(r["step"] for r in train) == list(range(1, 81))  # every batch trained once


def test_bad_recipe_flags_are_one_line(learnable_shards, capsys):
    import train  # in-process: the checks run before anything is built (one subprocess each cost a minute in all)
    for flags, message in ((["--image-size", "160:200@0:4"], "multiples of 32"),
                           (["--lr-steps", "60,30"], "increasing"), (["--accum-steps", "0"], "--accum-steps"),
                           (["--ema-decay", "1.5"], "--ema-decay"), (["--mixup", "-1"], "--mixup"),
                           (["--bce-target-thresh", "0.2"], "needs --loss bce")):
        status = train.cli([*flags, learnable_shards])
        lines = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and message in lines[0], lines


# ---------------------------------------------------------------------------------------------------------------
# Recipes as data: --config FILE.yaml


@pytest.fixture
def data_dir(tmp_path):
    """Enough of a shard folder for the flag checks (they look for manifest.json only)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    return str(tmp_path / "data")


def write_recipe(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_a_recipe_sets_flags_and_the_command_line_overrides_it(tmp_path, data_dir):
    from training.config import parse_args
    recipe = write_recipe(tmp_path, "lr: 0.4\nbatch-size: 64\nlr_steps: [3, 6]\nno_bn_weight_decay: true\n"
                                    "channels_last: false\nno_compile: true\nimage_size: '32:64@1:2'\n"
                                    "att_type: CBAM\nema_decay: 0.99\ntensorboard: false\n")
    args = parse_args(["--config", recipe, data_dir])
    assert (args.lr, args.batch_size, args.lr_steps, args.no_bn_weight_decay) == (0.4, 64, (3, 6), True)
    assert (args.channels_last, args.compile, str(args.image_size), args.att_type) == (False, "off", "32:64@1:2",
                                                                                       "CBAM")
    assert args.ema_decay == 0.99 and args.tensorboard is False and args.config == recipe
    args = parse_args([data_dir, "--lr", "0.1", "--config", recipe, "--channels-last", "--compile", "model"])
    assert (args.lr, args.batch_size, args.channels_last, args.compile) == (0.1, 64, True, "model")
    assert args.val_image_size == 64  # derived from the recipe's schedule, as from a flag


def test_the_shipped_recipes_parse(data_dir):
    from training.config import parse_args
    for name in ("seed", "fast", "rsb-a3"):
        args = parse_args(["--config", os.path.join(ROOT, "recipes", f"{name}.yaml"), data_dir])
        assert args.depth == 50 and args.att_type == "CBAM", name


@pytest.mark.parametrize("text, message", [
    ("learn_rate: 0.1\n", "unknown key 'learn_rate'"),
    ("data: /x\n", "unknown key 'data'"),
    ("lr: fast\n", "key 'lr': invalid float value: 'fast'"),
    ("lr_schedule: linear\n", "key 'lr_schedule': invalid choice 'linear'"),
    ("tensorboard: 1\n", "key 'tensorboard': expected true or false"),
    ("image_size: '160:200@0:4'\n", "key 'image_size': "),
    ("- lr\n", "expected a mapping"),
    ("lr: [0.1\n", "not valid YAML"),
    ("epochs: 0\n", "key 'epochs': --epochs must be >= 1"),
    ("reprob: 1.5\n", "key 'reprob': --reprob must be in [0, 1]"),
    ("loss: ce\nbce-target-thresh: 0.2\n", "key 'bce-target-thresh': --bce-target-thresh needs --loss bce"),
])
def test_bad_recipes_are_one_line_naming_file_and_key(tmp_path, data_dir, text, message):
    from training.config import UsageError, parse_args
    recipe = write_recipe(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        parse_args(["--config", recipe, data_dir])
    text = str(caught.value)
    assert message in text and "\n" not in text and recipe in text, text
    with pytest.raises(UsageError, match="cannot read"):
        parse_args(["--config", str(tmp_path / "missing.yaml"), data_dir])
    if "--epochs" in message:  # a value from the command line is named as the flag alone
        with pytest.raises(UsageError, match="^--epochs must be >= 1, got -1$"):
            parse_args(["--config", recipe, "--epochs", "-1", data_dir])


# ---------------------------------------------------------------------------------------------------------------
# Optimisation: --opt, --loss bce, --clip-grad, --sync-bn


def test_bce_targets_are_smoothed_then_thresholded_and_the_loss_is_the_per_class_mean():
    from training.losses import BinaryCrossEntropy
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 4])
    plain = BinaryCrossEntropy(5)
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), torch.eye(5)[labels])
    torch.testing.assert_close(plain(logits, labels), expected)
    smoothed = BinaryCrossEntropy(5, smoothing=0.1).targets(labels, torch.float32)
    assert torch.allclose(smoothed[0], torch.tensor([0.92, 0.02, 0.02, 0.02, 0.02]))
    mixed = torch.tensor([[0.85, 0.15, 0, 0, 0], [0.3, 0.7, 0, 0, 0]])  # mixup's soft targets
    kept = BinaryCrossEntropy(5, smoothing=0.1, target_threshold=0.2).targets(mixed, torch.float32)
    assert torch.equal(kept, torch.tensor([[1.0, 0, 0, 0, 0], [1.0, 1.0, 0, 0, 0]]))  # 0.15 is dropped, 0.3 kept


def small_learner():
    """A conv net small enough for many optimizer steps in a second, with BatchNorm and biases."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    return Learner(model, model, None, torch.amp.GradScaler("cpu", enabled=False),
                   torch.nn.CrossEntropyLoss(), None)


def test_clipping_happens_on_unscaled_gradients_under_the_fp16_loss_scale():
    images = torch.randn(8, 3, 16, 16)
    labels = torch.randint(0, 4, (8,))
    results = []
    for scaled in (False, True):
        learner = small_learner()
        learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=1.0)
        learner.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=scaled)
        learner.clip_grad = 1e-3
        before = torch.cat([p.detach().flatten().clone() for p in learner.model.parameters()])
        learner.step(images, labels)
        results.append(torch.cat([p.detach().flatten() for p in learner.model.parameters()]) - before)
    assert float(results[0].norm()) == pytest.approx(1e-3, rel=1e-3)  # lr 1: the update is the clipped gradient
    torch.testing.assert_close(results[1], results[0], rtol=1e-3, atol=1e-9)


def test_lamb_and_adamw_keep_the_groups_and_lamb_fits_a_batch():
    import types

    from timm.optim import Lamb

    from training.optim import make_optimizer
    learner = small_learner()
    for opt, kind in (("adamw", torch.optim.AdamW), ("lamb", Lamb)):
        run = types.SimpleNamespace(opt=opt, lr=2e-3, weight_decay=0.02, no_bn_weight_decay=True, momentum=0.9)
        learner.optimizer = make_optimizer(learner.model, run)
        assert isinstance(learner.optimizer, kind)
        assert [g["weight_decay"] for g in learner.optimizer.param_groups] == [0.02, 0.0]
    learner.optimizer = make_optimizer(learner.model, types.SimpleNamespace(
        opt="lamb", lr=0.05, weight_decay=0.02, no_bn_weight_decay=True, momentum=0.9))
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    losses = [float(learner.step(images, labels)[1].detach()) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_sync_bn_is_refused_where_the_process_group_cannot_run_it(data_dir):
    from training import config
    from training.distributed import World
    args = config.parse_args(["--sync-bn", "--batch-size", "8", data_dir])
    with pytest.raises(config.UsageError, match="--sync-bn needs CUDA devices"):
        config.resolve(args, World(0, 0, 2, 2, torch.device("cpu")))
    assert config.resolve(args, World(0, 0, 1, 1, torch.device("cpu"))).sync_bn  # one process: nothing to sync


# ---------------------------------------------------------------------------------------------------------------
# The RSB-style recipe at tiny sizes, every switch on (but --sync-bn, which gloo cannot run), then weight averaging

TINY_RSB = """# recipes/rsb-a3.yaml at tiny sizes
depth: 18
att_type: CBAM
epochs: 100
batch_size: 16
opt: lamb
lr: 0.02
weight_decay: 0.02
no_bn_weight_decay: true
lr_schedule: cosine
warmup_epochs: 1
loss: bce
bce_target_thresh: 0.2
auto_augment: rand-m6-mstd0.5-inc1
reprob: 0.25
mixup: 0.1
cutmix: 1.0
clip_grad: 5.0
image_size: 32
val_image_size: 64
prefix: T
"""


@pytest.mark.slow
@needs_dali
def test_the_rsb_recipe_learns_under_torchrun_and_its_last_epochs_average(learnable_shards, tmp_path, capsys):
    recipe, out = tmp_path / "rsb.yaml", tmp_path / "out"
    recipe.write_text(TINY_RSB)
    result = run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py",
                  "--config", str(recipe), "--epochs", "3", "--keep-epochs", "2", "--backend", "dali-cpu",
                  "--workers", "2", "--print-freq", "5", "--output-dir", str(out), learnable_shards])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    val = rows(out, "val")
    assert len(val) == 3 and max(r["top1"] for r in val) >= 80.0, [r["top1"] for r in val]
    with open(out / "T_config.json") as f:
        resolved = json.load(f)
    assert resolved["config"] == str(recipe) and resolved["epochs"] == 3  # the command line overrode the file
    assert (resolved["opt"], resolved["loss"], resolved["auto_augment"]) == ("lamb", "bce", "rand-m6-mstd0.5-inc1")
    assert sorted(os.listdir(out)) == ["T_checkpoint.prev.pth.tar", "T_checkpoint.pth.tar", "T_config.json",
                                       "T_epoch1.pth.tar", "T_epoch2.pth.tar", "T_metrics.jsonl",
                                       "T_model_best.pth.tar"]

    tool = [PY, "tools/average_checkpoints.py", str(out)]
    averaged = run(tool + ["-n", "2", "--data", learnable_shards, "--backend", "dali-cpu"])
    assert averaged.returncode == 0, averaged.stderr[-2000:]
    report = json.loads(averaged.stdout.strip().splitlines()[-1])
    assert report["images"] == 40 and f"Prec@1 {report['top1']:.3f}" in averaged.stdout
    assert report["top1"] >= 50.0, report  # the average of two trained epochs still classifies (chance: 25 %)
    epochs = [torch.load(out / f"T_epoch{e}.pth.tar", weights_only=True)["model"] for e in (1, 2)]
    mean = torch.load(report["output"], weights_only=True)["model"]
    for key in ("conv1.weight", "bn1.running_var", "fc.bias"):
        torch.testing.assert_close(mean[key], (epochs[0][key] + epochs[1][key]) / 2)
    assert torch.equal(mean["bn1.num_batches_tracked"], epochs[1]["bn1.num_batches_tracked"])
    from tools.average_checkpoints import main as average_main
    for extra, message in ((["-n", "3"], "keeps only 2 epochs"), (["--weights", "ema"], "holds no 'ema' weights"),
                           (["--prefix", "U"], "holds no U_epoch<E>.pth.tar")):
        assert average_main([str(out), *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cbam-average-checkpoints: error: ") and message in lines[0]
