"""tools/make_shards.py at ImageNet's size: the main process holds a few arrays per image, not Python objects (its
peak grows by about 100 bytes per image, BENCHMARKS.md "make_shards peak memory"), the compact tables give the
same order and the same samples as before, and shard files are fsynced beside the writing, before the manifest."""
import os
import pickle
import random
import threading
import tracemalloc
from types import SimpleNamespace

from shards import convert, files
from shards.imagecheck import Check, CheckTable
from shards.plan import plan_shards
from shards.sources import Source, SourceTable, find_classes, find_sources, stat_source
from shards.synthetic import write_tree
from shards.workers import Workers
from tools import make_shards

IMAGES = 4_000
BYTES_PER_IMAGE_LIMIT = 250  # 700-800 when every file was a Source, a Check and a PlannedSample; now about 100


def linked_tree(root, images, classes):
    """SRC/train/<wnid>/<k>.JPEG: `images` hard links of one small JPEG (no image is decoded here)."""
    write_tree(str(root / "one"), classes=1, train_per_class=1, val_per_class=0, size=16)
    original = next((root / "one").rglob("*.JPEG"))
    for c in range(classes):
        (root / "src" / "train" / f"n{c:08d}").mkdir(parents=True)
    for i in range(images):
        os.link(original, root / "src" / "train" / f"n{i % classes:08d}" / f"{i:07d}.JPEG")
    return root / "src"


def fake_write_shard(task):
    """A completion record for the task, with its three files empty (the bookkeeping is what is measured)."""
    names = {kind: f"{task.name}.{ext}" for kind, ext in (("tar", "tar"), ("index", "idx"), ("checksums", "crc32"))}
    for name in names.values():
        open(os.path.join(task.out, name), "wb").close()
    return dict(names, samples=len(task.samples), bytes=0, sha256="", index_bytes=0, index_sha256="",
                checksums_bytes=0, checksums_sha256="", plan_hash=task.plan_hash, reused=False)


def convert_with_stubs(tmp, images, classes):
    """convert_split over `images` hard-linked files with check_file and write_shard stubbed (installed by the
    caller): (summary, peak bytes traced from find_classes on)."""
    src = str(linked_tree(tmp, images, classes))
    out = tmp / "out"
    (out / "state").mkdir(parents=True)
    # Shards of 250: what a shard in flight holds (its task, its plan's JSON) is not counted as per image.
    args = SimpleNamespace(seed=0, max_side=None, max_count=250, max_size=None, quality=95)
    tracemalloc.start()
    try:
        classes = find_classes(src)
        sources = find_sources(src, "train", classes)
        summary = convert.convert_split("train", sources, classes, args, str(out), str(out / "state"), Workers(1))
        return summary, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_main_process_holds_little_per_image(tmp_path, monkeypatch):
    # What a worker sends back: a fresh Check per file, as unpickling makes it.
    monkeypatch.setattr(convert, "check_file", lambda path: pickle.loads(pickle.dumps(Check("ok", "", 500, 375))))
    monkeypatch.setattr(convert, "write_shard", fake_write_shard)
    convert_with_stubs(tmp_path / "warm-up", 20, classes=2)  # modules imported on first use are not per image
    summary, peak = convert_with_stubs(tmp_path / "measured", IMAGES, classes=50)
    assert summary["samples"] == IMAGES and len(summary["shards"]) == IMAGES // 250
    assert peak / IMAGES < BYTES_PER_IMAGE_LIMIT, f"{peak / IMAGES:.0f} bytes per image at the peak"


def test_sources_are_in_relpath_order_and_read_back_as_found(tmp_path):
    """Each class folder is listed on its own; the result is still one sort over every relpath, whatever the names
    (a loose file named like a folder, folder names that are prefixes of each other, sub-folders)."""
    src = tmp_path / "src"
    for relpath in ["train/n1/b.JPEG", "train/n1/a/c.JPEG", "train/n1/a-c.JPEG", "train/n1-x/a.JPEG",
                    "train/n1.txt", "train/n10/z.JPEG", "train/m.JPEG", "train/n1 /q.JPEG"]:
        (src / relpath).parent.mkdir(parents=True, exist_ok=True)
        (src / relpath).write_bytes(relpath.encode())
    classes = find_classes(str(src))
    table = find_sources(str(src), "train", classes)
    found = list(table)
    assert [s.relpath for s in found] == sorted(s.relpath for s in found)
    for source in found:
        label = classes.index(source.relpath.split("/")[1]) if source.label is not None else None
        assert source == stat_source(str(src), source.relpath, label, None if label is not None else
                                     "not inside a class folder")
        assert table.path(found.index(source)) == source.path


