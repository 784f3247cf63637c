"""Tests of the BABILong-style benchmark builder (rmt/data/babilong.py) and its background text (rmt/data/haystack.py).

Nothing is downloaded: the background is generated here, token counts come from a word counter, from a tiny
WordLevel Hugging Face tokenizer built here, and from a counter whose counts do not add up across texts. Answers are
checked by a small interpreter of bAbI facts written for these tests, independent of the module's simulator.

Run: PYTHONPATH=. .venv/bin/pytest -q tests/test_babilong.py
"""

from __future__ import annotations

import collections
import json
import random
import re

import pytest

from rmt.data.babilong import (
    LENGTH_NAMES,
    TASKS,
    BabilongSample,
    answer_is_correct,
    answer_labels,
    babilong_file,
    build_dataset,
    build_sample,
    length_name,
    load_babilong,
    make_story,
    parse_length,
    parse_num_facts,
    save_babilong,
    token_counter,
)
from rmt.data.haystack import (
    CUT_CHARS,
    LONG_SENTENCE_CHARS,
    SNIFF_BYTES,
    Haystack,
    check_text_file,
    load_haystack,
    mentions_haystack,
    split_sentences,
)
from rmt.errors import InputError

# ------------------------------------------------------------------------------------------------ background

_WORDS = (
    "river lantern quietly window morning harbour letters walked slowly under bright copper evening rain "
    "stranger carriage remembered music along distant hills silver candle whispered orchard bridge winter "
    "tailor laughed across narrow street sailor"
).split()


def background_sentences(count: int, seed: int = 0) -> list[str]:
    """Sentences of 4-16 words from a fixed word list (no bAbI word), each at least 16 characters."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words = rng.choices(_WORDS, k=rng.randint(4, 16))
        sentences.append(" ".join(words).capitalize() + rng.choice(".!?"))
    return sentences


def background_text(sentences: list[str]) -> str:
    """The sentences as a book would print them: wrapped lines and a paragraph break every 7 sentences."""
    paragraphs = [sentences[i : i + 7] for i in range(0, len(sentences), 7)]
    return "\n\n".join(
        "\n".join(" ".join(paragraph[j : j + 2]) for j in range(0, len(paragraph), 2)) for paragraph in paragraphs
    )


SENTENCES = background_sentences(800)
HAYSTACK = Haystack.from_text(background_text(SENTENCES), source="test background")


def count_words(texts: list[str]) -> list[int]:
    return [len(text.split()) for text in texts]


def count_words_plus_one(texts: list[str]) -> list[int]:
    """Like a tokenizer that always adds a start token: counts of pieces overshoot the count of their join."""
    return [len(text.split()) + 1 for text in texts]


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """A WordLevel Hugging Face tokenizer (words and punctuation), saved and loaded back like any pretrained one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    words = {word for sentence in SENTENCES for word, _ in splitter.pre_tokenize_str(sentence)}
    vocab = {word: i for i, word in enumerate(["[UNK]", *sorted(words)])}  # bAbI words are [UNK]: still one token
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = splitter
    directory = tmp_path_factory.mktemp("wordlevel")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


# ------------------------------------------------------------------------------------------------ interpreter

_MOVE = re.compile(r"(\w+) (?:went|journeyed|travelled|moved|went back) to the (\w+)\.")
_GRAB = re.compile(r"(\w+) (?:got|grabbed|picked up|took) the (\w+)\.")
_DROP = re.compile(r"(\w+) (?:dropped|discarded|put down) the (\w+)\.")
_GIVE = re.compile(r"(\w+) (?:gave|passed|handed) the (\w+) to (\w+)\.")
_RELATION = re.compile(r"The (\w+) is (north|south|east|west) of the (\w+)\.")
_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


