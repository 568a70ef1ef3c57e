"""A run started again by its launcher: torchrun restarting its worker group after a rank died (`--max-restarts`),
or with another number of nodes (`--nnodes MIN:MAX`).

Two decisions, each made the same way on every rank: whether this start continues the run that an earlier start
of the same launch wrote into --output-dir (then it goes on from its newest intact checkpoint by itself), and the
batch a world of another size trains with (the global batch of the checkpoint, kept).
"""
import json
import os

from .checkpoint import best_path, checkpoint_path, previous_path
from .errors import UsageError

LAUNCH_ID_ENV = "TORCHELASTIC_RUN_ID"  # torchrun's --rdzv-id (a fresh UUID with --standalone), the same on a restart


def launch_id():
    """The id of the launch that started this process (torchrun's run id), or None outside torchrun."""
    return os.environ.get(LAUNCH_ID_ENV) or None


def recorded_launch_id(output_dir, config_file):
    """The launch id {prefix}_config.json in output_dir records (written when a run starts training), or None."""
    try:
        with open(os.path.join(output_dir, config_file)) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return None
    return recorded.get("launch_id") if isinstance(recorded, dict) else None


def continue_own_run(args, config_file):
    """On a start of a launch that already trained into this folder (its {prefix}_config.json records this
    launch's id: torchrun restarting its workers, on whichever node), the run goes on from its newest intact
    checkpoint (--resume auto), whatever --resume or --overwrite said for the first start; with no checkpoint yet,
    --resume PATH still names the weights to start from, and a fresh start replaces what the first one wrote.
    The first start of a launch finds another id or none, and keeps the refusal of a folder holding another run.
    Returns one line for the log, or None when this is not such a start."""
    this_launch = launch_id()
    if not this_launch or args.evaluate or args.benchmark:
        return None
    if recorded_launch_id(args.output_dir, config_file) != this_launch:
        return None
    args.overwrite = False
    if any(os.path.isfile(path(args.output_dir, args.prefix)) for path in (checkpoint_path, previous_path, best_path)) \
            or args.resume in ("", "auto"):
        args.resume = "auto"
        return (f"=> launch {this_launch} started this run before: it goes on from its newest intact checkpoint "
                "(--resume auto)")
    return f"=> launch {this_launch} started this run before it saved a checkpoint: it starts again from {args.resume}"


def batch_plan(batch_size, accum_steps, world_size, saved=None):
    """(global batch of one loader step, accumulation steps, a line for the log or None) for `world_size` ranks.

    --batch-size must divide by the world size; but a checkpoint resumed with the same --batch-size and
    --accum-steps (`saved`: its configuration) keeps its optimizer batch (global batch x accumulation) whatever the
    world size now (a node lost or added under elastic membership), without letting a rank's batch grow past the
    checkpoint's, which the device's memory was sized for: the fewest accumulation steps that split it evenly.
    When no split keeps it, the largest batch below it that splits, and the line says so: a restart never fails
    for it. With the checkpoint's world size this is the checkpoint's own split."""
    was_world = (saved or {}).get("world_size")
    same_flags = saved is not None and (saved.get("batch_size"), saved.get("accum_steps", 1)) == (batch_size,
                                                                                                   accum_steps)
    if not same_flags or not was_world:
        if batch_size % world_size:
            raise UsageError(f"--batch-size {batch_size} is the global batch and must divide by the world size "
                             f"{world_size}")
        return batch_size, accum_steps, None
    was_batch = int(saved.get("batch_size_resolved", batch_size))
    was_accum = int(saved.get("accum_steps_resolved", accum_steps))
    optimizer_batch = was_batch * was_accum
    per_rank_max = max(1, was_batch // was_world)
    plan = None
    for accum in range(1, optimizer_batch + 1):
        per_rank, rest = divmod(optimizer_batch, world_size * accum)
        if not rest and per_rank <= per_rank_max:
            plan = per_rank * world_size, accum
            break
    if plan is None:  # the largest optimizer batch below it (fewest accumulation steps first); one sample a rank
        splits = [(min(per_rank_max, optimizer_batch // (world_size * accum)), accum)
                  for accum in range(1, optimizer_batch // world_size + 1)]
        per_rank, accum = max([(p, a) for p, a in splits if p >= 1], key=lambda s: (s[0] * s[1], -s[1]),
                              default=(1, 1))
        plan = per_rank * world_size, accum
    batch, accum = plan
    if plan == (batch_size, accum_steps) and was_world == world_size:
        return batch, accum, None
    split = f"{batch // world_size} per rank x {world_size} ranks x {accum} accumulated"
    kept = (f"global batch {optimizer_batch} kept as {split}" if batch * accum == optimizer_batch else
            f"global batch {optimizer_batch} does not split over {world_size} ranks: it trains with "
            f"{batch * accum} ({split})")
    return batch, accum, f"=> world size {world_size}, the checkpoint's {was_world}: {kept}"
