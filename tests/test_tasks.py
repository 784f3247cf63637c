"""Tests of the seeded synthetic tasks (rmt/data/tasks.py): formats, determinism, labels, metric, errors.

Run: .venv/bin/pytest tests/test_tasks.py -q
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from rmt.data import (
    IGNORE_INDEX,
    TASKS,
    AssociativeRetrievalTask,
    CopyTask,
    DetectMemorizeTask,
    QuadraticTask,
    ReverseTask,
    Task,
    answer_accuracy,
    make_task,
)

ALL_TASKS = [
    CopyTask(length=24),
    ReverseTask(length=7, num_symbols=5),
    AssociativeRetrievalTask(num_pairs=4),
    QuadraticTask(),
    DetectMemorizeTask(num_segments=3, segment_size=16),
]


@pytest.fixture(params=ALL_TASKS, ids=lambda t: t.name)
def task(request) -> Task:
    return request.param


# ----------------------------------------------------------------------------- properties of every task


def test_shapes_vocab_and_masks(task: Task):
    b = task.batch(64, seed=0)
    n = task.sequence_length
    for t in (b.input_ids, b.labels, b.attention_mask):
        assert t.shape == (64, n) and t.dtype == torch.long
    assert b.answer_start == task.answer_start
    assert 0 <= b.input_ids.min() and b.input_ids.max() < task.vocab_size
    assert torch.equal(b.attention_mask, (b.input_ids != task.pad_token_id).long())
    if not isinstance(task, QuadraticTask):
        assert bool(b.attention_mask.all())
    assert isinstance(task.decode(b.input_ids[0]), str)


def test_labels_are_ignore_exactly_outside_answers(task: Task):
    b = task.batch(64, seed=1)
    pos = torch.arange(task.sequence_length)
    window = (pos >= task.answer_start) & (pos < task.answer_start + task.answer_length)
    answer = window & (b.attention_mask == 1)  # [B, N]
    assert torch.equal(b.labels[answer], b.input_ids[answer])
    assert bool((b.labels[~answer] == IGNORE_INDEX).all())
    assert bool((b.labels[:, task.answer_start] != IGNORE_INDEX).all())


def test_deterministic_and_seed_dependent(task: Task):
    a, b, c = task.batch(16, seed=3), task.batch(16, seed=3), task.batch(16, seed=4)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_global_rng_untouched(task: Task):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    task.batch(4, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_perfect_predictions_score_one(task: Task):
    b = task.batch(8, seed=2)
    logits = torch.nn.functional.one_hot(b.input_ids.roll(-1, dims=1), task.vocab_size).float()
    assert answer_accuracy(logits, b.labels) == (1.0, 1.0)


# ----------------------------------------------------------------------------- formats


def test_copy_target_is_source_twice():
    task = CopyTask(length=24)
    ids = task.batch(32, seed=0).input_ids
    assert task.sequence_length == 73 and task.answer_start == 25 and task.answer_length == 48
    src = ids[:, :24]
    assert bool((src < 10).all()) and bool((ids[:, 24] == task.start_token_id).all())
    assert torch.equal(ids[:, 25:49], src) and torch.equal(ids[:, 49:], src)


def test_reverse_target_is_reversed():
    task = ReverseTask(length=24)
    ids = task.batch(32, seed=0).input_ids
    assert task.sequence_length == 49 and task.answer_start == 25
    assert bool((ids[:, 24] == task.start_token_id).all())
    assert torch.equal(ids[:, 25:], ids[:, :24].flip(1))
    assert task.decode([1, 2, task.start_token_id, 2, 1]) == "12>21"


@pytest.mark.parametrize(
    "name, segments, within",
    # copy-24 in 3 segments of 25 (answers at 25..72): 25 is predicted at START, in the source's segment, and 49-50
    # (the second copy's first two) in the segment that holds the first copy; in 6 or 9 segments none.
    # reverse-24 (answers at 25..48): the last source tokens share a segment with START and the answer's start.
    [("copy", 3, 3), ("copy", 6, 0), ("copy", 9, 0), ("reverse", 2, 1), ("reverse", 4, 2), ("reverse", 6, 3)],
)
def test_answers_a_model_without_memory_can_still_copy(name, segments, within):
    task = make_task(name, length=24)
    size = task.segment_size_for(segments)
    assert task.answers_within_a_segment(size) == within
    assert task.no_memory_ceiling(size) == pytest.approx(
        (within + (task.answer_length - within) / 10) / task.answer_length
    )
    # One window holds everything: every answer token has its source in view.
    assert task.answers_within_a_segment(task.sequence_length) == task.answer_length


def test_associative_retrieval_format():
    task = AssociativeRetrievalTask(num_pairs=4)
    batch = task.batch(256, seed=0)
    ids = batch.input_ids
    assert ids.shape[1] == 11 and task.answer_start == 10 and task.answer_length == 1
    for row in ids.tolist():
        keys, values = row[0:8:2], row[1:8:2]
        assert len(set(keys)) == 4 and all(task.key_offset <= k < task.query_token_id for k in keys)
        assert all(v < task.num_values for v in values)
        assert row[8] == task.query_token_id  # the value follows the query key directly, as in the paper
        assert row[10] == dict(zip(keys, values, strict=True))[row[9]]
    assert bool((batch.labels[:, :10] == -100).all()) and torch.equal(batch.labels[:, 10], ids[:, 10])
    assert re.fullmatch(r"([a-z]\d){4}\?[a-z]\d", task.decode(ids[0]))


def test_associative_retrieval_multi_query_scores_only_the_values():
    task = AssociativeRetrievalTask(num_pairs=4, num_queries=3)
    batch = task.batch(64, seed=1)
    ids, labels = batch.input_ids, batch.labels
    assert ids.shape[1] == task.sequence_length == 15 and task.answer_start == 10 and task.answer_length == 5
    for row, row_labels in zip(ids.tolist(), labels.tolist(), strict=True):
        table = dict(zip(row[0:8:2], row[1:8:2], strict=True))
        asked = row[9:15:2]
        assert all(key in table for key in asked)
        assert row[10:15:2] == [table[key] for key in asked]
        assert [i for i, label in enumerate(row_labels) if label != -100] == [10, 12, 14]
    assert re.fullmatch(r"([a-z]\d){4}\?([a-z]\d){3}", task.decode(ids[0]))
    # the same seed gives the same key-value tables whatever the number of queries
    assert torch.equal(AssociativeRetrievalTask(num_pairs=4).batch(64, seed=1).input_ids[:, :9], ids[:, :9])
    with pytest.raises(ValueError, match="num_queries"):
        AssociativeRetrievalTask(num_queries=0)


def test_associative_retrieval_lead_padding_puts_the_query_alone_in_the_last_segment():
    """The lead was PAD, which the attention mask drops: the model packed the 11 real tokens into 4 segments of 3,
    so "5 segments" ran as 4 with the query's key and value split from the "?"."""
    from rmt import RMTConfig
    from rmt.memory.segments import plan_segments

    task = AssociativeRetrievalTask(num_pairs=4, lead_padding=4)
    batch = task.batch(32, seed=2)
    ids, labels = batch.input_ids, batch.labels
    assert task.sequence_length == 15 and task.answer_start == 14 and task.segment_size_for(5) == 3
    assert bool((ids[:, :4] == task.filler_token_id).all()) and bool(batch.attention_mask.bool().all())
    assert task.vocab_size == AssociativeRetrievalTask(num_pairs=4).vocab_size + 1  # the filler is the one new id
    assert torch.equal(ids[:, 4:], AssociativeRetrievalTask(num_pairs=4).batch(32, seed=2).input_ids)
    assert bool((ids[:, 12] == task.query_token_id).all())  # the last segment (12..14) is "?", key, value
    assert [i for i, label in enumerate(labels[0].tolist()) if label != -100] == [14]
    assert re.fullmatch(r"____([a-z]\d){4}\?[a-z]\d", task.decode(ids[0]))
    config = RMTConfig(segment_size=3, num_memory_tokens=2)
    plan = plan_segments(config, ids, batch.attention_mask, labels, True, task.vocab_size)
    assert plan.num_segments.tolist() == [5] * 32
    with pytest.raises(ValueError, match="lead_padding"):
        AssociativeRetrievalTask(lead_padding=-1)


