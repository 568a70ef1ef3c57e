"""An ImageNet folder -> shards, the whole conversion behind tools/make_shards.py (whose docstring describes it):
phase 1 checks every source (shards/imagecheck.py, journalled by shards/outdir.py), phase 2 plans shards
(shards/plan.py) and writes them (shards/writer.py) over the worker pool (shards/workers.py); the manifest is
written last. convert(options) returns the exit status (0 or 1); ConvertError and OSError are for the caller."""
import json
import os
import re
import sys
import time
from array import array

import numpy as np

from .errors import ConvertError
from .files import fsync_dir, write_atomic
from .format import CLASSES_FILE, MANIFEST, SHARD_ENTRY, TIMM_INFO, timm_info
from .imagecheck import CHECK_STATUSES, Check, CheckTable, check_file
from .outdir import OUR_FILE, CheckJournal, lock_out, prepare_out, run_identity
from .plan import plan_shards
from .sources import escaped, find_classes, find_sources, name_problem
from .workers import Progress, Workers
from .writer import ShardSync, write_shard


def check_sources(split, sources, journal, workers):
    """Phase 1: the Check of every source (a SourceTable), in a CheckTable."""
    checks = CheckTable(len(sources))
    problems = sources.problems()
    for i, problem in problems.items():
        checks[i] = Check("skipped", problem, 0, 0)
    todo = array("q")  # indices of the sources to check
    for i in range(len(sources)):
        if i not in problems:
            check = journal.lookup(sources[i]) if journal.known else None  # a first run has no Source to make
            if check is None:
                todo.append(i)
            else:
                checks[i] = check
    progress = Progress(f"check {split}", len(todo))
    try:
        paths = (sources.path(i) for i in todo)  # made as the workers take them
        for i, check in zip(todo, workers.imap(check_file, paths, count=len(todo))):
            checks[i] = check
            source = sources[i]
            journal.record(source, check)
            progress.update(1, source.size)
    finally:
        progress.close()  # ends the bar's line, so that an error message starts on its own
    return checks


# ---------------------------------------------------------------------------------------------------- phase 2: write

def remove_stale_shards(out, state, split, num_shards):
    """Removes shards of this split (with their records) beyond the current plan, left by an earlier run of the
    same command whose input had more samples."""
    for folder, pattern in ((out, OUR_FILE), (state, re.compile(r"^(train|val)-(\d{6})\.json$"))):
        for name in os.listdir(folder):
            match = pattern.match(name)
            if match and match.group(1) == split and int(match.group(2)) >= num_shards:
                os.remove(os.path.join(folder, name))


def write_shards(split, plan, out, workers):
    """Phase 2: writes (or reuses) every shard of a ShardPlan and makes them durable (ShardSync); returns their
    completion records in shard order and how many were reused."""
    progress = Progress(f"write {split}", plan.num_samples)
    shard_of = {f"{plan.name(shard)}.tar": shard for shard in range(len(plan))}
    records, reused = [None] * len(plan), 0
    try:
        with ShardSync(out) as sync:
            for record in workers.imap(write_shard, plan.tasks(), ordered=False):
                shard = shard_of[record["tar"]]
                records[shard] = record
                sync.add(record)
                reused += record["reused"]
                progress.update(record["samples"], plan.source_bytes(shard))
            sync.wait()
    finally:
        progress.close()  # ends the bar's line, so that an error message starts on its own
    return records, reused


# ---------------------------------------------------------------------------------------------------- run

def split_summary(sources, checks, records, num_classes):
    stored = checks.status != CHECK_STATUSES.index("skipped")
    class_counts = np.bincount(sources.labels[stored], minlength=num_classes).tolist()
    fixed, skipped = [], []
    for i in np.flatnonzero(checks.status != CHECK_STATUSES.index("ok")):  # in source order
        check = checks[i]
        entry = {"path": sources[i].relpath, "reason": check.reason}
        (skipped if check.status == "skipped" else fixed).append(entry)
    shards = [{key: r[key] for key in SHARD_ENTRY} for r in records]
    summary = {"found": len(sources), "samples": sum(r["samples"] for r in records), "class_counts": class_counts,
               "shards": shards, "fixed": fixed, "skipped": skipped}
    # Counts must add up: every file found is either stored or listed as skipped.
    if not (summary["found"] == summary["samples"] + len(skipped) == sum(class_counts) + len(skipped)):
        raise ConvertError(f"counts do not add up: found {summary['found']}, stored {summary['samples']}, "
                           f"skipped {len(skipped)}, per class {sum(class_counts)}")
    return summary


