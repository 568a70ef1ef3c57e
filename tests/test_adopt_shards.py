"""tools/adopt_shards.py: WebDataset tars someone else wrote (written here by webdataset's own ShardWriter, in timm's
imagenet-1k-wds layout) train as they are, with every backend, and are never changed; what cannot be adopted is
named by shard and key."""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import webdataset as wds
from conftest import imagenet_sample_files, needs_dali
from PIL import Image

import pipeline
from pipeline.shard_read import read_samples
from shards.adopt import split_name
from shards.manifest import load_split
from shards.read import read_index
from shards.synthetic import render
from tools import adopt_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
CLASSES = 4
WNIDS = [f"n0{1440764 + 1000 * c}" for c in range(CLASSES)]  # ImageNet-like class names, in label order


def image_bytes(image, fmt="JPEG", **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photos(count, side=40):
    """`count` real ImageNet photographs, downscaled to a longer side of `side` px (JPEG bytes)."""
    out = []
    for path in imagenet_sample_files()[:count]:
        with Image.open(path) as image:
            image.thumbnail((side, side))
            out.append(image_bytes(image.convert("RGB"), quality=90))
    return out


def timm_layout(folder, train=40, val=8, per_shard=12, odd=True, label="cls"):
    """Tars in timm's imagenet-1k-wds layout written by webdataset.ShardWriter: imagenet1k-{split}-NNNN.tar with
    per sample cls, jpg and json members (ShardWriter writes them in that, sorted, order), keys like ImageNet's file
    names (some in class folders, some with a dot in the folder), and timm's _info.json. With `odd`, train also
    holds a PNG, a WebP, a .jpeg member, a truncated JPEG and a GIF. label="json": no .cls members.
    Returns {split: [(key, label)]} of the samples written."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    real = photos(6)
    written, info = {}, {"name": "imagenet-1k", "num_classes": CLASSES, "splits": {}}
    for split, count in (("train", train), ("validation", val)):
        written[split] = []
        pattern = os.path.join(folder, f"imagenet1k-{split}-%04d.tar")
        with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
            for i in range(count):
                c = i % CLASSES
                key, name = sample_key(i), f"{WNIDS[c]}_{10026 + i}"
                picture = real[i] if i < len(real) and split == "train" else image_bytes(render(c, CLASSES, rng, 36))
                sample = {"__key__": key, "jpg": picture,
                          "json": {"label": c, "class_name": WNIDS[c], "filename": f"{name}.JPEG"}}
                if odd and split == "train" and i in (7, 8, 9, 10, 11):
                    sample.pop("jpg")
                    kind, fmt = {7: ("png", "PNG"), 8: ("webp", "WEBP"), 9: ("jpeg", "JPEG"), 10: ("jpg", "JPEG"),
                                 11: ("gif", "GIF")}[i]
                    data = image_bytes(render(c, CLASSES, rng, 36), fmt)
                    sample[kind] = data[:300] if i == 10 else data  # i = 10: a truncated JPEG
                if label == "cls":
                    sample["cls"] = c
                sink.write(sample)
                written[split].append((key, c))
        names = sorted(n for n in os.listdir(folder) if n.startswith(f"imagenet1k-{split}-"))
        lengths = [sum(m.name.endswith(".json") for m in tarfile.open(os.path.join(folder, n))) for n in names]
        info["splits"][split] = {"name": split, "num_samples": count, "filenames": names, "shard_lengths": lengths}
    with open(os.path.join(folder, "_info.json"), "w") as handle:
        json.dump(info, handle)
    return written


def sample_key(i):
    """Keys like ImageNet's file names: plain, in a class folder, or in a folder with a dot in its name."""
    name = f"{WNIDS[i % CLASSES]}_{10026 + i}"
    return [name, f"{WNIDS[i % CLASSES]}/{name}", f"train.v2/{name}"][i % 3]


def tar_hashes(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder)) if name.endswith(".tar")}