def interpret(facts, question: str, check_consistency: bool = True) -> str:
    """The one answer the facts give to the question; AssertionError if there is none or several, or (with
    `check_consistency`) if the facts describe an impossible world."""
    person_room, holder, object_room, trails, gives, relations = {}, {}, {}, {}, [], set()

    def put(obj, room):
        if room is None:
            return
        object_room[obj] = room
        if not trails.get(obj) or trails[obj][-1] != room:
            trails.setdefault(obj, []).append(room)

    for fact in facts:
        if match := _MOVE.fullmatch(fact):
            person, room = match.groups()
            person_room[person] = room
            for obj in [obj for obj, who in holder.items() if who == person]:
                put(obj, room)
        elif match := _GRAB.fullmatch(fact):
            person, obj = match.groups()
            if check_consistency:
                assert obj not in holder, f"{fact} while {holder.get(obj)} holds it"
                assert (
                    None in (person_room.get(person), object_room.get(obj)) or person_room[person] == object_room[obj]
                )
            if holder.get(obj) not in (None, person):
                # (supporting facts alone) it left its holder by a fact that is not among them: where, they do not say
                object_room.pop(obj, None)
                trails.setdefault(obj, []).append(None)
            holder[obj] = person
            put(obj, person_room.get(person))
        elif match := _DROP.fullmatch(fact):
            person, obj = match.groups()
            assert not check_consistency or holder.get(obj) == person, f"{fact} but {holder.get(obj)} holds it"
            holder.pop(obj, None)
            put(obj, person_room.get(person))
        elif match := _GIVE.fullmatch(fact):
            giver, obj, receiver = match.groups()
            if check_consistency:
                assert holder.get(obj) == giver, f"{fact} but {holder.get(obj)} holds it"
                rooms = (person_room.get(giver), person_room.get(receiver))
                assert None in rooms or rooms[0] == rooms[1], f"{fact} across rooms {rooms}"
            holder[obj] = receiver
            gives.append((giver, obj, receiver))
        elif match := _RELATION.fullmatch(fact):
            a, direction, b = match.groups()
            relations |= {(a, direction, b), (b, _OPPOSITE[direction], a)}
        else:
            raise AssertionError(f"not a bAbI fact: {fact!r}")

    def one(answers):
        assert len(answers) == 1, f"{question!r} has answers {answers}"
        return answers.pop()

    if match := re.fullmatch(r"Where is the (\w+)\?", question):
        return one({object_room[match[1]]} if match[1] in object_room else set())
    if match := re.fullmatch(r"Where is (\w+)\?", question):
        return one({person_room[match[1]]} if match[1] in person_room else set())
    if match := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
        trail = trails.get(match[1], [])
        assert trail.count(match[2]) == 1, f"{question!r}: trail {trail}"
        return one({trail[trail.index(match[2]) - 1]} if trail.index(match[2]) > 0 else set())
    if match := re.fullmatch(r"What is (\w+) of the (\w+)\?", question):
        return one({a for a, direction, b in relations if (direction, b) == (match[1], match[2])})
    if match := re.fullmatch(r"What is the (\w+) (\w+) of\?", question):
        return one({b for a, direction, b in relations if (a, direction) == (match[1], match[2])})
    if match := re.fullmatch(r"Who gave the (\w+) to (\w+)\?", question):
        return one({g for g, o, r in gives if (o, r) == (match[1], match[2])})
    if match := re.fullmatch(r"What did (\w+) give to (\w+)\?", question):
        return one({o for g, o, r in gives if (g, r) == (match[1], match[2])})
    if match := re.fullmatch(r"Who gave the (\w+)\?", question):
        return one({g for g, o, r in gives if o == match[1]})
    if match := re.fullmatch(r"Who received the (\w+)\?", question):
        return one({r for g, o, r in gives if o == match[1]})
    if match := re.fullmatch(r"Who did (\w+) give the (\w+) to\?", question):
        return one({r for g, o, r in gives if (g, o) == (match[1], match[2])})
    raise AssertionError(f"not a bAbI question: {question!r}")


@pytest.mark.parametrize(
    "facts, question, answer",
    [
        (
            ["Mary moved to the bathroom.", "John went to the hallway.", "Mary travelled to the office."],
            "Where is Mary?",
            "office",
        ),
        (
            ["John went to the kitchen.", "John picked up the milk.", "John moved to the garden."],
            "Where is the milk?",
            "garden",
        ),
        (
            ["John went to the kitchen.", "John got the milk.", "John dropped the milk.", "John went to the office."],
            "Where is the milk?",
            "kitchen",
        ),
        (
            [
                "Daniel went to the bedroom.",
                "Daniel took the apple.",
                "Daniel went to the office.",
                "Daniel went to the garden.",
            ],
            "Where was the apple before the garden?",
            "office",
        ),
        (
            ["The kitchen is north of the garden.", "The office is east of the garden."],
            "What is the garden south of?",
            "kitchen",
        ),
        (
            ["The kitchen is north of the garden.", "The office is east of the garden."],
            "What is west of the office?",
            "garden",
        ),
        (
            ["Fred got the milk.", "Fred gave the milk to Jeff.", "Jeff handed the milk to Bill."],
            "Who gave the milk to Bill?",
            "Jeff",
        ),
        (
            ["Fred got the milk.", "Fred gave the milk to Jeff.", "Jeff handed the milk to Bill."],
            "What did Jeff give to Bill?",
            "milk",
        ),
        (
            ["Fred got the milk.", "Fred gave the milk to Jeff.", "Jeff handed the milk to Bill."],
            "Who did Fred give the milk to?",
            "Jeff",
        ),
    ],
)
def test_interpreter_on_handwritten_stories(facts, question, answer):
    assert interpret(facts, question) == answer


