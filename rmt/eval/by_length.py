"""Accuracy by input length on BABILong: a table (task x length), results.json and a heatmap like the benchmark's.

    results = evaluate_by_length(model, tokenizer, ["qa1"], ["0k", "4k", "16k"], samples=100, haystack=haystack)

For every task and length the same samples (deterministic in `seed`, or read from BABILong files) go to each method:
- "memory": the memory model itself;
- "no_memory": the same backbone cut into the same segments with no memory carried between them;
- "full_attention": the backbone alone reading at most its own window, the last `window` tokens of the input (all of
  it when it fits), as a user of the plain model would.
An encoder answers with the class it scores highest; a decoder generates up to `max_new_tokens` greedily after the
question and is checked as the public benchmark checks (`rmt.data.babilong.answer_is_correct`): in the first
sentence of its answer, the target must be the only one of the task's answers named (those in the question aside),
or for a task outside qa1-qa5 the target must occur there. Only what is scored is kept: class logits, or the
logits of the last position while generating, so a 1M-token sample needs one segment's activations, never a
[1, N, V] tensor.

Every answer is kept as well: `results["predictions"]` (and predictions.jsonl in the output folder) holds one
record per sample and method (its seed, the target, the answer, whether it is right, the supporting facts' depths),
so that wrong answers can be looked at by depth or sample. Each cell also splits its score by where the supporting
facts lie: all in the last span the method reads at once, or not; samples that do not record their facts' depths
(public BABILong files) are counted apart, as unknown.

The files are rewritten after every cell, so an interrupted run keeps what it measured; given those results
(`read_results`), a run with the same arguments keeps their finished cells and evaluates only the others.

Each accuracy comes with its 95% Wilson interval. Time is measured per method and length (tokens read per second),
and the peak RSS of each cell: on Linux the peak is reset before the cell (`peak_rss_scope: "cell"`), so a method
that needs more memory does not raise the figure of the cells after it; elsewhere it is the process's peak so far
(`"process"`; lengths run in increasing order, so a flat column still means memory did not grow with the input).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rmt.build import memory_model
from rmt.config import RMTConfig
from rmt.data.babilong import (
    TASKS,
    BabilongSample,
    answer_is_correct,
    answer_labels,
    build_dataset,
    length_name,
    parse_length,
)
from rmt.data.collate import QACollator, check_qa_record
from rmt.errors import InputError, MissingFileError
from rmt.files import write_atomic
from rmt.memory.generation import stop_token_ids
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.plotting import pyplot, save_figure
from rmt.resident import peak_rss_bytes, reset_peak_rss

METHODS = ("memory", "no_memory", "full_attention")


@dataclass
class Outcome:
    """Scores of one method on the samples of one task and length. `near` / `far`: (correct, total) of the samples
    whose supporting facts all lie in the last span the method reads at once (its last segment, or its window), and of
    the others, which only a memory (or luck) can answer; `unknown`: of the samples that do not record where their
    facts lie (public BABILong files), which are in neither."""

    correct: int
    total: int
    tokens: int
    seconds: float
    near: tuple[int, int] = (0, 0)
    far: tuple[int, int] = (0, 0)
    unknown: tuple[int, int] = (0, 0)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def record(self) -> dict[str, Any]:
        """The scores as JSON: with no samples, the accuracy and its interval are null (JSON has no NaN)."""
        low, high = wilson_interval(self.correct, self.total) if self.total else (None, None)
        return {
            "accuracy": self.accuracy if self.total else None,
            "ci95": [low, high],
            "correct": self.correct,
            "samples": self.total,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds else None,
            "facts_in_last_span": {"correct": self.near[0], "samples": self.near[1]},
            "facts_before_last_span": {"correct": self.far[0], "samples": self.far[1]},
            "facts_depth_unknown": {"correct": self.unknown[0], "samples": self.unknown[1]},
        }


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion (sensible at 0 and 1 and for few samples)."""
    if total == 0:
        return float("nan"), float("nan")
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    # Clamped to contain p: at p = 0 or 1 rounding can leave a bound a hair inside it (6/6 gave 0.9999999999999999).
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


