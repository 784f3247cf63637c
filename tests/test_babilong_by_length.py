"""The by-length evaluation's bookkeeping on a tiny encoder: samples from public files (no recorded fact depths) are
counted apart from the near/far split, a cell with no samples is refused before anything runs, a file with fewer
samples than asked for is evaluated whole with a warning, and results.json is strict JSON (no NaN); and on a tiny
Llama, the full-attention baseline's generated answer is the backbone's own on the input's last window."""

from __future__ import annotations

import json
import math

import pytest
from conftest import background_text, tiny_model_folder

from rmt import RMTConfig
from rmt.build import memory_model, pretrained_backbone, pretrained_tokenizer
from rmt.data.babilong import BabilongSample, answer_labels, build_dataset
from rmt.data.haystack import Haystack
from rmt.errors import InputError
from rmt.eval.by_length import Outcome, evaluate_by_length, format_table, write_results

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


def test_a_decoders_full_attention_answer_is_the_backbones_own_greedy_answer_on_the_last_window(tmp_path):
    """Beyond the window, full attention reads the prompt's last `window - max_new_tokens` tokens and generates the
    answer in the same window, every answer token attending to the prompt: the backbone's own greedy continuation.
    (A wrapper segment of the prompt's length alone started each answer token after the first in a new segment.)"""
    import torch

    from rmt.eval.by_length import readers

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
    import torch

    from rmt.eval.by_length import readers
    from rmt.memory.generation import stop_token_ids

    torch.manual_seed(0)
    folder = tiny_model_folder(tmp_path, "llama")
    tokenizer = pretrained_tokenizer(str(folder))
    model = memory_model(pretrained_backbone(str(folder)), RMTConfig(num_memory_tokens=2, segment_size=16)).eval()
    sample = build_dataset("qa1", 0, 1, tokenizer, None, seed=0)[0]
    reader = readers(model, tokenizer, ["memory"], None, 6)["memory"]
    prompt = torch.tensor(reader.collate.prompt_ids([sample.to_dict()]))
    tokens = model.generate(prompt, max_new_tokens=6, do_sample=False).sequences[0, prompt.shape[1] :].tolist()
    assert tokenizer.eos_token_id not in tokens[:3]
    model.backbone.generation_config.eos_token_id = [tokens[2], tokens[2] + 1]
    assert stop_token_ids(model, tokenizer) == [tokens[2], tokens[2] + 1, tokenizer.eos_token_id]
    assert reader.read(sample).answer == tokenizer.decode(tokens[:3], skip_special_tokens=True)
