"""BABILong-style long-context QA, built offline: bAbI facts hidden in background text (Kuratov et al. 2024).

A story of bAbI tasks qa1-qa5 comes from a small world simulator of this module (people moving between rooms,
picking up, dropping and giving objects; rooms related by compass directions), a pure function of (task, seed). A
sample inserts the story's facts, in order, between sentences of a background passage until the sample has the
target number of tokens, then asks the question.

    from transformers import AutoTokenizer
    from rmt.data.babilong import answer_is_correct, build_dataset, load_babilong, save_babilong
    from rmt.data.haystack import load_haystack
    haystack = load_haystack(["book1.txt", "book2.txt"])
    tokenizer = AutoTokenizer.from_pretrained("gpt2")
    samples = build_dataset("qa2", "4k", 100, tokenizer, haystack, seed=0)
    s = samples[0]; s.input, s.question, s.target, s.full_text, s.supporting_depths
    save_babilong(samples, "data/qa2/4k.json")           # the public file layout; load_babilong reads it back
    answer_is_correct("The milk is in the kitchen.", "kitchen", s.question, answer_labels("qa2"))    # True

Conventions (decisions of this module; the public BABILong facts they follow are named):
- Lengths are in tokens of the caller's tokenizer. Names use k = 1000 and M = 1000000 tokens, as the public builder
  does ("4k" = 4000, "1M" = 1000000); "0k" is the facts alone. Unlike the public builder, which keeps 300 tokens of
  its length for the prompt, the whole target goes to context + question; pass e.g. `parse_length("4k") - 300` to
  leave room for instructions.
- What the model sees is `full_text` = input + " " + question, and `num_tokens` is the token count of that text. A
  sample never exceeds the target and falls short by less than the next background sentence would add.
- The tokenizer is any Hugging Face tokenizer (counted with `tokenizer(texts, add_special_tokens=False)`) or a plain
  callable `list[str] -> list[int]` of token counts. Sentences, facts and the question are counted one by one, as
  they occur in the sample (after a space), in batches of about the size still needed; then the joined text is
  counted once, and if the pieces' counts did not add up to it the passage is resized (rarely needed: they add up
  exactly for word-level, WordPiece and byte-level BPE tokenizers). From 6 MB of novels, a 1M-token sample takes
  about 0.2 s with a word counter and 7-13 s with a fast Hugging Face tokenizer on one shared core.
- Facts go in story order between sentences of one passage of consecutive haystack sentences that starts at a
  random sentence (the public builder also inserts facts only between background sentences). Several facts may
  share a boundary. With depth=(a, b) every fact's tokens lie within fractions [a, b] of the context's tokens.
- A fact's depth (`fact_depths`) is the number of context tokens before it divided by the context's tokens, where the
  context is `input` (without the question), from the pieces' token counts.
- Files: the public benchmark stores a JSON array of {"input", "question", "target"} objects per task and length, at
  data/<task>/<length>.json (Hugging Face dataset RMT-team/babilong). `save_babilong` writes that layout (a
  JSON-lines file if the name ends in .jsonl) with this module's metadata as extra keys; `load_babilong` reads both
  and keeps unknown keys.
- A generated answer is checked as the public benchmark checks it (`answer_is_correct`): in the lower-cased output up
  to its first '.', the target must be the only one of the task's answers (`answer_labels`) that occurs, answers
  named in the question aside. "bedroom office" and "the kitchen or the garden" are wrong; "\nThe answer is:
  kitchen" is right.

Stories: qa1 "Where is Mary?" (1 supporting fact); qa2 "Where is the milk?" (2: how its holder got it and where the
holder went, or the drop and where the dropper was); qa3 "Where was the milk before the office?" (the facts that last
put it in the room before and brought it to the one named, 3 or 4); qa4 "What is north of the garden?" / "What is the
garden south of?" (1 of 2 facts); qa5 "Who gave the milk to Jeff?", "What did Fred give to Jeff?", "Who gave the milk?",
"Who received the milk?", "Who did Fred give the milk to?" (1). Questions always have exactly one right answer in the
story. The number of facts is drawn uniformly from the range the BABILong README gives for the bAbI task
(`DEFAULT_NUM_FACTS`); `build_sample` caps it at one fact per 10 target tokens so the facts leave room for background
(the public builder caps at one per 8 GPT-2 tokens).
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import random
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rmt.data.haystack import Haystack, read_text_file
from rmt.errors import InputError

TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
LENGTH_NAMES = ("0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k", "256k", "512k", "1M", "10M")
QUESTION_SEPARATOR = " "
PUBLIC_FIELDS = ("input", "question", "target")

PEOPLE = ("Mary", "John", "Daniel", "Sandra")
QA5_PEOPLE = ("Fred", "Bill", "Jeff", "Mary")
PLACES = ("hallway", "bathroom", "kitchen", "office", "bedroom", "garden")
OBJECTS = ("football", "apple", "milk")
OPPOSITE_DIRECTION = {"north": "south", "south": "north", "east": "west", "west": "east"}

# Fact counts per story (min, max) of the bAbI tasks, as the BABILong README lists them; qa4 stories are two facts.
DEFAULT_NUM_FACTS = {"qa1": (2, 10), "qa2": (2, 68), "qa3": (4, 32), "qa4": (2, 2), "qa5": (2, 126)}
# The fewest facts that can support a question: a move (qa1); a move and a grab (qa2); a move, a grab and a second
# move (qa3); two relations (qa4); a grab and a give (qa5).
_MIN_FACTS = {"qa1": 1, "qa2": 2, "qa3": 3, "qa4": 2, "qa5": 2}
_TOKENS_PER_FACT_CAP = 10

_MOVE_VERBS = ("went to", "journeyed to", "travelled to", "moved to", "went back to")
_GRAB_VERBS = ("got", "grabbed", "picked up", "took")
_DROP_VERBS = ("dropped", "discarded", "put down")
_GIVE_VERBS = ("gave", "passed", "handed")
# How often each kind of action happens, among those possible at a step.
_ACTION_WEIGHTS = {
    "qa1": {"move": 1.0},
    "qa2": {"move": 0.5, "grab": 0.3, "drop": 0.2},
    "qa3": {"move": 0.5, "grab": 0.3, "drop": 0.2},
    "qa5": {"move": 0.3, "grab": 0.25, "drop": 0.1, "give": 0.35},
}
# A story with no answerable question is redrawn; the hardest case, a 3-fact qa3 story, takes about 25 draws.
_MAX_STORY_DRAWS = 10_000
# Rounds of resizing the passage when a tokenizer's counts do not add up across sentences; one or two suffice.
_MAX_FIT_ROUNDS = 6
_PROBE_SENTENCES = 64  # haystack sentences counted to estimate characters per token before choosing a passage

TokenCounter = Callable[[list[str]], list[int]]


def answer_labels(task: str) -> list[str]:
    """The fixed answer set of a task, sorted (classification labels): rooms for qa1-qa4, people and objects for qa5."""
    _check_task(task)
    return sorted(QA5_PEOPLE + OBJECTS) if task == "qa5" else sorted(PLACES)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; BABILong tasks here: {', '.join(TASKS)}")


# ---------------------------------------------------------------------------------------------------- lengths


_LENGTH_PATTERN = re.compile(r"(\d+)([kKmM]?)")


def parse_length(length: int | str) -> int:
    """A sample length in tokens from a count (4096) or a public name ("0k", "4k", "128k", "1M", "10M")."""
    if isinstance(length, int) and not isinstance(length, bool) and length >= 0:
        return length
    match = _LENGTH_PATTERN.fullmatch(length.strip()) if isinstance(length, str) else None
    if match is None:
        raise InputError(
            f"bad length {length!r}: give a token count >= 0 (e.g. 4096) or a name like "
            f"{', '.join(LENGTH_NAMES)} (k = 1000, M = 1000000 tokens)"
        )
    number, unit = match.groups()
    return int(number) * {"": 1, "k": 1000, "m": 1_000_000}[unit.lower()]


def length_name(length: int | str) -> str:
    """The public name of a length: 4000 -> "4k", 1000000 -> "1M", 0 -> "0k"; other counts stay digits."""
    tokens = parse_length(length)
    if tokens and tokens % 1_000_000 == 0:
        return f"{tokens // 1_000_000}M"
    if tokens % 1000 == 0:
        return f"{tokens // 1000}k"
    return str(tokens)


def babilong_file(root: str | os.PathLike, task: str, length: int | str) -> Path:
    """Where the public layout keeps a task's samples of one length: <root>/data/<task>/<length name>.json."""
    return Path(root) / "data" / task / f"{length_name(length)}.json"