def test_associative_retrieval_capacity():
    with pytest.raises(ValueError, match="num_pairs"):
        AssociativeRetrievalTask(num_pairs=27)
    task = AssociativeRetrievalTask(num_pairs=40, num_keys=64)
    ids = task.batch(8, seed=0).input_ids
    assert all(len(set(row[0:80:2])) == 40 for row in ids.tolist())
    assert ids.max() < task.vocab_size


EQUATION = re.compile(r"(-?\d*)x\^2(?:([+-]\d*)x)?([+-]\d+)?=0")


def _coefficients(equation: str) -> tuple[int, int, int]:
    """(a, b, c) of 'ax^2+bx+c=0' written with unit coefficients and zero terms omitted."""
    a, b, c = EQUATION.fullmatch(equation).groups()
    unit = {"": 1, "+": 1, "-": -1}  # 'x^2', '+x', '-x'
    return unit.get(a) or int(a), 0 if b is None else unit.get(b) or int(b), int(c or 0)


def test_quadratic_solutions_are_right():
    task = QuadraticTask()
    for line in task.decode(task.batch(300, seed=0).input_ids).splitlines():
        equation, solution = line.split("|")
        assert len(equation) == task.equation_width and not equation.endswith(" ")  # right-aligned field
        assert solution.endswith("$")
        a, b, c = _coefficients(equation.strip())
        assert 1 <= abs(a) <= 10 and b % a == 0 and c % a == 0
        steps = solution[:-1].split(";")
        p, q = b // a, c // a
        assert _coefficients(steps[0]) == (1, p, q)  # divided by the leading coefficient
        assert steps[1] == f"D={p * p}{-4 * q:+d}={p * p - 4 * q}"
        d = b * b - 4 * a * c
        if d < 0:
            assert steps[2:] == ["no real roots"]
            continue
        s = math.isqrt(d)
        assert s * s == d
        x1, x2 = sorted(((-b - s) / (2 * a), (-b + s) / (2 * a)))
        assert x1 == int(x1) and x2 == int(x2) and -100 <= x1 <= x2 <= 100
        got = re.fullmatch(r"sqrtD=(\d+);x1=\(.+\)/2=(-?\d+),x2=\(.+\)/2=(-?\d+)", ";".join(steps[2:]))
        assert got is not None and (int(got[2]), int(got[3])) == (x1, x2)
        assert a * x1 * x1 + b * x1 + c == 0 and a * x2 * x2 + b * x2 + c == 0