def adopt(*args, capsys=None):
    status = adopt_shards.main([*map(str, args), "--workers", "1"])
    return (status, *capsys.readouterr()) if capsys else status


@pytest.fixture(scope="module")
def adopted(tmp_path_factory):
    """(folder, samples written, tar hashes before adoption): timm-layout tars adopted in place."""
    folder = str(tmp_path_factory.mktemp("timm") / "imagenet-1k-wds")
    written = timm_layout(folder)
    before = tar_hashes(folder)
    assert adopt_shards.main([folder, "--workers", "2", "--skip-bad"]) == 0
    return folder, written, before


BAD = {sample_key(10): "truncated", sample_key(11): "only jpg, jpeg, png, webp"}


def test_timm_layout_is_adopted_in_place_naming_what_it_left_out(adopted, tmp_path, capsys):
    folder, written, before = adopted
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert manifest["classes"] == WNIDS  # from the .json members' class_name
    assert (train["found"], train["samples"], val["found"], val["samples"]) == (40, 38, 8, 8)
    assert train["labels"] == val["labels"] == "cls members"
    left_out = {item["key"]: (item["shard"], item["reason"]) for item in train["left_out"]}
    assert set(left_out) == set(BAD) and all(left_out[key][0] == "imagenet1k-train-0000.tar" for key in BAD)
    for key, words in BAD.items():
        assert words in left_out[key][1], left_out[key]
    assert "tars" not in manifest  # the side files are beside the tars: the folder moves (or uploads) whole
    assert tar_hashes(folder) == before

    # A rerun of a finished adoption changes nothing; without --skip-bad it says what was left out (exit 1).
    stamp = os.stat(os.path.join(folder, "manifest.json")).st_mtime_ns
    status, out, err = adopt(folder, capsys=capsys)
    assert status == 1 and "5 tars (5 reused)" in out and "nothing changed" in out, out
    assert f"left out imagenet1k-train-0000.tar {sample_key(10)}: " in err and "gif member" in err, err
    assert os.stat(os.path.join(folder, "manifest.json")).st_mtime_ns == stamp and tar_hashes(folder) == before


def test_the_index_names_the_real_members_which_webdataset_reads_alike(adopted):
    """Every adopted sample read through our index (the torch backend's reader) is the sample webdataset itself
    reads from the tar: same key, same image bytes (whatever its extension), same label."""
    folder, _, _ = adopted
    split = load_split(folder, "train", need_index=True)
    ours = [(key, bytes(jpg), int(cls)) for shard in split.shards for key, jpg, cls in
            read_samples(shard, 0, shard.samples)]
    theirs = {}
    for sample in wds.WebDataset(sorted(s.path for s in split.shards), shardshuffle=False, empty_check=False):
        image = next((sample[ext] for ext in ("jpg", "jpeg", "png", "webp") if ext in sample), b"")
        theirs[sample["__key__"]] = (bytes(image), int(sample["cls"]))
    assert len(ours) == 38 and {key for key, _, _ in ours} == set(theirs) - set(BAD)
    assert all(theirs[key] == (jpg, label) for key, jpg, label in ours)
    assert split_name("train.v2/n01440764_10026.jpg") == ("train.v2/n01440764_10026", "jpg")


@pytest.mark.parametrize("backend", [pytest.param("torch", marks=pytest.mark.slow),
                                     pytest.param("dali-cpu", marks=needs_dali)])
def test_every_backend_reads_adopted_tars_with_timms_labels(adopted, backend):
    """The val split through each backend holds exactly the labels timm's own reader (create_dataset "wds/...")
    reads from the same tars; train gives its full batches."""
    import timm.data
    folder, _, _ = adopted
    dataset = timm.data.create_dataset("wds/imagenet-1k", root=folder, split="validation", batch_size=1)
    timm_labels = sorted(int(target) for _, target in dataset)
    val = pipeline.build_loader(folder, "val", 3, backend=backend, workers=1, image_size=32, verify="before")
    val.set_epoch(0)
    assert sorted(label for _, labels in val for label in labels.tolist()) == timm_labels
    train = pipeline.build_loader(folder, "train", 4, backend=backend, workers=1, image_size=32, verify="before")
    train.set_epoch(1)
    batches = [labels.tolist() for images, labels in train]
    assert len(batches) == 38 // 4 and all(len(b) == 4 and set(b) <= set(range(CLASSES)) for b in batches)