# ---------------------------------------------------------------------------------------------------- stories


@dataclass(frozen=True)
class Story:
    """One bAbI story: facts in order, a question, its answer, and the indices of the facts that prove it."""

    task: str
    facts: tuple[str, ...]
    question: str
    answer: str
    supporting_facts: tuple[int, ...]


def _proof(*fact_indices: int | None) -> tuple[int, ...]:
    return tuple(sorted({index for index in fact_indices if index is not None}))


class _World:
    """People, rooms and objects of a bAbI simulation that records which facts prove where each object is.

    With `strict_places` (qa1-qa3) a person picks something up only after a fact has put them in a room, so every
    object's room is known and proven. Without it (qa5, whose questions are about who gave what) people whose room
    no fact states may grab and give, and they are then taken to be where the other party of the action is.
    """

    def __init__(self, people: tuple[str, ...], strict_places: bool) -> None:
        self.people = people
        self.strict_places = strict_places
        self.facts: list[str] = []
        self.person_place: dict[str, str] = {}
        self.person_move: dict[str, int] = {}  # the fact that put the person in their room
        self.holder: dict[str, str] = {}
        self.acquired: dict[str, int] = {}  # the fact by which the holder got the object
        self.object_place: dict[str, str] = {}
        self.object_proof: dict[str, tuple[int, ...]] = {}
        # Rooms an object has been in, one entry per change of room: the room, the facts that prove it came there,
        # and the latest facts that put it there (someone else may have picked it up in the same room since), which
        # prove it was still there when it left.
        self.object_trail: dict[str, list[tuple[str, tuple[int, ...], tuple[int, ...]]]] = {}
        self.gives: list[tuple[str, str, str, int]] = []  # (giver, object, receiver, fact index)

    def _may_meet(self, place: str | None, other_place: str | None) -> bool:
        return place is None or other_place is None or place == other_place

    def options(self) -> dict[str, list[tuple[str, ...]]]:
        """Every action possible now, by kind."""
        moves = [(p, room) for p in self.people for room in PLACES if self.person_place.get(p) != room]
        grabs = []
        for obj in OBJECTS:
            if obj in self.holder:
                continue
            for p in self.people:
                here, there = self.person_place.get(p), self.object_place.get(obj)
                if self.strict_places and here is not None and there in (None, here):
                    grabs.append((p, obj))
                elif not self.strict_places and self._may_meet(here, there):
                    grabs.append((p, obj))
        drops = [(self.holder[obj], obj) for obj in OBJECTS if obj in self.holder]
        gives = [
            (giver, obj, receiver)
            for obj, giver in self.holder.items()
            for receiver in self.people
            if receiver != giver and self._may_meet(self.person_place.get(giver), self.person_place.get(receiver))
        ]
        return {"move": moves, "grab": grabs, "drop": drops, "give": gives}

    def _put_object(self, obj: str, place: str, proof: tuple[int, ...]) -> None:
        self.object_place[obj] = place
        self.object_proof[obj] = proof
        trail = self.object_trail.setdefault(obj, [])
        if trail and trail[-1][0] == place:
            trail[-1] = (place, trail[-1][1], proof)
        else:
            trail.append((place, proof, proof))

    def _gather(self, person: str, other_place: str | None) -> None:
        """An unplaced person acting with someone or something in a known room is in that room."""
        if person not in self.person_place and other_place is not None:
            self.person_place[person] = other_place

    def act(self, kind: str, args: tuple[str, ...], rng: random.Random) -> None:
        """Perform one action and state it as the next fact."""
        index = len(self.facts)
        if kind == "move":
            person, room = args
            self.facts.append(f"{person} {rng.choice(_MOVE_VERBS)} the {room}.")
            self.person_place[person] = room
            self.person_move[person] = index
            for obj, holder in self.holder.items():
                if holder == person:
                    self._put_object(obj, room, _proof(self.acquired[obj], index))
        elif kind == "grab":
            person, obj = args
            self.facts.append(f"{person} {rng.choice(_GRAB_VERBS)} the {obj}.")
            self._gather(person, self.object_place.get(obj))
            self.holder[obj], self.acquired[obj] = person, index
            if person in self.person_place:
                self._put_object(obj, self.person_place[person], _proof(index, self.person_move.get(person)))
        elif kind == "drop":
            person, obj = args
            self.facts.append(f"{person} {rng.choice(_DROP_VERBS)} the {obj}.")
            del self.holder[obj], self.acquired[obj]
            if person in self.person_place:
                self._put_object(obj, self.person_place[person], _proof(index, self.person_move.get(person)))
        elif kind == "give":
            giver, obj, receiver = args
            self.facts.append(f"{giver} {rng.choice(_GIVE_VERBS)} the {obj} to {receiver}.")
            self._gather(giver, self.person_place.get(receiver))
            self._gather(receiver, self.person_place.get(giver))
            self.holder[obj], self.acquired[obj] = receiver, index
            self.gives.append((giver, obj, receiver, index))
        else:
            raise RuntimeError(f"unknown action {kind!r}")


