"""The by-length evaluation's bookkeeping on a tiny encoder: samples from public files (no recorded fact depths) are
counted apart from the near/far split, a cell with no samples is refused before anything runs, a file with fewer
samples than asked for is evaluated whole with a warning, and results.json is strict JSON (no NaN); on a tiny
Llama, the full-attention baseline's generated answer is the backbone's own on the input's last window. What each
method reads: no_memory is the backbone on the memory model's segments, each alone; an encoder's full attention reads
the input's last window; a sample is near or far by where its facts lie against the last segment or the window; and
a decoder's readers never run the LM head on more than the last position."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import BACKGROUND_WORDS, background_text, tiny_model_folder

from rmt import RMTConfig
from rmt.build import memory_model, pretrained_backbone, pretrained_tokenizer
from rmt.data.babilong import BabilongSample, answer_labels, build_dataset
from rmt.data.haystack import Haystack
from rmt.errors import InputError
from rmt.eval.by_length import METHODS as ALL_METHODS
from rmt.eval.by_length import Outcome, evaluate_by_length, format_table, readers, write_results

METHODS = ["memory", "no_memory"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model, tokenizer, haystack): a tiny BERT answering with qa1's rooms, without memory tokens."""
    folder = tiny_model_folder(tmp_path_factory.mktemp("bert"), "bert", answer_labels("qa1"))
    tokenizer = pretrained_tokenizer(str(folder))
    config = RMTConfig(mode="encoder", num_memory_tokens=0, segment_size=40, cls_token_id=2, sep_token_id=3)
    model = memory_model(pretrained_backbone(str(folder), mode="encoder"), config)
    return model, tokenizer, Haystack.from_text(background_text(400))


def _public(samples: list[BabilongSample]) -> list[BabilongSample]:
    """The samples as a public BABILong file has them: input, question and target, no metadata."""
    return [BabilongSample(s.input, s.question, s.target) for s in samples]


def _strict(text: str) -> object:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_samples_without_fact_depths_are_counted_in_neither_span(setup, tmp_path):
    model, tokenizer, haystack = setup
    generated = build_dataset("qa1", 80, 4, tokenizer, haystack, seed=0)
    files = {("qa1", "80"): _public(generated)}
    results = evaluate_by_length(
        model, tokenizer, ["qa1"], [80], 4, files=files, methods=METHODS, progress=False, output_dir=tmp_path
    )
    for method in METHODS:
        cell = results["cells"][f"qa1/80/{method}"]
        # Before: counted as facts in the last span, which made no_memory look as if the facts were in its reach.
        assert cell["facts_in_last_span"]["samples"] == cell["facts_before_last_span"]["samples"] == 0
        assert cell["facts_depth_unknown"] == {"correct": cell["correct"], "samples": 4}
    assert all(record["facts_in_last_span"] is None for record in results["predictions"])
    assert _strict((tmp_path / "results.json").read_text())["cells"]["qa1/80/memory"]["samples"] == 4

    known = evaluate_by_length(model, tokenizer, ["qa1"], [80], 4, haystack, methods=METHODS, progress=False)
    for cell in known["cells"].values():  # generated samples record their depths: each is near or far
        assert cell["facts_in_last_span"]["samples"] + cell["facts_before_last_span"]["samples"] == 4
        assert cell["facts_depth_unknown"]["samples"] == 0


def test_a_cell_with_no_samples_is_refused_before_anything_runs(setup, tmp_path):
    model, tokenizer, haystack = setup
    samples = build_dataset("qa1", 80, 2, tokenizer, haystack, seed=0)
    files = {("qa1", "80"): samples, ("qa1", "120"): []}
    out = tmp_path / "empty"
    with pytest.raises(InputError, match="no qa1 samples of length 120 to evaluate: the file holds none"):
        evaluate_by_length(model, tokenizer, ["qa1"], [80, 120], 2, files=files, progress=False, output_dir=out)
    assert not out.exists()  # refused before the first cell, whose results would have been written
    with pytest.raises(InputError, match=r"0 samples asked for \(qa1 80\): a cell needs at least 1"):
        evaluate_by_length(model, tokenizer, ["qa1"], [80], {"80": 0}, haystack, progress=False)
    with pytest.raises(InputError, match=r"no sample count for length 120: the counts name \['80'\]"):
        evaluate_by_length(model, tokenizer, ["qa1"], [80, 120], {"80": 2}, haystack, progress=False)


