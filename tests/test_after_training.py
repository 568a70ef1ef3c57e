"""After training: the authors' short flags, evaluation from the checkpoint alone (shards or a JPEG folder, flip
TTA), prediction, export (ONNX, TorchScript, ExportedProgram), CBAM attention maps with Grad-CAM, fine-tuning."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import imagenet_sample_files, run_make_shards

import train
from model import build_model
from training import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The smallest DATA folder parse_args accepts (it only checks that manifest.json exists)."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "manifest.json").write_text("{}")
    return str(folder)


def test_the_authors_short_flags_are_aliases(data_dir):
    short = config.parse_args(["-a", "resnet", "-j", "3", "-b", "64", "-p", "7", "--learning-rate", "0.2",
                               "--wd", "5e-5", data_dir])
    long = config.parse_args(["--arch", "resnet", "--workers", "3", "--batch-size", "64", "--print-freq", "7",
                              "--lr", "0.2", "--weight-decay", "5e-5", data_dir])
    assert vars(short) == vars(long)
    assert (short.workers, short.batch_size, short.print_freq, short.lr, short.weight_decay) == (3, 64, 7, 0.2, 5e-5)


@pytest.mark.parametrize("tool, prog, bad", [
    ("validate", "validate.py", []),
    ("predict", "predict.py", ["--checkpoint", "c.pth", "x.jpg", "--top-k", "0"]),
    ("export", "export.py", ["--checkpoint", "c.pth", "--format", "gguf", "--out", "m"]),
    ("attention_maps", "attention_maps.py", ["x.jpg", "--out", "g.png"]),
])
def test_every_tool_has_help_and_one_line_usage_errors(tool, prog, bad, capsys):
    import importlib
    main = importlib.import_module(f"tools.{tool}").main
    with pytest.raises(SystemExit) as exit_help:
        main(["--help"])
    assert exit_help.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {prog}")
    assert main(bad) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines


# --- a checkpoint trained by train.py on real photographs ----------------------------------------------------------

def run(args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    return subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(result, status=2):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status and len(lines) == 1, (result.returncode, result.stderr[-3000:])
    return lines[0]


@pytest.fixture(scope="module")
def trained(real_shards, tmp_path_factory):
    """(checkpoint, shard folder, the JPEG tree the shards were written from): ResNet-18-CBAM, one epoch of 3
    steps on the 24 photographs (24 classes), validated at 64 px."""
    out = tmp_path_factory.mktemp("trained")
    result = run(["train.py", "--depth", "18", "--att-type", "CBAM", "--image-size", "64", "-b", "8", "--epochs", "1",
                  "-j", "1", "--backend", "torch", "--prefix", "R", "--output-dir", str(out), real_shards])
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "R_checkpoint.pth.tar", real_shards, os.path.join(os.path.dirname(real_shards), "src")


def score_line(stdout):
    return next(line for line in stdout.splitlines() if line.startswith(" * "))


def validate(capsys, *args):
    """tools/validate.py in this process; (exit status, stdout, stderr)."""
    from tools import validate as tool
    status = tool.main([*map(str, args), "--workers", "0"])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.slow
def test_evaluate_needs_only_the_checkpoint_and_scores_a_jpeg_folder_as_its_shards(trained, capsys):
    ckpt, shards, tree = trained
    status, out, err = validate(capsys, ckpt, shards)
    assert status == 0, err
    assert "ResNet-18 CBAM, 24 classes, 64 px; saved at epoch 1, batch 0" in out
    from_shards = score_line(out)
    assert "(loss" in from_shards and "8 images)" in from_shards
    # The same 8 val photographs as a plain val/<wnid>/*.JPEG tree (the authors' layout), split over 2 ranks.
    result = run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "tools/validate.py",
                  str(ckpt), tree, "--workers", "2", "-b", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FolderLoader(" in result.stdout and score_line(result.stdout) == from_shards


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_jpeg_folder_is_split_over_ranks_each_image_once(trained, world_size):
    from pipeline.folder import FolderLoader
    _, _, tree = trained
    whole = FolderLoader(tree, 8, workers=0, image_size=32)
    parts = [FolderLoader(tree, 2, rank=rank, world_size=world_size, workers=0, image_size=32)
             for rank in range(world_size)]
    labels = [int(v) for part in parts for _, batch in part for v in batch]
    assert labels == [int(v) for _, batch in whole for v in batch] and len(labels) == 8
    images = torch.cat([image for part in parts for image, _ in part])
    assert torch.equal(images, next(iter(whole))[0])


@pytest.mark.slow
def test_flip_tta_scores_an_image_and_its_mirror_alike(trained, tmp_path, capsys):
    from PIL import Image
    ckpt, _, tree = trained
    for name, mirror in (("plain", False), ("mirrored", True)):
        for wnid in os.listdir(os.path.join(tree, "val")):
            os.makedirs(tmp_path / name / wnid)
            for file in os.listdir(os.path.join(tree, "val", wnid)):
                image = Image.open(os.path.join(tree, "val", wnid, file)).convert("RGB")
                image = image.resize((96, 80))
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else image
                image.save(tmp_path / name / wnid / (file + ".png"))  # lossless: an exact mirror
    lines = {}
    for name in ("plain", "mirrored"):
        for tta in ("none", "flip"):
            status, out, err = validate(capsys, ckpt, tmp_path / name, "--tta", tta)
            assert status == 0, err
            lines[name, tta] = score_line(out)
    # The logits of an image and of its mirror are added in either order; the convolutions of a mirrored input
    # round differently in the last bits, so the printed loss may differ in its last digit, the counts not at all.
    plain, mirrored = (_scores(lines[name, "flip"]) for name in ("plain", "mirrored"))
    assert plain[:2] == mirrored[:2] and abs(plain[2] - mirrored[2]) <= 2e-4 and "flip TTA" in lines["plain", "flip"]
    assert lines["plain", "none"] != lines["mirrored", "none"]


def _scores(line):
    """(top-1, top-5, loss) of a line ' * ... Prec@1 T1 Prec@5 T5  (loss L, N images)'."""
    import re
    top1, top5, loss = re.search(r"Prec@1 ([\d.]+) Prec@5 ([\d.]+)  \(loss ([\d.]+),", line).groups()
    return float(top1), float(top5), float(loss)


def test_evaluate_refuses_what_does_not_fit_in_one_line(trained, generated_shards, tmp_path, capsys):
    from tools import validate as tool
    ckpt, shards, tree = trained
    os.makedirs(tmp_path / "alien" / "n99999999")
    shutil.copy(imagenet_sample_files()[0], tmp_path / "alien" / "n99999999" / "a.JPEG")
    cases = [
        (train.cli, ["--evaluate", "--resume", "auto", "--output-dir", str(tmp_path), shards],
         f"train.py: error: --evaluate --resume auto: no checkpoints (*_checkpoint.pth.tar) in {tmp_path}"),
        (train.cli, ["--evaluate", "--resume", str(ckpt), "--depth", "50", shards],
         "is ResNet-18 CBAM, this run asks for --depth 50: pass the checkpoint's --arch, --depth"),
        (tool.main, [str(tmp_path / "missing.pth.tar"), shards], "validate.py: error: checkpoint not found"),
        (tool.main, [str(ckpt), generated_shards], "has other classes than checkpoint"),
        (tool.main, [str(ckpt), str(tmp_path / "alien")], "n99999999 are not among the checkpoint's 24"),
    ]
    for entry, args, message in cases:
        assert entry(args) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, lines)
    # A damaged photograph in the folder: named, exit 1 (as a damaged shard).
    torn = tmp_path / "torn" / "n01440764" / "torn.JPEG"
    os.makedirs(torn.parent)
    torn.write_bytes(open(imagenet_sample_files()[0], "rb").read()[:2000])
    assert tool.main([str(ckpt), str(tmp_path / "torn"), "--workers", "1"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"validate.py: error: {torn}: cannot decode: "), lines


@pytest.mark.slow
def test_predict_gives_the_models_top_k_with_names_and_names_bad_images(trained, tmp_path, capsys):
    import pipeline
    from tools import predict
    ckpt, shards, tree = trained
    # The model's own probabilities on the same photographs, through the val shards (one photograph per class).
    model = build_model(18, "CBAM", num_classes=24)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    loader = pipeline.build_loader(shards, "val", 8, backend="torch", workers=0, device="cpu", image_size=64)
    with torch.no_grad():
        images, labels = next(iter(loader))
        expected = dict(zip(labels.tolist(), torch.softmax(model.eval()(images), 1).tolist()))
    classes = sorted(os.listdir(os.path.join(tree, "train")))
    words = tmp_path / "words.txt"
    words.write_text("".join(f"{wnid}\tname of {wnid}, with a comma\n" for wnid in classes))
    torn = tmp_path / "torn.JPEG"
    torn.write_bytes(open(imagenet_sample_files()[0], "rb").read()[:2000])
    status = predict.main(["--checkpoint", str(ckpt), os.path.join(tree, "val"), str(torn), "--top-k", "3",
                           "--words", str(words), "--json"])
    out, err = capsys.readouterr()
    assert status == 1 and f"predict.py: {torn}: cannot decode" in err and "1 of 9 images" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 8
    for row in rows:
        wnid = row["image"].split(os.sep)[-2]
        probs = expected[classes.index(wnid)]
        best = sorted(range(24), key=lambda i: -probs[i])[:3]
        assert [entry["label"] for entry in row["top"]] == best
        assert [entry["prob"] for entry in row["top"]] == pytest.approx([probs[i] for i in best], abs=1e-4)
        assert [entry["class"] for entry in row["top"]] == [classes[i] for i in best]
        assert row["top"][0]["name"] == f"name of {classes[best[0]]}, with a comma"
    assert predict.main(["--checkpoint", str(ckpt), imagenet_sample_files()[0], "--top-k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == imagenet_sample_files()[0] and len(table) == 3 and table[1].split()[0] == "1"
    # A checkpoint of the authors' code has no class list: a LOC_synset_mapping-style words file gives the order.
    from test_model import _to_original_names
    authors = tmp_path / "authors.pth.tar"
    torch.save({"state_dict": _to_original_names(torch.load(ckpt, weights_only=True)["model"])}, authors)
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("".join(f"{wnid} name of {wnid}\n" for wnid in classes))
    assert predict.main(["--checkpoint", str(authors), imagenet_sample_files()[0], "--words", str(mapping),
                         "--json", "--top-k", "1"]) == 0
    top = json.loads(capsys.readouterr().out)["top"][0]
    best = max(range(24), key=lambda i: expected[0][i])  # the first photograph is class 0's
    assert (top["label"], top["class"], top["name"]) == (best, classes[best], f"name of {classes[best]}")


@pytest.mark.slow
@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt"), ("exported-program", ".pt2")])
def test_export_writes_a_graph_with_a_dynamic_batch_that_matches_the_eager_model(trained, tmp_path, capsys, fmt,
                                                                                  suffix):
    from pipeline.folder import load_image, stack_images
    from tools import export
    ckpt, _, tree = trained
    out = tmp_path / f"model{suffix}"
    assert export.main(["--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: {fmt}, ResNet-18 CBAM, 24 classes, input (N, 3, 64, 64)"), line
    # The file on its own, on 5 real photographs (the tool traced 2 random images and checked 3).
    images = stack_images([load_image(path, 64) for path in imagenet_sample_files()[:5]], "cpu").contiguous()
    model = build_model(18, "CBAM", num_classes=24, cbam_impl="reference")
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    with torch.no_grad():
        expected = model.eval()(images)
        if fmt == "onnx":
            import onnxruntime
            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
        elif fmt == "torchscript":
            got = torch.jit.load(str(out))(images)
        else:
            got = torch.export.load(str(out)).module()(images)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# --- attention maps ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_attention_maps_are_the_gates_values(trained, impl):
    from pipeline.folder import load_image, stack_images
    from tools.attention_maps import STAGES, explain
    ckpt, _, _ = trained
    model = build_model(18, "CBAM", num_classes=24, cbam_impl=impl)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    model.eval()
    images = stack_images([load_image(path, 64) for path in imagenet_sample_files()[:3]], "cpu").contiguous()
    inputs = {}  # what each stage's last CBAM receives, caught by hooks of this test's own
    handles = [getattr(model, stage)[-1].attn.register_forward_hook(
        lambda module, args, out, stage=stage: inputs.__setitem__(stage, args[0].detach())) for stage in STAGES]
    exp = explain(model, images)
    for handle in handles:
        handle.remove()
    assert sorted(exp.spatial) == sorted(exp.channel) == list(STAGES)
    with torch.no_grad():
        for stage in STAGES:
            cbam, x = getattr(model, stage)[-1].attn, inputs[stage]
            mlp = cbam.channel_gate.mlp
            channel = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
            gated = x * channel[:, :, None, None]
            pooled = torch.cat((gated.amax(dim=1, keepdim=True), gated.mean(dim=1, keepdim=True)), dim=1)
            spatial = torch.sigmoid(cbam.spatial_gate.bn(cbam.spatial_gate.conv(pooled)))[:, 0]
            torch.testing.assert_close(exp.channel[stage], channel, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(exp.spatial[stage], spatial, atol=1e-6, rtol=1e-5)
            assert exp.spatial[stage].shape[-1] == 64 // (4 * 2 ** STAGES.index(stage))
    assert exp.probs.shape == (3, 24) and exp.gradcam.shape == (3, 2, 2)


def quadrant_images(n, size, generator):
    """Grey noise with a square of the class's colour (red: 0, green: 1) somewhere inside a random quadrant;
    returns (images, labels, quadrants numbered 0 1 / 2 3)."""
    images = torch.randn(n, 3, size, size, generator=generator) * 0.3
    labels = torch.randint(0, 2, (n,), generator=generator)
    quadrants = torch.randint(0, 4, (n,), generator=generator)
    half, side = size // 2, size // 4
    for i in range(n):
        top = int(quadrants[i] // 2) * half + int(torch.randint(0, half - side + 1, (1,), generator=generator))
        left = int(quadrants[i] % 2) * half + int(torch.randint(0, half - side + 1, (1,), generator=generator))
        images[i, :, top:top + side, left:left + side] = -1.0
        images[i, int(labels[i]), top:top + side, left:left + side] = 2.0
    return images, labels, quadrants


@pytest.mark.slow
def test_grad_cam_peaks_in_the_quadrant_that_holds_the_class_evidence():
    from tools.attention_maps import explain, upsample
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = build_model(18, "CBAM", num_classes=2, cbam_impl="torch")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(12):
        images, labels, _ = quadrant_images(16, 64, generator)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for module in model.modules():  # BatchNorm statistics of the trained weights (a cumulative average)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        for _ in range(4):
            model(quadrant_images(16, 64, generator)[0])
    images, labels, quadrants = quadrant_images(32, 64, generator)
    exp = explain(model.eval(), images)
    peak = upsample(exp.gradcam, 64).flatten(1).argmax(dim=1)
    found = (peak // 64 >= 32).long() * 2 + (peak % 64 >= 32).long()
    assert (exp.target == labels).float().mean() >= 0.9
    assert (found == quadrants).float().mean() >= 0.9, (found.tolist(), quadrants.tolist())


@pytest.mark.slow
def test_attention_maps_draws_checkpoints_side_by_side(trained, tmp_path, capsys):
    from tools import attention_maps
    ckpt, _, tree = trained
    plain = tmp_path / "resnet18.pth"  # a torchvision-layout state dict: ResNet-18 without attention
    torch.save(build_model(18, "none", num_classes=24).state_dict(), plain)
    out = tmp_path / "grid.png"
    photos = imagenet_sample_files()[:2]
    status = attention_maps.main(["--checkpoint", str(ckpt), "--checkpoint", str(plain), *photos, "--out", str(out),
                                  "--class", "n01440764"])
    assert status == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == f"{out}: 2 images x 2 checkpoints"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
    status = attention_maps.main(["--checkpoint", str(ckpt), *photos, "--out", str(out), "--class", "n0"])
    assert status == 2 and "class n0 is not among the 24 classes" in capsys.readouterr().err


# --- fine-tuning ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    """Shards of two disjoint sets of generated classes: task A (the even classes of shards/synthetic.py's 10,
    24 train images each) to pretrain on, task B (the odd ones, 4 train images each: the few-sample case
    fine-tuning is for; 20 val images each) to fine-tune on. Their hues, stripe angles and frequencies
    interleave, so features learned on A serve B."""
    from shards.synthetic import write_tree
    base = tmp_path_factory.mktemp("tasks")
    for task, wnids, train_per_class, val_per_class, seed in (("a", range(0, 10, 2), 24, 1, 11),
                                                              ("b", range(1, 10, 2), 4, 20, 12)):
        write_tree(str(base / f"all-{task}"), classes=10, train_per_class=train_per_class,
                   val_per_class=val_per_class, size=40, seed=seed)
        for split in ("train", "val"):
            for i in wnids:
                os.renames(base / f"all-{task}" / split / f"n{9000000 + i:08d}",
                           base / task / split / f"n{9000000 + i:08d}")
        run_make_shards(base / task, base / f"{task}-shards", 200)
    return str(base / "a-shards"), str(base / "b-shards")


def pretrain(shards, steps):
    """ResNet-18 without attention trained for `steps` batches: its state dict, in torchvision's layout."""
    import pipeline
    torch.manual_seed(0)
    model = build_model(18, "none", num_classes=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader = pipeline.build_loader(shards, "train", 24, backend="torch", workers=0, device="cpu", image_size=32)
    done = 0
    while done < steps:
        loader.set_epoch(done)
        for images, labels in list(loader)[:steps - done]:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
    return model.state_dict()


@pytest.mark.slow
def test_fine_tuning_a_pretrained_resnet_with_fresh_cbam_beats_training_from_scratch(two_tasks, tmp_path):
    task_a, task_b = two_tasks
    torch.save(pretrain(task_a, 60), tmp_path / "resnet18.pth")
    common = ["train.py", "--depth", "18", "--att-type", "CBAM", "--image-size", "32", "-b", "10", "-j", "1",
              "--lr", "0.1", "--epochs", "6", "--print-freq", "5", "--backend", "torch", "--prefix", "F", task_b]
    tuned = run([*common, "--pretrained", str(tmp_path / "resnet18.pth"), "--pretrained-lr-scale", "0.3",
                 "--output-dir", str(tmp_path / "tuned")])
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    line = next(line for line in tuned.stdout.splitlines() if line.startswith("=> pretrained weights"))
    assert "ResNet-18 none, 5 classes" in line and "new, initialised as model/resnet.py does: 8 modules " \
        "(layer1.0.attn, layer1.1.attn, ..., layer4.1.attn)" in line and "classifier replaced" not in line, line
    scratch = run([*common, "--output-dir", str(tmp_path / "scratch")])
    assert scratch.returncode == 0, scratch.stderr[-3000:]
    top1 = {name: [json.loads(row)["top1"] for row in open(tmp_path / name / "F_metrics.jsonl")
                   if '"kind": "val"' in row] for name in ("tuned", "scratch")}
    assert top1["tuned"][-1] >= top1["scratch"][-1] + 10, top1
    ckpt = torch.load(tmp_path / "tuned" / "F_checkpoint.pth.tar", weights_only=True)
    assert ckpt["classes"] == [f"n{9000000 + i:08d}" for i in range(1, 10, 2)]
    assert sorted({group["lr_scale"] for group in ckpt["optimizer"]["param_groups"]}) == [0.3, 1.0]


def test_pretrained_weights_load_by_name_and_the_line_says_what_is_new_replaced_or_dropped(tmp_path):
    from test_model import _to_original_names

    from training.load import load_pretrained
    torch.manual_seed(0)
    plain = build_model(18, "none", num_classes=5)
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    model = build_model(18, "CBAM", num_classes=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    loaded, line = load_pretrained(model, str(tmp_path / "plain.pth"))
    assert "new, initialised as model/resnet.py does: 8 modules" in line and "classifier replaced (5 -> 3 classes)" \
        in line and "\n" not in line, line
    state = model.state_dict()
    assert torch.equal(state["conv1.weight"], plain.state_dict()["conv1.weight"]) and "conv1.weight" in loaded
    assert torch.equal(state["fc.weight"], fresh["fc.weight"]) and "fc.weight" not in loaded
    assert all(torch.equal(state[k], fresh[k]) for k in state if ".attn." in k)
    # An authors'-layout CBAM checkpoint into a ResNet-18 without attention: its CBAM modules are dropped.
    torch.save({"state_dict": _to_original_names(build_model(18, "CBAM", num_classes=3).state_dict()), "epoch": 90},
               tmp_path / "authors.pth.tar")
    _, line = load_pretrained(build_model(18, "none", num_classes=3), str(tmp_path / "authors.pth.tar"))
    assert "ResNet-18 CBAM, 3 classes" in line and "dropped: 8 modules (layer1.0.attn" in line, line
    with pytest.raises(config.UsageError, match="is ResNet-18 none, this run ResNet-34: pass --arch resnet --depth 18"):
        load_pretrained(build_model(34, "CBAM", num_classes=3), str(tmp_path / "plain.pth"))