def _questions_qa1(world: _World) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(f"Where is {p}?", room, (world.person_move[p],)) for p, room in world.person_place.items()]


def _questions_qa2(world: _World) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(f"Where is the {obj}?", room, world.object_proof[obj]) for obj, room in world.object_place.items()]


def _questions_qa3(world: _World) -> list[tuple[str, str, tuple[int, ...]]]:
    questions = []
    for obj, trail in world.object_trail.items():
        rooms = [room for room, _, _ in trail]
        for k in range(1, len(trail)):
            # "before the office" names one moment only if the object was in the office once.
            if rooms.count(rooms[k]) == 1:
                proof = _proof(*trail[k - 1][2], *trail[k][1])  # still in the room before, then came to this one
                questions.append((f"Where was the {obj} before the {rooms[k]}?", rooms[k - 1], proof))
    return questions


def _questions_qa5(world: _World) -> list[tuple[str, str, tuple[int, ...]]]:
    # Each question form picks the give events it is about; it is asked only if they all agree on the answer, and
    # the latest of them is the supporting fact.
    forms = {
        "Who gave the {o} to {r}?": (lambda g, o, r: (o, r), lambda g, o, r: g),
        "What did {g} give to {r}?": (lambda g, o, r: (g, r), lambda g, o, r: o),
        "Who gave the {o}?": (lambda g, o, r: (o,), lambda g, o, r: g),
        "Who received the {o}?": (lambda g, o, r: (o,), lambda g, o, r: r),
        "Who did {g} give the {o} to?": (lambda g, o, r: (g, o), lambda g, o, r: r),
    }
    questions = []
    for template, (key_of, answer_of) in forms.items():
        answers: dict[tuple[str, ...], set[str]] = {}
        latest: dict[tuple[str, ...], tuple[str, str, str, int]] = {}
        for event in world.gives:
            key = key_of(*event[:3])
            answers.setdefault(key, set()).add(answer_of(*event[:3]))
            latest[key] = event
        for key, event in latest.items():
            if len(answers[key]) == 1:
                g, o, r, index = event
                questions.append((template.format(g=g, o=o, r=r), answer_of(g, o, r), (index,)))
    return questions


_QUESTION_MAKERS = {"qa1": _questions_qa1, "qa2": _questions_qa2, "qa3": _questions_qa3, "qa5": _questions_qa5}


