"""What one rank of the DALI backend opens per epoch: its shards' index files and tars, counted by strace.

    python benchmarks/dali_reads.py [--shards 32] [--world 8] [--repo PATH] [--record]

Shards of a small generated tree (--shards train shards of 8 samples) are read for one train and one val epoch by
rank 0 of --world with the dali-cpu backend, in a child process under `strace -f -e trace=openat`; the opens of
`.idx` and `.tar` files are counted (DALI's reader parses an index each time it opens one), and apart from them
the small index files the loader writes per epoch for the runs the rank reads (pipeline/dali.py). --repo runs the
loader of another checkout of this project (e.g. a `git worktree` of an older commit) on the same shards, for a
before/after comparison in one run. Needs strace and DALI.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, markdown_table, record  # noqa: E402

KINDS = ("idx", "run idx", "tar")  # the shards' index files, the epoch's run indexes, the shards' tars
_CHILD = """
import sys
sys.path.insert(0, {repo!r})
import pipeline
for split in ("train", "val"):
    loader = pipeline.build_loader({shards!r}, split, 4, backend="dali-cpu", rank=0, world_size={world},
                                   workers=1, device="cpu", image_size=16, verify="off")
    loader.set_epoch(1)
    print("EPOCH", split, sum(len(labels) for _, labels in loader), flush=True)
"""


def make_shards(folder, shards):
    from shards.synthetic import write_tree
    write_tree(os.path.join(folder, "src"), classes=4, train_per_class=2 * shards, val_per_class=shards, size=16,
               seed=1)
    out = os.path.join(folder, "shards")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_shards.py"), os.path.join(folder, "src"), out,
                    "--max-count", "8", "--workers", "2"], check=True, capture_output=True)
    return out


def count_opens(repo, shards, world, trace):
    """{split: {"idx": opens, "tar": opens, "samples": read}} for rank 0 of `world`, one epoch of each split."""
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat", "-o", trace, sys.executable, "-c",
                    _CHILD.format(repo=repo, shards=shards, world=world)], check=True, capture_output=True)
    counts, split = {}, None
    marker = re.compile(r'openat\(.*"([^"]+\.(idx|tar))"')
    with open(trace) as lines:
        for line in lines:
            if 'write(' in line:
                continue
            found = marker.search(line)
            if found and split is not None:
                kind = "run idx" if "cbam-dali-epoch-" in found.group(1) else found.group(2)
                counts[split][kind] += 1
            if "manifest.json" in line:  # each build_loader reads the manifest first: the next split begins
                split = "train" if split is None else "val"
                counts[split] = dict.fromkeys(KINDS, 0)
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=32, help="train shards (val: half as many)")
    p.add_argument("--world", type=int, default=8, help="ranks; rank 0 is measured")
    p.add_argument("--repo", action="append", default=[], help="another checkout to measure beside this one")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args(argv)
    if shutil.which("strace") is None:
        p.error("strace is not installed (apt-get install strace)")
    folder = tempfile.mkdtemp(prefix="cbam-dali-reads-")
    try:
        shards = make_shards(folder, args.shards)
        rows = []
        for repo in [ROOT, *args.repo]:
            counts = count_opens(os.path.abspath(repo), shards, args.world, os.path.join(folder, "trace"))
            commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
            name = "this checkout" if repo == ROOT else repo
            row = {"checkout": f"{name} ({commit})"}
            row.update({f"{split} {kind}": counts[split][kind] for split in ("train", "val") for kind in KINDS})
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    header = list(rows[0])
    table = markdown_table(["checkout", *(f"{split}: {what} opens" for split in ("train", "val")
                                          for what in (".idx", "epoch's run index", ".tar"))],
                           [[row[k] for k in header] for row in rows])
    title = (f"DALI reads per rank and epoch: {args.shards} train shards, {args.shards // 2} val shards, rank 0 of "
             f"{args.world}")
    print(title)
    print(table)
    if args.record:
        record(title, table, "Command: python benchmarks/dali_reads.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