@dataclass(frozen=True)
class Reading:
    """What one method made of one sample: its answer (an encoder's class label, or a decoder's generated text), the
    tokens it read, whether every supporting fact lies in the last span it reads, and where each supporting fact
    starts in the whole input, in tokens. For samples that do not record their facts' depths (public BABILong files)
    both are None: where the facts lie is unknown."""

    answer: str
    tokens: int
    facts_in_last_span: bool | None
    fact_offsets: tuple[int, ...] | None = None


class Reader:
    """How one method turns a sample into an answer: `read(sample) -> Reading`, and `answer(sample) -> (correct,
    reading)`; the reading tells whether the facts lie in the last span, the last `window` tokens it reads (full
    attention) or its last segment."""

    def __init__(
        self, model: RecurrentMemoryModel, tokenizer: Any, window: int | None = None, max_new_tokens: int = 8
    ) -> None:
        self.model, self.tokenizer, self.window, self.max_new_tokens = model, tokenizer, window, max_new_tokens
        self.span = window or model.config.segment_size
        mode = model.config.mode
        self.labels = None
        if mode == "encoder":
            config = model.backbone.config
            self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.collate = QACollator(tokenizer, mode, self.labels)

    @torch.no_grad()
    def read(self, sample: BabilongSample) -> Reading:
        record = sample.to_dict()
        device = self.model.device
        if self.model.config.mode == "encoder":
            batch = self.collate([record])
            total = batch.input_ids.shape[1]
            ids = batch.input_ids[:, -self.window :] if self.window else batch.input_ids
            logits = self.model(ids.to(device)).logits  # [1, classes]
            answer = self.labels[int(logits.argmax(dim=-1))]
        else:
            prompt = torch.tensor(self.collate.prompt_ids([record]), device=device)
            total = prompt.shape[1]
            ids = prompt[:, -self.window :] if self.window else prompt
            eos = stop_token_ids(self.model, self.tokenizer)
            generated = self.model.generate(
                ids,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=eos,
                do_sample=False,
                return_dict_in_generate=False,
            )
            answer = self.tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
        offsets = self._fact_offsets(sample)
        span_start = total - self.window if self.window else (total - 1) // self.span * self.span
        in_last_span = None if offsets is None else all(offset >= span_start for offset in offsets)
        return Reading(answer, ids.shape[1], in_last_span, offsets)

    def answer(self, sample: BabilongSample, task: str | None = None) -> tuple[bool, Reading]:
        """Whether the method answers `sample` (of `task`, if the sample does not say) right, and its reading. A
        generated answer is checked against the task's answer set as the public benchmark does; a task outside
        qa1-qa5 has no set, and then the target must occur in the answer's first sentence."""
        reading = self.read(sample)
        if self.labels is not None:  # a class, matched as the collator matches targets to classes
            right = self.collate.label_of(reading.answer) == self.collate.label_of(sample.target)
        else:
            task = sample.task or task
            labels = answer_labels(task) if task in TASKS else None
            right = answer_is_correct(reading.answer, sample.target, sample.question, labels)
        return right, reading

    def _fact_offsets(self, sample: BabilongSample) -> tuple[int, ...] | None:
        """The token offset of each supporting fact in the input. A fact's depth is its start as a fraction of the
        context's tokens, and the context (what precedes the question) opens the input: the decoder's prompt and the
        encoder's text both start with it, without special tokens."""
        if sample.supporting_depths is None:
            return None
        context = len(self.tokenizer(sample.input, add_special_tokens=False, verbose=False).input_ids)
        return tuple(round(depth * context) for depth in sample.supporting_depths)


