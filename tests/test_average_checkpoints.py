"""cbam-average-checkpoints on checkpoints written the way train.py --keep-epochs writes them: which files it
takes, what the average holds, and its one-line errors. (Its val top-1 on a trained run: test_recipe_features.)"""
import pytest
import torch

from tools.average_checkpoints import main
from training.checkpoint import kept_epochs, save


def write_epochs(folder, prefix, values, keep):
    for epoch, value in enumerate(values):
        state = {"model": {"w": torch.full((2,), value), "bn.num_batches_tracked": torch.tensor(epoch + 1)},
                 "config": {"depth": 18, "att_type": "CBAM", "epoch_written": epoch}, "epoch": epoch + 1}
        save(str(folder), prefix, state, is_best=False, keep_epochs=keep)


def test_the_last_k_epochs_are_kept_and_averaged(tmp_path, capsys):
    write_epochs(tmp_path, "R", [1.0, 2.0, 4.0, 8.0], keep=3)
    assert sorted(kept_epochs(str(tmp_path), "R")) == [1, 2, 3]  # epoch 0 deleted when epoch 3 was kept
    assert main([str(tmp_path), "-n", "2"]) == 0
    average = torch.load(tmp_path / "R_averaged.pth.tar", weights_only=True)
    assert torch.equal(average["model"]["w"], torch.full((2,), 6.0))  # (4 + 8) / 2
    assert int(average["model"]["bn.num_batches_tracked"]) == 4 and average["config"]["epoch_written"] == 3
    assert "averaged 2 checkpoints (R_epoch2.pth.tar, R_epoch3.pth.tar)" in capsys.readouterr().out
    assert main([str(tmp_path), "--output", str(tmp_path / "all.pth.tar")]) == 0  # every kept epoch: 1, 2, 3
    assert torch.equal(torch.load(tmp_path / "all.pth.tar", weights_only=True)["model"]["w"], torch.full((2,), 14 / 3))


def test_unusable_folders_and_choices_are_one_line(tmp_path, capsys):
    write_epochs(tmp_path / "two", "A", [1.0], keep=1)
    write_epochs(tmp_path / "two", "B", [1.0], keep=1)
    (tmp_path / "empty").mkdir()
    for argv, message in (([str(tmp_path / "two")], "say which run with --prefix (per-epoch checkpoints found: A, B)"),
                          ([str(tmp_path / "nowhere"), "--prefix", "A"], "folder not found"),
                          ([str(tmp_path / "empty"), "--prefix", "A"], "holds no A_epoch<E>.pth.tar"),
                          ([str(tmp_path / "two"), "--prefix", "A", "-n", "-1"], "-n must be >= 0")):
        assert main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines


# --- the average as a checkpoint: read by every tool, checked like train.py's, never replacing a run's files ------

def one_error(capsys, status, result):
    lines = capsys.readouterr().err.strip().splitlines()
    assert result == status and len(lines) == 1, (result, lines)
    return lines[0]


def write_model_epochs(folder, prefix, classes, epochs=2, real=False):
    """Per-epoch checkpoints as train.py --keep-epochs leaves them (weights, config, epoch, class list, sha256):
    of a real ResNet-18-CBAM, or (faster) of a stand-in with a classifier and BatchNorm buffers."""
    from model import build_model
    for epoch in range(epochs):
        torch.manual_seed(epoch)
        if real:
            weights = build_model(18, "CBAM", num_classes=len(classes)).state_dict()
        else:
            weights = {"layer2.0.bn1.running_var": torch.rand(64) + 0.5,
                       "layer2.0.bn1.num_batches_tracked": torch.tensor(epoch),
                       "fc.weight": torch.randn(len(classes), 16), "fc.bias": torch.zeros(len(classes))}
        state = {"model": weights, "config": {"depth": 18, "att_type": "CBAM", "val_image_size": 32},
                 "epoch": epoch + 1, "batch": 0, "classes": list(classes)}
        save(str(folder), prefix, state, is_best=False, keep_epochs=epochs)


@pytest.mark.slow
def test_an_averaged_checkpoint_is_evaluated_validated_and_used_by_predict(generated_shards, tmp_path, capsys):
    import glob
    import json
    import os

    import train
    from tools import predict, validate
    classes = json.load(open(os.path.join(generated_shards, "manifest.json")))["classes"]
    write_model_epochs(tmp_path, "Q", classes, real=True)
    assert main([str(tmp_path)]) == 0
    averaged = str(tmp_path / "Q_averaged.pth.tar")
    capsys.readouterr()
    flags = ["-j", "1", "-b", "10", "--backend", "torch"]
    assert train.cli(["--evaluate", "--resume", averaged, *flags, generated_shards]) == 0
    out = capsys.readouterr().out
    assert "an average of 2 checkpoints (Q_epoch0.pth.tar, Q_epoch1.pth.tar)" in out and "(loss " in out
    assert validate.main([averaged, generated_shards, *flags]) == 0 and " * Prec@1 " in capsys.readouterr().out
    photo = sorted(glob.glob(os.path.join(os.path.dirname(generated_shards), "src", "val", "*", "*")))[3]
    assert predict.main(["--checkpoint", averaged, "--json", photo]) == 0
    assert json.loads(capsys.readouterr().out)["top"][0]["class"] in classes  # the class list travelled
    # Training cannot go on from weights alone: one line pointing at --pretrained.
    line = one_error(capsys, 2, train.cli(["--resume", averaged, "--output-dir", str(tmp_path / "run"), *flags,
                                           generated_shards]))
    assert "holds no training state" in line and "--pretrained" in line