def test_quadratic_no_root_rate():
    task = QuadraticTask()
    lines = task.decode(task.batch(1000, seed=0).input_ids).splitlines()
    rate = sum("no real roots" in line for line in lines) / len(lines)
    assert 0.16 <= rate <= 0.24


def test_quadratic_layout():
    task = QuadraticTask()
    b = task.batch(200, seed=5)
    assert bool((b.input_ids[:, task.answer_start - 1] == task.start_token_id).all())
    assert bool((b.input_ids[:, : task.answer_start - 1] != task.pad_token_id).all())
    ends = (b.input_ids == task.end_token_id).int()
    assert bool((ends.sum(1) == 1).all())
    last = ends.argmax(1)  # position of END = last attended token
    assert torch.equal(b.attention_mask.sum(1) - 1, last)
    assert torch.equal(b.labels[torch.arange(200), last], torch.full((200,), task.end_token_id))


@pytest.mark.parametrize("max_root,max_scale", [(1, 1), (9, 9), (10, 10), (1000, 100)])
@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_quadratic_field_widths_hold(max_root: int, max_scale: int, fraction: float):
    task = QuadraticTask(max_root=max_root, max_scale=max_scale, no_root_fraction=fraction)
    ids = task.batch(300, seed=0).input_ids  # raises RuntimeError if a text does not fit its field
    assert bool(((ids == task.end_token_id).sum(1) == 1).all())
    assert all(("no real roots" in line) == (fraction == 1.0) for line in task.decode(ids).splitlines())


