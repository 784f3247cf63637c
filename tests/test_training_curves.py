"""benchmarks.training_curves: chained trainer logs continue each other's steps; bad runs are named."""

import json

import pytest

from benchmarks import training_curves


def write_log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_chain_continues_the_step_count_of_the_log_before(tmp_path):
    first = write_log(tmp_path / "a.jsonl", [{"step": 50, "loss": 1.0}, {"step": 100, "eval_accuracy": 0.2}])
    second = write_log(tmp_path / "b.jsonl", [{"step": 40, "eval_accuracy": 0.5}, {"step": 80, "eval_accuracy": 0.7}])
    assert training_curves.read_chain([first, second], "eval_accuracy") == [(100, 0.2), (140, 0.5), (180, 0.7)]


def test_the_plot_is_written_and_bad_runs_are_refused(tmp_path):
    log = write_log(tmp_path / "a.jsonl", [{"step": 10, "eval_accuracy": 0.2}, {"step": 20, "eval_accuracy": 0.4}])
    output = tmp_path / "plot" / "curves.png"
    assert training_curves.main([f"A={log}", "--target", "A=0.9", "--output", str(output)]) == 0
    assert output.stat().st_size > 0
    with pytest.raises(SystemExit, match="no log at"):
        training_curves.main([f"A={tmp_path / 'missing.jsonl'}", "--output", str(output)])
    with pytest.raises(SystemExit, match="no 'eval_loss'"):
        training_curves.main([f"A={log}", "--metric", "eval_loss", "--output", str(output)])
    with pytest.raises(SystemExit, match="names no run"):
        training_curves.main([f"A={log}", "--target", "B=0.9", "--output", str(output)])
    with pytest.raises(SystemExit, match="LABEL=LOG"):
        training_curves.main([str(log), "--output", str(output)])