def _simulated_story(task: str, num_facts: int, rng: random.Random) -> Story:
    weights = _ACTION_WEIGHTS[task]
    people = QA5_PEOPLE if task == "qa5" else PEOPLE
    for _ in range(_MAX_STORY_DRAWS):
        world = _World(people, strict_places=task != "qa5")
        for _ in range(num_facts):
            options = world.options()
            kinds = [kind for kind in weights if options[kind]]
            kind = rng.choices(kinds, [weights[kind] for kind in kinds])[0]
            world.act(kind, rng.choice(options[kind]), rng)
        questions = _QUESTION_MAKERS[task](world)
        if questions:
            question, answer, proof = rng.choice(questions)
            return Story(task, tuple(world.facts), question, answer, proof)
    raise RuntimeError(f"no answerable {task} story of {num_facts} facts in {_MAX_STORY_DRAWS} draws")


def _relations_story(rng: random.Random) -> Story:
    center, first, second = rng.sample(PLACES, 3)
    # Two different directions from the shared room keep every question below to one answer.
    first_direction, second_direction = rng.sample(sorted(OPPOSITE_DIRECTION), 2)
    relations = [(first, first_direction, center), (second, second_direction, center)]
    facts = []
    for a, direction, b in relations:  # "a is north of b", stated either way round
        if rng.random() < 0.5:
            facts.append(f"The {a} is {direction} of the {b}.")
        else:
            facts.append(f"The {b} is {OPPOSITE_DIRECTION[direction]} of the {a}.")
    index = rng.randrange(2)
    a, direction, b = relations[index]
    opposite = OPPOSITE_DIRECTION[direction]
    question, answer = rng.choice(
        [
            (f"What is {direction} of the {b}?", a),
            (f"What is the {a} {direction} of?", b),
            (f"What is {opposite} of the {a}?", b),
            (f"What is the {b} {opposite} of?", a),
        ]
    )
    return Story("qa4", tuple(facts), question, answer, (index,))


def make_story(task: str, seed: int, num_facts: int | tuple[int, int] | None = None) -> Story:
    """The story of `task` for `seed`: the same arguments always give the same story.

    `num_facts` is a count, an inclusive (min, max) range to draw it from, or None for `DEFAULT_NUM_FACTS[task]`.
    """
    _check_task(task)
    low, high = DEFAULT_NUM_FACTS[task] if num_facts is None else _fact_range(num_facts)
    if low < _MIN_FACTS[task] or (task == "qa4" and (low, high) != (2, 2)):
        need = "exactly 2" if task == "qa4" else f"at least {_MIN_FACTS[task]}"
        raise InputError(f"{task} stories need {need} facts, got num_facts={num_facts!r}")
    rng = random.Random(f"babilong/{task}/story/{seed}")
    if task == "qa4":
        return _relations_story(rng)
    return _simulated_story(task, rng.randint(low, high), rng)


def _fact_range(num_facts: int | tuple[int, int]) -> tuple[int, int]:
    low, high = (num_facts, num_facts) if isinstance(num_facts, int) else num_facts
    if low > high:
        raise InputError(f"num_facts range {num_facts!r} is empty")
    return low, high


_FACT_COUNT_PATTERN = re.compile(r"(\d+)(?:-(\d+))?")


def parse_num_facts(text: str, tasks: Sequence[str], name: str = "facts per story") -> int | tuple[int, int]:
    """A facts-per-story setting from "N" or "MIN-MAX" (inclusive), checked against every one of `tasks`.

    "1" with qa1 is the single-fact task of the 1M-token RMT paper (Bulatov et al. 2023, "detect and memorize"): the
    one supporting fact hidden in the background, no distractor facts. Raises InputError naming the problem, after
    `name` and the text (a command passes its flag).
    """
    match = _FACT_COUNT_PATTERN.fullmatch(text.strip())
    if match is None:
        raise InputError(f"{name} {text!r}: give a count (e.g. 1) or a range MIN-MAX (e.g. 2-10)")
    low, high = match.groups()
    if high is not None and int(low) > int(high):
        raise InputError(f"{name} {text.strip()}: the range is empty; give MIN-MAX with MIN <= MAX (e.g. 2-10)")
    num_facts: int | tuple[int, int] = int(low) if high is None else (int(low), int(high))
    for task in tasks:
        try:
            make_story(task, 0, num_facts)  # raises for too few or too many facts for the task
        except InputError as err:
            raise InputError(f"{name} {text.strip()}: {err}") from err
    return num_facts


# ---------------------------------------------------------------------------------------------------- samples


