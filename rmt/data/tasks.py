"""Seeded synthetic tasks of the RMT papers: copy, reverse, associative retrieval, quadratic equations
(RMT, arXiv 2207.06881) and detect-and-memorize (Scaling RMT to 1M tokens, arXiv 2304.11062).

Every task is a pure function of (config, batch_size, seed): `task.batch(B, seed)` draws from a local
`torch.Generator`, never the global RNG, so a seed names one exact batch. The layout is decoder-only: the
source, then the target, in one fixed-length sequence; `labels` equal `input_ids` on the answer tokens (the
positions `task.scored_positions()` marks) and -100 elsewhere, NOT shifted (the model shifts them, Hugging Face style).

    from rmt.data import answer_accuracy, make_task
    task = make_task("copy", length=24)
    b = task.batch(32, seed=0)              # b.input_ids: [32, 73], answer = positions 25..72
    print(task.decode(b.input_ids[0]))      # "3141...>3141...3141..."
    task.segment_size_for(3)                # 25 -> segments of 25, 25, 23 tokens

Formats, as `decode` renders them:
  copy                   "3141>31413141"  L symbols, START, the L symbols twice         N = 3L+1
  reverse                "3141>1413"      L symbols, START, the L symbols reversed      N = 2L+1
  associative_retrieval  "a1b2c3d4?c3"    n (key, value) pairs, QUERY, a key, its value      N = 2n+3
                         (num_queries=q > 1: "a1b2c3d4?c3a1c3", q queried pairs, N = 2n+1+2q;
                         lead_padding=p: p filler tokens '_' first, N = p+2n+3)
  quadratic              "   3x^2+6x-9=0|x^2+2x-3=0;D=4+12=16;sqrtD=4;x1=(-2-4)/2=-3,x2=(-2+4)/2=1$"
                         equation right-aligned in a fixed field of blanks, START, solution, END, PAD
  detect_memorize        "kq!3zx...?3"    noise, FACT marker + fact anywhere, QUESTION, fact
"""

from __future__ import annotations

import math
import string
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rmt.data.batch import Batch
from rmt.errors import InputError

IGNORE_INDEX = -100
_SYMBOLS = string.digits + string.ascii_lowercase + string.ascii_uppercase


@dataclass
class TaskBatch(Batch):
    """One batch of a task; every tensor is [B, N] int64: labels hold input_ids on answer tokens and -100 elsewhere
    (unshifted); attention_mask is 0 only on padding (quadratic)."""

    answer_start: int = 0  # index of the first answer token, the same for every sample


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int)
    if bad or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"{name} must be an integer {bound}, got {value!r}")


def _names(n: int, alphabet: str, tag: str) -> list[str]:
    """Display names of n tokens: one character each while the alphabet lasts, else '<tag{i}>'."""
    return list(alphabet[:n]) if n <= len(alphabet) else [f"<{tag}{i}>" for i in range(n)]