def readers(
    model: RecurrentMemoryModel,
    tokenizer: Any,
    methods: Sequence[str],
    window: int | None,
    max_new_tokens: int = 8,
    full_attention_backbone: Any = None,
) -> dict[str, Reader]:
    """A Reader per method (see the module docstring). `window`: the backbone's own context (default: its maximum
    positions); `full_attention_backbone`: the backbone read with full attention (default: the model's own)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    config = model.config
    out = {}
    for method in methods:
        if method == "memory":
            out[method] = Reader(model, tokenizer, None, max_new_tokens)
            continue
        backbone = (
            model.backbone if method == "no_memory" or full_attention_backbone is None else full_attention_backbone
        )
        special = {"cls_token_id": config.cls_token_id, "sep_token_id": config.sep_token_id}
        if method == "no_memory":
            segment_size, limit = config.segment_size, None
        else:
            # One segment of the whole window: the prompt's last tokens and, for a decoder, its generated answer,
            # which must attend to the prompt (a segment of the prompt's length alone would start each answer token
            # after the first in a new segment, without the story or the question).
            segment_size = window or _window_of(backbone, config.mode)
            limit = segment_size - max_new_tokens if config.mode == "decoder" else segment_size
        plain = RMTConfig(num_memory_tokens=0, segment_size=segment_size, mode=config.mode, **special)
        out[method] = Reader(memory_model(backbone, plain).eval(), tokenizer, limit, max_new_tokens)
    return out


def _window_of(backbone: Any, mode: str) -> int:
    from rmt.backbones import max_positions

    limit = max_positions(backbone)
    if limit is None:
        raise InputError("the backbone has no fixed window: give the full-attention window explicitly")
    return limit - 2 if mode == "encoder" else limit  # an encoder adds [CLS] and [SEP]


def evaluate_by_length(
    model: RecurrentMemoryModel,
    tokenizer: Any,
    tasks: Sequence[str],
    lengths: Sequence[str | int],
    samples: int | dict[str, int],
    haystack: Any = None,
    seed: int = 0,
    methods: Sequence[str] = ("memory",),
    window: int | None = None,
    max_new_tokens: int = 8,
    output_dir: str | Path | None = None,
    progress: bool = True,
    files: dict[tuple[str, str], list[BabilongSample]] | None = None,
    full_attention_backbone: Any = None,
    num_facts: int | tuple[int, int] | None = None,
    settings: dict[str, Any] | None = None,
    earlier: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Accuracy of each method on each task and length, and every answer (`results["predictions"]`); writes
    results.json, predictions.jsonl and the plots to `output_dir` after every finished cell (so an interrupted run
    keeps what it measured; results["complete"] says whether every cell is there). `settings` (e.g. the command's
    flags) are kept in results["settings"], so that a results file says how it was made. `samples`: per length
    name, or one count for all. `files`: samples read from BABILong
    files, by (task, length name), instead of generated ones. `num_facts`: facts per generated story (a count or an
    inclusive range; None: the bAbI task's range).

    `earlier`: the results of an interrupted run with the same arguments (as returned, or `read_results`): its
    finished cells (`finished_cells`) are kept as they are, answers and timings included, and only the others are
    evaluated; the files in `output_dir` are then the earlier run's, continued, and nothing is written when no cell
    is left. A cell's samples depend on its task, length and `seed` alone, never on the cells run before it, so the
    cells are those of an uninterrupted run.

    Raises InputError, before evaluating anything, for a cell with no samples (a count below 1, or an empty file).
    A file with fewer samples than asked for is evaluated whole, with a one-line warning on stderr; a cell's
    "samples" is the number evaluated."""
    model.eval()
    names = sorted({length_name(n) for n in lengths}, key=parse_length)
    per_method = readers(model, tokenizer, methods, window, max_new_tokens, full_attention_backbone)
    counts = _sample_counts(tasks, names, samples, files, per_method.values())
    results: dict[str, Any] = {"tasks": list(tasks), "lengths": names, "methods": list(methods), "cells": {}}
    if num_facts is not None:
        results["num_facts"] = num_facts
    if settings is not None:
        results["settings"] = settings
    keys = [f"{task}/{name}/{method}" for name in names for task in tasks for method in per_method]
    done = finished_cells(earlier, keys)  # key -> (cell, its answers)

    def gather() -> list[dict[str, Any]]:
        """Set the cells done so far, and return their answers, in the order of an uninterrupted run, whichever
        were kept: a resumed run's files are then the same as its."""
        results["cells"] = {key: done[key][0] for key in keys if key in done}
        results["complete"] = len(results["cells"]) == len(keys)
        return [answer for key in keys if key in done for answer in done[key][1]]

    predictions = gather()
    written = False
    for name in names:
        for task in tasks:
            todo = {m: reader for m, reader in per_method.items() if f"{task}/{name}/{m}" not in done}
            if not todo:  # every method's cell is kept: its samples are not built
                continue
            count = counts[(task, name)]
            if files is not None and (task, name) in files:
                cell_samples = files[(task, name)][:count]
            else:
                cell_samples = build_dataset(task, name, count, tokenizer, haystack, seed=seed, num_facts=num_facts)
            for method, reader in todo.items():
                peak_scope = "cell" if reset_peak_rss() else "process"
                outcome, answers = _run_cell(reader, cell_samples, task, f"{task} {name} {method}", progress)
                cell = {
                    **outcome.record(),
                    "task": task,
                    "length": name,
                    "method": method,
                    "peak_rss_mib": None if (peak := peak_rss_bytes()) is None else round(peak / 2**20, 1),
                    "peak_rss_scope": peak_scope,
                }
                done[f"{task}/{name}/{method}"] = (
                    cell,
                    [{"task": task, "length": name, "method": method, **answer} for answer in answers],
                )
                predictions = gather()
                if output_dir is not None:
                    # A new run's first write replaces an earlier run's files whole; a resumed run's continues them.
                    write_results(results, Path(output_dir), predictions, replace=earlier is None and not written)
                    written = True
    return {**results, "predictions": predictions}


