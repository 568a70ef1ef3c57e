"""tools/make_shards.py: image folders and list files -> shards that stock webdataset and DALI (CPU) read back
with every decodable image exactly once under its right label, bad files listed, restarts without duplicates."""
import collections
import glob
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from shards.imagecheck import Check, check_bytes
from shards.outdir import CheckJournal
from shards.sources import Source
from shards.synthetic import write_tree
from tools import make_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "make_shards.py")


# ---------------------------------------------------------------------------------------------------- helpers

def run_tool(*args, timeout=120):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def tars(out, split):
    return sorted(glob.glob(os.path.join(out, f"{split}-*.tar")))


def read_shards(paths):
    """[(key, label, jpeg bytes)] in shard order, read by stock webdataset with no custom code."""
    import webdataset as wds
    return [(sample["__key__"], int(sample["cls"].decode("ascii")), bytes(sample["jpg"]))
            for sample in wds.WebDataset(paths, shardshuffle=False, empty_check=False)]


def read_webdataset(out, split):
    return read_shards(tars(out, split))


def read_dali(out, split, batch_size=8):
    """[(label, jpeg bytes, decoded HxWx3 array)] read by DALI's webdataset reader with our index files and
    decoded by DALI's CPU image decoder."""
    from nvidia.dali import fn, pipeline_def, types
    paths = tars(out, split)

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=None)
    def pipeline():
        jpeg, label = fn.readers.webdataset(paths=paths, index_paths=[p[:-4] + ".idx" for p in paths],
                                            ext=["jpg", "cls"], missing_component_behavior="error", name="reader")
        return jpeg, label, fn.decoders.image(jpeg, device="cpu", output_type=types.RGB)

    pipe = pipeline()
    pipe.build()
    total = pipe.epoch_size("reader")
    samples = []
    while len(samples) < total:  # the last batch wraps around into the next epoch: cut at the epoch size
        jpegs, labels, images = pipe.run()
        for i in range(len(jpegs)):
            samples.append((int(bytes(labels.at(i)).decode("ascii")), bytes(jpegs.at(i)), np.array(images.at(i))))
    return samples[:total]


def rgb(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def jpeg_bytes(image, **save_args):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **save_args)
    return buffer.getvalue()


def noise_image(mode, size, seed):
    channels = {"L": 1, "RGB": 3}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(), mode)


def ycck_jpeg(size, color):
    """Pillow writes CMYK JPEGs with an Adobe marker whose transform flag is 0 (plain CMYK); flag 2 tells a decoder
    the data is YCCK, which is what Photoshop writes. The flag is the last byte of the 12-byte Adobe segment."""
    data = bytearray(jpeg_bytes(Image.new("CMYK", size, color)))
    adobe = data.find(b"Adobe")
    assert adobe > 0 and data[adobe + 11] == 0
    data[adobe + 11] = 2
    return bytes(data)