def test_interpreter_rejects_ambiguous_questions_and_impossible_worlds():
    with pytest.raises(AssertionError, match="has answers"):
        interpret(
            ["Fred got the milk.", "Fred gave the milk to Jeff.", "Jeff gave the milk to Bill."],
            "Who received the milk?",
        )
    with pytest.raises(AssertionError, match="holds it"):
        interpret(["Fred got the milk.", "Bill gave the milk to Jeff."], "Who received the milk?")


# ------------------------------------------------------------------------------------------------ stories


STORY_CASES = [(task, seed, None) for task in TASKS for seed in range(40)] + [
    ("qa1", 0, 1),
    ("qa2", 0, 2),
    ("qa2", 1, 68),
    ("qa3", 0, 3),
    ("qa3", 1, 32),
    ("qa5", 0, 2),
    ("qa5", 1, 126),
]


@pytest.mark.parametrize("task", TASKS)
def test_story_answers_agree_with_an_independent_interpreter(task):
    for case_task, seed, num_facts in STORY_CASES:
        if case_task != task:
            continue
        story = make_story(task, seed, num_facts)
        assert num_facts is None or len(story.facts) == num_facts
        assert interpret(story.facts, story.question) == story.answer, story
        # The supporting facts alone give the same answer.
        supporting = [story.facts[i] for i in story.supporting_facts]
        assert interpret(supporting, story.question, check_consistency=False) == story.answer, story
        assert story.answer in answer_labels(task)


def test_facts_per_story_parse_as_a_count_or_a_range_the_tasks_allow():
    assert parse_num_facts("1", ["qa1"]) == 1
    assert parse_num_facts(" 2-10 ", ["qa1", "qa2"]) == (2, 10)
    for text, tasks, message in [
        ("x", ["qa1"], "facts per story 'x': give a count"),
        ("1-", ["qa1"], "facts per story '1-': give a count"),
        ("5-3", ["qa1"], "facts per story 5-3: the range is empty"),
        ("1", ["qa1", "qa2"], "qa2 stories need at least 2 facts"),
        ("3", ["qa4"], "qa4 stories need exactly 2 facts"),
    ]:
        with pytest.raises(InputError, match=message):
            parse_num_facts(text, tasks)
    # One fact is the single-fact task: the supporting fact, no distractors.
    story = make_story("qa1", 3, parse_num_facts("1", ["qa1"]))
    assert len(story.facts) == 1 and story.supporting_facts == (0,)
    assert story.question == f"Where is {story.facts[0].split()[0]}?"


def test_story_is_a_pure_function_of_task_and_seed():
    for task in TASKS:
        assert make_story(task, 7) == make_story(task, 7)
        assert len({make_story(task, seed) for seed in range(10)}) == 10
    assert make_story("qa1", 7) != make_story("qa2", 7)


def test_story_fact_counts_follow_the_requested_range():
    assert {len(make_story("qa1", seed).facts) for seed in range(200)} == set(range(2, 11))
    assert {len(make_story("qa2", seed, (5, 6)).facts) for seed in range(50)} == {5, 6}
    with pytest.raises(ValueError, match="qa4 stories need exactly 2"):
        make_story("qa4", 0, 3)
    with pytest.raises(ValueError, match="at least 3"):
        make_story("qa3", 0, 2)


def test_answer_labels():
    assert answer_labels("qa1") == ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"]
    assert answer_labels("qa4") == answer_labels("qa1")
    assert answer_labels("qa5") == ["Bill", "Fred", "Jeff", "Mary", "apple", "football", "milk"]
    with pytest.raises(ValueError, match="qa9"):
        answer_labels("qa9")


# ------------------------------------------------------------------------------------------------ samples


