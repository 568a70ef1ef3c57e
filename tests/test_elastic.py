"""The parts of a restarted or resized run that need no second process: the batch a world of another size keeps,
the restart's own resume, a mid-epoch checkpoint on another world, the process group's fresh keys on a store that
holds a dead incarnation's, failed collectives named, an orphaned rank, the mid-epoch save clock."""
import datetime
import json
import os
import signal
import threading
import time
import types

import pytest
import torch
import torch.distributed as dist

from training import distributed, elastic, resume, stop
from training.distributed import CollectiveFailed, World
from training.errors import UsageError

CPU = torch.device("cpu")


def saved(world, batch, accum=1, batch_resolved=None, accum_resolved=None):
    cfg = {"world_size": world, "batch_size": batch, "accum_steps": accum}
    if batch_resolved is not None:
        cfg.update(batch_size_resolved=batch_resolved, accum_steps_resolved=accum_resolved)
    return cfg


def test_without_a_checkpoint_the_batch_must_divide_by_the_world_size():
    assert elastic.batch_plan(256, 1, 8) == (256, 1, None)
    with pytest.raises(UsageError, match="--batch-size 256 is the global batch and must divide by the world size 3"):
        elastic.batch_plan(256, 1, 3)


@pytest.mark.parametrize("was, now, flags, plan, words", [
    (2, 1, (16, 1), (8, 2), "global batch 16 kept as 8 per rank x 1 ranks x 2 accumulated"),    # a node lost
    (8, 6, (256, 1), (126, 2), "global batch 256 does not split over 6 ranks: it trains with 252 (21 per rank x "
                               "6 ranks x 2 accumulated)"),
    (1, 2, (16, 1), (16, 1), "global batch 16 kept as 8 per rank x 2 ranks x 1 accumulated"),   # a node added
    (2, 4, (16, 2), (32, 1), "global batch 32 kept as 8 per rank x 4 ranks x 1 accumulated"),
    (4, 2, (16, 2), (8, 4), "global batch 32 kept as 4 per rank x 2 ranks x 4 accumulated"),
    (2, 3, (16, 1), (15, 1), "global batch 16 does not split over 3 ranks: it trains with 15"),
])
def test_a_world_of_another_size_keeps_the_checkpoints_global_batch(was, now, flags, plan, words):
    batch, accum, line = elastic.batch_plan(*flags, now, saved(was, *flags))
    assert (batch, accum) == plan
    assert line.startswith(f"=> world size {now}, the checkpoint's {was}: ") and words in line


def test_a_rank_never_gets_a_larger_batch_than_the_checkpoints_and_the_plan_is_stable():
    for was in range(1, 9):
        for batch in range(was, 65, was):
            for accum in (1, 2, 3):
                for now in range(1, 9):
                    cfg = saved(was, batch, accum)
                    b, a, _ = elastic.batch_plan(batch, accum, now, cfg)
                    assert b % now == 0 and 1 <= b // now <= batch // was
                    assert b * a <= max(batch * accum, now)  # one sample a rank at least
                    assert b * a == batch * accum or (batch * accum) % now
                    # The checkpoint a resized run saves resumes on the same world with the same split, silently
                    # only when it is the flags' own.
                    again = elastic.batch_plan(batch, accum, now, {**cfg, "world_size": now,
                                                                   "batch_size_resolved": b,
                                                                   "accum_steps_resolved": a})
                    assert again[:2] == (b, a) and (again[2] is None) == ((b, a) == (batch, accum))


def test_changed_batch_flags_are_the_users_choice_not_kept():
    assert elastic.batch_plan(32, 1, 1, saved(2, 16)) == (32, 1, None)
    with pytest.raises(UsageError):
        elastic.batch_plan(30, 1, 4, saved(2, 16))


def _config(folder, launch):
    (folder / "T_config.json").write_text(json.dumps({"launch_id": launch, "lr": 0.1}))


def _args(folder, **flags):
    values = dict(output_dir=str(folder), prefix="T", resume="", overwrite=False, evaluate=False, benchmark=False)
    return types.SimpleNamespace(**{**values, **flags})


def test_a_start_of_the_launch_that_wrote_the_folder_goes_on_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv(elastic.LAUNCH_ID_ENV, "job-7")
    _config(tmp_path, "job-7")
    (tmp_path / "T_checkpoint.pth.tar").write_bytes(b"x")
    args = _args(tmp_path, overwrite=True)
    line = elastic.continue_own_run(args, "T_config.json")
    assert (args.resume, args.overwrite) == ("auto", False)
    assert line == "=> launch job-7 started this run before: it goes on from its newest intact checkpoint " \
                   "(--resume auto)"
    args = _args(tmp_path, resume="/weights/start.pth.tar")  # a checkpoint of the prefix is newer than PATH
    elastic.continue_own_run(args, "T_config.json")
    assert args.resume == "auto"


def test_before_its_first_checkpoint_a_restart_starts_again_from_what_the_first_start_did(tmp_path, monkeypatch):
    monkeypatch.setenv(elastic.LAUNCH_ID_ENV, "job-7")
    _config(tmp_path, "job-7")
    args = _args(tmp_path, resume="/weights/start.pth.tar")
    assert "before it saved a checkpoint: it starts again from /weights/start.pth.tar" in \
        elastic.continue_own_run(args, "T_config.json")
    assert args.resume == "/weights/start.pth.tar"
    args = _args(tmp_path, overwrite=True)
    elastic.continue_own_run(args, "T_config.json")
    assert (args.resume, args.overwrite) == ("auto", False)  # nothing to resume: a fresh start, nothing removed


