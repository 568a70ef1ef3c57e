"""tools/link_photo_tree.py: an ImageNet-shaped tree of links to real photographs, for the GPU benchmarks."""
import os

import pytest
from conftest import imagenet_sample_files

from tools.link_photo_tree import main, make_tree


def test_tree_of_links_round_robin_rerun_is_a_no_op(tmp_path):
    photos = os.path.dirname(imagenet_sample_files()[0])
    out = tmp_path / "tree"
    assert make_tree(photos, str(out), classes=3, train_per_class=4, val_per_class=1) == 15
    for split, per_class in (("train", 4), ("val", 1)):
        folders = sorted(os.listdir(out / split))
        assert folders == ["class0000", "class0001", "class0002"]
        assert all(len(os.listdir(out / split / f)) == per_class for f in folders)
    linked = [os.path.realpath(p) if os.path.islink(p) else p for p in (out / "train").rglob("*.JPEG")]
    sizes = {os.path.getsize(p) for p in linked}
    assert len(sizes) > 1  # different photographs, not one repeated
    assert make_tree(photos, str(out), classes=3, train_per_class=4, val_per_class=1) == 0


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "photo folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "no .jpg/.jpeg files" in capsys.readouterr().err
    photos = os.path.dirname(imagenet_sample_files()[0])
    foreign = tmp_path / "out" / "train" / "class0000" / "train_0000_000000.JPEG"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"not a link")
    assert main([photos, str(tmp_path / "out"), "--classes", "1", "--train-per-class", "1"]) == 2
    assert "is not a link to" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([photos, str(tmp_path / "out"), "--classes", "0"])
