"""Smoke runs of the benchmark scripts added for real models, long inputs and training (each on tiny settings; the
real runs are in benchmarks/results/): they run end to end and write what they promise."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from conftest import background_text, strengthen_memory, tiny_decoder, tiny_model_folder
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from benchmarks import diagonal_precision, encoder_memory, language_modeling, long_inputs, mixed_precision, processes
from benchmarks.babilong_errors import KINDS, classify, kind_of
from rmt import RMTConfig
from rmt.build import memory_model
from rmt.data.babilong import BabilongSample, answer_labels
from rmt.memory.pretrained import save_memory_model
from rmt.memory.segments import closed_length


def test_language_modeling_smoke(tmp_path, monkeypatch):
    books = [("book one", background_text(800, seed=1)), ("book two", background_text(800, seed=2))]
    monkeypatch.setattr(language_modeling, "default_corpus_texts", lambda: books)
    args = ["--steps", "2", "--document-bytes", "256", "--segment-size", "64", "--eval-documents", "8"]
    args += ["--layers", "1", "--hidden", "32", "--no-progress", "--output", str(tmp_path)]
    # Two processes' worth of kinds fill one folder; a kind already there is not trained again.
    assert language_modeling.main([*args, "--kinds", "baseline", "trxl"]) == 0
    first = json.loads((tmp_path / "results.json").read_text())["runs"]["baseline"]
    assert language_modeling.main([*args, "--kinds", "baseline", "rmt", "trxl+rmt"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == set(language_modeling.KINDS)
    assert results["runs"]["baseline"] == first
    with pytest.raises(SystemExit, match="other settings.*steps"):
        language_modeling.main([*args[2:], "--steps", "3"])
    for run in results["runs"].values():
        assert len(run["bpb_by_segment"]) == 4 and 0 < run["bpb"] < 9  # 256 bytes = 4 segments; untrained ~8 bits
    trxl = results["runs"]["trxl+rmt"]["rmt_config"]
    assert trxl["xl_cache_tokens"] == 20 and trxl["num_memory_tokens"] == 20 and trxl["bptt_depth"] == 2
    assert (tmp_path / "bpb_by_segment.png").exists() and "| trxl |" in (tmp_path / "results.md").read_text()
    assert not trxl["xl_cache_recompute"]
    # A folder made before --xl-recompute existed takes more runs of the default cache, and refuses the other one.
    settings = results["settings"]
    del settings["xl_recompute"], results["runs"]["trxl"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert language_modeling.main([*args, "--kinds", "trxl"]) == 0
    with pytest.raises(SystemExit, match="other settings.*xl_recompute"):
        language_modeling.main([*args, "--kinds", "trxl", "--xl-recompute"])
    recomputed = tmp_path / "recomputed"
    assert language_modeling.main([*args[:-1], str(recomputed), "--kinds", "trxl", "--xl-recompute"]) == 0
    assert json.loads((recomputed / "results.json").read_text())["runs"]["trxl"]["rmt_config"]["xl_cache_recompute"]


def test_diagonal_precision_smoke(tmp_path):
    output = tmp_path / "precision.json"
    args = ["--config", "tiny", "--length", "80", "--segment-size", "16", "--memory-tokens", "2", "--d-mem", "8"]
    assert diagonal_precision.main([*args, "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["error_vs_sequential_bf16"]["sequential_bf16"] == 0.0
    assert record["error_vs_sequential_bf16"]["diagonal_1_bf16"] == 0.0  # one cell at a time: the same kernels
    assert 0 < record["error_vs_fp32"]["sequential_bf16"] < 0.1  # bf16 rounding, but the same logits


def test_encoder_memory_smoke(tmp_path):
    output = tmp_path / "encoder.json"
    assert encoder_memory.main(["--steps", "100", "--seeds", "0", "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert set(record["curves"]) == {f"{v}/0" for v in encoder_memory.VARIANTS}
    assert all(curve[-1][0] == 100 for curve in record["curves"].values())


def test_mixed_precision_table():
    record = {
        "speed": {"model": "m", "steps_per_second": {"fp32": 1.0, "bf16": 1.8}, "speedup": 1.8},
        "demo": {
            "task": "copy",
            "steps": 10,
            "fp32": {"steps_per_second": 10.0, "answer_accuracy": 1.0},
            "bf16": {"steps_per_second": 12.0, "answer_accuracy": 1.0},
        },
    }
    table = mixed_precision.format_table(record)
    assert "| m | 1.000 | 1.800 | 1.80x |" in table and "1.20x" in table


@pytest.mark.slow
def test_mixed_precision_speed_smoke():
    result = mixed_precision.speed(rounds=2, warmup=0)
    assert {name: len(times) for name, times in result["all_seconds"].items()} == {"fp32": 2, "bf16": 2}
    assert result["speedup"] == result["seconds_per_step"]["fp32"] / result["seconds_per_step"]["bf16"]


def test_long_inputs_parts_run_side_by_side_without_losing_each_others_results(tmp_path):
    """Two processes (one per core) each add their part to the same file: neither overwrites the other's runs."""
    args = argparse.Namespace(output=str(tmp_path / "long.json"), threads=1)
    first = {"reading": {"rmt/4096": {"tokens_per_second": 1.0}}}
    second = {"reading": {"armt/4096": {"tokens_per_second": 2.0}}, "generation": {"rmt": {"speedup": 3.0}}}
    long_inputs.save(args, first)
    long_inputs.save(args, second)  # a process that started before the first one saved
    record = json.loads((tmp_path / "long.json").read_text())
    assert set(record["reading"]) == {"rmt/4096", "armt/4096"} and record["generation"]["rmt"]["speedup"] == 3.0


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_long_inputs_recompute_baseline_generates_what_generate_does(kind):
    """The benchmark's no-cache baseline (the open segment re-run for every token) is a reference for `generate`:
    the same greedy tokens, across a segment boundary."""
    armt = {"d_mem": 8} if kind == "armt" else {}
    config = RMTConfig(memory_kind=kind, num_memory_tokens=2, segment_size=8, **armt)
    model = memory_model(tiny_decoder("llama"), config).eval()
    if kind == "armt":
        strengthen_memory(model)
    prompt = torch.randint(0, model.vocab_size, (1, 13), generator=torch.Generator().manual_seed(0))
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False).sequences
    recomputed = long_inputs.recompute_generate(model, prompt, 12, closed_length)
    assert torch.equal(cached, recomputed)


