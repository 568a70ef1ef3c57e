"""One line where a traceback, an hour of waiting or silence was: absurd sizes and batches refused when parsed,
non-finite weights refused when loaded, a divergence that names its likely cause, the after-training tools' outputs
(export, plot) and inputs. In-process, on the generated shards."""
import json
import os

import pytest
import torch

import train
from model import build_model
from training import stop
from training.checkpoint import save


@pytest.fixture
def error_line(capsys):
    """The one stderr line of a command that returned `status`."""
    def check(status, result):
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert result == status and len(lines) == 1, (result, captured.err[-2000:])
        return lines[0]
    return check


@pytest.mark.parametrize("flags, message", [
    (["--image-size", "100000"], "--image-size must be between 32 and 1024 pixels, got 100000"),
    (["--image-size", "128:2048@1:2"], "--image-size must be between 32 and 1024 pixels, got 2048 (in "),
    (["--val-image-size", "4097"], "--val-image-size must be between 32 and 1024 pixels, got 4097"),
    (["--batch-size", "1"], "--batch-size 1 over 1 rank leaves 1 image per rank: BatchNorm cannot train on one "
                            "image; give at least 2"),
    (["--ngpu", "3", "--batch-size", "3"], "--batch-size 3 over 3 ranks leaves 1 image per rank"),
    (["--auto-augment", "rand-m9-n1000000"], "a whole n from 1 to 15"),
])
def test_absurd_sizes_batches_and_policies_are_refused_before_anything_runs(generated_shards, tmp_path, flags,
                                                                            message, error_line):
    line = error_line(2, train.cli([*flags, "--output-dir", str(tmp_path), generated_shards]))
    assert message in line, line
    assert os.listdir(tmp_path) == []  # refused before the run touched its folder


def test_a_divergence_names_an_absurd_weight_decay_and_otherwise_the_lr():
    weights = [torch.nn.Parameter(torch.ones(3))]
    assert stop.likely_cause(torch.optim.SGD(weights, lr=0.1, weight_decay=1e-4)) == "try a lower --lr"
    assert stop.likely_cause(torch.optim.SGD(weights, lr=1e30, weight_decay=1e-4)) == "try a lower --lr"
    hint = stop.likely_cause(torch.optim.SGD(weights, lr=0.05, weight_decay=300.0))
    assert hint.startswith("--weight-decay 300 at lr 0.05 takes 15 of every weight each step") and \
        hint.endswith("try a much lower --weight-decay")
    assert "--weight-decay 2" in stop.likely_cause(torch.optim.AdamW(weights, lr=0.01, weight_decay=2.0))


def test_a_run_with_an_absurd_weight_decay_diverges_naming_it(generated_shards, tmp_path, error_line):
    line = error_line(1, train.cli(["--depth", "18", "--image-size", "32", "--backend", "torch", "-j", "0", "-b",
                                    "12", "--epochs", "1", "--print-freq", "1", "--weight-decay", "2e6",
                                    "--output-dir", str(tmp_path), generated_shards]))
    assert line.startswith("train.py: error: the run diverged at epoch 0, step ") and \
        "(--weight-decay 2e+06 at lr 0.1 takes 200000 of every weight each step" in line, line


def nan_weights(path, key, authors=False):
    state = build_model(18, "SE", num_classes=4).state_dict()
    state[key][1] = float("nan")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}} if authors else state, path)