def test_sample_is_deterministic_and_seed_dependent():
    first = build_sample("qa2", 600, count_words, HAYSTACK, seed=3)
    assert build_sample("qa2", 600, count_words, HAYSTACK, seed=3) == first
    assert build_sample("qa2", 600, count_words, HAYSTACK, seed=4).input != first.input


@pytest.mark.parametrize("task", TASKS)
def test_facts_in_story_order_and_question_last(task):
    for seed in range(3):
        sample = build_sample(task, 800, count_words, HAYSTACK, seed=seed)
        position = 0
        for fact in sample.facts:
            found = sample.input.find(fact, position)
            assert found >= 0, f"{fact!r} missing or out of order"
            position = found + len(fact)
        assert sample.full_text == f"{sample.input} {sample.question}"
        assert sample.question not in sample.input
        assert interpret(sample.facts, sample.question) == sample.target


@pytest.mark.parametrize("counter_name", ["words", "hf_tokenizer", "non_additive"])
@pytest.mark.parametrize("length", [150, 700, 2500])
def test_length_within_one_sentence_of_target(counter_name, length, hf_tokenizer):
    if counter_name == "hf_tokenizer":
        tokenizer = hf_tokenizer

        def recount(text):
            return len(hf_tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        tokenizer = count_words if counter_name == "words" else count_words_plus_one

        def recount(text):
            return tokenizer([text])[0]

    longest_sentence = max(recount(" " + sentence) for sentence in HAYSTACK.sentences)
    for task in ("qa1", "qa5"):
        sample = build_sample(task, length, tokenizer, HAYSTACK, seed=length)
        tokens = recount(sample.full_text)
        assert tokens == sample.num_tokens
        assert length - longest_sentence < tokens <= length, (task, tokens)
        assert sample.background_sentences > 0


@pytest.mark.parametrize("depth", [(0.0, 0.3), (0.4, 0.6), (0.75, 1.0)])
def test_facts_lie_within_the_depth_range(depth):
    low, high = depth
    for seed in range(4):
        sample = build_sample("qa3", 2000, count_words, HAYSTACK, seed=seed, depth=depth)
        context_words = len(sample.input.split())
        position = 0
        for fact, recorded_depth in zip(sample.facts, sample.fact_depths, strict=True):
            found = sample.input.index(fact, position)
            start = len(sample.input[:found].split())
            assert low * context_words <= start and start + len(fact.split()) <= high * context_words
            assert recorded_depth == pytest.approx(start / context_words)
            position = found + len(fact)
        assert sample.depth_range == depth
        assert sample.supporting_depths == [sample.fact_depths[i] for i in sample.supporting_facts]


def test_too_narrow_depth_range_raises():
    with pytest.raises(ValueError, match="depth"):
        build_sample("qa5", 300, count_words, HAYSTACK, seed=0, depth=(0.5, 0.52), num_facts=30)
    with pytest.raises(ValueError, match="0 <= low < high <= 1"):
        build_sample("qa1", 300, count_words, HAYSTACK, seed=0, depth=(0.6, 0.4))
    # A 0k sample is its story alone: a depth range other than the whole is refused as such (it was refused as a
    # range too narrow to "widen", which no range but the whole could satisfy).
    with pytest.raises(InputError, match=r"0k sample is its story alone.*leave 0k out"):
        build_sample("qa1", 0, count_words, None, seed=0, depth=(0.3, 0.9))
    assert build_sample("qa1", 0, count_words, None, seed=0, depth=(0.0, 1.0)).num_tokens > 0


def test_length_zero_is_the_facts_alone():
    sample = build_sample("qa1", "0k", count_words, None, seed=5)
    assert sample.input == " ".join(sample.facts)
    assert sample.background_sentences == 0
    assert sample.num_tokens == len(sample.full_text.split())


def test_haystack_too_short_raises():
    small = Haystack(tuple(SENTENCES[:20]))
    with pytest.raises(ValueError, match=r"haystack too short: a 5000-token qa1 sample needs \d+ background tokens"):
        build_sample("qa1", 5000, count_words, small, seed=0)


def test_story_longer_than_the_length_raises():
    with pytest.raises(ValueError, match="exceed the 50-token length"):
        build_sample("qa2", 50, count_words, HAYSTACK, seed=0, num_facts=30)


def test_dataset_is_deterministic_prefix_stable_and_rebuildable():
    three = build_dataset("qa4", "1k", 3, count_words, HAYSTACK, seed=1)
    assert build_dataset("qa4", 1000, 5, count_words, HAYSTACK, seed=1)[:3] == three
    assert build_dataset("qa4", 1000, 3, count_words, HAYSTACK, seed=2) != three
    assert len({sample.seed for sample in three}) == 3
    assert build_sample("qa4", 1000, count_words, HAYSTACK, seed=three[1].seed) == three[1]


def test_tokens_are_counted_in_batches():
    calls = []

    def recording_counter(texts):
        calls.append(len(texts))
        return count_words(texts)

    sample = build_sample("qa2", 2500, recording_counter, HAYSTACK, seed=0)
    # Facts, question, a probe of the haystack, one or two batches of background, and the joined sample: not one call
    # per sentence, and not many more sentences counted than used.
    assert len(calls) <= 6
    assert sum(calls) <= 64 + sample.num_facts + 1 + 1.2 * sample.background_sentences + 1


def test_token_counter_accepts_tokenizers_and_callables(hf_tokenizer):
    assert token_counter(hf_tokenizer)(["Mary moved to the bathroom.", "river rain"]) == [6, 2]
    assert token_counter(count_words) is count_words
    with pytest.raises(TypeError):
        token_counter(42)


# ------------------------------------------------------------------------------------------------ lengths


@pytest.mark.parametrize(
    "length, tokens",
    [
        ("0k", 0),
        ("4k", 4000),
        ("128k", 128_000),
        ("1M", 1_000_000),
        ("10M", 10_000_000),
        (" 2k ", 2000),
        ("4096", 4096),
        (512, 512),
    ],
)
def test_parse_length(length, tokens):
    assert parse_length(length) == tokens


@pytest.mark.parametrize("bad", ["4kb", "1.5k", "-1", "", "k", -5, True, None])
def test_parse_length_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad)) + ".*0k, 1k"):
        parse_length(bad)


