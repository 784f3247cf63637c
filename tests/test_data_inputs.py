"""Bad and awkward training data is refused with an error that names the file, record and field, as early as the data
allows, or read as meant: blank lines of text files, missing or empty fields, answers outside an encoder's labels,
empty files and byte order marks; and the generated BABILong source keeps its promise of facts before the last
segment."""

from __future__ import annotations

import json

import datasets
import pyarrow
import pytest
from conftest import background_text, word_tokenizer

from rmt.data.babilong import answer_labels
from rmt.data.babilong_source import BabilongSource
from rmt.data.collate import QACollator, TextCollator
from rmt.data.files import DatasetSource, load_records, record_shape, split_validation
from rmt.data.haystack import Haystack
from rmt.errors import InputError

RECORD = {"input": "Mary went to the kitchen.", "question": "Where is Mary?", "target": "kitchen"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


# ------------------------------------------------------------------------------------------------ text files


@pytest.mark.parametrize("streaming", [False, True])
def test_blank_lines_of_a_text_file_are_not_records(tmp_path, tokenizer, streaming):
    path = tmp_path / "lm.txt"
    path.write_text("the old man walked\n\n   \nthe river\n\t\n")
    records = load_records(path, streaming=streaming)
    assert [r["text"] for r in records] == ["the old man walked", "the river"]
    collate = TextCollator(tokenizer)
    assert collate(list(records)).input_ids.shape[0] == 2
    source = DatasetSource(records, collate, seed=0, metric="loss")
    for step in range(3):  # every batch draws from the two documents, none from a blank line
        assert source.train_batch(step, 2).input_ids.shape[0] == 2


def test_a_text_record_with_nothing_to_predict_is_named(tokenizer):
    with pytest.raises(InputError, match=r"text record 1 of the batch: the field 'text' is blank \(' '\)"):
        TextCollator(tokenizer)([{"text": "the old man"}, {"text": " "}])
    with pytest.raises(InputError, match="text record 0 of the batch: the field 'text' is empty"):
        TextCollator(tokenizer)([{"text": None}])


def test_a_byte_order_mark_is_not_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffthe old man\nthe river\n".encode())
    for streaming in (False, True):
        assert [r["text"] for r in load_records(path, streaming=streaming)] == ["the old man", "the river"]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + (json.dumps(RECORD) + "\n").encode())
    assert list(load_records(jsonl)) == [RECORD]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", ""),  # `datasets` raised a bare StopIteration
        ("blank.jsonl", "\n\n"),
        ("empty.json", "[]"),
        ("header.csv", "input,question,target\n"),
        ("empty.txt", ""),
        ("blank.txt", "\n  \n\n"),
        ("bom.txt", "\ufeff\n"),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
def test_a_file_with_no_records_is_refused(tmp_path, name, content, streaming):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=rf"data file .*{name} has no records"):
        load_records(path, streaming=streaming)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_parquet_file_with_no_rows_is_refused_as_such(tmp_path, streaming):
    """It said "BatchSize must be greater than 0"."""
    import pyarrow as pa
    import pyarrow.parquet

    path = tmp_path / "empty.parquet"
    pyarrow.parquet.write_table(pa.table({name: pa.array([], pa.string()) for name in RECORD}), path)
    with pytest.raises(InputError, match=r"data file .*empty\.parquet has no records"):
        load_records(path, streaming=streaming)