def add_bad_files(root):
    """Nonstandard and broken inputs, plus valid grayscale and oddly named JPEGs. Returns (fixed,
    skipped): relpath -> expected part of the reason. Converted images get distinct non-square sizes so that a
    sample read back can be traced to its source."""
    def put(relpath, data):
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    png = io.BytesIO()
    Image.new("RGB", (41, 31), (200, 30, 90)).save(png, "PNG")
    rgba = io.BytesIO()
    Image.new("RGBA", (42, 32), (20, 90, 200, 120)).save(rgba, "PNG")
    good = sorted((root / "train" / "n09000003").glob("*.JPEG"))[0].read_bytes()
    put("train/n09000000/cmyk.JPEG", jpeg_bytes(Image.new("CMYK", (40, 30), (10, 200, 30, 5))))
    put("train/n09000000/ycck.jpeg", ycck_jpeg((43, 33), (60, 10, 200, 0)))
    put("train/n09000001/png named.JPEG", png.getvalue())
    put("train/n09000001/alpha.png", rgba.getvalue())
    put("train/n09000002/gray.scan.JPG", jpeg_bytes(noise_image("L", (44, 34), 1)))
    put("val/n09000002/a photo.v2.jpeg", jpeg_bytes(noise_image("RGB", (45, 35), 2)))
    put("train/n09000003/truncated.JPEG", good[:len(good) // 2])
    put("val/n09000003/empty.JPEG", b"")
    put("val/n09000000/notes.JPEG", b"not an image, just text\n")
    fixed = {"train/n09000000/cmyk.JPEG": "CMYK JPEG converted to RGB",
             "train/n09000000/ycck.jpeg": "YCCK JPEG converted to RGB",
             "train/n09000001/png named.JPEG": "PNG image under a JPEG name converted to RGB JPEG",
             "train/n09000001/alpha.png": "alpha channel (RGBA)"}
    skipped = {"train/n09000003/truncated.JPEG": "truncated JPEG",
               "val/n09000003/empty.JPEG": "empty file",
               "val/n09000000/notes.JPEG": "not an image"}
    return fixed, skipped


def expected_samples(root, classes, split, skipped):
    """relpath -> label for every decodable file of a split (the class is the folder's wnid)."""
    expected = {}
    for path in sorted((root / split).rglob("*")):
        relpath = path.relative_to(root).as_posix()
        if path.is_file() and relpath not in skipped:
            expected[relpath] = classes.index(path.parent.name)
    return expected


def source_finder(root, expected, fixed):
    """Maps a stored JPEG back to its source: by bytes for files stored as they are, by the (unique) pixel size
    for converted ones, whose pixels must also match the source converted to RGB."""
    by_hash = {sha((root / relpath).read_bytes()): relpath for relpath in expected if relpath not in fixed}
    by_size = {Image.open(root / relpath).size: relpath for relpath in fixed}
    assert len(by_hash) == len(expected) - len(fixed) and len(by_size) == len(fixed)

    def find(data):
        if sha(data) in by_hash:
            return by_hash[sha(data)]
        stored = Image.open(io.BytesIO(data))
        assert stored.format == "JPEG" and stored.mode == "RGB"
        relpath = by_size[stored.size]
        source = np.asarray(Image.open(root / relpath).convert("RGB"), np.int16)
        assert np.abs(rgb(data).astype(np.int16) - source).mean() < 3, relpath
        return relpath
    return find


# ---------------------------------------------------------------------------------------------------- generated tree

@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory):
    """A generated tree (4 classes, varied sizes) plus every kind of bad input, converted once for the tests
    below with 2 workers and small shards."""
    root = tmp_path_factory.mktemp("bad_tree") / "src"
    classes = write_tree(str(root), classes=4, train_per_class=9, val_per_class=4, size=48, seed=3)
    fixed, skipped = add_bad_files(root)
    out = root.parent / "out"
    result = run_tool(root, out, "--workers", 2, "--max-count", 7)
    manifest = json.loads((out / "manifest.json").read_text())
    expected = {split: expected_samples(root, classes, split, skipped) for split in ("train", "val")}
    find = source_finder(root, {**expected["train"], **expected["val"]}, fixed)
    return SimpleNamespace(root=root, out=out, result=result, classes=classes, fixed=fixed, skipped=skipped,
                           manifest=manifest, expected=expected, find=find)


def test_bad_files_are_listed_and_exit_status_is_1(bad_tree):
    result, manifest = bad_tree.result, bad_tree.manifest
    assert result.returncode == 1, result.stderr
    assert "3 inputs were skipped (unreadable, undecodable or unusable)" in result.stderr
    assert str(bad_tree.out / "manifest.json") in result.stderr
    fixed = {item["path"]: item["reason"] for s in manifest["splits"].values() for item in s["fixed"]}
    skipped = {item["path"]: item["reason"] for s in manifest["splits"].values() for item in s["skipped"]}
    assert fixed.keys() == bad_tree.fixed.keys() and skipped.keys() == bad_tree.skipped.keys()
    for listed, expected in ((fixed, bad_tree.fixed), (skipped, bad_tree.skipped)):
        for path, reason in expected.items():
            assert reason in listed[path], (path, listed[path])


def test_manifest_counts_add_up_and_shards_are_balanced(bad_tree):
    manifest = bad_tree.manifest
    assert manifest["format_version"] == 1 and manifest["source"] == str(bad_tree.root)
    assert manifest["options"] == {"splits": ["train", "val"], "max_count": 7, "max_size": None,
                                   "max_side": None, "quality": 95, "seed": 0}
    assert manifest["classes"] == bad_tree.classes
    assert (bad_tree.out / "classes.txt").read_text().split("\n") == bad_tree.classes + [""]
    for split, summary in manifest["splits"].items():
        expected = bad_tree.expected[split]
        skipped = [p for p in bad_tree.skipped if p.startswith(split + "/")]
        assert summary["found"] == len(expected) + len(skipped)
        assert summary["samples"] == len(expected) == summary["found"] - len(summary["skipped"])
        assert summary["class_counts"] == [list(expected.values()).count(c) for c in range(len(bad_tree.classes))]
        counts = [shard["samples"] for shard in summary["shards"]]
        assert sum(counts) == summary["samples"] and max(counts) <= 7 and max(counts) - min(counts) <= 1
        assert [s["tar"] for s in summary["shards"]] == [os.path.basename(p) for p in tars(bad_tree.out, split)]
        for shard in summary["shards"]:
            data = (bad_tree.out / shard["tar"]).read_bytes()
            assert len(data) == shard["bytes"] and sha(data) == shard["sha256"]
            assert shard["index"] == shard["tar"][:-4] + ".idx"


def test_the_manifest_records_size_and_sha256_of_every_shard_file(bad_tree):
    for split in bad_tree.manifest["splits"].values():
        for entry in split["shards"]:
            for name, prefix in ((entry["tar"], ""), (entry["index"], "index_"), (entry["checksums"], "checksums_")):
                data = (bad_tree.out / name).read_bytes()
                assert (len(data), sha(data)) == (entry[f"{prefix}bytes"], entry[f"{prefix}sha256"]), name


@pytest.mark.parametrize("split", ["train", "val"])
def test_webdataset_reads_every_image_once_with_its_label(bad_tree, split):
    samples = read_webdataset(bad_tree.out, split)
    keys = [key for key, _, _ in samples]
    assert len(set(keys)) == len(keys) and all("." not in key and "/" not in key for key in keys)
    assert keys == sorted(keys)  # keys follow the permutation position, shard after shard
    found = collections.Counter((bad_tree.find(jpeg), label) for _, label, jpeg in samples)
    assert found == collections.Counter(bad_tree.expected[split].items())


@pytest.mark.parametrize("split", ["train", "val"])
def test_dali_reads_every_image_once_with_its_label(bad_tree, split):
    samples = read_dali(bad_tree.out, split)
    found = collections.Counter()
    for label, jpeg, image in samples:
        relpath = bad_tree.find(jpeg)
        found[relpath, label] += 1
        assert image.shape == rgb(jpeg).shape  # DALI decoded it (grayscale and converted ones included)
    assert found == collections.Counter(bad_tree.expected[split].items())


def test_samples_are_shuffled_across_shards(bad_tree):
    labels_per_shard = [{label for _, label, _ in read_shards([path])} for path in tars(bad_tree.out, "train")]
    assert all(len(labels) > 1 for labels in labels_per_shard)
    # the first shard is not simply the first class folder in file order
    first = read_shards(tars(bad_tree.out, "train")[:1])
    assert [bad_tree.find(jpeg) for _, _, jpeg in first] != sorted(bad_tree.expected["train"])[:len(first)]


def test_index_files_match_dali_wds2idx(bad_tree, tmp_path):
    from wds2idx import IndexCreator  # the tool DALI ships to index a tar (needs GNU tar or tarfile)
    shards = tars(bad_tree.out, "train") + tars(bad_tree.out, "val")
    for tar in shards:
        reference = tmp_path / "reference.idx"
        with IndexCreator(tar, str(reference), verbose=False) as creator:
            creator.create_index()
        assert open(tar[:-4] + ".idx", "rb").read() == reference.read_bytes(), tar


def test_rerun_reuses_every_shard_and_skip_bad_exits_0(bad_tree, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(bad_tree.out, out)
    result = run_tool(bad_tree.root, out, "--workers", 2, "--max-count", 7, "--skip-bad")
    assert result.returncode == 0, result.stderr
    shards = {s: len(bad_tree.manifest["splits"][s]["shards"]) for s in ("train", "val")}
    for split, count in shards.items():
        assert f"{split}: " in result.stdout and f"{count} shards ({count} reused)" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == bad_tree.manifest["splits"]


def test_a_tampered_shard_is_rewritten(bad_tree, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(bad_tree.out, out)
    tampered = out / "train-000001.tar"
    data = bytearray(tampered.read_bytes())
    data[1000] ^= 0xFF
    tampered.write_bytes(bytes(data))
    result = run_tool(bad_tree.root, out, "--workers", 2, "--max-count", 7, "--skip-bad")
    assert result.returncode == 0, result.stderr
    count = len(bad_tree.manifest["splits"]["train"]["shards"])
    assert f"{count} shards ({count - 1} reused)" in result.stdout
    assert sha(tampered.read_bytes()) == bad_tree.manifest["splits"]["train"]["shards"][1]["sha256"]


# ---------------------------------------------------------------------------------------------------- the check

@pytest.mark.parametrize("mode, progressive", [("RGB", False), ("RGB", True), ("L", False)])
def test_check_catches_truncation_wherever_a_full_decode_does(mode, progressive):
    data = jpeg_bytes(noise_image(mode, (160, 120), 4), quality=90, progressive=progressive)
    assert check_bytes(data, "x.JPEG").status == "ok"
    n = len(data)
    for cut in (n - 1, n - 2, n - 10, n - 100, n * 3 // 4, n // 2, n // 4, 1000, 200, 20):
        try:
            Image.open(io.BytesIO(data[:cut])).load()
            full_decode_ok = True
        except Exception:  # whatever a full decode raises, the check must also reject the file
            full_decode_ok = False
        check = check_bytes(data[:cut], "x.JPEG")
        assert (check.status == "ok") == full_decode_ok, (cut, check)
        if cut <= n - 10:
            assert check.status == "skipped" and ("truncated" in check.reason or "unreadable" in check.reason)


@pytest.mark.parametrize("kind, status, reason", [
    ("rgb", "ok", ""), ("gray", "ok", ""),
    ("cmyk", "fixed", "CMYK JPEG converted to RGB"), ("ycck", "fixed", "YCCK JPEG converted to RGB"),
    ("png_named_jpeg", "fixed", "PNG image under a JPEG name converted to RGB JPEG"),
    ("rgba_png", "fixed", "PNG image with alpha channel (RGBA) converted to RGB JPEG, alpha dropped"),
    ("gif_transparent", "fixed", "GIF image with alpha channel (P) converted to RGB JPEG, alpha dropped"),
    ("empty", "skipped", "empty file"), ("text", "skipped", "not an image (no format Pillow can read)"),
])
def test_check_classifies_each_kind_of_input(kind, status, reason):
    def saved(image, fmt, **kw):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kw)
        return buffer.getvalue()
    inputs = {
        "rgb": (jpeg_bytes(noise_image("RGB", (30, 20), 5)), "a.JPEG"),
        "gray": (jpeg_bytes(noise_image("L", (30, 20), 6)), "a.jpg"),
        "cmyk": (jpeg_bytes(Image.new("CMYK", (30, 20), (1, 2, 3, 4))), "a.JPEG"),
        "ycck": (ycck_jpeg((30, 20), (1, 2, 3, 4)), "a.JPEG"),
        "png_named_jpeg": (saved(Image.new("RGB", (30, 20)), "PNG"), "a.JPEG"),
        "rgba_png": (saved(Image.new("RGBA", (30, 20)), "PNG"), "a.png"),
        "gif_transparent": (saved(Image.new("P", (30, 20)), "GIF", transparency=0), "a.gif"),
        "empty": (b"", "a.JPEG"),
        "text": (b"hello", "a.JPEG"),
    }
    check = check_bytes(*inputs[kind])
    assert (check.status, check.reason) == (status, reason)


# ---------------------------------------------------------------------------------------------------- real photos

def test_real_photographs_round_trip_pixel_for_pixel(sample_tree, tmp_path):
    out = tmp_path / "out"
    result = run_tool(sample_tree, out, "--workers", 2, "--max-count", 5)
    assert result.returncode == 0, result.stderr
    wnids = sorted(os.listdir(sample_tree / "train"))
    for split in ("train", "val"):
        sources = {sha(p.read_bytes()): p for p in (sample_tree / split).rglob("*.JPEG")}
        samples = read_webdataset(out, split)
        assert sorted(sha(jpeg) for _, _, jpeg in samples) == sorted(sources)
        dali = {sha(jpeg): image for _, jpeg, image in read_dali(out, split)}
        assert dali.keys() == sources.keys()
        for _, label, jpeg in samples:
            source = sources[sha(jpeg)]
            assert label == wnids.index(source.name.split("_")[0])
            direct = rgb(source.read_bytes())
            assert np.array_equal(rgb(jpeg), direct)
            # DALI's CPU decoder may round its colour conversion differently from Pillow, never by more
            assert np.abs(dali[sha(jpeg)].astype(np.int16) - direct).max() <= 2


# ---------------------------------------------------------------------------------------------------- restarts

def children_of(pid):
    children = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we were looking
        if int(fields[1]) == pid:
            children.append(int(stat.split("/")[2]))
    return children


def alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def sample_set(out, split="train"):
    return sorted((key, label, sha(jpeg)) for key, label, jpeg in read_webdataset(out, split))


@pytest.mark.slow
def test_sigkill_mid_write_then_rerun_gives_exactly_the_same_samples(tmp_path):
    src = tmp_path / "src"
    write_tree(str(src), classes=3, train_per_class=80, val_per_class=0, size=24, seed=5)
    args = ["--splits", "train", "--workers", 2, "--max-count", 1]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert run_tool(src, clean, *args).returncode == 0

    process = subprocess.Popen([sys.executable, TOOL, src, killed, *map(str, args)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(tars(killed, "train")) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    workers = children_of(process.pid)
    process.send_signal(signal.SIGKILL)  # the main process only, as `kill -9 PID` would
    process.wait()
    assert not (killed / "manifest.json").exists(), "the conversion ended before it could be killed"
    written = len(tars(killed, "train"))
    assert 5 <= written < 240
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(alive(pid) for pid in workers), "pool workers outlived the killed tool"

    result = run_tool(src, killed, *args)
    assert result.returncode == 0, result.stderr
    reused = int(re.search(r"\((\d+) reused\)", result.stdout).group(1))
    assert reused >= written - 2  # shards being renamed at the kill may lack their completion record
    assert json.loads((killed / "manifest.json").read_text())["splits"] == \
        json.loads((clean / "manifest.json").read_text())["splits"]
    assert sample_set(killed) == sample_set(clean)
    assert len(sample_set(killed)) == 240
    assert not [name for name in os.listdir(killed) if name.endswith(".tmp")]


def test_check_journal_survives_a_torn_line(tmp_path):
    journal_path = tmp_path / "check-train.jsonl"
    source = Source("train/a/x.JPEG", "/x", 0, 10, 5, None)
    other = Source("train/a/y.JPEG", "/y", 0, 11, 6, None)
    journal = CheckJournal(str(journal_path))
    journal.record(source, Check("ok", "", 3, 4))
    journal.close()
    with open(journal_path, "a") as f:
        f.write('["train/a/y.JPEG", 11, 6, "o')  # a record cut short by SIGKILL
    journal = CheckJournal(str(journal_path))
    assert journal.lookup(source) == ("ok", "", 3, 4) and journal.lookup(other) is None
    journal.record(other, Check("skipped", "empty file", 0, 0))
    journal.close()
    journal = CheckJournal(str(journal_path))
    assert journal.lookup(other) == ("skipped", "empty file", 0, 0)
    assert journal.lookup(source._replace(size=99)) is None  # a changed file is checked again
    journal.close()


# ---------------------------------------------------------------------------------------------------- options

def test_list_files_win_over_folders_and_allow_any_path(tmp_path):
    src = tmp_path / "src"
    classes = write_tree(str(src / "pool"), classes=3, train_per_class=4, val_per_class=2, size=32, seed=6)
    (src / "train" / "n00000001").mkdir(parents=True)  # a folder the list file overrides
    lines = {"train": [], "val": []}
    expected = {"train": {}, "val": {}}
    for split in ("train", "val"):
        for label, wnid in enumerate(classes):
            for i, path in enumerate(sorted((src / "pool" / split / wnid).iterdir())):
                # train keeps ImageNet's train/<wnid>/ layout, val is flat with odd names (dots, spaces)
                relpath = f"train/{wnid}/{path.name}" if split == "train" else f"val/img {label}.{i}.jpeg"
                (src / relpath).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, src / relpath)
                lines[split].append(f"{relpath} {label}")
                expected[split][sha((src / relpath).read_bytes())] = label
    for split in ("train", "val"):
        (src / f"{split}_list.txt").write_text("\n".join(lines[split]) + "\n")
    out = tmp_path / "out"
    result = run_tool(src, out, "--workers", 2, "--max-count", 5)
    assert result.returncode == 0, result.stderr
    assert "train: using" in result.stderr  # says that the list file wins over train/
    assert (out / "classes.txt").read_text().split() == classes
    for split in ("train", "val"):
        assert {sha(jpeg): label for _, label, jpeg in read_webdataset(out, split)} == expected[split]
        assert len(read_webdataset(out, split)) == len(expected[split])


def test_max_side_downscales_only_larger_images_and_max_size_bounds_shards(tmp_path):
    src = tmp_path / "src"
    write_tree(str(src), classes=2, train_per_class=12, val_per_class=0, size=48, seed=7)
    sources = {p.name: p for p in (src / "train").rglob("*.JPEG")}
    out = tmp_path / "out"
    code = make_shards.main([str(src), str(out), "--splits", "train", "--workers", "1", "--max-side", "50",
                             "--quality", "90", "--max-size", "16K"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    counts = [s["samples"] for s in manifest["splits"]["train"]["shards"]]
    assert max(counts) - min(counts) <= 1 and sum(counts) == 24 and len(counts) > 1
    assert all(s["bytes"] <= 16 * 1024 for s in manifest["splits"]["train"]["shards"])
    by_hash = {sha(p.read_bytes()): p for p in sources.values()}
    downscaled = 0
    for _, _, jpeg in read_webdataset(out, "train"):
        size = Image.open(io.BytesIO(jpeg)).size
        if sha(jpeg) in by_hash:  # stored byte for byte: it was small enough
            assert max(Image.open(by_hash[sha(jpeg)]).size) <= 50
        else:
            assert max(size) == 50
            downscaled += 1
    assert downscaled == sum(max(Image.open(p).size) > 50 for p in sources.values()) > 0


# ---------------------------------------------------------------------------------------------------- errors

def small_tree(root):
    write_tree(str(root), classes=2, train_per_class=2, val_per_class=1, size=24, seed=8)
    return root


def missing_src(tmp):
    return [tmp / "nope", tmp / "out"], "is not a directory"


def no_classes(tmp):
    (tmp / "empty" / "train").mkdir(parents=True)
    return [tmp / "empty", tmp / "out"], "no classes"


def val_class_not_in_train(tmp):
    (small_tree(tmp / "s") / "val" / "n12345678").mkdir()
    return [tmp / "s", tmp / "out"], "class n12345678 is not among the train classes"


def bad_list_line(tmp):
    shutil.rmtree(small_tree(tmp / "s") / "val")  # val comes from the list file alone
    (tmp / "s" / "val_list.txt").write_text("val/a.JPEG 0\nval/b.JPEG\n")
    return [tmp / "s", tmp / "out"], "val_list.txt:2: expected 'relative/path label', got 'val/b.JPEG'"


def label_not_a_number(tmp):
    shutil.rmtree(small_tree(tmp / "s") / "val")
    (tmp / "s" / "val_list.txt").write_text("val/a b.JPEG 0\nval/c.JPEG x1\n")
    return [tmp / "s", tmp / "out"], "val_list.txt:2: label 'x1' is not a non-negative integer"


def label_out_of_range(tmp):
    shutil.rmtree(small_tree(tmp / "s") / "val")
    (tmp / "s" / "val_list.txt").write_text("val/a.JPEG 7\n")
    return [tmp / "s", tmp / "out"], "val_list.txt:1: label 7 out of range (train has 2 classes)"


def out_is_a_file(tmp):
    (tmp / "file").write_text("x")
    return [small_tree(tmp / "s"), tmp / "file"], "exists and is not a directory"


def out_holds_unknown_shards(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "train-000000.tar").write_bytes(b"x")
    return [small_tree(tmp / "s"), tmp / "out"], "holds shard files of an unknown run"


@pytest.mark.parametrize("case", [missing_src, no_classes, val_class_not_in_train, bad_list_line,
                                  label_not_a_number, label_out_of_range, out_is_a_file,
                                  out_holds_unknown_shards],
                         ids=lambda case: case.__name__)
def test_errors_are_one_line_and_exit_status_2(case, tmp_path, capsys):
    args, message = case(tmp_path)
    code = make_shards.main([str(a) for a in args] + ["--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("make_shards.py: error: ") and message in err, err


def test_a_different_run_needs_overwrite(tmp_path, capsys):
    src, out = small_tree(tmp_path / "s"), tmp_path / "out"
    (out).mkdir()
    (out / "notes.txt").write_text("mine")  # not ours: never deleted
    assert make_shards.main([str(src), str(out), "--workers", "1", "--seed", "1"]) == 0
    assert make_shards.main([str(src), str(out), "--workers", "1", "--seed", "2"]) == 2
    assert "holds shards of a different run (seed 1 vs 2)" in capsys.readouterr().err
    assert make_shards.main([str(src), str(out), "--workers", "1", "--seed", "2", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["options"]["seed"] == 2
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("flag, value", [("--workers", "0"), ("--quality", "101"), ("--max-count", "-3"),
                                         ("--max-size", "12Q"), ("--splits", "train,test"), ("--max-side", "x")])
def test_bad_flag_values_exit_2(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_shards.main([str(tmp_path), str(tmp_path / "out"), flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_help_explains_every_flag_with_its_unit(capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_shards.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--splits", "--workers", "--max-count", "--max-size", "--max-side", "--quality", "--seed",
                 "--skip-bad", "--overwrite"):
        assert flag in text
    for unit in ("samples per shard", "bytes", "pixels", "JPEG quality 1-100", "processes"):
        assert unit in text


def test_rerun_after_the_source_changed_matches_a_clean_run(tmp_path):
    src = small_tree(tmp_path / "s")
    write_tree(str(src), classes=2, train_per_class=9, val_per_class=1, size=24, seed=9)
    out, clean = tmp_path / "out", tmp_path / "clean"
    args = ["--splits", "train", "--workers", "1", "--max-count", "3"]
    assert make_shards.main([str(src), str(out), *args]) == 0
    assert len(tars(out, "train")) == 6
    for path in sorted((src / "train").rglob("*.JPEG"))[:7]:
        path.unlink()
    changed = sorted((src / "train").rglob("*.JPEG"))[0]
    changed.write_bytes(jpeg_bytes(noise_image("RGB", (30, 30), 10)))
    assert make_shards.main([str(src), str(out), *args]) == 0
    assert make_shards.main([str(src), str(clean), *args]) == 0
    assert [os.path.basename(p) for p in tars(out, "train")] == ["train-000000.tar", "train-000001.tar",
                                                                 "train-000002.tar", "train-000003.tar"]
    assert sample_set(out) == sample_set(clean) and len(sample_set(out)) == 11
    assert sha(changed.read_bytes()) in {digest for _, _, digest in sample_set(out)}


def _without_root_file_access(argv):
    """argv run as root without the capabilities that let root read any file: permission bits apply to it, as to
    a user who is not root."""
    import shutil as _shutil
    if os.geteuid() != 0 or not _shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to drop the file-access capabilities")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *argv]


def test_unreadable_folders_are_listed_as_skipped_and_fail_the_run(tmp_path):
    src = tmp_path / "src"
    write_tree(str(src), classes=3, train_per_class=4, val_per_class=1, size=40, seed=2)
    classes = sorted(os.listdir(src / "train"))
    hidden_class = src / "train" / classes[0]  # a whole class folder that cannot be listed
    nested = src / "train" / classes[1] / "more"  # and a subfolder of another class
    nested.mkdir()
    shutil.copy(next((src / "train" / classes[2]).iterdir()), nested / "extra.JPEG")
    for folder in (hidden_class, nested):
        folder.chmod(0)
    try:
        result = subprocess.run(_without_root_file_access([sys.executable, TOOL, str(src), str(tmp_path / "out")]),
                                capture_output=True, text=True, timeout=120)
    finally:
        for folder in (hidden_class, nested):
            folder.chmod(0o755)
    assert result.returncode == 1, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    skipped = {item["path"]: item["reason"] for item in manifest["splits"]["train"]["skipped"]}
    assert set(skipped) == {f"train/{classes[0]}/", f"train/{classes[1]}/more/"}
    assert all(reason.startswith("folder cannot be listed: Permission denied") for reason in skipped.values())
    train = manifest["splits"]["train"]
    assert train["found"] == train["samples"] + len(train["skipped"]) and train["class_counts"][0] == 0
    assert f"train: 1 classes have no sample: {classes[0]}" in result.stderr
    assert "--allow-empty-classes" in result.stderr


def test_an_empty_class_fails_the_run_unless_allowed(tmp_path):
    src = tmp_path / "src"
    write_tree(str(src), classes=2, train_per_class=3, val_per_class=1, size=40, seed=3)
    (src / "train" / "n99999999").mkdir()
    result = run_tool(src, tmp_path / "out")
    assert result.returncode == 1 and "train: 1 classes have no sample: n99999999" in result.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["classes"][-1] == "n99999999"
    allowed = run_tool(src, tmp_path / "out", "--allow-empty-classes")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "train: 1 classes have no sample: n99999999" in allowed.stderr


def test_one_run_at_a_time_per_out_folder(tmp_path):
    """OUT is locked for the whole run: a second run names the first instead of racing it (renames failing, OUT
    left without a manifest)."""
    import fcntl
    src = tmp_path / "src"
    write_tree(str(src), classes=3, train_per_class=20, val_per_class=2, size=64, seed=4)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".make_shards.lock", "a+") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        holder.write("4242\n")
        holder.flush()
        refused = run_tool(src, out)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (f"make_shards.py: error: OUT {out} is being written by another "
                                                     "make_shards run (pid 4242); wait for it to finish or choose "
                                                     "another OUT")
    assert not (out / "manifest.json").exists()
    # Two real runs at once: whichever loses says so; OUT ends complete either way.
    procs = [subprocess.Popen([sys.executable, TOOL, str(src), str(out), "--max-count", "7"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert any(code == 0 for code, _ in results), results
    assert all(code == 0 or "being written by another make_shards run" in err for code, err in results), results
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == 60


def test_a_full_disk_names_the_file_on_its_own_line_and_leaves_no_temporary(tmp_path):
    """Writes past a 40 kB file-size limit fail as a full disk does (EFBIG instead of ENOSPC)."""
    import resource
    src = tmp_path / "src"
    write_tree(str(src), classes=3, train_per_class=20, val_per_class=2, size=64, seed=5)
    out = tmp_path / "out"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
    result = subprocess.run([sys.executable, TOOL, str(src), str(out), "--workers", "1"], capture_output=True,
                            text=True, timeout=120, preexec_fn=limit)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.splitlines()[-1]
    assert last.startswith("make_shards.py: error: [Errno 27] File too large: ") and str(out) in last, last
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------------- names

@pytest.mark.parametrize("split, name, shown, problem", [
    ("train", b"n0\xc3(bad", "n0\\xc3(bad", "is not valid UTF-8 (byte 0xc3)"),
    ("val", b"n01\r", "n01\\r", "holds the control character \\r"),
    ("train", "n7\u2029".encode(), "n7\\u2029", "holds the control character \\u2029")],
    ids=["undecodable", "carriage-return", "paragraph-separator"])
def test_a_class_folder_name_that_cannot_be_stored_is_refused_before_any_work(tmp_path, split, name, shown,
                                                                              problem):
    """A class name is a label in manifest.json and a line of classes.txt: refused at once, naming the folder."""
    src = small_tree(tmp_path / "s")
    folder = os.path.join(os.fsencode(src / split), name)
    os.mkdir(folder)
    shutil.copy(next((src / "train").rglob("*.JPEG")), os.path.join(folder, b"x.JPEG"))
    result = run_tool(src, tmp_path / "out")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == (f"make_shards.py: error: class folder '{src / split}/{shown}': its name {problem}; a "
                             "class name is stored in manifest.json and classes.txt, rename the folder\n")
    assert not (tmp_path / "out").exists()


def test_image_names_that_cannot_be_stored_are_skipped_with_their_reason(tmp_path):
    """Each such file is one input: listed as skipped under its escaped name, exit 1; the manifest is strict UTF-8
    JSON and every other file is stored; a list file naming one does the same."""
    src = small_tree(tmp_path / "s")
    photo = next((src / "train").rglob("*.JPEG")).read_bytes()
    wnid = sorted(os.listdir(src / "train"))[1]
    names = {b"ok \xe2\x82\xac.JPEG": None,  # valid UTF-8 (a euro sign): stored
             b"lat\xe9n.JPEG": "train/%s/lat\\xe9n.JPEG", b"two\nlines.JPEG": "train/%s/two\\nlines.JPEG",
             b"sub\x1bdir/deep.JPEG": "train/%s/sub\\x1bdir/deep.JPEG", b"del\x7f.jpg": "train/%s/del\\x7f.jpg"}
    for name in names:
        path = os.path.join(os.fsencode(src / "train" / wnid), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(photo)
    out = tmp_path / "out"
    result = run_tool(src, out, "--workers", 2)
    assert result.returncode == 1, result.stderr[-2000:]
    raw = (out / "manifest.json").read_bytes()
    manifest = json.loads(raw.decode("utf-8", "strict"))
    assert b"\\ud" not in raw  # no lone surrogate escapes: strict JSON parsers read it
    skipped = {item["path"]: item["reason"] for item in manifest["splits"]["train"]["skipped"]}
    assert set(skipped) == {shown % wnid for shown in names.values() if shown}
    assert all("which the manifest cannot store; rename it" in reason for reason in skipped.values())
    assert skipped[f"train/{wnid}/lat\\xe9n.JPEG"].startswith("its name is not valid UTF-8 (byte 0xe9)")
    assert skipped[f"train/{wnid}/two\\nlines.JPEG"].startswith("its name holds the control character \\n")
    assert manifest["splits"]["train"]["samples"] == 4 + 1
    assert f"skipped train/{wnid}/two\\nlines.JPEG: its name" in result.stderr  # on one line
    (src / "train_list.txt").write_text(f"train/{wnid}/tab\tin name.JPEG 0\ntrain/{wnid}/ok \u20ac.JPEG 1\n")
    (src / "train" / wnid / "tab\tin name.JPEG").write_bytes(photo)
    listed = run_tool(src, tmp_path / "listed", "--splits", "train")
    assert listed.returncode == 1, listed.stderr[-2000:]
    train = json.loads((tmp_path / "listed" / "manifest.json").read_text())["splits"]["train"]
    assert [item["path"] for item in train["skipped"]] == [f"train/{wnid}/tab\\tin name.JPEG"]
    assert train["samples"] == 1


def test_a_list_file_that_is_not_utf8_names_its_line(tmp_path, capsys):
    src = small_tree(tmp_path / "s")
    shutil.rmtree(src / "val")  # val comes from the list file alone
    (src / "val_list.txt").write_bytes(b"val/a.JPEG 0\n\nval/caf\xe9.JPEG 1\n")
    assert make_shards.main([str(src), str(tmp_path / "out"), "--workers", "1"]) == 2
    assert capsys.readouterr().err == (f"make_shards.py: error: {src / 'val_list.txt'}:3: not valid UTF-8 "
                                       "(byte 0xe9); list files are UTF-8 text\n")


@pytest.mark.parametrize("key, ext", [("a\nb", "jpg"), ("caf\u00e9", "jpg"), ("k", "j pg"), ("k" * 98, "jpg")])
def test_the_shard_writer_refuses_member_names_its_files_cannot_hold(key, ext):
    from shards.writer import ShardWriter
    with pytest.raises(ValueError, match="key and extension must be ASCII letters, digits"):
        ShardWriter(io.BytesIO()).add_sample(key, {ext: b"x"})


def limited_to(size):
    """preexec_fn: writes past `size` bytes fail as on a full disk (EFBIG instead of ENOSPC)."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def long_names_in_journal(src):
    """Checked files with long names: the check journal outgrows every other file."""
    photo = next((src / "train").rglob("*.JPEG")).read_bytes()
    for i in range(70):
        (src / "train" / sorted(os.listdir(src / "train"))[0] / f"{i:03d}{'j' * 200}.JPEG").write_bytes(photo)
    return ".make_shards/check-train.jsonl"


def long_class_names(src):
    """Many (empty) classes with long names: classes.txt outgrows the shards and the journal."""
    for i in range(70):
        (src / "train" / f"n{i:03d}{'c' * 200}").mkdir()
    return "classes.txt"


def many_skipped_files(src):
    """Files outside any class folder are listed in the manifest only (never checked): it outgrows the rest."""
    for i in range(70):
        (src / "train" / f"loose-{i:03d}{'m' * 200}.txt").write_bytes(b"not a sample")
    return "manifest.json"


@pytest.mark.parametrize("grow", [long_names_in_journal, long_class_names, many_skipped_files],
                         ids=lambda grow: grow.__name__)
def test_a_full_disk_on_a_small_file_names_it_and_leaves_no_temporary(tmp_path, grow):
    src = tmp_path / "src"
    write_tree(str(src), classes=2, train_per_class=2, val_per_class=1, size=16, seed=6)
    name = grow(src)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, TOOL, str(src), str(out), "--workers", "2", "--max-count", "2"],
                            capture_output=True, text=True, timeout=120, preexec_fn=limited_to(13_000))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1] == f"make_shards.py: error: [Errno 27] File too large: '{out / name}'"
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.endswith(".tmp")]
    assert not leftovers and not (out / "manifest.json").exists()


# Run in a mount namespace of its own (unshare -m): converts SRC into a roomy tmpfs to learn how many bytes (tmpfs
# counts whole pages) the files written before FILE take, then again into a tmpfs of exactly that size, so that the
# disk is full when FILE is written. Prints the second run's exit status, last stderr line and the files it left.
_FULL_AT = """
import json, os, subprocess, sys
tool, src, mnt, before = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
def convert(size, measure=False):
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt], check=True)
    result = subprocess.run([sys.executable, tool, src, mnt + "/out", "--splits", "train", "--workers", "1",
                             "--max-count", "100"], capture_output=True, text=True)
    files = sorted(os.path.relpath(os.path.join(r, f), mnt) for r, _, fs in os.walk(mnt) for f in fs)
    used = measure and sum(os.stat(os.path.join(mnt, "out", name)).st_blocks * 512 for name in before)
    subprocess.run(["umount", mnt], check=True)
    return result, files, used
_, _, used = convert(1 << 20, measure=True)
result, files, _ = convert(used)
print(json.dumps([result.returncode, result.stderr.strip().splitlines()[-1], files]))
"""


@pytest.mark.parametrize("name, before", [("train-000000.idx", "train-000000.tar"),
                                          ("train-000000.crc32", "train-000000.tar,train-000000.idx")])
def test_a_full_disk_at_a_side_file_names_it_and_leaves_no_temporary(tmp_path, name, before):
    """A real full disk (ENOSPC on a tmpfs) when the tar is written and the side file is not."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (util-linux) to mount a small tmpfs in a namespace of its own")
    src = tmp_path / "src"
    write_tree(str(src), classes=2, train_per_class=4, val_per_class=1, size=56, seed=11)
    (tmp_path / "mnt").mkdir()
    before = ",".join([".make_shards.lock", ".make_shards/run.json", ".make_shards/check-train.jsonl", before])
    result = subprocess.run(["unshare", "-m", sys.executable, "-c", _FULL_AT, TOOL, str(src), str(tmp_path / "mnt"),
                             before], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    code, last, files = json.loads(result.stdout)
    assert code == 2
    assert last == f"make_shards.py: error: [Errno 28] No space left on device: '{tmp_path / 'mnt' / 'out' / name}'"
    assert not [f for f in files if f.endswith(".tmp")] and "out/manifest.json" not in files, files


@pytest.mark.parametrize("durable", [False, True])  # the side files (.idx, .crc32, records), the manifest
def test_an_atomic_write_that_fails_names_its_file_and_removes_its_temporary(tmp_path, durable):
    target = tmp_path / "train-000003.idx"
    code = (f"from shards.files import write_atomic\n"
            f"write_atomic({str(target)!r}, b'v1.2 9\\n' * 3000, durable={durable})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            preexec_fn=limited_to(5_000))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"OSError: [Errno 27] File too large: '{target}'"
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- huge and 12-bit

def big_photograph(size):
    """A valid JPEG of `size` pixels that encodes in about a second: a smooth gradient with a little texture."""
    width, height = size
    row = np.linspace(0, 255, width, dtype=np.float32)
    column = np.linspace(0, 60, height, dtype=np.float32)[:, None]
    pixels = ((row[None, :] + column) % 256).astype(np.uint8)
    return jpeg_bytes(Image.fromarray(pixels, "L"), quality=80)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(20000, 10000), (12000, 8000)])  # over twice Pillow's limit, and just over it
def test_a_photograph_over_the_pixel_limit_is_stored_downscaled_and_named(tmp_path, size):
    src = tmp_path / "src"
    (src / "train" / "n01").mkdir(parents=True)
    (src / "train" / "n01" / "huge.JPEG").write_bytes(big_photograph(size))
    (src / "train" / "n01" / "small.JPEG").write_bytes(jpeg_bytes(noise_image("RGB", (40, 30), 1)))
    out = tmp_path / "out"
    result = run_tool(src, out, "--workers", 2, "--splits", "train", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "DecompressionBomb" not in result.stderr
    manifest = json.load(open(out / "manifest.json"))
    limit = Image.MAX_IMAGE_PIXELS
    fixed = manifest["splits"]["train"]["fixed"]
    megapixels = size[0] * size[1] / 1e6
    assert fixed == [{"path": "train/n01/huge.JPEG",
                      "reason": f"{size[0]}x{size[1]} ({megapixels:.0f} MP) is over Pillow's decompression-bomb "
                                f"limit of {limit / 1e6:.0f} MP: downscaled"}]
    stored = [Image.open(io.BytesIO(jpeg)) for _, _, jpeg in read_webdataset(str(out), "train")]
    huge = max(stored, key=lambda image: image.size[0])
    width, height = huge.size
    assert width * height <= limit and width * height > 0.97 * limit  # as large as the limit allows
    assert abs(width / height - size[0] / size[1]) < 0.01


def test_a_12_bit_jpeg_is_named_as_such():
    data = bytearray(jpeg_bytes(noise_image("RGB", (30, 20), 3)))
    sof = data.index(b"\xff\xc0")
    assert data[sof + 4] == 8  # the sample precision byte of the start-of-frame header
    data[sof + 4] = 12
    check = check_bytes(bytes(data), "deep.JPEG")
    assert check.status == "skipped"
    assert check.reason.startswith("12-bit JPEG not supported"), check.reason


def test_timm_reads_the_shards_as_they_are_through_their_info_file(generated_shards):
    """make_shards writes timm's split-info file (_info.json): timm's own WebDataset reader (create_dataset
    "wds/...") then reads every sample of each split, with the labels the shards hold, in manifest order."""
    import json
    import tarfile

    import timm.data
    manifest = json.load(open(os.path.join(generated_shards, "manifest.json")))
    info = json.load(open(os.path.join(generated_shards, "_info.json")))
    assert info["num_classes"] == len(manifest["classes"])
    for split, entry in manifest["splits"].items():
        expected = []  # (label, picture size) of each sample, read from the tars directly
        for shard in entry["shards"]:
            with tarfile.open(os.path.join(generated_shards, shard["tar"])) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            expected += [(int(members[name]), Image.open(io.BytesIO(members[name[:-3] + "jpg"])).size)
                         for name in members if name.endswith(".cls")]
        dataset = timm.data.create_dataset("wds/cbam-shards", root=generated_shards, split=split, is_training=False,
                                           batch_size=1)
        read = [(int(target), image.size) for image, target in dataset]
        assert len(dataset) == entry["samples"] == len(read) == len(expected)
        assert read == expected  # the labels, and pictures decoded at their size