def test_the_shuffle_is_the_one_a_list_of_indices_got(tmp_path):
    """The plan shuffles an array of indices; the permutation (so every shard's bytes) is that of the list the
    earlier code shuffled."""
    src = str(linked_tree(tmp_path, 300, classes=3))
    sources = find_sources(src, "train", find_classes(src))
    checks = CheckTable(len(sources))
    for i in range(len(sources)):
        checks[i] = Check("skipped", "bad", 0, 0) if i % 7 == 0 else Check("ok", "", 16, 16)
    args = SimpleNamespace(seed=3, max_side=None, max_count=40, max_size=None, quality=95)
    plan = plan_shards("train", sources, checks, args, str(tmp_path), str(tmp_path))
    good = [i for i in range(len(sources)) if i % 7]
    random.Random("make_shards:3:train").shuffle(good)
    planned = [sample.relpath for task in plan.tasks() for sample in task.samples]
    assert planned == [sources[i].relpath for i in good]
    counts = [len(task.samples) for task in plan.tasks()]
    assert len(counts) == 7 and max(counts) - min(counts) <= 1


def test_check_table_round_trips_checks():
    checks = CheckTable(4)
    for i, check in enumerate([Check("ok", "", 640, 480), Check("fixed", "CMYK JPEG converted to RGB", 3, 2),
                               Check("skipped", "empty file", 0, 0), Check("ok", "", 70000, 1)]):
        checks[i] = check
        assert checks[i] == check
    checks[1] = Check("ok", "", 5, 5)
    assert checks[1] == ("ok", "", 5, 5) and checks[2] == ("skipped", "empty file", 0, 0)


def test_shard_files_are_fsynced_beside_the_writing_and_before_the_manifest(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_tree(str(src), classes=2, train_per_class=6, val_per_class=0, size=16, seed=1)
    out = tmp_path / "out"
    synced, real_fsync = [], os.fsync

    def spy(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), threading.current_thread() is threading.main_thread()))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", spy)
    assert make_shards.main([str(src), str(out), "--splits", "train", "--workers", "1", "--max-count", "3"]) == 0
    paths = [path for path, _ in synced]
    shard_files = [str(out / f"train-{k:06d}.{ext}") for k in range(4) for ext in ("tar", "idx", "crc32")]
    manifest = next(i for i, path in enumerate(paths) if os.path.basename(path).startswith("manifest.json"))
    for name in shard_files:
        assert name in paths[:manifest], f"{name} not fsynced before the manifest"
    last_shard_file = max(paths.index(name) for name in shard_files)
    assert str(out) in paths[last_shard_file:manifest], "OUT not fsynced between the shards and the manifest"
    # Not one after another in the main process at the end: the main process goes on while threads fsync.
    assert not any(on_main for path, on_main in synced if path in shard_files)


def test_a_source_with_a_problem_keeps_its_own_path(tmp_path):
    """An unstorable name is stored escaped; its path is the real one, not SRC + the escaped relpath."""
    table = SourceTable(str(tmp_path))
    odd = Source("train/x\\xff.JPEG", str(tmp_path / "train" / "x\udcff.JPEG"), None, 0, 0, "not valid UTF-8")
    plain = Source("train/a.JPEG", str(tmp_path / "train" / "a.JPEG"), 2, 10, 7, None)
    table.extend([odd, plain])
    assert list(table) == [odd, plain] and table.path(0) == odd.path and table.problems() == {0: odd.problem}
    assert table.labels.tolist() == [-1, 2] and table.sizes.tolist() == [0, 10]