def test_a_streamed_text_file_names_its_column_the_first_time(tmp_path, monkeypatch):
    """Streamed before `datasets` has cached it, a text file's column was unknown, and its shape was refused."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))  # a cold cache
    text = tmp_path / "book.txt"
    text.write_text("It was a dark night.\n\nThe rain fell.\n")
    records = load_records(text, streaming=True)
    assert record_shape(records.column_names, text) == "text"
    assert [r["text"] for r in records] == ["It was a dark night.", "The rain fell."]


def test_a_json_array_is_not_streamed(tmp_path):
    """`datasets` parses a JSON array whole even when streaming: a file too large for memory would not fit."""
    array = tmp_path / "records.json"
    array.write_text(json.dumps([RECORD, RECORD]))
    with pytest.raises(InputError, match="one JSON array, which cannot be streamed.*JSON lines"):
        load_records(array, streaming=True)
    assert len(load_records(array)) == 2  # in memory it reads
    lines = _jsonl(tmp_path / "records.jsonl", [RECORD, RECORD])
    assert sum(1 for _ in load_records(lines, streaming=True)) == 2


# ------------------------------------------------------------------------------------------------ fields


def test_a_missing_or_empty_field_is_named_when_the_file_is_loaded(tmp_path):
    missing = _jsonl(tmp_path / "missing.jsonl", [RECORD, {"input": "John went to the garden.", "target": "garden"}])
    with pytest.raises(InputError, match=r"missing\.jsonl: record 1: the field 'question' is empty"):
        load_records(missing)
    null = _jsonl(tmp_path / "null.jsonl", [RECORD, RECORD, {**RECORD, "target": None}])
    with pytest.raises(InputError, match=r"null\.jsonl: record 2: the field 'target' is empty"):
        load_records(null)
    cells = tmp_path / "cells.csv"
    cells.write_text("id,input,question,target\n1,Mary went.,Where is Mary?,kitchen\n2,,Where is John?,garden\n")
    with pytest.raises(InputError, match=r"cells\.csv: record 1: the field 'input' is empty .*empty CSV cell"):
        load_records(cells)
    listed = _jsonl(tmp_path / "listed.jsonl", [{**RECORD, "target": ["kitchen"]}])
    with pytest.raises(InputError, match=r"record 0: the field 'target' is a list \(\['kitchen'\]\), not text"):
        load_records(listed)
    # One list, truth value or object among strings: datasets declares the column Json and stores JSON text.
    for name, odd, kind in (("target", ["kitchen"], "list"), ("target", True, "bool"), ("input", {"a": 1}, "dict")):
        mixed = _jsonl(tmp_path / "mixed.jsonl", [RECORD] * 5 + [{**RECORD, name: odd}] + [RECORD] * 3)
        with pytest.raises(InputError, match=rf"mixed\.jsonl: record 5: the field '{name}' is a {kind} .*, not text"):
            load_records(mixed)
    text = _jsonl(tmp_path / "text.jsonl", [{"text": "the river"}, {"text": None}])
    with pytest.raises(InputError, match=r"text\.jsonl: record 1: the field 'text' is empty"):
        load_records(text)
    # A column of whole numbers is read as their digits, not refused.
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("input,question,target\nTwo apples.,How many?,2\nThree pears.,How many?,3\n")
    assert [r["target"] for r in load_records(numbers)] == ["2", "3"]
    blank = _jsonl(tmp_path / "blank.jsonl", [RECORD, {**RECORD, "target": " "}])
    with pytest.raises(
        InputError, match=r"blank\.jsonl: record 1: the field 'target' is blank \(' '\): nothing to learn"
    ):
        load_records(blank)


@pytest.mark.parametrize("streaming", [False, True])
def test_csv_cells_are_read_as_the_text_they_hold(tmp_path, streaming):
    """pandas guessed types: the answers "007" became 7, "NA" and "None" a missing value (refused), "True" a bool
    (refused). Only an empty cell is missing."""
    answers = ["007", "NA", "None", "True", "1.50"]
    path = tmp_path / "answers.csv"
    path.write_text(
        "input,question,target\n" + "".join(f"Box {i}.,What is in it?,{a}\n" for i, a in enumerate(answers))
    )
    assert [r["target"] for r in load_records(path, streaming=streaming)] == answers


def test_unreadable_files_and_streams_are_named_in_one_line(tmp_path, tokenizer):
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x95\x00 not json\n")
    with pytest.raises(InputError, match=r"cannot read data file .*garbage\.jsonl: line 1 is not UTF-8 text"):
        load_records(garbage)
    with pytest.raises(InputError, match=r"cannot read data file .*garbage\.jsonl as json: .*JSON parse error"):
        load_records(garbage, streaming=True)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("input,question,target\n" + "Mary went.,Where?,kitchen\n" * 3 + "a,b,c,d\n")
    with pytest.raises(InputError, match=r"ragged\.csv: line 5 has 4 fields but the header names 3"):
        load_records(ragged)
    fewer = tmp_path / "fewer.csv"  # too few fields: pandas' own message, with the line
    fewer.write_text("input,question,target\n" + "Mary went.,Where?,kitchen\n" * 3 + "a,b\n" + "x,y,z\n" * 2)
    with pytest.raises(InputError, match=r"fewer\.csv: record 3: the field 'target' is empty"):
        load_records(fewer)
    # A file streamed past its first Arrow chunk (10 MB) meets a bad line only while training reads it.
    source = DatasetSource(
        load_records(_jsonl(tmp_path / "ok.jsonl", [RECORD] * 3), streaming=True), QACollator(tokenizer, "decoder")
    )

    def breaks_after_two():
        yield RECORD
        yield RECORD
        raise pyarrow.lib.ArrowInvalid("JSON parse error: Missing a name for object member. in row 2")

    source._epoch_records = breaks_after_two
    with pytest.raises(InputError, match=r"streamed training data \(reading ahead of record 2\): JSON parse error"):
        source.train_batch(0, 4)
    with pytest.raises(InputError, match="cannot hold out 31 records for validation: the streamed data has no more"):
        split_validation(load_records(_jsonl(tmp_path / "few.jsonl", [RECORD] * 31), streaming=True), 31)


def test_csv_files_as_pandas_and_other_tools_write_them(tmp_path):
    """pandas' to_csv writes its index as a column without a name: loaded (the column named as pandas names it),
    where the empty name failed deep inside datasets. A delimiter at the end of every line made pandas take the
    first column for an index and shift every field by one (the question read as the input): refused, naming the
    line. A file in another encoding than UTF-8 is one error line, not a traceback."""
    indexed = tmp_path / "indexed.csv"
    indexed.write_text(",input,question,target\n0,Mary went.,Where is Mary?,kitchen\n1,John went.,Where?,garden\n")
    records = load_records(indexed)
    assert [(r["input"], r["target"]) for r in records] == [("Mary went.", "kitchen"), ("John went.", "garden")]
    assert records.column_names == ["Unnamed: 0", "input", "question", "target"]
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("input,question,target,note,note\nMary went.,Where?,kitchen,a,b\n")
    assert load_records(repeated).column_names == ["input", "question", "target", "note", "note.1"]
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("input,question,target\nMary went.,Where is Mary?,kitchen,\n")
    with pytest.raises(InputError, match=r"trailing\.csv: line 2 has 4 fields but the header names 3 \(a delimiter"):
        load_records(trailing)
    long = tmp_path / "long.csv"  # a cell past the csv module's default field limit (128 KiB)
    long.write_text("input,question,target\n" + "Mary went. " * 20_000 + ",Where is Mary?,kitchen\n")
    assert load_records(long)[0]["target"] == "kitchen"
    latin = tmp_path / "latin.csv"
    latin.write_bytes("input,question,target\nMary went to the caf\xe9.,Where?,kitchen\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin\.csv is not UTF-8 text"):
        load_records(latin)


@pytest.mark.parametrize("chunk_bytes", [3, 7, 1 << 24])
def test_a_json_lines_file_with_null_lines_is_refused_before_pyarrow_crashes_on_it(tmp_path, chunk_bytes):
    """pyarrow's JSON reader killed the process (SIGSEGV, no message) on a file whose first line is `null`."""
    from rmt.data.files import _first_null_line

    nulls = tmp_path / "nulls.jsonl"
    nulls.write_bytes(b"\xef\xbb\xbfnull\nnull\n")
    with pytest.raises(InputError, match=r"nulls\.jsonl: line 1 is not a JSON object \(a record\): null"):
        load_records(nulls)
    later = tmp_path / "later.jsonl"
    later.write_text((json.dumps(RECORD) + "\n") * 3 + " null\r\n" + json.dumps({**RECORD, "target": None}) + "\n")
    assert _first_null_line(later, chunk_bytes) == 4  # a null field is not a null line
    later.write_text((json.dumps(RECORD) + "\n") * 3 + json.dumps({**RECORD, "target": None}) + "\nnull")
    assert _first_null_line(later, chunk_bytes) == 5