@pytest.mark.parametrize("case", ["another launch", "no torchrun", "no config", "a torn config", "evaluate"])
def test_any_other_start_keeps_its_flags(tmp_path, monkeypatch, case):
    monkeypatch.setenv(elastic.LAUNCH_ID_ENV, "job-7")
    _config(tmp_path, "job-6" if case == "another launch" else "job-7")
    (tmp_path / "T_checkpoint.pth.tar").write_bytes(b"x")
    if case == "no torchrun":
        monkeypatch.delenv(elastic.LAUNCH_ID_ENV)
    if case == "no config":
        os.remove(tmp_path / "T_config.json")
    if case == "a torn config":
        (tmp_path / "T_config.json").write_text('{"launch_id": "job-')
    args = _args(tmp_path, evaluate=case == "evaluate")
    assert elastic.continue_own_run(args, "T_config.json") is None
    assert (args.resume, args.overwrite) == ("", False)


def test_a_mid_epoch_checkpoint_on_another_world_redoes_its_epoch_saying_how_many_steps():
    lines = []
    position = resume.epoch_again(resume.Position(3, 5, 3 * 12 + 5, 41.0, 99.0), 2, 1, lines.append)
    assert position == resume.Position(3, 0, 36, 41.0, 99.0)
    assert lines == ["=> world size 1, the checkpoint's 2: the order of epoch 3 depends on it, so the epoch goes on "
                     "from its start, redoing the 5 steps of it already trained"]


def test_a_mid_epoch_resume_on_the_same_world_with_another_split_per_rank_is_refused():
    cfg = {"world_size": 2, "batch_size": 16, "batch_size_resolved": 16, "backend_resolved": "torch", "workers": 4,
           "workers_per_rank": 2, "seed": 1, "image_size": "224"}
    resume.check_mid_epoch_resume(cfg, dict(cfg), "c.pth")
    with pytest.raises(UsageError, match=r"workers_per_rank \(saved 2, now 4\)"):
        resume.check_mid_epoch_resume(cfg, {**cfg, "workers_per_rank": 4}, "c.pth")
    old = {k: v for k, v in cfg.items() if k not in ("batch_size_resolved", "workers_per_rank")}
    resume.check_mid_epoch_resume(old, cfg, "c.pth")  # a checkpoint from before these were recorded


def test_ranks_agree_on_fresh_keys_on_a_store_that_holds_a_dead_incarnations(monkeypatch):
    """The agent's store outlives a crashed worker group; what it wrote there (its token, nonces, acks and
    process-group keys) must not be read by the next one."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=datetime.timedelta(seconds=20))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    keys = distributed.INCARNATION_KEYS
    server.set(f"{keys}/token", json.dumps({"token": "dead", "nonces": ["", "old1", "old2"]}))
    for rank in (1, 2):
        server.set(f"{keys}/hello/{rank}", f"old{rank}")
        server.set(f"{keys}/ack/{rank}", "dead")
    tokens = {}

    def join(rank):
        store = distributed.incarnation_store(rank, 3, datetime.timedelta(seconds=20))
        store.set(f"from{rank}", str(rank))
        tokens[rank] = store

    threads = [threading.Thread(target=join, args=(rank,)) for rank in (2, 1, 0)]
    for thread in threads:
        thread.start()
        time.sleep(0.2)  # the other ranks first read what the dead incarnation left
    for thread in threads:
        thread.join(30)
    assert sorted(tokens) == [0, 1, 2]
    for rank in (0, 1, 2):  # one namespace: each sees the others' keys, and the dead one's are not in it
        assert [tokens[rank].get(f"from{other}").decode() for other in (0, 1, 2)] == ["0", "1", "2"]
    token = json.loads(server.get(f"{keys}/token"))["token"]
    assert token != "dead" and server.get(f"{keys}/{token}/from1") == b"1"


def test_a_failed_collective_is_one_line_naming_it_and_other_errors_pass():
    world = World(1, 1, 2, 2, CPU, timeout_s=30, where="epoch 3, step 17")
    with pytest.raises(CollectiveFailed) as gone:
        with distributed.collective(world, "the ranks' agreement before a step"):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:8086: Connection reset by "
                               "peer")
    assert str(gone.value).startswith("rank 1: the ranks' agreement before a step (epoch 3, step 17) failed after 0 "
                                      "s: another rank is gone (its connection closed); ending this rank")
    with pytest.raises(CollectiveFailed, match="no answer within --collective-timeout 30 s: another rank is stuck"):
        with distributed.collective(world, "the sum of the metrics"):
            raise RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 30000ms for recv")
    with pytest.raises(RuntimeError, match="shape"):
        with distributed.collective(world, "a step"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


def test_a_rank_whose_launcher_is_gone_stops_as_for_sigterm_at_the_next_step(saved_signal_handlers):
    request = stop.StopRequest()
    alone = World(0, 0, 1, 1, CPU)
    assert stop.agreed_reason(alone, request, None) == 0
    started_by_us = World(0, 0, 1, 1, CPU, launcher_pid=os.getppid())
    assert stop.agreed_reason(started_by_us, request, None, save_due=True) == stop.SAVE_DUE
    orphan = World(0, 0, 1, 1, CPU, launcher_pid=os.getppid() + 1_000_000)
    assert stop.agreed_reason(orphan, request, None, save_due=True) == stop.SIGNAL
    assert request.signum == signal.SIGTERM and request.why.startswith("the launcher of this rank (pid ")


def test_a_mid_epoch_save_is_due_every_save_every_minutes():
    run = types.SimpleNamespace(save_every=0.001)  # 60 ms
    saver = resume.Saver(run, None, None)
    assert not saver.due()
    time.sleep(0.07)
    assert saver.due()
    assert not resume.Saver(types.SimpleNamespace(save_every=0), None, None).due()