def damage(path, fraction, size):
    """Overwrites `size` bytes at `fraction` of the file with noise."""
    import os
    data = bytearray(open(path, "rb").read())
    start = int(len(data) * fraction)
    data[start:start + size] = os.urandom(min(size, len(data) - start))
    open(path, "wb").write(bytes(data))


def test_a_damaged_or_non_finite_input_is_refused_and_nothing_is_written(tmp_path, capsys):
    write_model_epochs(tmp_path, "D", ["a", "b", "c"], epochs=3)
    damage(tmp_path / "D_epoch1.pth.tar", 0.55, 3000)
    line = one_error(capsys, 1, main([str(tmp_path)]))
    assert "D_epoch1.pth.tar" in line and "damaged" in line
    assert not (tmp_path / "D_averaged.pth.tar").exists()
    # A file without a checksum (written by hand or by an old version) is still checked for non-finite weights.
    state = torch.load(tmp_path / "D_epoch2.pth.tar", weights_only=True)
    state.pop("sha256")
    state["model"]["layer2.0.bn1.running_var"][3] = float("inf")
    torch.save(state, tmp_path / "E_epoch7.pth.tar")
    torch.save({**state, "model": torch.load(tmp_path / "D_epoch0.pth.tar", weights_only=True)["model"]},
               tmp_path / "E_epoch6.pth.tar")
    line = one_error(capsys, 1, main([str(tmp_path), "--prefix", "E"]))
    assert "E_epoch7.pth.tar" in line and "layer2.0.bn1.running_var" in line and "non-finite" in line


def test_the_output_carries_its_checksum_and_a_damaged_average_is_refused_by_its_readers(tmp_path, capsys):
    from training import load
    write_model_epochs(tmp_path, "S", ["x", "y"])
    assert main([str(tmp_path), "--output", str(tmp_path / "avg.pt")]) == 0
    assert load.read(str(tmp_path / "avg.pt")).averaged_from == ("S_epoch0.pth.tar", "S_epoch1.pth.tar")
    damage(tmp_path / "avg.pt", 0.8, 64)
    try:
        load.read(str(tmp_path / "avg.pt"))
    except load.UsageError as exc:
        assert "damaged" in str(exc) and "avg.pt" in str(exc)
    else:
        raise AssertionError("a damaged average was read as intact")


def test_no_output_replaces_a_file_of_a_run(tmp_path, capsys):
    import hashlib
    write_model_epochs(tmp_path, "RUN", ["a", "b"])
    assert "is a folder" in one_error(capsys, 2, main([str(tmp_path), "--output", str(tmp_path)]))
    for name in ("RUN_checkpoint.pth.tar", "RUN_checkpoint.prev.pth.tar", "RUN_model_best.pth.tar",
                 "RUN_metrics.jsonl", "RUN_config.json", "RUN_epoch1.pth.tar", "OTHER_epoch12.pth.tar",
                 "OTHER_checkpoint.pth.tar"):
        target = tmp_path / name
        before = hashlib.sha256(target.read_bytes()).hexdigest() if target.exists() else None
        line = one_error(capsys, 2, main([str(tmp_path), "--output", str(target)]))
        assert name in line and "training run" in line, line
        assert (hashlib.sha256(target.read_bytes()).hexdigest() if target.exists() else None) == before


def test_inputs_that_are_not_one_model_at_distinct_points_are_one_line(tmp_path, capsys):
    write_model_epochs(tmp_path / "a", "A", ["x", "y", "z"], epochs=1)
    write_model_epochs(tmp_path / "b", "B", ["x", "y"], epochs=2)
    a, b = str(tmp_path / "a" / "A_epoch0.pth.tar"), str(tmp_path / "b" / "B_epoch1.pth.tar")
    out = ["--output", str(tmp_path / "o.pth.tar")]
    line = one_error(capsys, 2, main([a, b, *out]))  # 3 classes and 2 classes
    assert "B_epoch1.pth.tar has 2 classes" in line and "A_epoch0.pth.tar 3" in line
    write_model_epochs(tmp_path / "c", "C", ["x", "y", "z"], epochs=1)  # epoch 1 again, in another run
    assert "both saved at epoch 1" in one_error(capsys, 2, main([a, str(tmp_path / "c" / "C_epoch0.pth.tar"), *out]))
    assert "given twice" in one_error(capsys, 2, main([a, str(tmp_path / "a" / ".." / "a" / "A_epoch0.pth.tar"),
                                                        *out]))
    assert "give two or more" in one_error(capsys, 2, main([a, *out]))
    import shutil
    shutil.copy(a, tmp_path / "a" / "A_epoch00.pth.tar")  # two names of epoch 0
    line = one_error(capsys, 2, main([str(tmp_path / "a")]))
    assert "A_epoch0.pth.tar and A_epoch00.pth.tar are both epoch 0" in line
    assert not (tmp_path / "o.pth.tar").exists()