def convert_split(split, sources, classes, args, out, state, workers):
    start = time.monotonic()
    journal = CheckJournal(os.path.join(state, f"check-{split}.jsonl"))
    try:
        checks = check_sources(split, sources, journal, workers)
    finally:
        journal.close()
    checked = time.monotonic()
    plan = plan_shards(split, sources, checks, args, out, state)
    remove_stale_shards(out, state, split, len(plan))
    planned = time.monotonic()
    records, reused = write_shards(split, plan, out, workers)
    summary = split_summary(sources, checks, records, len(classes))
    end = time.monotonic()
    elapsed = max(end - start, 1e-6)
    source_mb = int(sources.sizes.sum()) / 1e6
    # The phase times let benchmarks/make_shards.py see how each phase scales with --workers.
    print(f"{split}: {summary['found']} found, {summary['samples']} stored ({len(summary['fixed'])} fixed), "
          f"{len(summary['skipped'])} skipped; {len(records)} shards ({reused} reused), "
          f"{sum(r['bytes'] for r in records) / 1e6:.1f} MB; {elapsed:.1f} s, "
          f"{len(sources) / elapsed:.0f} img/s, {source_mb / elapsed:.1f} MB/s "
          f"(check {checked - start:.3f} s, write {end - planned:.3f} s)")
    return summary


def report_skipped(manifest, manifest_path, skip_bad):
    skipped = [item for s in manifest["splits"].values() for item in s["skipped"]]
    for item in skipped[:10]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"... and {len(skipped) - 10} more", file=sys.stderr)
    if skipped and not skip_bad:
        print(f"{len(skipped)} inputs were skipped (unreadable, undecodable or unusable), everything else is written; "
              f"they are listed with the reason under splits.<split>.skipped in {manifest_path}; pass --skip-bad to "
              f"accept this", file=sys.stderr)
        return 1
    return 0


def report_empty_classes(manifest, allow_empty):
    """Names the classes without a sample in each split on stderr; 1 when train has any (a class the model can
    never learn), unless allowed."""
    empty_in_train = False
    for split, summary in manifest["splits"].items():
        empty = [name for name, count in zip(manifest["classes"], summary["class_counts"]) if count == 0]
        if empty:
            shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
            print(f"{split}: {len(empty)} classes have no sample: {shown}", file=sys.stderr)
            empty_in_train = empty_in_train or split == "train"
    if empty_in_train and not allow_empty:
        print("a class without train samples cannot be learned; fix the source or pass --allow-empty-classes",
              file=sys.stderr)
        return 1
    return 0


def convert(args):
    src = os.path.abspath(args.src)
    out = os.path.abspath(args.out)
    if name_problem(src):  # recorded in manifest.json as the source
        raise ConvertError(f"SRC '{escaped(src)}': {name_problem(src)}; manifest.json records it, rename it")
    if not os.path.isdir(src):
        raise ConvertError(f"SRC {src} is not a directory")
    for split in args.splits:
        if (out + os.sep).startswith(os.path.join(src, split) + os.sep):
            raise ConvertError(f"OUT {out} must not be inside {os.path.join(src, split)}")
    classes = find_classes(src)
    sources = {split: find_sources(src, split, classes) for split in args.splits}
    identity = run_identity(args, src)
    lock = lock_out(out)  # noqa: F841  (held until the process ends)
    state = prepare_out(out, identity, args.overwrite)
    manifest = dict(identity, classes=classes, splits={})
    with Workers(args.workers) as workers:
        for split in args.splits:
            manifest["splits"][split] = convert_split(split, sources[split], classes, args, out, state, workers)
    write_atomic(os.path.join(out, CLASSES_FILE), "".join(f"{name}\n" for name in classes).encode())
    manifest_path = os.path.join(out, MANIFEST)
    write_atomic(os.path.join(out, TIMM_INFO), (json.dumps(timm_info(os.path.basename(out), manifest), indent=1)
                                                 + "\n").encode())
    write_atomic(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())  # last: the run is complete
    fsync_dir(out)
    status = report_skipped(manifest, manifest_path, args.skip_bad)
    return max(status, report_empty_classes(manifest, args.allow_empty_classes))
