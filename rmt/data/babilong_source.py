"""BABILong samples generated on the fly as a trainer source: any number of segments, as pure functions of the step.

    source = BabilongSource("qa1", tokenizer, haystack, QACollator(tokenizer, "encoder", answer_labels("qa1")),
                            segment_size=128, reserve=0, facts_before_last=0.5)
    batch = source.train_batch(step=0, batch_size=8, num_segments=4)   # samples of about 4 x 128 tokens

A sample for n segments has n x segment_size - reserve tokens of context and question (`reserve` leaves room for
what the collator adds around them, e.g. a decoder's answer cue and answer). `facts_before_last` is the fraction of
training samples whose facts all lie before the last segment, so that the answer needs the memory (a story too long
to fit there is redrawn; if none fits, an InputError says so); the rest place their facts anywhere, as the public
benchmark does. Held-out batches place facts anywhere. `num_facts` (a count or an inclusive range, as in
`make_story`) sets the facts per story for training and held-out samples alike; None keeps the bAbI task's range.

`distractors` is the fraction of training samples whose background is cut from `mentions_haystack`: book
sentences that name the tasks' answers (rooms for qa1-qa4), each with its neighbours and each name swapped for a
random answer. The built-in books name a room about 300 times per 1M MiniLM tokens, 0.3 times in a 1k-token training
sample; this background about 10 times per 1k tokens (`python -m benchmarks.babilong_mentions_haystack --tasks qa1
--seed 0 --output runs/rooms-seed0.txt --report
benchmarks/results/babilong/minilm-qa1-single-fact-distractors/rooms-background.json`). A memory trained on the books
alone may store a room that a book names as a fact; these samples teach it not to. Held-out batches never use them.
"""

from __future__ import annotations

import random
from typing import Any

from rmt.data.babilong import (
    OBJECTS,
    PEOPLE,
    PLACES,
    QA5_PEOPLE,
    BabilongSample,
    FactPlacementError,
    _capped_fact_range,
    answer_labels,
    build_sample,
    make_story,
    token_counter,
)
from rmt.data.batch import Batch
from rmt.data.haystack import Haystack, mentions_haystack
from rmt.data.sources import EVAL_SEED_BASE, TRAIN_SEED_STRIDE, Source
from rmt.errors import InputError

_FACT_MARGIN_TOKENS = 24  # a fact placed at a depth lies this far, at most, after it starts
# Stories drawn for one sample whose facts must lie before the last segment; with a story that fits one time in 20
# (a short sample of a task of many facts), a sample fails about once in 10^22.
_MAX_PLACEMENT_DRAWS = 1000


def distractor_background(haystack: Haystack, tasks: list[str], seed: int = 0) -> Haystack:
    """`mentions_haystack` of `haystack` naming the answers of `tasks`, leaving out sentences that also name one of
    the stories' other words (people, objects or rooms that are not answers)."""
    answers = {word for task in tasks for word in answer_labels(task)}
    others = set(PEOPLE + QA5_PEOPLE + OBJECTS + PLACES) - answers
    return mentions_haystack(haystack, answers, others, seed=seed)