def finished_cells(
    earlier: dict[str, Any] | None, keys: Iterable[str]
) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The cells of `earlier` (results as `evaluate_by_length` returns them, or as `read_results` reads them) among
    `keys` ("task/length/method") that are finished, each with its answers: those whose every answer is in the
    predictions. A cell whose answers are not all there (predictions.jsonl removed or edited) is not finished: kept,
    it would leave predictions.jsonl short of its answers."""
    if earlier is None:
        return {}
    answers: dict[str, list[dict[str, Any]]] = {}
    for record in earlier.get("predictions", ()):
        answers.setdefault(f"{record.get('task')}/{record.get('length')}/{record.get('method')}", []).append(record)
    finished = {}
    for key in keys:
        cell = earlier["cells"].get(key)
        if isinstance(cell, dict) and len(answers.get(key, ())) == cell.get("samples"):
            finished[key] = (cell, answers[key])
    return finished


def read_results(output_dir: str | Path) -> dict[str, Any]:
    """The results an earlier run wrote to `output_dir`, as `evaluate_by_length` returns them: results.json, with the
    answers of predictions.jsonl under "predictions" (none when that file is not there). Raises MissingFileError
    without results.json, and InputError for files that are not an evaluation's results."""
    output_dir = Path(output_dir)
    path = output_dir / "results.json"
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not JSON ({err})") from err
    if not isinstance(results, dict) or not isinstance(results.get("cells"), dict):
        raise InputError(f"{path} is not the results of an evaluation by length (it has no cells)")
    path = output_dir / "predictions.jsonl"
    try:
        # Written in ASCII (json.dumps escapes the rest): splitlines() cannot cut a record at U+2028 or the like.
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        predictions = [json.loads(line) for line in lines if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not JSON lines ({err})") from err
    if not all(isinstance(record, dict) for record in predictions):
        raise InputError(f"{path} holds a line that is not an answer (a JSON object)")
    return {**results, "predictions": predictions}


def _sample_counts(
    tasks: Sequence[str],
    names: Sequence[str],
    samples: int | dict[str, int],
    files: dict[tuple[str, str], list[BabilongSample]] | None,
    per_method: Iterable[Reader],
) -> dict[tuple[str, str], int]:
    """The samples each cell evaluates, checked before any is: at least one (an empty cell has no accuracy), at most
    what a file holds (with a warning), and a file's samples with text fields and answers within an encoder's
    labels."""
    counts = {}
    for name in names:
        if isinstance(samples, dict) and name not in samples:
            raise InputError(f"no sample count for length {name}: the counts name {sorted(samples)}")
        count = samples[name] if isinstance(samples, dict) else samples
        for task in tasks:
            if files is not None and (task, name) in files:
                available = len(files[(task, name)])
                if available == 0:
                    raise InputError(f"no {task} samples of length {name} to evaluate: the file holds none")
                if count > available:
                    print(
                        f"warning: {task} {name}: {count} samples asked for, but the file holds {available}: "
                        f"evaluating {available}",
                        file=sys.stderr,
                    )
                    count = available
                records = [sample.to_dict() for sample in files[(task, name)][:count]]
                for i, record in enumerate(records):
                    check_qa_record(record, f"the {task} {name} samples: record {i}")
                for reader in per_method:
                    if reader.labels is not None:
                        reader.collate.check_records(records, f"the {task} {name} samples")
            if count < 1:
                raise InputError(f"{count} samples asked for ({task} {name}): a cell needs at least 1")
            counts[(task, name)] = count
    return counts


def _run_cell(
    reader: Reader, samples: list[BabilongSample], task: str, label: str, progress: bool
) -> tuple[Outcome, list[dict[str, Any]]]:
    """The method's scores on `samples` of `task`, and a record of each answer."""
    correct = tokens = 0
    near, far, unknown = [0, 0], [0, 0], [0, 0]
    answers = []
    started = time.perf_counter()
    bar = tqdm(samples, desc=label, disable=not progress, dynamic_ncols=True, leave=False)
    for index, sample in enumerate(bar):
        right, reading = reader.answer(sample, task)
        correct += int(right)
        tokens += reading.tokens
        # A sample that does not record its facts' depths is counted in neither near nor far.
        split = unknown if reading.facts_in_last_span is None else near if reading.facts_in_last_span else far
        split[0] += int(right)
        split[1] += 1
        answers.append(
            {
                "sample": index,
                "seed": sample.seed,
                "question": sample.question,
                "target": sample.target,
                "answer": reading.answer,
                "correct": right,
                "tokens": reading.tokens,
                "supporting_depths": sample.supporting_depths,
                "supporting_offsets": list(reading.fact_offsets) if reading.fact_offsets is not None else None,
                "facts_in_last_span": reading.facts_in_last_span,
            }
        )
        elapsed = time.perf_counter() - started
        bar.set_postfix(acc=f"{correct / (index + 1):.2f}", tok_s=f"{tokens / max(elapsed, 1e-9):,.0f}")
    bar.close()
    elapsed = time.perf_counter() - started
    outcome = Outcome(correct, len(samples), tokens, elapsed, tuple(near), tuple(far), tuple(unknown))
    return outcome, answers


RESULT_FILES = ("results.json", "predictions.jsonl", "table.md", "accuracy.png", *(f"heatmap-{m}.png" for m in METHODS))


def write_results(
    results: dict[str, Any], output_dir: Path, predictions: Sequence[dict[str, Any]] = (), replace: bool = False
) -> None:
    """results.json, predictions.jsonl (one answer per line), table.md, one heatmap per method and accuracy.png (the
    methods side by side by length), each written atomically, results.json last: an interrupted write leaves the
    others as new as it or newer. `replace`: remove every result file an earlier run left in the folder first, so
    that an interruption cannot leave its plots beside this run's results. The heatmaps of methods that `results`
    does not hold are removed, so the folder holds only this run's results."""
    output_dir = Path(output_dir)
    # allow_nan=False: NaN is not JSON (strict readers refuse the file); a value with no number is null instead.
    # Serialised first: results that cannot be written change nothing on disk.
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    lines = "".join(json.dumps(record, allow_nan=False) + "\n" for record in predictions)
    output_dir.mkdir(parents=True, exist_ok=True)
    if replace:
        for name in RESULT_FILES:
            (output_dir / name).unlink(missing_ok=True)
    write_atomic(output_dir / "predictions.jsonl", lines)
    write_atomic(output_dir / "table.md", format_table(results) + "\n")
    for method in results["methods"]:
        plot_heatmap(results, method, output_dir / f"heatmap-{method}.png")
    plot_methods(results, output_dir / "accuracy.png")
    for method in METHODS:
        if method not in results["methods"]:
            (output_dir / f"heatmap-{method}.png").unlink(missing_ok=True)
    write_atomic(output_dir / "results.json", text)


def format_table(results: dict[str, Any]) -> str:
    """Markdown: one row per task and method, one column per length, accuracy [95% interval] (n)."""
    lengths = results["lengths"]
    lines = ["| task | method | " + " | ".join(lengths) + " |", "|---|---|" + "---|" * len(lengths)]
    for task in results["tasks"]:
        for method in results["methods"]:
            cells = []
            for name in lengths:
                cell = results["cells"].get(f"{task}/{name}/{method}")
                if cell is None:
                    cells.append("")
                    continue
                if cell["accuracy"] is None:  # no samples
                    cells.append(f"- (n={cell['samples']})")
                    continue
                low, high = cell["ci95"]
                cells.append(f"{cell['accuracy']:.2f} [{low:.2f}, {high:.2f}] (n={cell['samples']})")
            lines.append(f"| {task} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _facts_note(results: dict[str, Any]) -> str:
    """A title's note of the facts per story, when the evaluation set them."""
    num_facts = results.get("num_facts")
    if num_facts is None:
        return ""
    count = "-".join(map(str, num_facts)) if isinstance(num_facts, list | tuple) else str(num_facts)
    return f" ({count} fact{'' if count == '1' else 's'} per story)"


def _accuracy(cell: dict[str, Any] | None) -> float:
    """A cell's accuracy for a plot: NaN (not drawn) for a missing cell or one with no samples."""
    if cell is None or cell.get("accuracy") is None:
        return float("nan")
    return cell["accuracy"]


def plot_heatmap(results: dict[str, Any], method: str, path: Path) -> None:
    """Tasks x lengths, accuracy in each cell, as in the BABILong paper's figures."""
    plt = pyplot()

    tasks, lengths = results["tasks"], results["lengths"]
    grid = [[_accuracy(results["cells"].get(f"{task}/{name}/{method}")) for name in lengths] for task in tasks]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.8 * len(lengths)), 1.6 + 0.5 * len(tasks)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(lengths)), lengths)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xlabel("input length (tokens)")
    # On two lines, and the figure at least 4 inches wide: its width follows the number of lengths, not the title.
    ax.set_title(f"BABILong accuracy\n{method.replace('_', ' ')}{_facts_note(results)}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    save_figure(fig, path)


def plot_methods(results: dict[str, Any], path: Path) -> None:
    """Accuracy against input length, one panel per task and one line per method, with the 95% intervals as bars:
    where memory beats its baselines, and whether the difference is larger than the sampling noise."""
    plt = pyplot()

    tasks, lengths = results["tasks"], results["lengths"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(1.5 + 0.7 * len(lengths) * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        methods = results["methods"]
        for offset, method in enumerate(methods):
            points = [
                (j, cell)
                for j, name in enumerate(lengths)
                if not math.isnan(_accuracy(cell := results["cells"].get(f"{task}/{name}/{method}")))
            ]
            if not points:
                continue
            shift = 0.08 * (offset - (len(methods) - 1) / 2)  # side by side, so the bars do not hide each other
            x = [j + shift for j, _ in points]
            y = [cell["accuracy"] for _, cell in points]
            below = [cell["accuracy"] - cell["ci95"][0] for _, cell in points]
            above = [cell["ci95"][1] - cell["accuracy"] for _, cell in points]
            ax.errorbar(x, y, yerr=[below, above], marker="o", capsize=3, label=method.replace("_", " "))
        ax.set_xticks(range(len(lengths)), lengths)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("input length (tokens)")
        ax.set_title(f"{task}{_facts_note(results)}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (95% interval)")
    labelled = next((ax for ax in axes[0] if ax.get_legend_handles_labels()[1]), None)
    if labelled is not None:  # cells are plotted as they finish: the last task's panel may be empty yet
        labelled.legend(fontsize=8)
    save_figure(fig, path)