def test_detect_memorize_format():
    task = DetectMemorizeTask(num_segments=4, segment_size=8)
    assert task.sequence_length == 32 and task.segment_size_for(4) == 8 and task.answer_start == 31
    ids = task.batch(1000, seed=0).input_ids
    facts = range(task.fact_offset, task.fact_offset + 6)
    positions = []
    for row in ids.tolist():
        assert row.count(task.fact_marker_id) == 1 and row.count(task.question_token_id) == 1
        pos = row.index(task.fact_marker_id)
        assert pos + 1 < 30 and row[pos + 1] in facts
        assert row[-2] == task.question_token_id and row[-1] == row[pos + 1]
        assert sum(t in facts for t in row) == 2  # the fact after the marker, and the answer
        positions.append(pos)
    assert {p // 8 for p in positions} == {0, 1, 2, 3}  # facts land in every segment
    assert min(positions) == 0 and max(positions) == 28
    answers = ids[:, -1] - task.fact_offset
    assert set(answers.tolist()) == set(range(6))


# ----------------------------------------------------------------------------- metric


def test_answer_accuracy_hand_made():
    ids = torch.tensor([[0, 1, 2, 3], [0, 2, 2, 1]])
    labels = torch.tensor([[-100, -100, 2, 3], [-100, -100, 2, 1]])
    logits = torch.nn.functional.one_hot(ids.roll(-1, dims=1), 4).float()  # logits[:, t] -> ids[:, t+1]
    assert answer_accuracy(logits, labels) == (1.0, 1.0)
    logits[0, 0] = torch.tensor([0.0, 0.0, 0.0, 5.0])  # wrong, but not an answer position
    assert answer_accuracy(logits, labels) == (1.0, 1.0)
    logits[1, 2] = torch.tensor([5.0, 0.0, 0.0, 0.0])  # predicts the last token of sample 1 wrong
    assert answer_accuracy(logits, labels) == (0.75, 0.5)
    with pytest.raises(ValueError):
        answer_accuracy(logits, torch.full_like(labels, -100))


# ----------------------------------------------------------------------------- segments, errors, registry


def test_segment_size_for():
    copy = CopyTask(length=24)
    assert [copy.segment_size_for(k) for k in (1, 3, 6, 9)] == [73, 25, 13, 9]
    assert [ReverseTask(length=24).segment_size_for(k) for k in (2, 4, 6)] == [25, 13, 9]
    with pytest.raises(ValueError, match="num_segments"):
        AssociativeRetrievalTask(num_pairs=4).segment_size_for(5)  # 12 tokens: size 3 gives 4 segments
    with pytest.raises(ValueError, match="num_segments"):
        copy.segment_size_for(0)


@pytest.mark.parametrize(
    "cls,kwargs,arg",
    [
        (CopyTask, {"length": 0}, "length"),
        (CopyTask, {"num_symbols": 1}, "num_symbols"),
        (ReverseTask, {"length": 2.5}, "length"),
        (AssociativeRetrievalTask, {"num_pairs": 0}, "num_pairs"),
        (AssociativeRetrievalTask, {"num_keys": 0}, "num_keys"),
        (AssociativeRetrievalTask, {"num_values": 1}, "num_values"),
        (QuadraticTask, {"max_root": 0}, "max_root"),
        (QuadraticTask, {"max_scale": -1}, "max_scale"),
        (QuadraticTask, {"no_root_fraction": 1.5}, "no_root_fraction"),
        (DetectMemorizeTask, {"num_segments": 0, "segment_size": 8}, "num_segments"),
        (DetectMemorizeTask, {"num_segments": 2, "segment_size": 0}, "segment_size"),
        (DetectMemorizeTask, {"num_segments": 1, "segment_size": 3}, "segment_size"),
        (DetectMemorizeTask, {"num_segments": 2, "segment_size": 8, "num_facts": 1}, "num_facts"),
    ],
)
def test_bad_arguments(cls: type[Task], kwargs: dict, arg: str):
    with pytest.raises(ValueError, match=arg):
        cls(**kwargs)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        CopyTask().batch(0, seed=0)


def test_make_task():
    assert set(TASKS) == {"copy", "reverse", "associative_retrieval", "quadratic", "detect_memorize"}
    task = make_task("copy", length=5)
    assert isinstance(task, CopyTask) and task.sequence_length == 16
    assert isinstance(make_task("detect_memorize", num_segments=2, segment_size=4), DetectMemorizeTask)
    with pytest.raises(ValueError, match="copy.*reverse"):
        make_task("nope")