class Task(ABC):
    """A synthetic task: fixed sequence length, fixed answer position, token ids 0..vocab_size-1."""

    name: str
    vocab_size: int
    pad_token_id: int
    tokens: list[str]  # display name of each token id, used by decode

    @property
    @abstractmethod
    def sequence_length(self) -> int:
        """N, the same for every sample of this config."""

    @property
    @abstractmethod
    def answer_length(self) -> int:
        """Number of answer tokens (for quadratic: the maximum; shorter answers are followed by padding)."""

    @property
    @abstractmethod
    def answer_start(self) -> int:
        """Index of the first answer token."""

    @abstractmethod
    def _sample(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """input_ids [B, N], padded with pad_token_id where a sample is shorter than N."""

    def batch(self, batch_size: int, seed: int) -> TaskBatch:
        """A batch that depends only on (config, batch_size, seed)."""
        _check_int("batch_size", batch_size, 1)
        g = torch.Generator().manual_seed(seed)
        input_ids = self._sample(batch_size, g)  # [B, N]
        attention_mask = (input_ids != self.pad_token_id).long()
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        scored = self.scored_positions()
        labels[:, scored] = input_ids[:, scored]
        labels[attention_mask == 0] = IGNORE_INDEX
        return TaskBatch(input_ids, attention_mask, labels, self.answer_start)

    def scored_positions(self) -> torch.BoolTensor:
        """[N] True at the positions that carry labels: the answer span, unless a task scores only part of it."""
        scored = torch.zeros(self.sequence_length, dtype=torch.bool)
        scored[self.answer_start : self.answer_start + self.answer_length] = True
        return scored

    def decode(self, ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]]) -> str:
        """Render token ids as text, padding dropped; a [B, N] input gives one line per sample.
        Ids outside the task vocabulary (e.g. from a backbone with a larger vocab) render as '<id>'."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        if len(ids) and isinstance(ids[0], Sequence | torch.Tensor):
            return "\n".join(self.decode(row) for row in ids)
        return "".join(self.tokens[i] if 0 <= i < self.vocab_size else f"<{i}>" for i in ids if i != self.pad_token_id)

    def segment_size_for(self, num_segments: int) -> int:
        """ceil(N / num_segments): cuts the sequence into exactly num_segments segments, the last maybe
        shorter. Raises ValueError when no such size exists (e.g. N=12 into 5: size 3 gives 4 segments)."""
        n = self.sequence_length
        _check_int("num_segments", num_segments, 1, n)
        size = -(-n // num_segments)
        if -(-n // size) != num_segments:
            raise InputError(
                f"num_segments={num_segments} cannot cut {n} tokens into equal segments with a shorter last "
                f"one: size {size} gives {-(-n // size)} segments"
            )
        return size


# ----------------------------------------------------------------------------- copy / reverse


@dataclass
class _SymbolTask(Task):
    length: int = 24
    num_symbols: int = 10

    def __post_init__(self) -> None:
        _check_int("length", self.length, 1)
        _check_int("num_symbols", self.num_symbols, 2)
        self.start_token_id = self.num_symbols
        self.pad_token_id = self.num_symbols + 1
        self.vocab_size = self.num_symbols + 2
        self.tokens = _names(self.num_symbols, _SYMBOLS, "s") + [">", ""]

    @property
    def answer_start(self) -> int:
        return self.length + 1

    @property
    def sequence_length(self) -> int:
        return self.answer_start + self.answer_length

    @abstractmethod
    def _target(self, source: torch.Tensor) -> torch.Tensor: ...

    def answers_within_a_segment(self, segment_size: int) -> int:
        """How many answer tokens a model without memory can still copy, cut into segments of `segment_size` from
        the first token: those whose source symbol stands, by the task's layout, in the segment of the position
        that predicts them (the source itself, or an earlier copy of it). Next to START the first answer token has
        its source in the same segment when the source ends there; copy's second copy starts next to the first."""
        _check_int("segment_size", segment_size, 1)
        # The source symbol each position holds: its index in the source, -1 for START.
        origin = torch.cat(
            [torch.arange(self.length), torch.tensor([-1]), self._target(torch.arange(self.length)[None])[0]]
        )
        count = 0
        for position in range(self.answer_start, self.sequence_length):
            predictor = position - 1  # position t predicts token t + 1
            segment_start = predictor - predictor % segment_size
            count += bool((origin[segment_start : predictor + 1] == origin[position]).any())
        return count

    def no_memory_ceiling(self, segment_size: int) -> float:
        """The answer accuracy a model without memory can reach: the answers within a segment right, the rest at
        chance (1 / num_symbols)."""
        within = self.answers_within_a_segment(segment_size)
        return (within + (self.answer_length - within) / self.num_symbols) / self.answer_length

    def _sample(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        source = torch.randint(self.num_symbols, (batch_size, self.length), generator=g)  # [B, L]
        start = torch.full((batch_size, 1), self.start_token_id)
        return torch.cat([source, start, self._target(source)], dim=1)


class CopyTask(_SymbolTask):
    """L random symbols, START, then the symbols twice (the RMT paper's copy); answer = the 2L copies."""

    name = "copy"

    @property
    def answer_length(self) -> int:
        return 2 * self.length

    def _target(self, source: torch.Tensor) -> torch.Tensor:
        return torch.cat([source, source], dim=1)


class ReverseTask(_SymbolTask):
    """L random symbols, START, then the symbols reversed; answer = the L reversed symbols."""

    name = "reverse"

    @property
    def answer_length(self) -> int:
        return self.length

    def _target(self, source: torch.Tensor) -> torch.Tensor:
        return source.flip(1)


# ----------------------------------------------------------------------------- associative retrieval


@dataclass
class AssociativeRetrievalTask(Task):
    """num_pairs (key, value) pairs with distinct keys, QUERY, one of the keys, its value (the value is predicted
    at the query key, as in the paper: no answer marker in between).

    num_queries > 1 asks that many keys (drawn with replacement) after the QUERY marker, each followed by its value,
    and scores every value but not the keys: multi-query associative recall, whose denser signal lets a small
    backbone learn in-context key-value binding that the one-query task alone does not teach it at CPU budgets.

    lead_padding filler tokens (unscored, shown as '_') come first, so that a cut into segments can put the query
    and its answer alone in the last segment: 4 pairs (11 tokens) cannot be cut into 5 equal segments, but with 4
    fillers in front (15 tokens) segments of 3 give "___|_a1|b2c|3d4|?c3", and a model without memory is at chance.
    The filler is a token of its own, attended like any other: PAD would be masked out and the sample packed into 4
    segments from its first real token.

    Keys come from an alphabet of num_keys tokens (default 26, shown as letters a-z; a larger alphabet,
    shown as '<k{i}>' tokens, allows more pairs), values from num_values tokens (default 10 digits).
    num_pairs > num_keys raises ValueError. Token ids: values, keys, QUERY, PAD, and FILLER with lead_padding."""

    num_pairs: int = 4
    num_keys: int = 26
    num_values: int = 10
    num_queries: int = 1
    lead_padding: int = 0
    name = "associative_retrieval"

    def __post_init__(self) -> None:
        _check_int("num_keys", self.num_keys, 1)
        _check_int("num_values", self.num_values, 2)
        if isinstance(self.num_pairs, int) and self.num_pairs > self.num_keys:
            raise InputError(
                f"num_pairs={self.num_pairs} needs that many distinct keys: raise num_keys ({self.num_keys})"
            )
        _check_int("num_pairs", self.num_pairs, 1)
        _check_int("num_queries", self.num_queries, 1)
        _check_int("lead_padding", self.lead_padding, 0)
        self.key_offset = self.num_values
        self.query_token_id = self.num_values + self.num_keys
        self.pad_token_id = self.query_token_id + 1
        # Only a task with lead padding has the filler, so the others keep their vocabulary (and their results).
        self.filler_token_id = self.query_token_id + 2 if self.lead_padding else None
        self.vocab_size = self.query_token_id + (3 if self.lead_padding else 2)
        self.tokens = (
            _names(self.num_values, string.digits, "v")
            + _names(self.num_keys, string.ascii_lowercase, "k")
            + ["?", ""]
            + (["_"] if self.lead_padding else [])
        )

    @property
    def sequence_length(self) -> int:
        return self.lead_padding + 2 * self.num_pairs + 1 + 2 * self.num_queries

    @property
    def answer_length(self) -> int:
        return 2 * self.num_queries - 1  # first value .. last value; the keys in between are not scored

    @property
    def answer_start(self) -> int:
        return self.lead_padding + 2 * self.num_pairs + 2

    def scored_positions(self) -> torch.BoolTensor:
        scored = torch.zeros(self.sequence_length, dtype=torch.bool)
        scored[self.answer_start :: 2] = True  # the values; the queried keys sit between them
        return scored

    def _sample(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        b, n = batch_size, self.num_pairs
        keys = torch.rand(b, self.num_keys, generator=g).argsort(dim=1)[:, :n] + self.key_offset  # [B, n]
        values = torch.randint(self.num_values, (b, n), generator=g)  # [B, n]
        query = torch.randint(n, (b, self.num_queries), generator=g)  # [B, q]
        pairs = torch.stack([keys, values], dim=2).reshape(b, 2 * n)  # k1 v1 k2 v2 ...
        asked = torch.stack([keys.gather(1, query), values.gather(1, query)], dim=2).reshape(b, 2 * self.num_queries)
        pieces = [pairs, torch.full((b, 1), self.query_token_id), asked]
        if self.lead_padding:
            pieces.insert(0, torch.full((b, self.lead_padding), self.filler_token_id))
        return torch.cat(pieces, dim=1)


# ----------------------------------------------------------------------------- quadratic equations

_QUAD_CHARS = "0123456789x^+-=,;()/ Dsqrtnoeal"
_NO_ROOTS = ";no real roots"


def _signed(v: int) -> str:
    return f"+{v}" if v >= 0 else str(v)


def _poly(a: int, b: int, c: int) -> str:
    """'ax^2+bx+c=0' in the usual form: unit coefficients and zero terms omitted."""
    lead = {1: "", -1: "-"}.get(a, str(a))
    bx = "" if b == 0 else ("+" if b > 0 else "-") + ("" if abs(b) == 1 else str(abs(b))) + "x"
    cx = "" if c == 0 else _signed(c)
    return f"{lead}x^2{bx}{cx}=0"


def _digits(v: int) -> int:
    return len(str(abs(v)))


@dataclass
class QuadraticTask(Task):
    """Solve a x^2 + b x + c = 0 step by step, at character level (RMT paper's quadratic equations).

    With probability 1 - no_root_fraction the equation is k (x - r1)(x - r2), roots r1, r2 uniform integers
    in [-max_root, max_root]; otherwise k (x^2 + p x + q) with q > p^2/4 (no real root). The scale k is a
    uniform integer in +-1..max_scale. Solution: the equation divided by k, the discriminant of the monic
    form (p^2, -4q, D), then 'sqrtD=s;x1=(-p-s)/2=..,x2=(-p+s)/2=..' (x1 <= x2) or 'no real roots'.

    Fixed layout, so that answer_start is the same for every sample: the equation is right-aligned in a
    field of `equation_width` blank (space) tokens, then START, then the solution and END (the answer,
    scored by full-answer exact match), then PAD up to N. Blanks are attended; padding is not
    (attention_mask 0, labels -100). Field widths are upper bounds computed from max_root and max_scale."""

    max_root: int = 100
    max_scale: int = 10
    no_root_fraction: float = 0.2
    name = "quadratic"

    def __post_init__(self) -> None:
        _check_int("max_root", self.max_root, 1)
        _check_int("max_scale", self.max_scale, 1)
        f = self.no_root_fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 <= f <= 1.0:
            raise InputError(f"no_root_fraction must be a number in [0, 1], got {f!r}")
        self.tokens = list(_QUAD_CHARS) + ["|", "$", ""]
        self.stoi = {ch: i for i, ch in enumerate(_QUAD_CHARS)}
        self.blank_token_id = self.stoi[" "]
        self.start_token_id, self.end_token_id, self.pad_token_id = range(len(_QUAD_CHARS), len(self.tokens))
        self.vocab_size = len(self.tokens)
        # Longest possible texts: every number at its largest magnitude, with a sign.
        r, s = self.max_root, self.max_scale
        p_max, q_max = 2 * r, 2 * r * r  # |p| = |r1 + r2|; no-root q <= p^2/4 + r^2
        self.equation_width = (1 + _digits(s)) + 3 + (2 + _digits(s * p_max)) + (1 + _digits(s * q_max)) + 2
        monic = 3 + (2 + _digits(p_max)) + (1 + _digits(q_max)) + 2
        disc = 3 + _digits(p_max**2) + (1 + _digits(4 * q_max)) + 1 + (1 + _digits(p_max**2 + 4 * q_max))
        root = 5 + (1 + _digits(p_max)) + (1 + _digits(2 * r)) + 4 + (1 + _digits(r))  # ";x1=(-p-s)/2=x"
        roots = max(len(_NO_ROOTS), 7 + _digits(2 * r) + 2 * root)
        self.solution_width = monic + disc + roots + 1  # + END

    @property
    def sequence_length(self) -> int:
        return self.equation_width + 1 + self.solution_width

    @property
    def answer_length(self) -> int:
        return self.solution_width

    @property
    def answer_start(self) -> int:
        return self.equation_width + 1

    @staticmethod
    def solution(p: int, q: int) -> str:
        """Step-by-step solution text of x^2 + p x + q = 0 (without END)."""
        d = p * p - 4 * q
        text = f"{_poly(1, p, q)};D={p * p}{_signed(-4 * q)}={d}"
        if d < 0:
            return text + _NO_ROOTS
        s = math.isqrt(d)
        return text + f";sqrtD={s};x1=({-p}-{s})/2={(-p - s) // 2},x2=({-p}+{s})/2={(-p + s) // 2}"

    def _sample(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        b, r, s = batch_size, self.max_root, self.max_scale
        roots = torch.randint(-r, r + 1, (b, 2), generator=g)
        scale = torch.randint(1, s + 1, (b,), generator=g) * (torch.randint(0, 2, (b,), generator=g) * 2 - 1)
        no_root = torch.rand(b, generator=g) < self.no_root_fraction
        extra = torch.randint(1, r * r + 1, (b,), generator=g)
        ids = torch.full((b, self.sequence_length), self.pad_token_id)
        for i in range(b):
            r1, r2 = roots[i].tolist()
            k, p = int(scale[i]), -(r1 + r2)
            q = p * p // 4 + int(extra[i]) if no_root[i] else r1 * r2  # p^2 - 4q < 0 in the first case
            eq, sol = _poly(k, k * p, k * q), self.solution(p, q)
            if len(eq) > self.equation_width or len(sol) + 1 > self.solution_width:
                raise RuntimeError(f"quadratic field widths too small for {eq!r} -> {sol!r}")
            row = [self.blank_token_id] * (self.equation_width - len(eq)) + [self.stoi[c] for c in eq]
            row += [self.start_token_id] + [self.stoi[c] for c in sol] + [self.end_token_id]
            ids[i, : len(row)] = torch.tensor(row)
        return ids


# ----------------------------------------------------------------------------- detect and memorize


@dataclass
class DetectMemorizeTask(Task):
    """Detect-and-memorize (Scaling RMT to 1M tokens), on a token vocabulary.

    num_segments * segment_size tokens of random noise; a FACT marker followed by one of num_facts fact
    tokens sits at a uniformly random position anywhere before the end (the pair may straddle a segment
    boundary); the last two tokens are QUESTION and the answer, the fact token. Chance = 1/num_facts.
    Token ids: noise, facts, FACT, QUESTION, PAD."""

    num_segments: int
    segment_size: int
    num_facts: int = 6
    num_noise_tokens: int = 26
    name = "detect_memorize"

    def __post_init__(self) -> None:
        _check_int("num_segments", self.num_segments, 1)
        _check_int("segment_size", self.segment_size, 1)
        _check_int("num_facts", self.num_facts, 2)
        _check_int("num_noise_tokens", self.num_noise_tokens, 1)
        if self.num_segments * self.segment_size < 4:
            raise InputError(
                f"num_segments * segment_size must be >= 4 (FACT, fact, QUESTION, answer), "
                f"got {self.num_segments} * {self.segment_size}"
            )
        self.fact_offset = self.num_noise_tokens
        self.fact_marker_id = self.num_noise_tokens + self.num_facts
        self.question_token_id = self.fact_marker_id + 1
        self.pad_token_id = self.fact_marker_id + 2
        self.vocab_size = self.fact_marker_id + 3
        self.tokens = (
            _names(self.num_noise_tokens, string.ascii_lowercase, "n")
            + _names(self.num_facts, string.digits, "f")
            + ["!", "?", ""]
        )

    @property
    def sequence_length(self) -> int:
        return self.num_segments * self.segment_size

    @property
    def answer_length(self) -> int:
        return 1

    @property
    def answer_start(self) -> int:
        return self.sequence_length - 1

    def _sample(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        b, n = batch_size, self.sequence_length
        ids = torch.randint(self.num_noise_tokens, (b, n), generator=g)  # [B, N]
        pos = torch.randint(n - 3, (b,), generator=g)  # FACT at pos, fact at pos + 1 <= N - 3
        fact = torch.randint(self.num_facts, (b,), generator=g) + self.fact_offset
        rows = torch.arange(b)
        ids[rows, pos] = self.fact_marker_id
        ids[rows, pos + 1] = fact
        ids[:, -2] = self.question_token_id
        ids[:, -1] = fact
        return ids


# ----------------------------------------------------------------------------- metric and registry


def answer_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Per-token accuracy and full-answer exact match over answer positions, given UNSHIFTED labels
    (logits[:, t] predicts token t+1, so logits[:, :-1].argmax(-1) is compared with labels[:, 1:] where
    labels[:, 1:] != -100). Exact match = fraction of samples with an answer whose every answer token is right.

    logits: [B, N, V]; labels: [B, N]."""
    if logits.shape[:2] != labels.shape:
        raise InputError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [B, N]")
    pred = logits[:, :-1].argmax(-1)  # [B, N-1]
    target = labels[:, 1:].to(pred.device)  # [B, N-1]
    mask = target != IGNORE_INDEX
    if not mask.any():
        raise InputError("labels have no answer positions (all -100 after the first token)")
    hit = (pred == target) & mask
    has_answer = mask.any(dim=1)
    exact = (hit | ~mask).all(dim=1) & has_answer
    return hit.sum().item() / mask.sum().item(), exact.sum().item() / has_answer.sum().item()


TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (CopyTask, ReverseTask, AssociativeRetrievalTask, QuadraticTask, DetectMemorizeTask)
}


def make_task(name: str, **kwargs: Any) -> Task:
    """Build a task by registry name, e.g. make_task("detect_memorize", num_segments=4, segment_size=32)."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name](**kwargs)