def test_labels_in_json_fields_train_on_torch_and_dali_refuses_in_one_line(tmp_path, capsys):
    folder = str(tmp_path / "json-labels")
    written = timm_layout(folder, train=12, val=4, per_shard=6, odd=False, label="json")
    status, out, _ = adopt(folder, "--label", "json:label", "--classes", _class_file(tmp_path), capsys=capsys)
    assert status == 0 and "--backend torch" in out, out
    train = load_split(folder, "train")
    assert train.label_files
    read = [(key, int(cls)) for shard in train.shards for key, _, cls in read_samples(shard, 0, shard.samples)]
    assert read == written["train"]
    loader = pipeline.build_loader(folder, "train", 4, backend="torch", workers=0, image_size=32, verify="off")
    assert len(loader) == 3
    with pytest.raises(pipeline.BackendUnavailable, match="labels are a field of the tars' .json members.*"
                                                         "use --backend torch$"):
        pipeline.build_loader(folder, "train", 4, backend=_dali_backend(), workers=1, image_size=32)


def _class_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("".join(f"{name}\n" for name in WNIDS))
    return path


def _dali_backend():
    """The DALI CPU backend entry, whether or not DALI imports here (the refusal comes before it is built)."""
    return pipeline.BACKENDS["dali-cpu"]


def test_remote_tars_are_adopted_to_a_local_folder_and_read_remotely(adopted, tmp_path):
    """Tars on a web server (timm's _info.json names them: a web server lists no folder): the side files go to a
    local OUT whose manifest names the tars by URL, and the torch backend reads them with ranged requests."""
    from object_stores import HttpServer
    folder, _, _ = adopted
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in os.listdir(folder):
        if name.endswith(".tar") or name == "_info.json":
            os.link(os.path.join(folder, name), plain / name)
    with HttpServer(str(plain), str(tmp_path)) as server:
        out = tmp_path / "side"
        assert adopt_shards.main([server.url, str(out), "--skip-bad", "--workers", "1"]) == 0
        manifest = json.load(open(out / "manifest.json"))
        assert manifest["tars"] == server.url and manifest["splits"]["train"]["samples"] == 38
        local = load_split(folder, "val")
        remote = load_split(str(out), "val")
        assert [s.path for s in remote.shards] == [f"{server.url}/{os.path.basename(s.path)}" for s in local.shards]
        loader = pipeline.build_loader(str(out), "val", 4, backend="torch", workers=1, image_size=32, verify="off")
        loader.set_epoch(0)
        assert sum(len(labels) for _, labels in loader) == 8


