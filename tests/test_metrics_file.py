"""training/metrics.py's MetricsFile: a resumed run does not duplicate the rows of the steps it trains again."""
import json

from training.metrics import MetricsFile


def test_rows_after_the_resumed_checkpoint_are_dropped(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, 11)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "train", "st')  # torn by a kill
    metrics = MetricsFile(str(path), True, resumed_step=6)
    metrics.write(kind="train", step=7, loss=0.5)
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]


def test_a_fresh_run_appends_and_other_ranks_write_nothing(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"kind": "train", "step": 3}\n')
    MetricsFile(str(path), True).write(kind="val", step=4)
    MetricsFile(str(path), False, resumed_step=0).write(kind="val", step=5)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [3, 4]
