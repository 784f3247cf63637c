"""Real-data path: collators (answer labels, classes, text), data files through `datasets` (formats, field checks,
validation split, streaming), sources as pure functions of the step, and the generated BABILong training source."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import BACKGROUND_WORDS, background_text, word_tokenizer

from rmt.data.babilong import answer_labels, build_dataset
from rmt.data.babilong_source import BabilongSource
from rmt.data.collate import QACollator, TextCollator, check_tokenizer, qa_prompt
from rmt.data.files import DatasetSource, load_records, record_shape, split_validation
from rmt.data.haystack import Haystack, split_sentences
from rmt.data.tasks import IGNORE_INDEX
from rmt.errors import InputError, MissingFileError

RECORD = {"input": "Mary went to the kitchen.", "question": "Where is Mary?", "target": "kitchen"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_decoder_labels_are_the_answer_and_eos_only(tokenizer):
    batch = QACollator(tokenizer, "decoder")([RECORD, {**RECORD, "input": "John went to the garden. " * 3}])
    prompt = tokenizer(qa_prompt(RECORD["input"], RECORD["question"]), add_special_tokens=False).input_ids
    answer = tokenizer(" kitchen", add_special_tokens=False).input_ids
    row = batch.input_ids[0, : batch.attention_mask[0].sum()].tolist()
    assert row == prompt + answer + [tokenizer.eos_token_id]
    labelled = batch.labels[0][batch.labels[0] != IGNORE_INDEX].tolist()
    assert labelled == answer + [tokenizer.eos_token_id]
    assert batch.labels[0, : len(prompt)].eq(IGNORE_INDEX).all()
    assert batch.attention_mask[0].sum() < batch.attention_mask[1].sum()  # each sample keeps its own length
    assert batch.labels[0, batch.attention_mask[0].sum() :].eq(IGNORE_INDEX).all()  # padding is never a label


def test_encoder_answers_are_classes(tokenizer):
    labels = answer_labels("qa1")
    batch = QACollator(tokenizer, "encoder", labels)([RECORD, {**RECORD, "target": "Garden"}])
    assert batch.labels.tolist() == [labels.index("kitchen"), labels.index("garden")]
    text = tokenizer(RECORD["input"] + " " + RECORD["question"], add_special_tokens=False).input_ids
    assert batch.input_ids[0].tolist() == text  # no [CLS]/[SEP]: the memory model adds them per segment
    with pytest.raises(InputError, match="'cellar' is not in the label set"):
        QACollator(tokenizer, "encoder", labels)([{**RECORD, "target": "cellar"}])
    with pytest.raises(InputError, match="lacks the field"):
        QACollator(tokenizer, "decoder")([{"input": "x", "question": "y"}])


def test_text_collator_labels_every_token(tokenizer):
    batch = TextCollator(tokenizer, max_length=5)([{"text": "the old man walked slowly along the river"}])
    assert batch.input_ids.shape == (1, 5) and torch.equal(batch.labels, batch.input_ids)


def test_a_tokenizer_of_another_model_is_refused(tokenizer):
    check_tokenizer(tokenizer, len(tokenizer))
    with pytest.raises(InputError, match="belongs to another model"):
        check_tokenizer(tokenizer, len(tokenizer) - 1)


def test_a_tokenizer_that_leaves_most_of_the_table_unused_is_named(tokenizer):
    # A smaller tokenizer of another model (MiniLM's with SmolLM2) fits the table, so only a warning can catch it;
    # the few percent of rows a model's own tokenizer may leave unused pass quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_tokenizer(tokenizer, len(tokenizer))
        check_tokenizer(tokenizer, len(tokenizer) * 100 // 95)
    with pytest.warns(UserWarning, match=f"has {len(tokenizer)} tokens but the model embeds {2 * len(tokenizer)}"):
        check_tokenizer(tokenizer, 2 * len(tokenizer))


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet"])
def test_data_files_of_every_format_load(tmp_path, suffix):
    import datasets

    rows = [{**RECORD, "target": t} for t in ("kitchen", "garden", "office")]
    path = tmp_path / f"data.{suffix}"
    datasets.Dataset.from_list(rows).to_json(path) if suffix in ("jsonl", "json") else None
    if suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "csv":
        datasets.Dataset.from_list(rows).to_csv(path)
    elif suffix == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(path)
    records = load_records(path)
    assert record_shape(records.column_names, path) == "qa"
    assert [r["target"] for r in records] == ["kitchen", "garden", "office"]


def test_text_files_and_bad_files(tmp_path):
    (tmp_path / "lm.txt").write_text("first line of text\nsecond line\n")
    records = load_records(tmp_path / "lm.txt")
    assert record_shape(records.column_names) == "text" and len(records) == 2
    (tmp_path / "bad.jsonl").write_text(json.dumps({"context": "x", "answer": "y"}) + "\n")
    with pytest.raises(InputError, match=r"has the fields \['context', 'answer'\].*input"):
        record_shape(load_records(tmp_path / "bad.jsonl").column_names, tmp_path / "bad.jsonl")
    with pytest.raises(MissingFileError, match="no data file"):
        load_records(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="unknown format '.xml'"):
        (tmp_path / "a.xml").write_text("<a/>")
        load_records(tmp_path / "a.xml")


def _records(n: int) -> list[dict]:
    """n distinct documents (their first word tells them apart)."""
    return [{"text": f"{BACKGROUND_WORDS[i]} " + "the old man walked " * (1 + i % 3)} for i in range(n)]


def test_dataset_source_is_a_pure_function_of_the_step(tokenizer):
    import datasets

    records = datasets.Dataset.from_list(_records(10))
    train, held_out = split_validation(records, 3, seed=0)
    assert len(train) == 7 and len(held_out) == 3
    source = DatasetSource(train, TextCollator(tokenizer), seed=1, validation=held_out, metric="loss")
    fresh = DatasetSource(train, TextCollator(tokenizer), seed=1, validation=held_out, metric="loss")
    first = [source.train_batch(step, 3).input_ids for step in range(5)]
    assert torch.equal(fresh.train_batch(3, 3).input_ids, first[3])  # a resumed run gets the same batch
    # Within an epoch every record is seen once: steps 0-1 take 6 distinct records of the 7.
    seen = [tuple(row.tolist()) for step in range(2) for row in source.train_batch(step, 3).input_ids]
    assert len(set(seen)) == 6
    assert source.num_eval_batches(2) == 2 and source.eval_batch(1, 2).input_ids.shape[0] == 1
    with pytest.raises(InputError, match="cannot hold out 10 records"):
        split_validation(records, 10)


def test_streamed_source_resumes_at_the_same_position(tmp_path, tokenizer):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records(9)))
    stream = lambda: DatasetSource(load_records(path, streaming=True), TextCollator(tokenizer), seed=2)  # noqa: E731
    straight = stream()
    batches = [straight.train_batch(step, 2).input_ids for step in range(6)]  # crosses an epoch boundary
    resumed = stream()
    assert torch.equal(resumed.train_batch(4, 2).input_ids, batches[4])
    assert torch.equal(resumed.train_batch(5, 2).input_ids, batches[5])


def test_babilong_source_puts_facts_before_the_last_segment(tokenizer):
    haystack = Haystack.from_text(background_text(600))
    collate = QACollator(tokenizer, "encoder", answer_labels("qa1"))
    source = BabilongSource("qa1", tokenizer, haystack, collate, segment_size=64, facts_before_last=1.0)
    samples = source.samples(seed=5, count=6, num_segments=3, training=True)
    for sample in samples:
        assert sample.num_tokens <= 3 * 64
        context_tokens = len(tokenizer(sample.input, add_special_tokens=False).input_ids)
        for fact, depth in zip(sample.facts, sample.fact_depths, strict=True):
            end = depth * context_tokens + len(tokenizer(fact, add_special_tokens=False).input_ids)
            assert end <= 2 * 64, (depth, fact)  # within the first two segments
    held_out = source.samples(seed=5, count=6, num_segments=3, training=False)
    assert max(max(s.fact_depths) for s in held_out) > 0.7  # held-out samples place facts anywhere
    batch = source.train_batch(0, 4, num_segments=2)
    assert batch.input_ids.shape[0] == 4 and batch.attention_mask.sum(dim=1).max() <= 128
    assert torch.equal(batch.input_ids, source.train_batch(0, 4, num_segments=2).input_ids)


def test_babilong_source_sets_the_facts_per_story(tokenizer):
    haystack = Haystack.from_text(background_text(600))
    collate = QACollator(tokenizer, "encoder", answer_labels("qa1"))
    source = BabilongSource(
        "qa1", tokenizer, haystack, collate, segment_size=64, facts_before_last=0.5, num_facts=(1, 2)
    )
    for training in (True, False):
        samples = source.samples(seed=1, count=12, num_segments=3, training=training)
        assert {s.num_facts for s in samples} == {1, 2}
    default = BabilongSource("qa1", tokenizer, haystack, collate, segment_size=64)
    assert max(s.num_facts for s in default.samples(seed=1, count=12, num_segments=3, training=False)) > 2


def test_babilong_source_draws_distractor_backgrounds_for_training_only(tokenizer):
    rooms = "garden kitchen office bathroom hallway bedroom".split()
    plain_sentences = split_sentences(background_text(400))
    for i in range(0, len(plain_sentences), 10):  # one sentence in ten names a room
        plain_sentences[i] = f"The old man saw the {rooms[i % 6]} by the river."
    haystack = Haystack(tuple(plain_sentences))
    collate = QACollator(tokenizer, "encoder", answer_labels("qa1"))

    def source(distractors):
        return BabilongSource(
            "qa1", tokenizer, haystack, collate, segment_size=64, num_facts=1, distractors=distractors
        )

    plain, always, half = source(0.0), source(1.0), source(0.5)
    mentions = set(always.mentions.sentences)
    assert mentions and len(always.mentions) < len(haystack) and plain.mentions is None

    def backgrounds(samples):
        return [[s for s in split_sentences(sample.input) if s not in sample.facts] for sample in samples]

    for training, expected in ((True, True), (False, False)):
        from_always = always.samples(seed=4, count=8, num_segments=2, training=training)
        from_plain = plain.samples(seed=4, count=8, num_segments=2, training=training)
        assert [s.facts for s in from_always] == [s.facts for s in from_plain]  # the same stories
        for background in backgrounds(from_always):
            assert all(sentence in mentions for sentence in background) == expected
    drawn = [all(s in mentions for s in b) for b in backgrounds(half.samples(7, 40, 2, training=True))]
    assert 5 < sum(drawn) < 35
    with pytest.raises(InputError, match="distractors"):
        source(1.5)
    with pytest.raises(InputError, match="names any of"):  # refused when built, not at the first training batch
        BabilongSource("qa1", tokenizer, Haystack.from_text(background_text(50)), collate, 64, distractors=0.5)


def test_babilong_samples_export_as_records(tokenizer, tmp_path):
    haystack = Haystack.from_text(background_text(200))
    samples = build_dataset("qa2", 100, 3, tokenizer, haystack, seed=0)
    batch = QACollator(tokenizer, "decoder")([s.to_dict() for s in samples])
    assert batch.input_ids.shape[0] == 3


def test_babilong_source_samples_with_facts_before_the_last_segment_reach_it(tokenizer):
    """The builder stops a sentence short of the length, and a book's sentence can be longer than a segment: such a
    sample ended before its last segment, with its facts in what was really its last segment, and counted towards
    facts_before_last anyway. Now it is redrawn."""
    words = background_text(600).split()
    sentences = [" ".join(words[i : i + 8]) + "." for i in range(0, 2000, 8)]
    for i in range(0, len(sentences), 4):  # one sentence in four longer than a segment
        sentences[i] = " ".join(words[i : i + 100]) + "."
    collate = QACollator(tokenizer, "encoder", answer_labels("qa1"))
    source = BabilongSource(
        "qa1", tokenizer, Haystack(tuple(sentences)), collate, segment_size=64, facts_before_last=1.0, num_facts=1
    )
    for segments in (2, 3):
        samples = source.samples(seed=0, count=60, num_segments=segments, training=True)
        assert all(sample.num_tokens > (segments - 1) * 64 for sample in samples)