class BabilongSource(Source):
    """Generated BABILong samples of `task` (or several tasks, drawn per sample) through `collate`."""

    def __init__(
        self,
        tasks: str | list[str],
        tokenizer: Any,
        haystack: Haystack,
        collate: Any,
        segment_size: int,
        reserve: int = 0,
        facts_before_last: float = 0.0,
        seed: int = 0,
        default_segments: int = 1,
        num_facts: int | tuple[int, int] | None = None,
        distractors: float = 0.0,
    ) -> None:
        self.tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        if not self.tasks:
            raise InputError("BabilongSource needs at least one task")
        if not 0.0 <= facts_before_last <= 1.0:
            raise InputError(f"facts_before_last must be in [0, 1], got {facts_before_last}")
        if not 0.0 <= distractors <= 1.0:
            raise InputError(f"distractors must be in [0, 1], got {distractors}")
        self.tokenizer, self.haystack, self.collate = tokenizer, haystack, collate
        self.segment_size, self.reserve = segment_size, reserve
        self.facts_before_last, self.seed, self.default_segments = facts_before_last, seed, default_segments
        self.num_facts, self.distractors = num_facts, distractors
        # Built now, so that a background that names no answer is refused before training starts.
        self.mentions = distractor_background(haystack, self.tasks, seed) if distractors > 0 else None

    def samples(self, seed: int, count: int, num_segments: int | None, training: bool) -> list[BabilongSample]:
        """`count` samples for `num_segments` segments, a pure function of `seed`."""
        n = num_segments or self.default_segments
        length = n * self.segment_size - self.reserve
        if length <= 0:
            raise InputError(f"{n} segments of {self.segment_size} tokens leave no room after reserving {self.reserve}")
        rng = random.Random(f"babilong-source/{seed}")
        # A stream of its own, so that the stories and fact placements do not depend on `distractors`.
        distractor_draws = random.Random(f"babilong-source/distractors/{seed}")
        out = []
        for _ in range(count):
            task, sample_seed = rng.choice(self.tasks), rng.getrandbits(53)
            before_last = training and n > 1 and rng.random() < self.facts_before_last
            haystack = self.haystack
            if training and self.mentions is not None and distractor_draws.random() < self.distractors:
                haystack = self.mentions
            if before_last:
                out.append(self._before_last(task, n, length, haystack, sample_seed))
            else:
                out.append(build_sample(task, length, self.tokenizer, haystack, sample_seed, num_facts=self.num_facts))
        return out

    def _before_last(self, task: str, n: int, length: int, haystack: Haystack, sample_seed: int) -> BabilongSample:
        """A sample whose facts all end before the last of `n` segments, and that reaches that segment. A story too
        long to fit there is redrawn (a new story and background, from seeds that `sample_seed` determines), never
        placed anywhere instead: that would make fewer samples than `facts_before_last` need the memory. So is a
        sample that falls short of the last segment (the builder stops a sentence before the length, and a sentence
        of a book can be hundreds of tokens): its facts would be in its own last segment. Redrawing favours stories
        with fewer facts, where the bAbI task's range has stories that do not fit."""
        # The facts must end this many tokens into the context; a reserve of a segment or more leaves no context in
        # the last segment, and then anywhere is before it.
        room = (n - 1) * self.segment_size - _FACT_MARGIN_TOKENS
        if room <= 0:
            raise self._unmet(task, n, length, f"the first {n - 1} segment(s) leave no room for a fact")
        end = min(1.0, room / length)
        count = token_counter(self.tokenizer)
        facts_range = _capped_fact_range(task, length) if self.num_facts is None else self.num_facts
        redraws = random.Random(f"babilong-source/before-last/{sample_seed}")
        seed = sample_seed
        for _ in range(_MAX_PLACEMENT_DRAWS):
            story = make_story(task, seed, facts_range)
            # Counted as the builder counts them, each after a space. They fit before the last segment only if
            # end x context tokens can hold them, and the context is shorter than the length: a cheap test that
            # spares building most samples that would fail.
            if sum(count([" " + fact for fact in story.facts])) <= room:
                try:
                    sample = build_sample(task, length, count, haystack, seed, (0.0, end), self.num_facts)
                except FactPlacementError:  # no sentence boundary keeps them before it: draw another story
                    pass
                else:
                    if sample.num_tokens + self.reserve > (n - 1) * self.segment_size:
                        return sample
            seed = redraws.getrandbits(53)
        raise self._unmet(task, n, length, f"none of {_MAX_PLACEMENT_DRAWS} {task} stories fit in {room} tokens")

    def _unmet(self, task: str, n: int, length: int, why: str) -> InputError:
        return InputError(
            f"facts_before_last={self.facts_before_last:g} cannot be met for {task} at {n} segments of "
            f"{self.segment_size} tokens ({length}-token samples): {why}; use longer or more segments, fewer facts "
            "per story (--facts), or facts_before_last=0 (--facts-before-last 0)"
        )

    def train_batch(self, step: int, batch_size: int, num_segments: int | None = None) -> Batch:
        samples = self.samples(self.seed * TRAIN_SEED_STRIDE + step, batch_size, num_segments, training=True)
        return self.collate([s.to_dict() for s in samples])

    def eval_batch(self, index: int, batch_size: int, num_segments: int | None = None) -> Batch:
        samples = self.samples(EVAL_SEED_BASE + index, batch_size, num_segments, training=False)
        return self.collate([s.to_dict() for s in samples])