def test_damage_to_an_adopted_tar_is_named_with_its_sample(adopted, tmp_path):
    folder, _, _ = adopted
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(folder):
        if not name.startswith("."):
            data = open(os.path.join(folder, name), "rb").read()
            (copy / name).write_bytes(data)
    split = load_split(str(copy), "val")
    offset, size, member = read_index(split.shards[0])[1]["jpg"]
    with open(split.shards[0].path, "r+b") as handle:
        handle.seek(offset + size // 2)
        handle.write(b"\x00\x01\x02")
    loader = pipeline.build_loader(str(copy), "val", 4, backend="torch", workers=0, image_size=32, verify="before",
                                   verify_dir="")
    loader.set_epoch(0)
    with pytest.raises(pipeline.ShardError, match=f"imagenet1k-validation-0000.tar does not match the sha256 .*"
                                                  f"member {member} changed"):
        list(loader)


@pytest.mark.parametrize("case", ["no tars", "not a tar", "no label", "mixed layouts", "remote without OUT"])
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, case):
    folder = tmp_path / "src"
    folder.mkdir()
    expected = {"no tars": f"{folder} holds no .tar files", "not a tar": "train-0.tar is not an uncompressed tar",
                "no label": "has neither a .cls member nor a .json field 'label'",
                "mixed layouts": "has no .cls member (or two) while the labels are .cls members: mixed layouts",
                "remote without OUT": "is remote: name a local OUT folder"}[case]
    if case == "not a tar":
        (folder / "train-0.tar").write_bytes(b"not a tar at all" * 100)
    if case in ("no label", "mixed layouts"):
        with wds.ShardWriter(str(folder / "train-%d.tar"), maxcount=2, verbose=0) as sink:
            for i in range(4):
                sample = {"__key__": f"n01440764_{i}", "jpg": image_bytes(Image.new("RGB", (8, 8)))}
                if case == "mixed layouts" and i < 2:
                    sample["cls"] = 0
                sink.write(sample)
    src = "http://127.0.0.1:9/x" if case == "remote without OUT" else folder
    status, _, err = adopt(src, capsys=capsys)
    assert status == 2 and err.count("\n") == 1 and expected in err, err


def test_an_interrupted_adoption_resumes_with_the_tars_it_finished(tmp_path, capsys):
    folder = str(tmp_path / "wds")
    os.makedirs(folder)
    with wds.ShardWriter(os.path.join(folder, "shard-train-%06d.tar"), maxcount=3, verbose=0) as sink:
        for i in range(9):
            sink.write({"__key__": f"n01440764_{i}", "cls": i % 2, "png": image_bytes(Image.new("RGB", (9, 7)), "PNG")})
    assert adopt(folder) == 0
    # As a run killed while it wrote the side files of its third tar leaves it: no manifest, that tar's record
    # still the claim written before them, one of them torn.
    os.remove(os.path.join(folder, "manifest.json"))
    with open(os.path.join(folder, ".adopt_shards", "shard-train-000002.tar.json"), "w") as handle:
        json.dump({"tar": "shard-train-000002.tar", "pending": True}, handle)
    with open(os.path.join(folder, "shard-train-000002.idx"), "r+b") as handle:
        handle.truncate(10)
    capsys.readouterr()
    status, out, err = adopt(folder, capsys=capsys)
    assert status == 0 and "3 tars (2 reused)" in out and "train: 3 tars, 9 samples found, 9 adopted" in out, out + err
    assert "classes: 2, from the largest label, named by their numbers" in out


@pytest.mark.slow
def test_a_torchrun_epoch_on_adopted_tars_resumes_mid_epoch_exactly_and_changes_no_tar(adopted, tmp_path):
    """train.py under torchrun (2 gloo ranks) on the adopted timm-layout tars: SIGTERM mid-epoch saves at the step,
    --resume trains every step of the epoch once (38 samples, global batch 4: 9 steps), and every tar hashes as
    before adoption."""
    folder, _, before = adopted
    out = tmp_path / "out"
    train = ["--depth", "18", "--att-type", "CBAM", "--image-size", "32", "--workers", "1", "--batch-size", "4",
             "--print-freq", "1", "--prefix", "T", "--lr", "0.02", "--seed", "7", "--backend", "torch",
             "--epochs", "1", "--output-dir", str(out), folder]
    launch = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*launch, *train], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    metrics_file = out / "T_metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics_file.exists() and metrics_file.read_text().count("\n") >= 3):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)
    assert "stop requested: saved" in stdout, stderr[-3000:]
    result = subprocess.run([*launch, *train[:-1], "--resume", "auto", folder], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(metrics_file) as handle:
        rows = list(map(json.loads, handle))
    assert sorted(row["step"] for row in rows if row["kind"] == "train") == list(range(1, 10))
    assert [row["kind"] for row in rows].count("val") == 1
    assert tar_hashes(folder) == before