def test_bad_lines_of_a_json_lines_file_are_named_by_their_place_in_the_file(tmp_path):
    """pyarrow counted rows within its read block (a broken line 30,001 was 'row 30000' of one block, of another in a
    larger file), and it reads text without checking UTF-8, so a record in another encoding loaded and failed in the
    middle of training."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(RECORD) + "\n" + '{"input": "x" "question": "q", "target": "k"}\n')
    with pytest.raises(InputError, match=r"broken\.jsonl: line 2 is not JSON \(Expecting ','"):
        load_records(broken)
    listed = tmp_path / "listed.jsonl"
    listed.write_text(json.dumps(RECORD) + "\n[1, 2]\n")
    with pytest.raises(InputError, match=r"listed\.jsonl: line 2 is not a JSON object \(a record\): list"):
        load_records(listed)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(
        (json.dumps(RECORD) + "\n").encode() * 3
        + '{"input": "caf\xe9", "question": "q", "target": "k"}\n'.encode("latin-1")
    )
    with pytest.raises(InputError, match=r"latin\.jsonl: record 3: the field 'input' is not UTF-8 text"):
        load_records(latin)
    # The first bad record is named, whatever is wrong with it: a blank before an empty one.
    mixed = _jsonl(tmp_path / "mixed.jsonl", [RECORD, {**RECORD, "target": " "}, RECORD, {**RECORD, "target": None}])
    with pytest.raises(InputError, match=r"mixed\.jsonl: record 1: the field 'target' is blank"):
        load_records(mixed)


def test_labels_that_differ_only_in_case_are_refused(tokenizer):
    """Answers are matched without regard to case: "Kitchen" and "kitchen" would both be class 1, class 0 never
    trained."""
    with pytest.raises(InputError, match="name a class twice when case is ignored"):
        QACollator(tokenizer, "encoder", ["Kitchen", "kitchen"])


def test_a_missing_or_empty_field_is_never_read_as_the_text_none(tmp_path, tokenizer):
    # Streamed records are not checked when the file is loaded: the batch that reads them refuses them.
    path = _jsonl(tmp_path / "stream.jsonl", [RECORD, {"input": "John went to the garden.", "target": "garden"}])
    streamed = list(load_records(path, streaming=True))
    assert streamed[1]["question"] is None  # what `datasets` makes of the missing key
    for mode, labels in (("decoder", None), ("encoder", answer_labels("qa1"))):
        collate = QACollator(tokenizer, mode, labels)
        with pytest.raises(InputError, match="record 1 of the batch: the field 'question' is empty"):
            collate(streamed)
        with pytest.raises(InputError, match="record 0 of the batch: the field 'target' is empty"):
            collate([{**RECORD, "target": None}])
        # A batch's place does not locate a record of a shuffled or streamed file: its question (or input) does.
        with pytest.raises(
            InputError,
            match="record 1 of the batch: the field 'target' is blank .*; the record's question: 'Where is Mary\\?'$",
        ):
            collate([RECORD, {**RECORD, "target": " "}, {**RECORD, "target": None}])
        with pytest.raises(
            InputError, match="record 1 of the batch: the field 'question' is empty .*; the record's input: 'John"
        ):
            collate(streamed)
        with pytest.raises(InputError, match="record 0 of the batch: the field 'input' is a float"):
            collate([{**RECORD, "input": float("nan")}])
        with pytest.raises(InputError, match="record 0 of the batch: the field 'target' is a bool"):
            collate([{**RECORD, "target": True}])
    answer = tokenizer.decode(QACollator(tokenizer, "decoder")([{**RECORD, "target": 2}]).input_ids[0][-2:-1])
    assert answer == "[UNK]"  # the digits "2" (not in this tokenizer's words), not refused


# ------------------------------------------------------------------------------------------------ labels


def test_answers_outside_an_encoders_labels_are_refused_before_training(tmp_path, tokenizer):
    records = [{**RECORD, "question": f"Where is Mary? {i}"} for i in range(20)]
    records[13] = {**RECORD, "target": "office"}
    collate = QACollator(tokenizer, "encoder", ["garden", "kitchen"])
    data = datasets.Dataset.from_list(records)
    # Before: found only when a batch drew record 13 (step 1 of this seed, hours in on a real run).
    with pytest.raises(InputError, match=r"the training data: record 13 \(question 'Where is Mary\?'\): the answer "):
        DatasetSource(data, collate, seed=0)
    with pytest.raises(InputError, match=r"record 13 .*'office' is not in the label set \['garden', 'kitchen'\]"):
        DatasetSource(data, collate, seed=0)
    good = datasets.Dataset.from_list(records[:13])
    with pytest.raises(InputError, match=r"the validation data: record 1 \(question .*'office' is not in the label"):
        DatasetSource(good, collate, validation=[records[0], records[13]])
    path = _jsonl(tmp_path / "enc.jsonl", records)
    train, held_out = split_validation(load_records(path), 5, seed=0)
    with pytest.raises(InputError, match=r"data: record \d+ \(question 'Where is Mary\?'\): the answer 'office'"):
        DatasetSource(train, collate, validation=held_out)
    DatasetSource(good, QACollator(tokenizer, "decoder"))  # a decoder's answers are any text

    # Streamed records cannot be checked before training: the batch that draws the answer names it, by its place in
    # the file (the batch's records are shuffled).
    source = DatasetSource(load_records(path, streaming=True), collate, seed=0, name="enc.jsonl")
    with pytest.raises(InputError, match=r"^enc.jsonl: record 13 \(question 'Where is Mary\?'\): the answer 'office'"):
        for step in range(10):
            source.train_batch(step, 2)


@pytest.mark.parametrize("held_out", [0, 20])
def test_a_bad_streamed_record_is_named_by_its_place_in_the_file(tmp_path, tokenizer, held_out):
    """Streamed records reach a batch shuffled: "record 0 of the batch" and its question ("Where is Mary?", as in
    most records) did not find it in the file. Held-out records split off the stream's start are counted."""
    # NaN in a field of every record (JSON's NaN, read as a float): NaN is not equal to itself, yet the record is found
    records = [{**RECORD, "input": f"Mary went to room {i}.", "score": float("nan")} for i in range(300)]
    records[250] = {**RECORD, "target": "   ", "score": float("nan")}
    path = _jsonl(tmp_path / "late.jsonl", records)
    streamed = load_records(path, streaming=True)
    train, validation = split_validation(streamed, held_out) if held_out else (streamed, None)
    for collate in (QACollator(tokenizer, "decoder"), QACollator(tokenizer, "encoder", ["kitchen", "garden"])):
        source = DatasetSource(train, collate, seed=0, validation=validation, name=str(path), first_record=held_out)
        with pytest.raises(InputError, match=rf"^{path}: record 250: the field 'target' is blank \('   '\)"):
            for step in range(40):
                source.train_batch(step, 8)
    text = _jsonl(tmp_path / "late-text.jsonl", [{"text": f"the old man {i}"} for i in range(49)] + [{"text": " "}])
    source = DatasetSource(load_records(text, streaming=True), TextCollator(tokenizer), name="late-text.jsonl")
    with pytest.raises(InputError, match=r"^late-text.jsonl: record 49: the field 'text' is blank"):
        for step in range(10):
            source.train_batch(step, 8)