def test_long_inputs_precision_analysis():
    """The precision part's explanation: where greedy answers first differ, and the teacher-forced comparison of two
    models on the same tokens (identical models agree everywhere; a bf16 copy is measured, not assumed equal)."""
    flips = long_inputs.greedy_flips(
        [[1, 2, 3], [4, 5, 6], [7]], [[1, 2, 3], [4, 9, 6], [7, 8]], [[], [0.5, 0.25], [1.0]]
    )
    assert flips == [{"sample": 1, "token": 1, "fp32_margin": 0.25}, {"sample": 2, "token": 1, "fp32_margin": None}]
    assert long_inputs.quantiles([3.0, 1.0, 2.0]) == {"min": 1.0, "p10": 1.2, "median": 2.0, "p90": 2.8, "max": 3.0}

    model = memory_model(tiny_decoder("llama"), RMTConfig(num_memory_tokens=2, segment_size=8)).eval()
    prompts = [torch.randint(0, model.vocab_size, (1, n), generator=torch.Generator().manual_seed(n)) for n in (5, 11)]
    answers = [[3, 4, 5], [6, 7]]
    same = long_inputs.teacher_forced({"fp32": model, "bf16": model}, prompts, answers)
    assert same["tokens"] == 5 and same["top_token_agrees"] == 5 and same["disagreements"] == []
    assert same["max_abs_logit_difference"]["max"] == 0.0
    low = memory_model(tiny_decoder("llama"), RMTConfig(num_memory_tokens=2, segment_size=8)).eval()
    low.load_state_dict(model.state_dict())
    low.to(torch.bfloat16)
    rounded = long_inputs.teacher_forced({"fp32": model, "bf16": low}, prompts, answers)
    expected = []  # the largest |bf16 - fp32| logit at each answer position, computed here on its own
    with torch.no_grad():
        for ids, answer in zip(prompts, answers, strict=True):
            full = torch.cat([ids, torch.tensor([answer])], dim=1)
            reference, other = model(full).logits[0].float(), low(full).logits[0].float()
            start = ids.shape[1] - 1
            expected += (other - reference)[start : start + len(answer)].abs().amax(-1).tolist()
    assert rounded["tokens"] == 5 and min(expected) > 0.0
    # fp32 itself rounds differently when the LM head runs on a few positions or on all of them (about 1e-8 here,
    # depending on the CPU's kernels), so agree to 0.1% of a bf16 difference, not bit for bit.
    assert rounded["max_abs_logit_difference"] == pytest.approx(long_inputs.quantiles(expected), rel=1e-3)


def test_processes_loss_comparison():
    one = [2.0, 1.5, 1.0, 0.5]
    two = [2.0, 1.5 + 5e-5, 1.2, 0.4]
    result = processes.compare_losses(one, two)
    assert result["steps_equal_within_1e-4"] == 2 and result["final_losses"] == [0.5, 0.4]
    assert abs(result["max_loss_difference"] - 0.2) < 1e-12


def test_babilong_errors_sorts_each_answer_and_counts_a_models_answers(tmp_path):
    facts = ["Mary went to the kitchen.", "John moved to the garden.", "Mary travelled to the office."]
    sample = BabilongSample(input=" ".join(facts), question="Where is Mary?", target="office", facts=facts)
    assert [kind_of(sample, room) for room in ("office", "kitchen", "garden", "bedroom")] == [
        "right, also the last fact's room",
        "the asked person's earlier room",
        "another person's room",
        "a room not in the story",
    ]
    earlier = BabilongSample(input="", question="Where is Mary?", target="kitchen", facts=facts[:2])
    assert [kind_of(earlier, room) for room in ("kitchen", "garden")] == ["right", "the last fact's room"]

    folder = tiny_model_folder(tmp_path / "bert", "bert", answer_labels("qa1"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    special = {"cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id}
    config = RMTConfig(num_memory_tokens=2, segment_size=32, mode="encoder", **special)
    save_memory_model(
        memory_model(AutoModelForSequenceClassification.from_pretrained(folder), config),
        tmp_path / "rmt",
        progress=False,
    )
    tokenizer.save_pretrained(tmp_path / "rmt" / "backbone")
    haystack = tmp_path / "book.txt"
    haystack.write_text(background_text(400))
    counts = classify(str(tmp_path / "rmt"), 100, 6, 0, haystack=str(haystack))
    assert set(counts) == {"fact before the last segment", "fact in the last segment"}
    assert all(list(by_kind) == list(KINDS) for by_kind in counts.values())
    assert sum(sum(by_kind.values()) for by_kind in counts.values()) == 6
