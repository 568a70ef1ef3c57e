"""The `torch` backend's own machinery: worker counts, shared-memory batch slots, slow and early-leaving consumers."""
import multiprocessing
import os

import pytest
import torch
from conftest import UNIQUE_CLASSES, epoch_batches, labels_of

import pipeline


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 cores: on purpose
@pytest.mark.parametrize("workers", [0, 3])
def test_torch_backend_in_process_and_with_more_workers(unique_shards, workers):
    for split in ("train", "val"):
        loader, batches = epoch_batches(unique_shards, split, 5, "torch", workers=workers)
        assert len(batches) == len(loader) == (UNIQUE_CLASSES // 5 if split == "train" else -(-UNIQUE_CLASSES // 5))
        seen = labels_of(batches)
        assert len(seen) == len(set(seen))
    assert multiprocessing.active_children() == []  # val workers end with their epoch; the train loader is gone


def _worker_pids():
    return sorted(process.pid for process in multiprocessing.active_children())


def test_the_train_workers_serve_every_epoch_and_end_with_the_loader(unique_shards):
    """Train worker processes start once, not every epoch: an epoch read whole, one left early and one resumed at
    another epoch number all run on the same processes, with the batches fresh workers would give; a new crop
    size starts new ones; collecting the loader ends them."""
    import gc

    split = "train"

    def epoch(loader, number, stop_after=None):
        loader.set_epoch(number)
        batches = []
        for i, (images, labels) in enumerate(loader):
            batches.append((images.clone(), labels.clone()))
            if i == stop_after:
                break
        return batches

    def same(a, b):
        return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))

    def fresh(number):
        loader = pipeline.build_loader(unique_shards, split, 8, backend="torch", workers=2, device="cpu",
                                       image_size=16)
        try:
            return epoch(loader, number)
        finally:
            loader.close()

    assert multiprocessing.active_children() == []
    loader = pipeline.build_loader(unique_shards, split, 8, backend="torch", workers=2, device="cpu", image_size=16)
    first = epoch(loader, 3)
    pids = _worker_pids()
    assert len(pids) == 2
    epoch(loader, 5, stop_after=0)  # left after one batch: its workers are still waiting to fill slots
    again = epoch(loader, 3)
    assert _worker_pids() == pids  # the same processes served all three
    assert same(first, again) and same(epoch(loader, 4), fresh(4))
    assert _worker_pids() == pids
    loader.set_image_size(24)
    bigger = epoch(loader, 3)
    assert bigger[0][0].shape[-1] == 24 and len(_worker_pids()) == 2 and set(_worker_pids()).isdisjoint(pids)
    del loader
    gc.collect()
    assert multiprocessing.active_children() == []
    with pipeline.build_loader(unique_shards, split, 8, backend="torch", workers=2, device="cpu",
                               image_size=16) as loader:
        assert same(epoch(loader, 4), fresh(4))
    assert multiprocessing.active_children() == []  # the block's end closed it


@pytest.mark.slow
def test_slow_consumer_and_an_early_break_get_the_same_batches(unique_shards):
    """The torch backend's workers reuse shared-memory slots that the main process releases: a consumer slower
    than the workers (they fill every slot and wait) or one that left the last epoch early must still receive
    exactly the batches of a fast consumer."""
    import time

    def run(epoch, delay=0.0, stop_after=None):
        loader = pipeline.build_loader(unique_shards, "train", 8, backend="torch", workers=2, device="cpu",
                                       image_size=16)
        if stop_after is not None:
            loader.set_epoch(epoch + 1)
            for i, _ in enumerate(loader):
                if i == stop_after:
                    break
        loader.set_epoch(epoch)
        batches = []
        for images, labels in loader:
            batches.append((images.clone(), labels))
            time.sleep(delay)
        return batches

    fast = run(1)
    assert len(fast) == 121 // 8
    for other in (run(1, delay=0.05), run(1, stop_after=1)):
        assert len(other) == len(fast)
        for (images_a, labels_a), (images_b, labels_b) in zip(fast, other):
            assert torch.equal(labels_a, labels_b) and torch.equal(images_a, images_b)


def test_too_little_shared_memory_for_the_batch_slots_is_a_clear_error(tmp_path):
    from pipeline.batch_slots import check_shared_memory

    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    check_shared_memory(free // 2, 2, 4, folder=str(tmp_path))
    with pytest.raises(ValueError, match=r"2 workers x 4 batch slots.*--workers.*--shm-size"):
        check_shared_memory(free * 4, 2, 4, folder=str(tmp_path))
    check_shared_memory(10**18, 2, 4, folder=str(tmp_path / "missing"))  # no such folder: nothing to check


def test_a_worker_waiting_for_a_batch_slot_stops_when_the_epoch_is_closed():
    import threading
    import time

    from pipeline.batch_slots import BatchSlots, EpochClosed

    slots = BatchSlots(workers=1, slots=1, batch_size=2, image_size=4, context=multiprocessing.get_context())
    slots.begin_epoch(0)
    assert slots.take(0) == 0
    outcome = []

    def second_take():
        try:
            outcome.append(slots.take(0))
        except EpochClosed:
            outcome.append("closed")

    waiter = threading.Thread(target=second_take)
    waiter.start()
    time.sleep(0.2)
    assert outcome == []  # the only slot is still held: the worker waits
    started = time.monotonic()
    slots.close_epoch()
    waiter.join(timeout=5)
    assert outcome == ["closed"] and time.monotonic() - started < 1.0
    with pytest.raises(EpochClosed):  # the closed epoch takes no more slots
        slots.take(0)
    slots.begin_epoch(0)  # the worker's next epoch starts with every slot free again, the held one too
    assert slots.take(0) == 0
    slots.release((0, 0, 2))
    assert slots.take(0) == 0  # round the single slot again


def test_val_workers_end_with_each_pass(unique_shards):
    """A val pass comes once per train epoch: its workers end with it, whole or left early, rather than wait
    through the train epoch beside the train workers."""
    loader = pipeline.build_loader(unique_shards, "val", 8, backend="torch", workers=2, device="cpu", image_size=16)
    first = [labels for _, labels in loader]
    assert multiprocessing.active_children() == []
    for _ in loader:
        assert len(multiprocessing.active_children()) == 2
        break
    assert multiprocessing.active_children() == []
    again = [labels for _, labels in loader]
    assert len(again) == len(first) and all(torch.equal(a, b) for a, b in zip(first, again))