# ------------------------------------------------------------------------------------------------ BABILong source


def _facts_in_last_segment(tokenizer, samples, segment_size: int, segments: int) -> int:
    """How many samples have a fact that ends in the last segment."""
    late = 0
    for sample in samples:
        context = len(tokenizer(sample.input, add_special_tokens=False).input_ids)
        ends = [
            depth * context + len(tokenizer(fact, add_special_tokens=False).input_ids)
            for fact, depth in zip(sample.facts, sample.fact_depths, strict=True)
        ]
        late += max(ends) > (segments - 1) * segment_size
    return late


def test_facts_before_last_is_met_by_drawing_stories_that_fit(tokenizer):
    """qa5 at 2 segments of 64 tokens: about half its stories are too long for the first segment. They were placed
    anywhere instead (106 of 200 samples had facts in the last segment); now another story is drawn."""
    haystack = Haystack.from_text(background_text(1000))
    collate = QACollator(tokenizer, "encoder", answer_labels("qa5"))
    source = BabilongSource("qa5", tokenizer, haystack, collate, segment_size=64, facts_before_last=1.0)
    samples = source.samples(seed=3, count=40, num_segments=2, training=True)
    assert _facts_in_last_segment(tokenizer, samples, 64, 2) == 0
    assert samples == source.samples(seed=3, count=40, num_segments=2, training=True)  # a function of the seed
    assert samples != source.samples(seed=4, count=40, num_segments=2, training=True)
    # Held-out samples place facts anywhere, as before.
    held_out = source.samples(seed=3, count=40, num_segments=2, training=False)
    assert _facts_in_last_segment(tokenizer, held_out, 64, 2) > 5


