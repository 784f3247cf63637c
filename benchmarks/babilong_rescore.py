"""Rescore saved `rmt eval` results with the current answer check (`rmt.data.babilong.answer_is_correct`), without
running any model: every answer is kept in predictions.jsonl, so a change of the check is applied to it.

    python -m benchmarks.babilong_rescore benchmarks/results/babilong

Every folder below the given ones that holds results.json and predictions.jsonl is rescored: each prediction's
`correct` from its answer, target and question, with the task's answer set; then each cell's correct count,
accuracy, 95% interval and its split by where the facts lie; results.json, predictions.jsonl, table.md and the plots
are rewritten. Predictions written before questions were recorded are scored with an empty question where that
gives the same verdict: qa1 and qa2 ask "Where is Mary?" / "Where is the milk?", which name no answer of the task (a
room); for other tasks such a prediction is refused. Prints each cell whose accuracy changed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rmt.data.babilong import TASKS, answer_is_correct, answer_labels
from rmt.eval.by_length import wilson_interval, write_results

QUESTIONS_WITHOUT_ANSWERS = ("qa1", "qa2")  # tasks whose questions never name one of their answers


def rescore_folder(folder: Path) -> list[str]:
    """Rescore one results folder in place; the lines describing cells whose accuracy changed."""
    results = json.loads((folder / "results.json").read_text())
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines() if line]
    for prediction in predictions:
        prediction["correct"] = is_correct(prediction, folder)
    changes = []
    for key, cell in results["cells"].items():
        task, length, method = key.split("/")
        mine = [p for p in predictions if (p["task"], p["length"], p["method"]) == (task, length, method)]
        if len(mine) != cell["samples"]:
            raise SystemExit(f"{folder}: cell {key} has {cell['samples']} samples but {len(mine)} predictions")
        before = cell["correct"]
        update_cell(cell, mine)
        if cell["correct"] != before:
            changes.append(f"{folder} {key}: {before} -> {cell['correct']} right of {cell['samples']}")
    write_results(results, folder, predictions)
    return changes


def is_correct(prediction: dict[str, Any], folder: Path) -> bool:
    """The current check's verdict on one saved answer."""
    task = prediction["task"]
    question = prediction.get("question")
    if question is None:
        if task not in QUESTIONS_WITHOUT_ANSWERS:
            raise SystemExit(f"{folder}: a {task} prediction without its question cannot be rescored")
        question = ""
    labels = answer_labels(task) if task in TASKS else None
    return answer_is_correct(prediction["answer"], prediction["target"], question, labels)


def update_cell(cell: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
    """A cell's scores from its predictions (the fields `rmt eval` derives from them; time and memory stay)."""
    correct = sum(p["correct"] for p in predictions)
    total = len(predictions)
    cell["correct"] = correct
    cell["accuracy"] = correct / total if total else None
    cell["ci95"] = list(wilson_interval(correct, total)) if total else [None, None]
    splits = {"facts_in_last_span": True, "facts_before_last_span": False, "facts_depth_unknown": None}
    for name, where in splits.items():
        members = [p for p in predictions if p.get("facts_in_last_span") is where]
        cell[name] = {"correct": sum(p["correct"] for p in members), "samples": len(members)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="results folders, or folders above them")
    args = parser.parse_args(argv)
    with_results = {path.parent for root in args.folders for path in root.rglob("results.json")}
    with_predictions = {path.parent for root in args.folders for path in root.rglob("predictions.jsonl")}
    folders = sorted(with_results & with_predictions)
    changes = [line for folder in folders for line in rescore_folder(folder)]
    print("\n".join(changes) if changes else "no accuracy changed")
    print(f"{len(folders)} folders rescored")
    # Their answers are not kept, so their scores stay those of the check they were made with.
    unscored = sorted(with_results - with_predictions)
    if unscored:
        print(f"{len(unscored)} folders hold results without predictions.jsonl and were not rescored:")
        print("\n".join(f"  {folder}" for folder in unscored))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