@dataclass
class BabilongSample:
    """One sample: the public fields `input` (context), `question` and `target` (answer), plus metadata.

    Metadata is None for samples read from public files that lack it; unknown keys of such files go to `extra`.
    """

    input: str
    question: str
    target: str
    task: str | None = None
    length: int | None = None  # the target length in tokens
    num_tokens: int | None = None  # tokens of full_text, counted by the builder's tokenizer
    seed: int | None = None
    facts: list[str] | None = None  # the story's facts in order
    supporting_facts: list[int] | None = None  # indices into facts
    fact_depths: list[float] | None = None  # start of each fact in the context, as a fraction of its tokens
    depth_range: tuple[float, float] | None = None
    background_start: int | None = None  # index in the haystack of the passage's first sentence
    background_sentences: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def full_text(self) -> str:
        """What the model reads: the context, then the question."""
        return join_context_and_question(self.input, self.question)

    @property
    def num_facts(self) -> int | None:
        return None if self.facts is None else len(self.facts)

    @property
    def supporting_depths(self) -> list[float] | None:
        """Depths of the supporting facts in the context (fractions of its tokens)."""
        if self.fact_depths is None or self.supporting_facts is None:
            return None
        return [self.fact_depths[index] for index in self.supporting_facts]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the public fields first, then metadata that is set, then the extra keys."""
        record = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "extra" and value is not None:
                record[item.name] = list(value) if isinstance(value, tuple) else value
        record.update(self.extra)
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> BabilongSample:
        """The inverse of `to_dict`; keys that are not fields go to `extra`. Raises ValueError if a public field
        is missing."""
        missing = _missing_fields(record)
        if missing:
            raise InputError(f"record lacks field(s) {', '.join(missing)} (BABILong records need {_NEEDED})")
        names = {item.name for item in fields(cls)} - {"extra"}
        known = {key: value for key, value in record.items() if key in names}
        if isinstance(known.get("depth_range"), list):  # other values are left for metadata_problem to name
            known["depth_range"] = tuple(known["depth_range"])
        return cls(**known, extra={key: value for key, value in record.items() if key not in names})


_NEEDED = ", ".join(PUBLIC_FIELDS)


def _missing_fields(record: Mapping[str, Any]) -> list[str]:
    return [name for name in PUBLIC_FIELDS if name not in record]


def join_context_and_question(context: str, question: str) -> str:
    """The text a model reads for a sample: context, one space, question (an empty context gives the question)."""
    return f"{context}{QUESTION_SEPARATOR}{question}" if context else question


def token_counter(tokenizer_or_counter: Any) -> TokenCounter:
    """A `list[str] -> list[int]` token counter from a Hugging Face tokenizer (special tokens not counted) or from
    such a callable itself."""
    # Check the class only if transformers is already imported: a caller with a tokenizer has imported it, and a
    # caller with a plain counter should not pay for the import.
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(tokenizer_or_counter, transformers.PreTrainedTokenizerBase):
        tokenizer = tokenizer_or_counter

        def count(texts: list[str]) -> list[int]:
            # verbose=False: a long joined sample is counted, never fed to a model, so skip the length warning.
            encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            return [len(ids) for ids in encoded]

        return count
    if callable(tokenizer_or_counter):
        return tokenizer_or_counter
    raise TypeError(f"need a Hugging Face tokenizer or a list[str] -> list[int] counter, got {tokenizer_or_counter!r}")


def _counts(count: TokenCounter, texts: list[str]) -> list[int]:
    if not texts:
        return []
    counts = list(count(texts))
    if len(counts) != len(texts):
        raise InputError(f"token counter returned {len(counts)} counts for {len(texts)} texts")
    return counts


def _spaced_counts(count: TokenCounter, pieces: Sequence[str]) -> list[int]:
    """Token counts of pieces as they occur in a sample, after a space. Counted so, the pieces' counts add up to the
    count of the joined text for word-level, WordPiece and byte-level BPE tokenizers (GPT-2 counts "The" and " The"
    differently); the builder corrects for tokenizers where they do not."""
    return _counts(count, [" " + piece for piece in pieces])


class _Passage:
    """Consecutive haystack sentences [start, end) and their token counts, counted in batches as they are needed."""

    def __init__(self, haystack: Haystack, count: TokenCounter, start: int, chars_per_token: float) -> None:
        self.haystack, self.count = haystack, count
        self.start = self.end = start
        self.counts: list[int] = []
        self.tokens = 0
        self.chars_per_token = chars_per_token

    def _batch_chars(self, missing_tokens: int) -> float:
        # Ask for 10% more than the estimate so that one batch usually suffices.
        return missing_tokens * self.chars_per_token * 1.1 + 1

    def grow(self, tokens: int) -> bool:
        """Count more sentences until the passage has at least `tokens` tokens: forwards from its end, then, at the
        end of the haystack, backwards from its start. False if the whole haystack has fewer."""
        offsets = self.haystack.char_offsets
        while self.tokens < tokens:
            want = self._batch_chars(tokens - self.tokens)
            if self.end < len(self.haystack):
                stop = max(self.end + 1, bisect.bisect_left(offsets, offsets[self.end] + want))
                stop = min(stop, len(self.haystack))
                new = _spaced_counts(self.count, self.haystack.sentences[self.end : stop])
                self.counts.extend(new)
                self.end = stop
            elif self.start > 0:
                first = min(self.start - 1, bisect.bisect_right(offsets, offsets[self.start] - want) - 1)
                first = max(first, 0)
                new = _spaced_counts(self.count, self.haystack.sentences[first : self.start])
                self.counts[:0] = new
                self.start = first
            else:
                return False
            self.tokens += sum(new)
            if self.tokens:
                self.chars_per_token = (offsets[self.end] - offsets[self.start]) / self.tokens
        return True


def _check_depth(depth: tuple[float, float]) -> tuple[float, float]:
    low, high = depth
    if not 0.0 <= low < high <= 1.0:
        raise InputError(f"depth must be (low, high) with 0 <= low < high <= 1, got {depth!r}")
    return float(low), float(high)


class FactPlacementError(InputError):
    """No sentence boundary of the background puts the story's facts within the asked depth range."""