def test_a_file_with_fewer_samples_than_asked_for_is_evaluated_whole_with_a_warning(setup, capsys):
    model, tokenizer, haystack = setup
    files = {("qa1", "80"): build_dataset("qa1", 80, 3, tokenizer, haystack, seed=0)}
    results = evaluate_by_length(model, tokenizer, ["qa1"], [80], 10, files=files, methods=METHODS, progress=False)
    warning = "warning: qa1 80: 10 samples asked for, but the file holds 3: evaluating 3\n"
    assert capsys.readouterr().err == warning
    assert [results["cells"][f"qa1/80/{m}"]["samples"] for m in METHODS] == [3, 3]
    assert len(results["predictions"]) == 2 * 3
    evaluate_by_length(model, tokenizer, ["qa1"], [80], 3, files=files, progress=False)
    assert capsys.readouterr().err == ""  # as many as there are: no warning


def test_a_files_bad_samples_are_refused_before_anything_runs(setup, tmp_path):
    model, tokenizer, haystack = setup
    good = build_dataset("qa1", 80, 2, tokenizer, haystack, seed=0)
    bad = [BabilongSample(good[0].input, good[0].question, "cellar")]
    out = tmp_path / "labels"
    files = {("qa1", "80"): good, ("qa1", "120"): bad}
    refused = r"the qa1 120 samples: record 0 \(question 'Where is \w+\?'\): the answer 'cellar' is not in the label"
    with pytest.raises(InputError, match=refused):
        evaluate_by_length(model, tokenizer, ["qa1"], [80, 120], 2, files=files, progress=False, output_dir=out)
    assert not out.exists()
    files = {("qa1", "80"): [BabilongSample(good[0].input, good[0].question, None)]}  # built in code, not loaded
    with pytest.raises(InputError, match="the qa1 80 samples: record 0 lacks the field 'target'"):
        evaluate_by_length(model, tokenizer, ["qa1"], [80], 1, files=files, methods=[], progress=False)


def test_results_json_never_holds_nan(tmp_path):
    empty = Outcome(correct=0, total=0, tokens=0, seconds=0.0).record()
    assert empty["accuracy"] is None and empty["ci95"] == [None, None]  # was NaN, which JSON does not have
    full = Outcome(correct=3, total=4, tokens=400, seconds=2.0, unknown=(3, 4)).record()
    cells = {"qa1/0k/memory": {**empty, "task": "qa1", "length": "0k", "method": "memory"}}
    cells["qa1/1k/memory"] = {**full, "task": "qa1", "length": "1k", "method": "memory"}
    results = {"tasks": ["qa1"], "lengths": ["0k", "1k"], "methods": ["memory"], "cells": cells}
    write_results(results, tmp_path)
    written = _strict((tmp_path / "results.json").read_text())
    assert written["cells"]["qa1/0k/memory"]["accuracy"] is None
    assert "- (n=0)" in format_table(results) and "0.75" in format_table(results)
    assert (tmp_path / "heatmap-memory.png").stat().st_size > 0 and (tmp_path / "accuracy.png").stat().st_size > 0
    results["cells"]["qa1/1k/memory"]["seconds"] = math.nan
    with pytest.raises(ValueError, match="not JSON compliant"):  # refused, never written as NaN
        write_results(results, tmp_path)
    assert _strict((tmp_path / "results.json").read_text()) == written