def test_facts_before_last_that_cannot_be_met_is_refused(tokenizer):
    haystack = Haystack.from_text(background_text(400))
    collate = QACollator(tokenizer, "encoder", answer_labels("qa1"))

    def source(segment_size: int, fraction: float = 0.5) -> BabilongSource:
        return BabilongSource("qa1", tokenizer, haystack, collate, segment_size, facts_before_last=fraction)

    # 2 segments of 16 tokens: the facts would have to end before the first segment does, less a margin of 24.
    with pytest.raises(InputError, match=r"facts_before_last=0.5 cannot be met for qa1 at 2 segments of 16 tokens"):
        source(16).samples(seed=0, count=4, num_segments=2, training=True)
    # 2 segments of 32: 8 tokens before the last, and a qa1 story has 2 facts of 6 tokens or more.
    with pytest.raises(InputError, match=r"none of 1000 qa1 stories fit in 8 tokens; use longer or more segments"):
        source(32).samples(seed=0, count=4, num_segments=2, training=True)
    assert len(source(32).samples(seed=0, count=4, num_segments=1, training=True)) == 4  # one segment: nothing before
    assert len(source(32, 0.0).samples(seed=0, count=4, num_segments=2, training=True)) == 4
    assert len(source(32).samples(seed=0, count=4, num_segments=2, training=False)) == 4  # held out: anywhere