def _place_facts(
    boundaries: list[int], fact_counts: list[int], depth: tuple[float, float], draws: list[float]
) -> tuple[list[int], list[float]]:
    """Sentence boundaries for the facts (indices into `boundaries`, non-decreasing) and the facts' depths.

    `boundaries[g]` is the background tokens before boundary g. Facts keep story order, so all lie within [low,
    high] of the context iff the first starts at or after low * context tokens and the last ends by high * context
    tokens: iff the background tokens before every fact lie in [low * context, high * context - fact tokens]. The
    sorted `draws` (in [0, 1)) spread the facts over that span, each at the boundary nearest its draw.
    """
    low, high = depth
    facts_tokens = sum(fact_counts)
    context_tokens = boundaries[-1] + facts_tokens
    first, last = low * context_tokens, high * context_tokens - facts_tokens
    lo = bisect.bisect_left(boundaries, first)
    hi = bisect.bisect_right(boundaries, last) - 1
    if lo > hi:
        raise FactPlacementError(
            f"no sentence boundary puts {facts_tokens} fact tokens within depth {depth} of a {context_tokens}-token "
            "context: widen the depth range or use a longer sample"
        )
    gaps = []
    for draw in draws:
        wanted = first + draw * (last - first)
        g = min(bisect.bisect_left(boundaries, wanted, lo, hi + 1), hi)
        if g > lo and wanted - boundaries[g - 1] <= boundaries[g] - wanted:
            g -= 1
        gaps.append(g)
    tokens_before = itertools.accumulate([0, *fact_counts[:-1]])  # of the facts before each fact
    starts = [boundaries[g] + before for g, before in zip(gaps, tokens_before, strict=True)]
    depths = [start / context_tokens if context_tokens else 0.0 for start in starts]
    return gaps, depths


def _assemble(facts: tuple[str, ...], gaps: list[int], background: Iterable[str]) -> str:
    """The context: background sentences with each fact inserted before sentence gaps[i] (or at the end)."""
    pieces = []
    fact_index = 0
    for g, sentence in enumerate(itertools.chain(background, [None])):
        while fact_index < len(facts) and gaps[fact_index] == g:
            pieces.append(facts[fact_index])
            fact_index += 1
        if sentence is not None:
            pieces.append(sentence)
    return " ".join(pieces)