def test_an_interrupted_first_write_leaves_no_file_of_the_run_it_replaces(tmp_path, monkeypatch):
    """With --overwrite the first cell's write replaces an earlier run's files: interrupted while drawing (a second
    per figure), it left the earlier run's accuracy.png and heatmaps beside this run's results.json. Now the earlier
    files go first, and results.json is written last, once the rest is."""
    import rmt.eval.by_length as by_length

    for name in ("results.json", "predictions.jsonl", "accuracy.png", "heatmap-no_memory.png", "heatmap-memory.png"):
        (tmp_path / name).write_text("earlier run")
    (tmp_path / "notes.txt").write_text("mine")  # not a result file: kept
    cell = Outcome(correct=1, total=2, tokens=20, seconds=1.0).record()
    results = {"tasks": ["qa1"], "lengths": ["0k"], "methods": ["memory"], "cells": {"qa1/0k/memory": cell}}

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(by_length, "plot_methods", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_results(results, tmp_path, replace=True)
    left = {path.name: path.read_text(errors="replace") for path in tmp_path.iterdir()}
    assert [name for name, text in left.items() if text == "earlier run"] == [] and "results.json" not in left
    assert set(left) == {"notes.txt", "predictions.jsonl", "table.md", "heatmap-memory.png"}


def test_a_decoders_full_attention_answer_is_the_backbones_own_greedy_answer_on_the_last_window(tmp_path):
    """Beyond the window, full attention reads the prompt's last `window - max_new_tokens` tokens and generates the
    answer in the same window, every answer token attending to the prompt: the backbone's own greedy continuation.
    (A wrapper segment of the prompt's length alone started each answer token after the first in a new segment.)"""
    torch.manual_seed(0)
    folder = tiny_model_folder(tmp_path, "llama")
    tokenizer = pretrained_tokenizer(str(folder))
    backbone = pretrained_backbone(str(folder), mode="decoder").eval()
    model = memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=16)).eval()
    samples = build_dataset("qa1", 120, 4, tokenizer, Haystack.from_text(background_text(400)), seed=0)
    window, new_tokens = 48, 6
    reader = readers(model, tokenizer, ["full_attention"], window, new_tokens)["full_attention"]
    for sample in samples:
        prompt = torch.tensor(reader.collate.prompt_ids([sample.to_dict()]))
        assert prompt.shape[1] > window  # the input is longer than the window
        ids = prompt[:, -(window - new_tokens) :]
        with torch.no_grad():
            for _ in range(new_tokens):
                ids = torch.cat([ids, backbone(ids).logits[:, -1:].argmax(-1)], dim=1)
        expected = tokenizer.decode(ids[0, window - new_tokens :], skip_special_tokens=True)
        assert reader.read(sample).answer == expected


def test_a_generated_answer_stops_at_every_end_token_the_backbone_names(tmp_path):
    """The reader passed only the tokenizer's eos_token_id, which overrode the backbone's generation config (Llama
    3's instruct models name several end tokens there): an answer ran on past the end the model chose."""
    from rmt.memory.generation import stop_token_ids

    torch.manual_seed(0)
    folder = tiny_model_folder(tmp_path, "llama")
    tokenizer = pretrained_tokenizer(str(folder))
    model = memory_model(pretrained_backbone(str(folder)), RMTConfig(num_memory_tokens=2, segment_size=16)).eval()
    sample = build_dataset("qa1", 0, 1, tokenizer, None, seed=0)[0]
    reader = readers(model, tokenizer, ["memory"], None, 6)["memory"]
    prompt = torch.tensor(reader.collate.prompt_ids([sample.to_dict()]))
    tokens = model.generate(prompt, max_new_tokens=6, do_sample=False)[0, prompt.shape[1] :].tolist()
    assert tokenizer.eos_token_id not in tokens[:3]
    model.backbone.generation_config.eos_token_id = [tokens[2], tokens[2] + 1]
    assert stop_token_ids(model, tokenizer) == [tokens[2], tokens[2] + 1, tokenizer.eos_token_id]
    assert reader.read(sample).answer == tokenizer.decode(tokens[:3], skip_special_tokens=True)


# --- what each method reads -------------------------------------------------------------------------------------