def test_non_finite_weights_are_refused_when_loaded(generated_shards, tmp_path, error_line):
    from tools import predict
    nan_weights(tmp_path / "bare.pth", "layer3.1.bn2.running_mean")
    line = error_line(2, train.cli(["--depth", "18", "--att-type", "SE", "--pretrained", str(tmp_path / "bare.pth"),
                                    "-b", "8", "-j", "0", "--output-dir", str(tmp_path / "out"), generated_shards]))
    assert f"checkpoint {tmp_path / 'bare.pth'}: state_dict['layer3.1.bn2.running_mean'] holds non-finite" in line
    nan_weights(tmp_path / "authors.pth.tar", "fc.weight", authors=True)
    photo = os.path.join(generated_shards, "..", "src", "val")
    line = error_line(2, predict.main(["--checkpoint", str(tmp_path / "authors.pth.tar"), photo]))
    assert "state_dict['module.fc.weight'] holds non-finite values" in line, line
    # Our own checkpoint, resumed: the weights are checked even where the checksum matches them.
    state = build_model(18, "SE", num_classes=4).state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("inf")
    save(str(tmp_path / "run"), "T", {"model": state, "config": {"depth": 18, "att_type": "SE"}, "epoch": 1,
                                      "batch": 0, "step": 4, "best_prec1": 0.0, "optimizer": {}, "scaler": {},
                                      "rng": {}}, is_best=False)
    line = error_line(2, train.cli(["--depth", "18", "--att-type", "SE", "--resume", "auto", "--prefix", "T",
                                    "-b", "8", "-j", "0", "--output-dir", str(tmp_path / "run"), generated_shards]))
    assert "model['conv1.weight'] holds non-finite values" in line, line


def test_export_outputs_it_cannot_or_must_not_write_are_one_line(tmp_path, error_line):
    from tools import export
    checkpoint = tmp_path / "c.pth.tar"
    checkpoint.write_bytes(b"checked only after the output")
    (tmp_path / "folder.onnx").mkdir()
    run_file = tmp_path / "R_model_best.pth.tar"
    run_file.write_bytes(b"a run's best weights")
    for out, message in ((tmp_path / "folder.onnx", "is a folder: name the file to write"),
                         ("/sys/cbam.onnx", "cannot write in /sys"),
                         (run_file, "belongs to the files of training run 'R'")):
        line = error_line(2, export.main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]))
        assert line.startswith("export.py: error: --out ") and message in line, line
    assert run_file.read_bytes() == b"a run's best weights"
    for size in ("5000", "16"):
        line = error_line(2, export.main(["--checkpoint", str(checkpoint), "--format", "onnx", "--image-size", size,
                                          "--out", str(tmp_path / "m.onnx")]))
        assert f"--image-size must be between 32 and 1024 pixels, got {size}" in line


@pytest.mark.slow
def test_plot_metrics_draws_rows_without_top5_and_names_what_it_cannot_read(tmp_path, error_line):
    from tools import plot_metrics
    metrics = tmp_path / "T_metrics.jsonl"
    rows = [{"kind": "train", "epoch": 0, "step": s, "loss": 1.0 / s, "top1": 10.0 * s, "lr": 0.1,
             "images_per_sec": 100.0} for s in (1, 2, 3)]  # no top5: a run of fewer than 5 classes
    rows.append({"kind": "val", "epoch": 0, "step": 3, "loss": 0.5, "top1": 40.0, "elapsed_s": 60.0})
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert plot_metrics.main([str(metrics)]) is None and (tmp_path / "T_metrics.png").stat().st_size > 1000
    with pytest.raises(SystemExit) as refused:
        plot_metrics.main([str(metrics), "-o", "/sys/plot.png"])
    assert str(refused.value).startswith("plot_metrics.py: error: cannot write /sys/plot.png: ")
    metrics.write_text(json.dumps(rows[0]) + "\n[1, 2]\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(SystemExit) as refused:
        plot_metrics.main([str(metrics)])
    assert str(refused.value) == f"plot_metrics.py: error: {metrics}:2: not a metrics row (a JSON object): [1, 2]"
    with pytest.raises(SystemExit) as refused:
        plot_metrics.main([str(metrics), "-o", str(tmp_path / "T_metrics.jsonl")])  # the run's own metrics
    assert refused.value.code == 2 and metrics.read_text().count("\n") == 3
    metrics.write_bytes(b'{"step": 1, "kind": "tr\xffain"}\n')
    with pytest.raises(SystemExit) as refused:
        plot_metrics.main([str(metrics)])
    assert str(refused.value).startswith(f"plot_metrics.py: error: cannot read {metrics}: ")