def _capped_fact_range(task: str, length: int) -> tuple[int, int]:
    low, high = DEFAULT_NUM_FACTS[task]
    if length == 0:
        return low, high
    return low, max(low, min(high, length // _TOKENS_PER_FACT_CAP))


def build_sample(
    task: str,
    length: int | str,
    tokenizer: Any,
    haystack: Haystack | None,
    seed: int,
    depth: tuple[float, float] = (0.0, 1.0),
    num_facts: int | tuple[int, int] | None = None,
) -> BabilongSample:
    """One sample of `task` with `length` tokens (see `parse_length`) of `tokenizer`, facts hidden in `haystack`.

    The same arguments always give the same sample. `tokenizer` is a Hugging Face tokenizer or a `list[str] ->
    list[int]` token counter; `haystack` may be None for length 0. Facts lie within `depth` (fractions of the
    context's tokens). `num_facts` as in `make_story`; None draws from `DEFAULT_NUM_FACTS[task]` capped at one fact
    per 10 tokens of length.

    Raises ValueError if the haystack has fewer tokens than the background needs, if the story and question alone
    exceed the length, or if no sentence boundary keeps the facts within `depth`.
    """
    target = parse_length(length)
    count = token_counter(tokenizer)
    depth = _check_depth(depth)
    _check_task(task)
    story = make_story(task, seed, _capped_fact_range(task, target) if num_facts is None else num_facts)
    fact_counts = _spaced_counts(count, story.facts)
    question_tokens = _spaced_counts(count, [story.question])[0]
    facts_tokens = sum(fact_counts)
    rng = random.Random(f"babilong/{task}/placement/{seed}")
    draws = sorted(rng.random() for _ in story.facts)

    def make_sample(
        context: str, depths: list[float], num_tokens: int, passage: _Passage | None, n: int
    ) -> BabilongSample:
        return BabilongSample(
            input=context,
            question=story.question,
            target=story.answer,
            task=task,
            length=target,
            num_tokens=num_tokens,
            seed=seed,
            facts=list(story.facts),
            supporting_facts=list(story.supporting_facts),
            fact_depths=depths,
            depth_range=depth,
            background_start=passage.start if passage is not None else None,
            background_sentences=n,
        )

    if target == 0:
        if depth != (0.0, 1.0):  # the story is the whole context: no background to place it in
            raise InputError(
                f"a 0k sample is its story alone, so its facts cannot lie within depth {depth}: leave 0k out of the "
                "lengths or keep the whole depth range"
            )
        gaps, depths = _place_facts([0], fact_counts, depth, draws)
        context = _assemble(story.facts, gaps, [])
        num_tokens = _counts(count, [join_context_and_question(context, story.question)])[0]
        return make_sample(context, depths, num_tokens, None, 0)

    budget = target - facts_tokens - question_tokens  # tokens left for background sentences
    if budget < 0:
        raise InputError(
            f"the {task} story ({len(story.facts)} facts, {facts_tokens} tokens) and question ({question_tokens} "
            f"tokens) exceed the {target}-token length: use fewer facts or a longer length"
        )
    if haystack is None or len(haystack) == 0:
        raise InputError(f"a {target}-token sample needs background text: pass a haystack")

    probe = haystack.sentences[:_PROBE_SENTENCES]
    chars_per_token = haystack.char_offsets[len(probe)] / max(1, sum(_spaced_counts(count, probe)))
    # Start where the passage likely fits before the haystack ends; _Passage.grow extends backwards if it does not.
    latest_start = bisect.bisect_right(haystack.char_offsets, haystack.num_chars - budget * chars_per_token) - 1
    passage = _Passage(haystack, count, rng.randint(0, max(0, min(latest_start, len(haystack) - 1))), chars_per_token)

    best: BabilongSample | None = None
    correction = 0  # tokens of the joined sample minus the sum of its pieces' counts, from the previous round
    for _ in range(_MAX_FIT_ROUNDS):
        wanted = budget - correction
        if not passage.grow(wanted + 1) and passage.tokens < budget:
            raise InputError(
                f"haystack too short: a {target}-token {task} sample needs {budget} background tokens, but the "
                f"haystack has {passage.tokens} tokens in {len(haystack)} sentences"
            )
        boundaries = [0, *itertools.accumulate(passage.counts)]
        n = max(0, bisect.bisect_right(boundaries, wanted) - 1)
        gaps, depths = _place_facts(boundaries[: n + 1], fact_counts, depth, draws)
        background = haystack.sentences[passage.start : passage.start + n]
        context = _assemble(story.facts, gaps, background)
        num_tokens = _counts(count, [join_context_and_question(context, story.question)])[0]
        if num_tokens <= target and (best is None or num_tokens > best.num_tokens):
            best = make_sample(context, depths, num_tokens, passage, n)
        next_sentence = passage.counts[n] if n < len(passage.counts) else None
        if num_tokens <= target and (next_sentence is None or num_tokens + next_sentence > target):
            return best
        new_correction = num_tokens - (boundaries[n] + facts_tokens + question_tokens)
        if new_correction == correction:
            break
        correction = new_correction
    if best is None:
        raise InputError(f"could not fit the {task} story, question and background into {target} tokens")
    return best


def build_dataset(
    task: str,
    length: int | str,
    num_samples: int,
    tokenizer: Any,
    haystack: Haystack | None,
    seed: int = 0,
    depth: tuple[float, float] = (0.0, 1.0),
    num_facts: int | tuple[int, int] | None = None,
) -> list[BabilongSample]:
    """`num_samples` samples of `build_sample`, deterministic in `seed`; each sample's own seed is in its metadata
    (`build_sample` with it rebuilds the sample), and the first k samples do not depend on `num_samples`."""
    count = token_counter(tokenizer)
    # 53-bit seeds: distinct in practice for any dataset size, and exact as JSON numbers in every reader.
    seeds = random.Random(f"babilong/{task}/dataset/{seed}")
    return [
        build_sample(task, length, count, haystack, seeds.getrandbits(53), depth, num_facts) for _ in range(num_samples)
    ]


# ---------------------------------------------------------------------------------------------------- files


def save_babilong(samples: Iterable[BabilongSample | Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write samples in the public BABILong layout: a JSON array of objects with input, question, target and the
    metadata, or JSON lines if `path` ends in .jsonl. Atomic (`rmt.files.write_atomic`): the file is complete or
    untouched, with the permissions an ordinary file gets (the umask's). Returns the path."""
    from rmt.files import write_atomic

    path = Path(path)
    records = [(s if isinstance(s, BabilongSample) else BabilongSample.from_dict(s)).to_dict() for s in samples]
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    else:
        text = "[" + ", ".join(json.dumps(record, ensure_ascii=False) for record in records) + "]\n"
    write_atomic(path, text)
    return path


def _json_lines(text: str, path: Path) -> list[Any]:
    """The values of a JSON-lines text; a line that is not JSON is named by its number in the file (json counts the
    lines of the one line it is given)."""
    values = []
    # Lines end at "\n" alone: splitlines() would also cut at U+2028, U+2029 or U+0085 inside a string.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: line {number} is not JSON ({error.msg} at column {error.colno})") from error
    return values


def load_babilong(path: str | os.PathLike) -> list[BabilongSample]:
    """Read a BABILong file: a JSON array of objects (the public files, `save_babilong`) or JSON lines, in UTF-8
    (with or without a byte order mark). Every record needs input, question and target, as text; other keys are kept
    (metadata fields, or `extra`). Raises InputError naming the file, and the record and field where there is one,
    for a file with no records, a record that is not an object or lacks a field or whose field is not text, metadata
    that evaluation could not read (`metadata_problem`), and a JSON object of sample lists keyed by length or task
    (one file holds one task and length)."""
    path = Path(path)
    text = read_text_file(path)  # without the byte order mark of files saved by Windows tools (json.loads refuses it)
    if not text.strip():
        raise InputError(f"{path} has no records")
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = _json_object(text, path)
            if records is None:
                records = _json_lines(text, path)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not a JSON array or JSON lines ({error})") from error
    if not records:
        raise InputError(f"{path} has no records")
    samples = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(f"{path}: record {i} is a {type(record).__name__}, not an object")
        missing = _missing_fields(record)
        if missing:
            fields_named = ", ".join(missing)
            raise InputError(f"{path}: record {i} lacks field(s) {fields_named} (BABILong records need {_NEEDED})")
        for name in PUBLIC_FIELDS:
            if not isinstance(record[name], str):
                value = record[name]
                what = "null" if value is None else f"a {type(value).__name__} ({value!r:.40}), not text"
                raise InputError(f"{path}: record {i}: the field {name!r} is {what}")
        sample = BabilongSample.from_dict(record)
        problem = metadata_problem(sample)
        if problem is not None:
            raise InputError(f"{path}: record {i}: {problem}")
        samples.append(sample)
    return samples


def check_file_cell(samples: Sequence[BabilongSample], task: str, length: int | str, path: str | os.PathLike) -> None:
    """Refuse samples of a file that the public layout (`babilong_file`) puts at `task` and `length` whose metadata
    says otherwise (a qa5 sample in data/qa1/, a 1k sample in 4k.json): its results would be reported under the wrong
    task or length. Public files without metadata pass."""
    tokens = parse_length(length)
    for i, sample in enumerate(samples):
        if sample.task is not None and sample.task != task:
            raise InputError(f"{path}: record {i} is a {sample.task} sample (its field 'task'), in {task}'s folder")
        if sample.length is not None and sample.length != tokens:
            raise InputError(
                f"{path}: record {i} was built for {length_name(sample.length)} tokens (its field 'length'), in "
                f"{length_name(tokens)}'s file"
            )


def metadata_problem(sample: BabilongSample) -> str | None:
    """What is wrong with a sample's metadata (read from a file: evaluation reads the facts' depths and supporting
    facts), or None: each field absent or of its type, the supporting facts indices of its facts and depths."""

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    for name in ("length", "num_tokens", "seed", "background_start", "background_sentences"):
        value = getattr(sample, name)
        if value is not None and not whole(value):
            return f"the field {name!r} is {value!r}, not a whole number"
    if sample.task is not None and not isinstance(sample.task, str):
        return f"the field 'task' is {sample.task!r}, not text"
    if sample.facts is not None and not (
        isinstance(sample.facts, list) and all(isinstance(fact, str) for fact in sample.facts)
    ):
        return "the field 'facts' is not a list of texts"
    depths = sample.fact_depths
    if depths is not None and not (isinstance(depths, list) and all(number(d) and 0 <= d <= 1 for d in depths)):
        return "the field 'fact_depths' is not a list of fractions from 0 to 1"
    span = sample.depth_range
    if span is not None and not (
        isinstance(span, tuple) and len(span) == 2 and all(number(d) for d in span) and 0 <= span[0] < span[1] <= 1
    ):
        shown = list(span) if isinstance(span, tuple) else span
        return f"the field 'depth_range' is {shown!r}, not two fractions low < high from 0 to 1"
    if sample.facts is not None and depths is not None and len(depths) != len(sample.facts):
        return f"the field 'fact_depths' has {len(depths)} depths for {len(sample.facts)} facts"
    supporting = sample.supporting_facts
    if supporting is not None:
        known = [len(x) for x in (sample.facts, depths) if x is not None]
        if not (isinstance(supporting, list) and all(whole(k) and k >= 0 for k in supporting)):
            return "the field 'supporting_facts' is not a list of fact indices"
        if known and max(supporting, default=-1) >= min(known):
            return f"the field 'supporting_facts' names fact {max(supporting)} of {min(known)}"
    return None


def _json_object(text: str, path: Path) -> list[Any] | None:
    """The records of a file that is one JSON object: [it] if it is a record, None if it is not one JSON value (JSON
    lines); an InputError if it is an object of sample lists keyed by length or task."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return None  # several lines of objects, read as JSON lines
    if any(name in whole for name in PUBLIC_FIELDS):
        return [whole]
    keys = sorted(whole)
    shown = ", ".join(map(repr, keys[:8])) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
    raise InputError(
        f"{path} is a JSON object with the keys {shown}, not a list of samples: it looks nested per length (or "
        "task), one list per key; save each list as its own file (the public layout, data/<task>/<length>.json)"
    )


# ---------------------------------------------------------------------------------------------------- scoring


_ECHO_MARKERS = ("<context>", "<example>")  # where a model that starts repeating its prompt's layout is cut


def answer_is_correct(output: str, target: str, question: str = "", labels: Iterable[str] | None = None) -> bool:
    """Whether a generated `output` answers `target`, as the public BABILong benchmark decides it.

    The output is lower-cased and cut at its first '.' (and where it starts a "<context>" or "<example>" block).
    With `labels` (the task's answers, `answer_labels(task)`; the target counts as one), the answers that occur in
    that text, less those the question names, must be exactly {target}: a list of rooms or a hedge between two is
    wrong. Without labels (answers of an open set), the target must occur in that text. Matching is by substring,
    as the benchmark's: "officer" contains "office". An empty target is never correct."""
    target = target.strip().lower()
    if not target:
        return False
    text = output.lower().split(".", maxsplit=1)[0]
    for marker in _ECHO_MARKERS:
        text = text.split(marker, maxsplit=1)[0]
    if labels is None:
        return target in text
    answers = {label.strip().lower() for label in labels} | {target}
    named = {answer for answer in answers if answer in question.lower()}
    return {answer for answer in answers if answer in text} - named == {target}