def test_length_names_round_trip():
    assert [length_name(parse_length(name)) for name in LENGTH_NAMES] == list(LENGTH_NAMES)
    assert length_name(4096) == "4096"
    assert babilong_file("root", "qa2", 4000).as_posix() == "root/data/qa2/4k.json"


# ------------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".JSONL"])
def test_save_and_load_round_trip(tmp_path, suffix):
    """Also with line and paragraph separators (U+2028, U+2029, U+0085) inside a field: JSON lines keep them raw, and
    a reader that cut lines at them too (str.splitlines) broke the record."""
    samples = build_dataset("qa5", 400, 3, count_words, HAYSTACK, seed=0, depth=(0.1, 0.9))
    samples[0].extra["model_output"] = "Fred.\u2028Then\u2029more\x85."
    path = save_babilong(samples, tmp_path / "data" / "qa5" / f"400{suffix}")
    assert load_babilong(path) == samples
    assert [path.name] == [p.name for p in path.parent.iterdir()]  # no temporary file left
    assert path.read_text(encoding="utf-8").startswith("[") == (suffix == ".json")  # .JSONL is JSON lines too


def test_load_reads_public_layout(tmp_path):
    public = [
        {
            "input": "Mary moved to the bathroom. John went to the hallway.",
            "question": "Where is Mary?",
            "target": "bathroom",
        },
        {"input": "Daniel went to the office.", "question": "Where is Daniel?", "target": "office", "note": "kept"},
    ]
    path = tmp_path / "0k.json"
    path.write_text(json.dumps(public))
    samples = load_babilong(path)
    assert [(s.input, s.question, s.target) for s in samples] == [
        (r["input"], r["question"], r["target"]) for r in public
    ]
    assert samples[0].task is None and samples[1].extra == {"note": "kept"}
    save_babilong(samples, tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == public


def test_load_names_missing_fields_and_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(
        json.dumps({"input": "x", "question": "Where is Mary?", "target": "office"})
        + "\n"
        + json.dumps({"input": "x", "question": "q"})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"broken\.jsonl: record 1 lacks field\(s\) target"):
        load_babilong(path)


PUBLIC_RECORD = {"input": "Mary moved to the bathroom.", "question": "Where is Mary?", "target": "bathroom"}


@pytest.mark.parametrize(
    "field, value, said",
    [("target", None, "null"), ("input", 3, r"a int \(3\), not text"), ("question", ["q"], "a list")],
)
def test_load_refuses_a_field_that_is_not_text(tmp_path, field, value, said):
    path = tmp_path / "0k.json"
    path.write_text(json.dumps([PUBLIC_RECORD, {**PUBLIC_RECORD, field: value}]))
    with pytest.raises(InputError, match=rf"0k\.json: record 1: the field '{field}' is {said}"):
        load_babilong(path)


@pytest.mark.parametrize(
    "metadata, said",
    [
        (
            {"facts": ["a.", "b."], "fact_depths": [0.1, 0.5], "supporting_facts": [9]},
            "'supporting_facts' names fact 9 of 2",
        ),
        ({"fact_depths": ["x", 0.5]}, "'fact_depths' is not a list of fractions from 0 to 1"),
        ({"fact_depths": [1.5]}, "'fact_depths' is not a list of fractions"),
        ({"supporting_facts": "0"}, "'supporting_facts' is not a list of fact indices"),
        ({"length": "4k"}, "'length' is '4k', not a whole number"),
        ({"seed": True}, "'seed' is True, not a whole number"),
        ({"facts": "Mary went."}, "'facts' is not a list of texts"),
        ({"depth_range": 0.5}, r"'depth_range' is 0.5, not two fractions low < high from 0 to 1"),
        ({"depth_range": [0.6, 0.4]}, r"'depth_range' is \[0.6, 0.4\], not two fractions"),
        ({"facts": ["a.", "b."], "fact_depths": [0.1]}, "'fact_depths' has 1 depths for 2 facts"),
    ],
)
def test_load_refuses_metadata_that_evaluation_could_not_read(tmp_path, metadata, said):
    """Evaluation reads a file's facts' depths and supporting facts: a bad one failed mid-run with a traceback
    (IndexError, TypeError), after the earlier cells were written."""
    path = tmp_path / "0k.json"
    path.write_text(json.dumps([PUBLIC_RECORD, {**PUBLIC_RECORD, **metadata}]))
    with pytest.raises(InputError, match=rf"0k\.json: record 1: the field {said}"):
        load_babilong(path)


def test_load_refuses_a_file_that_is_not_utf8_in_one_line(tmp_path):
    """read with its own read_text, a Latin-1 file ended in a bare UnicodeDecodeError (a traceback from rmt eval)."""
    path = tmp_path / "0k.json"
    path.write_bytes(json.dumps([{**PUBLIC_RECORD, "input": "caf\u00e9"}], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(InputError, match=r"0k\.json is not UTF-8 text: byte 0xe9 at offset"):
        load_babilong(path)


def test_load_reads_a_file_with_a_byte_order_mark(tmp_path):
    for name, text in (("bom.json", json.dumps([PUBLIC_RECORD])), ("bom.jsonl", json.dumps(PUBLIC_RECORD) + "\n")):
        (tmp_path / name).write_text(text, encoding="utf-8-sig")
        assert load_babilong(tmp_path / name)[0].target == "bathroom"


def test_load_says_a_file_is_nested_per_length(tmp_path):
    path = tmp_path / "qa1.json"
    path.write_text(json.dumps({"4k": [PUBLIC_RECORD], "8k": [PUBLIC_RECORD]}, indent=2))
    nested = r"qa1\.json is a JSON object with the keys '4k', '8k', not a list of samples: it looks nested per length"
    with pytest.raises(InputError, match=nested):
        load_babilong(path)
    path.write_text(json.dumps({"4k": [PUBLIC_RECORD]}))  # on one line: was read as one record lacking every field
    with pytest.raises(InputError, match="keys '4k', not a list of samples"):
        load_babilong(path)
    path.write_text(json.dumps(PUBLIC_RECORD))  # one record on one line is a JSON-lines file
    assert load_babilong(path)[0].target == "bathroom"


@pytest.mark.parametrize("text", ["", "\n \n", "[]", "[]\n"])
def test_load_refuses_a_file_with_no_records(tmp_path, text):
    path = tmp_path / "4k.json"
    path.write_text(text)
    with pytest.raises(InputError, match=r"4k\.json has no records"):
        load_babilong(path)


def test_failed_save_leaves_the_old_file(tmp_path):
    path = save_babilong([BabilongSample("context", "Where is Mary?", "office")], tmp_path / "qa1.json")
    before = path.read_text()
    unserializable = BabilongSample("context", "Where is John?", "garden", extra={"bad": object()})
    with pytest.raises(TypeError):
        save_babilong([BabilongSample("new", "Where is Mary?", "office"), unserializable], path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["qa1.json"]


# ------------------------------------------------------------------------------------------------ scoring


ROOMS = answer_labels("qa1")
QA5_ANSWERS = answer_labels("qa5")


@pytest.mark.parametrize(
    "output, target, question, labels, correct",
    [
        ("The milk is in the kitchen. Then it moved.", "kitchen", "Where is the milk?", ROOMS, True),
        ("The milk is in the office. Then the kitchen.", "kitchen", "Where is the milk?", ROOMS, False),
        ("THE MOST RECENT LOCATION OF MARY IS KITCHEN", "Kitchen", "Where is Mary?", ROOMS, True),
        # The first sentence ends at '.', not at a line break: an answer after a cue on its own line counts.
        ("\nkitchen", "kitchen", "Where is Mary?", ROOMS, True),
        (" The answer is:\n\nThe garden", "garden", "Where is Mary?", ROOMS, True),
        # The target must be the only answer of the task named: lists and hedges are wrong.
        (" bedroom office office office", "bedroom", "Where is Mary?", ROOMS, False),
        ("bathroom or kitchen", "kitchen", "Where is Mary?", ROOMS, False),
        ("kitchen, garden, office, hallway, bedroom, bathroom", "kitchen", "Where is Mary?", ROOMS, False),
        # Answers the question names are not candidates (qa3 asks about one room, qa5 about people).
        ("The kitchen, before the office", "kitchen", "Where was the milk before the office?", ROOMS, True),
        ("Jeff gave it to Mary", "Mary", "Who received the milk?", QA5_ANSWERS, False),
        ("Mary", "Mary", "Who did Jeff give the milk to?", QA5_ANSWERS, True),
        ("Fred", "fred", "Who gave the apple to Bill?", QA5_ANSWERS, True),
        # A model repeating its prompt's layout is cut where that starts.
        ("office <context> kitchen", "office", "Where is Mary?", ROOMS, True),
        # The target need not be one of the labels given (a public file's answer set may be larger).
        ("Daniel", "daniel", "Who gave the milk to Bill?", QA5_ANSWERS, True),
        # Without an answer set, the target must occur in the first sentence.
        ("It is a dog. Or a cat.", "dog", "What is it?", None, True),
        ("It is a cat. Or a dog.", "dog", "What is it?", None, False),
        ("anything", "", "Where is Mary?", ROOMS, False),
        ("", "kitchen", "Where is Mary?", ROOMS, False),
    ],
)
def test_answer_is_correct_as_the_public_benchmark(output, target, question, labels, correct):
    assert answer_is_correct(output, target, question, labels) is correct


# ------------------------------------------------------------------------------------------------ haystack


def test_split_sentences():
    text = (
        "Mr. Holmes  sat\ndown.  Dr. Watson met J. R. Smith in the U.S. Army! Was it raining?"
        "\n\nTitle\n\nIt rained e.g. hard."
    )
    assert split_sentences(text, min_chars=0) == [
        "Mr. Holmes sat down.",
        "Dr. Watson met J. R. Smith in the U.S. Army!",
        "Was it raining?",
        "Title",
        "It rained e.g. hard.",
    ]
    # The default drops fragments under 16 characters: "Was it raining?" and "Title".
    assert split_sentences(text) == [
        "Mr. Holmes sat down.",
        "Dr. Watson met J. R. Smith in the U.S. Army!",
        "It rained e.g. hard.",
    ]


def test_text_without_capitals_or_punctuation_still_splits_into_sentence_sized_pieces():
    """One lower-cased paragraph was one 'sentence', so a sample built from it held no background at all."""
    lowered = " ".join(SENTENCES[:200]).lower()
    assert len(lowered) > LONG_SENTENCE_CHARS
    pieces = split_sentences(lowered)
    assert pieces == [sentence.lower() for sentence in SENTENCES[:200]]
    words = " ".join(f"word{i}" for i in range(2000))  # no punctuation at all: cut at spaces
    cuts = split_sentences(words)
    assert " ".join(cuts) == words and all(len(cut) <= CUT_CHARS for cut in cuts) and len(cuts) > 1
    short = " ".join(SENTENCES[:3]).lower()  # under the limit: one sentence, as before
    assert split_sentences(short) == [short]
    sample = build_sample("qa1", 500, count_words, Haystack.from_text(lowered), seed=0)
    longest = max(count_words([" " + piece])[0] for piece in pieces)
    assert 500 - longest < sample.num_tokens <= 500 and sample.background_sentences > 0


def test_load_haystack_drops_a_byte_order_mark(tmp_path):
    book = tmp_path / "book.txt"
    book.write_bytes(b"\xef\xbb\xbf" + background_text(SENTENCES[:3]).encode())
    assert load_haystack(book).sentences == tuple(SENTENCES[:3])


def test_text_files_must_be_utf8(tmp_path):
    """A file read with replacement characters gave a haystack of noise; the first MiB is checked by
    check_text_file (a character cut at its end is fine), the whole file when it is read."""
    text = background_text(SENTENCES[:3])
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text(text, encoding="utf-16")
    with pytest.raises(InputError, match=r"utf16\.txt is not UTF-8 text: a NUL byte at offset 3 \(a binary file"):
        load_haystack(utf16)
    late = tmp_path / "late.txt"  # text, then a cp1252 quote past the first MiB
    head = ((text + " ") * (SNIFF_BYTES // len(text) + 1))[: SNIFF_BYTES - 1] + "\u00e9" * 8  # one across the MiB
    late.write_bytes(head.encode() + b"\x93quoted\x94")
    check_text_file(late, "late")
    with pytest.raises(InputError, match=f"late.txt is not UTF-8 text: byte 0x93 at offset {len(head.encode())} "):
        load_haystack(late)
    binary = tmp_path / "random.bin"
    binary.write_bytes(bytes(range(1, 256)) * 8)  # no NUL byte
    with pytest.raises(InputError, match="--haystack x is not UTF-8 text: byte 0x80 at offset 127"):
        check_text_file(binary, "--haystack x")


def test_background_splits_back_into_its_sentences():
    assert HAYSTACK.sentences == tuple(SENTENCES)


def test_load_haystack_keeps_provenance(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(background_text(SENTENCES[:10]))
    second.write_text(background_text(SENTENCES[10:25]))
    haystack = load_haystack([first, second])
    assert haystack.sentences == tuple(SENTENCES[:25])
    assert (haystack.source_of(9), haystack.source_of(10)) == (str(first), str(second))
    assert load_haystack(first).sentences == tuple(SENTENCES[:10])
    empty = tmp_path / "empty.txt"
    empty.write_text("Hi.\n\n")
    with pytest.raises(ValueError, match="no sentences"):
        load_haystack(empty)


def test_mentions_haystack_keeps_named_sentences_with_neighbours_and_swaps_the_names():
    sentences = [
        "The cat slept all day long.",
        "She walked into the Garden at noon.",
        "Then she read a book.",
        "Nothing happened for hours.",
        "It was quiet and grey outside.",
        "Mary sat in the kitchen.",  # names a room and a person of the stories: could read as a fact
        "The rain stopped at last.",
        "A letter came from the office that morning.",
        "He signed it.",
    ]
    haystack = Haystack(tuple(sentences), ("a", "b"), (0, 6))
    rooms = ("garden", "kitchen", "office", "bathroom")
    mentions = mentions_haystack(haystack, rooms, avoid=("Mary",), context=1, seed=3)
    kept = [0, 1, 2, 6, 7, 8]  # 5 names kitchen and Mary: neither a centre nor a neighbour
    assert len(mentions) == len(kept)
    named = re.compile(r"\b(?:garden|kitchen|office|bathroom)\b", re.I)
    for got, index in zip(mentions.sentences, kept, strict=True):
        assert named.sub("ROOM", got) == named.sub("ROOM", sentences[index])
    assert re.search(r"into the (Garden|Kitchen|Office|Bathroom) at", mentions.sentences[1])  # capital kept
    assert re.search(r"from the (garden|kitchen|office|bathroom) that", mentions.sentences[4])
    assert mentions.sources == ("a", "b") and mentions.source_starts == (0, 3)
    assert mentions_haystack(haystack, rooms, avoid=("Mary",), seed=3) == mentions
    many = Haystack(tuple(f"They met in the garden on day {i}." for i in range(400)))
    swapped = collections.Counter(named.search(s).group() for s in mentions_haystack(many, rooms).sentences)
    assert set(swapped) == set(rooms) and min(swapped.values()) > 60  # every room named, not only "garden"
    assert mentions_haystack(many, rooms, seed=1) != mentions_haystack(many, rooms, seed=2)  # the seed draws them
    with pytest.raises(InputError, match="names any of"):
        mentions_haystack(Haystack(tuple(sentences[2:5])), rooms)
