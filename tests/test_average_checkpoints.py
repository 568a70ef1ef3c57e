"""cbam-average-checkpoints on checkpoints written the way train.py --keep-epochs writes them: which files it
takes, what the average holds, and its one-line errors. (Its val top-1 on a trained run: test_recipe_features.)"""
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