def test_facts_before_last_with_a_short_haystack_blames_the_haystack(tokenizer):
    """The background running out is its own error, not "facts_before_last cannot be met" after 1000 redraws."""
    haystack = Haystack.from_text(background_text(3))
    collate = QACollator(tokenizer, "encoder", answer_labels("qa1"))
    for fraction in (0.0, 1.0):
        source = BabilongSource("qa1", tokenizer, haystack, collate, 64, facts_before_last=fraction)
        with pytest.raises(InputError, match="haystack too short"):
            source.samples(seed=0, count=2, num_segments=3, training=True)


@pytest.mark.parametrize("shape", ["qa", "text"])
def test_held_out_records_of_a_streamed_file_are_checked_before_training(tmp_path, shape):
    """They are in memory from the start, but a bad one stopped the run at its first evaluation (with --overwrite,
    after the earlier run there was removed)."""
    tokenizer = word_tokenizer(tmp_path / "tokenizer")
    good, bad = (RECORD, {**RECORD, "target": None}) if shape == "qa" else ({"text": "Mary went."}, {"text": None})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [good, good, good, bad, *[good] * 10]))
    train_records, held_out = split_validation(load_records(data, streaming=True), 8)
    collate = QACollator(tokenizer, "decoder") if shape == "qa" else TextCollator(tokenizer)
    field = "target" if shape == "qa" else "text"
    with pytest.raises(InputError, match=f"the validation data: record 3: the field '{field}' is empty"):
        DatasetSource(train_records, collate, validation=held_out)


def test_a_read_error_is_one_line_naming_the_line_of_the_file(tmp_path, capfd):
    """pyarrow refuses an escaped half of a surrogate pair that Python's json takes, so its 'row N' (counted in its
    read block) was all the message said; and `datasets` logged its own line before the error."""
    lone = tmp_path / "lone.jsonl"
    lone.write_text((json.dumps(RECORD) + "\n") * 3 + '{"input": "\\ud800", "question": "q", "target": "k"}\n')
    with pytest.raises(InputError, match=r"lone\.jsonl: line 4 holds an escaped half of a surrogate pair alone"):
        load_records(lone)
    assert "Failed to" not in capfd.readouterr().err
    extra = tmp_path / "extra.csv"
    extra.write_text("input,question,target\n" + "a,b,c\n" * 1200 + "a,b,c,d\n")
    for streaming in (False, True):
        with pytest.raises(InputError, match="Expected 3 fields in line 1202, saw 4"):
            load_records(extra, streaming=streaming)
        assert "Failed to" not in capfd.readouterr().err


def test_numbers_read_as_floats_are_named_at_the_record_and_value_the_file_holds(tmp_path):
    """Arrow widens a column of whole numbers and fractions to floats: the message named record 0 and '1.0' (the file
    holds 1 there; the fraction 2.5 is record 3), and a whole number beyond 64 bits as a float the file never held."""
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        '{"input": "a", "question": "q", "target": 1}\n' * 3 + '{"input": "a", "question": "q", "target": 2.5}\n'
    )
    with pytest.raises(InputError, match=r"record 3: the field 'target' is a float \(2\.5\), not text$"):
        load_records(mixed)
    big = tmp_path / "big.jsonl"
    big.write_text('{"input": "a", "question": "q", "target": null}\n{"input": "a", "question": "q", "target": 2.5}\n')
    with pytest.raises(InputError, match=r"record 0: the field 'target' is empty"):
        load_records(big)
    big.write_text('{"input": "a", "question": "q", "target": 12345678901234567890}\n')
    with pytest.raises(InputError, match=r"record 0: the field 'target' is a number \(1\.23.*beyond 64 bits"):
        load_records(big)