CLS, SEP = 2, 3  # the word tokenizer's [CLS] and [SEP]


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """(backbone, tokenizer, haystack): a tiny BERT answering with qa1's rooms, its weights drawn large enough that
    its answer depends on what it reads (at transformers' initial scale it answers one class whatever the input)."""
    folder = tiny_model_folder(tmp_path_factory.mktemp("varied"), "bert", answer_labels("qa1"))
    backbone = pretrained_backbone(str(folder), mode="encoder").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in backbone.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, 0.5, generator=generator)
    return backbone, pretrained_tokenizer(str(folder)), Haystack.from_text(background_text(400))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(backbone, tokenizer): a tiny random Llama with the word tokenizer."""
    folder = tiny_model_folder(tmp_path_factory.mktemp("llama"), "llama")
    return pretrained_backbone(str(folder), mode="decoder").eval(), pretrained_tokenizer(str(folder))


def _encoder_memory_model(backbone, segment_size: int = 16):
    torch.manual_seed(0)
    config = RMTConfig(
        mode="encoder", num_memory_tokens=2, segment_size=segment_size, cls_token_id=CLS, sep_token_id=SEP
    )
    return memory_model(backbone, config).eval()


def _classify(backbone, ids: torch.Tensor) -> torch.Tensor:
    """The backbone's class logits on [CLS] ids [SEP], as one segment without memory."""
    with torch.no_grad():
        return backbone(torch.cat([torch.tensor([[CLS]]), ids, torch.tensor([[SEP]])], dim=1)).logits


def test_an_encoders_no_memory_reader_is_the_backbone_on_the_last_segment_alone(varied):
    """no_memory cuts the input into the memory model's segments (16 tokens) and carries no memory between them: its
    class logits are the backbone's on [CLS] last segment [SEP] (the last 32-token segment starts elsewhere here), and
    not the memory model's, whose memory tokens it lacks; its answer is that class."""
    backbone, tokenizer, haystack = varied
    model = _encoder_memory_model(backbone)
    reader = readers(model, tokenizer, ["memory", "no_memory"], None)["no_memory"]
    plain = reader.model
    assert plain is not model and plain.backbone is model.backbone and reader.window is None
    assert plain.config.num_memory_tokens == 0 and plain.config.segment_size == 16
    answers = set()
    for sample in build_dataset("qa1", 64, 4, tokenizer, haystack, seed=0):
        ids = reader.collate([sample.to_dict()]).input_ids
        start = (ids.shape[1] - 1) // 16 * 16
        assert start != (ids.shape[1] - 1) // 32 * 32
        expected = _classify(backbone, ids[:, start:])
        with torch.no_grad():
            torch.testing.assert_close(plain(ids).logits, expected)
            assert (model(ids).logits - expected).abs().max() > 1e-3
        answer = reader.read(sample).answer
        assert answer == reader.labels[int(expected.argmax())]
        answers.add(answer)
    assert len(answers) > 1  # the answer follows the input


def test_a_decoders_no_memory_reader_is_the_backbone_on_each_segment_alone(llama):
    """A decoder's no_memory logits over a prompt of 4 segments are the backbone's on each 16-token segment read
    alone, and differ from the memory model's."""
    backbone, tokenizer = llama
    torch.manual_seed(0)
    model = memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=16)).eval()
    reader = readers(model, tokenizer, ["no_memory"], None, 4)["no_memory"]
    assert reader.model is not model and reader.model.config.num_memory_tokens == 0
    sample = build_dataset("qa1", 50, 1, tokenizer, Haystack.from_text(background_text(400)), seed=0)[0]
    prompt = torch.tensor(reader.collate.prompt_ids([sample.to_dict()]))
    assert 48 < prompt.shape[1] <= 64
    with torch.no_grad():
        expected = torch.cat([backbone(prompt[:, s : s + 16]).logits for s in range(0, prompt.shape[1], 16)], dim=1)
        torch.testing.assert_close(reader.model(prompt).logits, expected)
        assert (model(prompt).logits - expected).abs().max() > 1e-3


def test_an_encoders_full_attention_reads_the_last_window(varied):
    """Beyond its window an encoder reads the input's last `window` tokens as one segment: the ids its model gets are
    the collated ids' last 24, which end with the question, and its answer is the class the backbone scores highest
    on [CLS] those tokens [SEP]."""
    backbone, tokenizer, haystack = varied
    window = 24
    reader = readers(_encoder_memory_model(backbone), tokenizer, ["full_attention"], window)["full_attention"]
    seen = []
    handle = reader.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        for sample in build_dataset("qa1", 80, 4, tokenizer, haystack, seed=0):
            ids = reader.collate([sample.to_dict()]).input_ids
            assert ids.shape[1] > window
            reading = reader.read(sample)
            question = tokenizer(sample.question, add_special_tokens=False).input_ids
            assert torch.equal(seen[-1], ids[:, -window:]) and seen[-1][0, -len(question) :].tolist() == question
            assert reading.answer == reader.labels[int(_classify(backbone, ids[:, -window:]).argmax())]
            assert reading.tokens == window
    finally:
        handle.remove()


FACT = "Mary went to the kitchen ."  # 6 tokens of the word tokenizer


def _placed(offsets: list[int]) -> BabilongSample:
    """A qa1 sample of 40 context tokens with the fact at each of `offsets` (in tokens) and its depths recorded."""
    words = [BACKGROUND_WORDS[i % len(BACKGROUND_WORDS)] for i in range(40)]
    for offset in offsets:
        words[offset : offset + 6] = FACT.split()
    return BabilongSample(
        " ".join(words),
        "Where is Mary?",
        "kitchen",
        task="qa1",
        facts=[FACT] * len(offsets),
        supporting_facts=list(range(len(offsets))),
        fact_depths=[offset / 40 for offset in offsets],
    )


@pytest.mark.parametrize("mode", ["encoder", "decoder"])
def test_near_and_far_follow_the_last_segment_and_the_window(mode, varied, llama):
    """Facts at known offsets of a 40-token context, read as 44 tokens (encoder: context, question) or 48 (decoder:
    context, question, answer cue): the memory model's and no_memory's last 16-token segment starts at token 32, full
    attention's window of 20 read tokens (a decoder's window of 28 less 4 new tokens) at token 24. A sample is near
    when every supporting fact starts in that span, at its first token included."""
    offsets = [[0], [24], [23], [31], [32], [34], [2, 34]]
    segment = [False, False, False, False, True, True, False]
    window = [False, True, False, True, True, True, False]
    if mode == "encoder":
        backbone, tokenizer, _ = varied
        model, window_size, total = _encoder_memory_model(backbone), 20, 44
    else:
        backbone, tokenizer = llama
        model, window_size, total = memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=16)), 28, 48
    samples = [_placed(o) for o in offsets]
    assert len(tokenizer(samples[0].input, add_special_tokens=False).input_ids) == 40
    results = evaluate_by_length(
        model,
        tokenizer,
        ["qa1"],
        [44],
        len(samples),
        files={("qa1", "44"): samples},
        methods=["memory", "no_memory", "full_attention"],
        window=window_size,
        max_new_tokens=4,
        progress=False,
    )
    expected = {"memory": segment, "no_memory": segment, "full_attention": window}
    for method, near in expected.items():
        records = [r for r in results["predictions"] if r["method"] == method]
        assert [r["supporting_offsets"] for r in records] == offsets
        assert [r["facts_in_last_span"] for r in records] == near, method
        tokens = window_size - (4 if mode == "decoder" else 0) if method == "full_attention" else total
        assert [r["tokens"] for r in records] == [tokens] * len(samples)
        cell = results["cells"][f"qa1/44/{method}"]
        assert cell["facts_in_last_span"]["samples"] == sum(near)
        assert cell["facts_before_last_span"]["samples"] == len(near) - sum(near)


def test_a_decoders_readers_never_score_the_whole_prompt(llama):
    """Every method generates its answer to a 120-token prompt running the LM head on one position at a time (the
    prompt's last token, then each new one): never on the prompt's [1, N] positions."""
    backbone, tokenizer = llama
    model = memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=16)).eval()
    sample = build_dataset("qa1", 120, 1, tokenizer, Haystack.from_text(background_text(400)), seed=0)[0]
    rows = []
    handle = backbone.get_output_embeddings().register_forward_hook(
        lambda module, args, output: rows.append(math.prod(args[0].shape[:-1]))
    )
    try:
        for method, reader in readers(model, tokenizer, list(ALL_METHODS), 48, 4).items():
            rows.clear()
            reader.read(sample)
            assert rows and max(rows) == 1, (method, rows)
    finally:
        handle.remove()
