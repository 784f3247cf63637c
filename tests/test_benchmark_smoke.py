"""Smoke runs of the benchmark scripts added for real models, long inputs and training (each on tiny settings; the
real runs are in benchmarks/results/): they run end to end and write what they promise."""

from __future__ import annotations

import argparse
import collections
import json
import math
import statistics

import pytest
import torch
from conftest import background_text, strengthen_memory, tiny_decoder, tiny_model_folder
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from benchmarks import (
    armt_profile,
    armt_state_growth,
    babilong_distractors,
    babilong_fact_segment,
    babilong_memory_probe,
    babilong_mentions_haystack,
    babilong_rescore,
    bptt_memory,
    diagonal_precision,
    encoder_memory,
    language_modeling,
    language_modeling_compare,
    language_modeling_paired,
    long_document_lm,
    long_inputs,
    memory_scale,
    mixed_precision,
    processes,
)
from benchmarks.babilong_errors import KINDS, classify, classify_predictions, kind_of, named_room
from benchmarks.common import time_in_turns
from rmt import RMTConfig
from rmt.build import memory_model, random_backbone
from rmt.data.babilong import PLACES, BabilongSample, answer_labels, build_dataset
from rmt.data.babilong_source import distractor_background
from rmt.data.haystack import Haystack, load_haystack
from rmt.eval.by_length import evaluate_by_length
from rmt.memory.pretrained import save_memory_model
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.memory.segments import closed_length


def test_language_modeling_weighs_each_segment_by_the_tokens_it_predicts():
    """A partial last segment (--document-bytes not a multiple of --segment-size) weighed as a full one."""
    assert language_modeling.predicted_tokens(256, 64) == [63, 64, 64, 64]
    assert language_modeling.predicted_tokens(200, 64) == [63, 64, 64, 8]
    assert sum(language_modeling.predicted_tokens(200, 64)) == 199


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
    # A folder made before --xl-recompute (and the later settings) existed takes more runs of the default cache, and
    # refuses the other one.
    settings = results["settings"]
    for name in ("xl_recompute", "cache", "xl_contiguous_positions", "unit", "document_words", "vocabulary"):
        del settings[name]
    del results["runs"]["trxl"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert language_modeling.main([*args, "--kinds", "trxl"]) == 0
    with pytest.raises(SystemExit, match="other settings.*xl_recompute"):
        language_modeling.main([*args, "--kinds", "trxl", "--xl-recompute"])
    recomputed = tmp_path / "recomputed"
    assert language_modeling.main([*args[:-1], str(recomputed), "--kinds", "trxl", "--xl-recompute"]) == 0
    assert json.loads((recomputed / "results.json").read_text())["runs"]["trxl"]["rmt_config"]["xl_cache_recompute"]
    rescaled = tmp_path / "rescaled"  # the memory's write scale reaches the memory kinds' configs only
    rescale = ["--memory-write-scale", "token_embeddings"]
    assert language_modeling.main([*args[:-1], str(rescaled), "--kinds", "rmt", "trxl", *rescale]) == 0
    runs = json.loads((rescaled / "results.json").read_text())["runs"]
    assert runs["rmt"]["rmt_config"]["memory_write_scale"] == "token_embeddings"
    assert runs["trxl"]["rmt_config"]["memory_write_scale"] == "hidden"
    longer = tmp_path / "longer-cache"  # --cache sets the Transformer-XL cache apart from the memory tokens
    contiguous = ["--cache", "32", "--memory", "4", "--xl-contiguous-positions"]
    assert language_modeling.main([*args[:-1], str(longer), "--kinds", "trxl", "trxl+rmt", *contiguous]) == 0
    runs = json.loads((longer / "results.json").read_text())["runs"]
    assert [runs["trxl"]["rmt_config"][k] for k in ("xl_cache_tokens", "num_memory_tokens")] == [32, 0]
    both = runs["trxl+rmt"]["rmt_config"]
    assert [both[k] for k in ("xl_cache_tokens", "num_memory_tokens", "xl_contiguous_positions")] == [32, 4, True]
    assert not runs["trxl"]["rmt_config"]["xl_contiguous_positions"]  # no memory tokens to place
    with pytest.raises(SystemExit, match="other settings.*cache"):
        language_modeling.main([*args[:-1], str(longer), "--kinds", "rmt", "--memory", "4"])


def test_language_modeling_reads_words_with_a_vocabulary_of_the_training_documents(monkeypatch):
    """Words as WikiText-103 splits them; the vocabulary counted on the training documents only (a word seen only in
    held-out text reads as <unk>); every document the same number of words; deterministic per seed."""
    text = "Don't stop. " * 30 + "rare words 12 here " + "held " * 4 + "the end; " * 30
    monkeypatch.setattr(language_modeling, "default_corpus_texts", lambda: [("book", text)])
    assert language_modeling.WORD.findall("Don't stop, 12 cats.") == ["Don't", "stop", ",", "12", "cats", "."]
    corpus = language_modeling.word_documents(10, 5, 0.2, seed=0)
    assert len({len(d) for d in corpus.train + corpus.held_out}) == 1 and len(corpus.train[0]) == 10
    assert corpus.vocabulary_size == 5 and all(0 <= i < 5 for d in corpus.train + corpus.held_out for i in d)
    words = language_modeling.WORD.findall(text)
    pieces = [tuple(words[i : i + 10]) for i in range(0, len(words) - 9, 10)]
    train, held_out = language_modeling.split(pieces, 0.2, 0, "10 words")
    counts = collections.Counter(w for piece in train for w in piece)
    vocabulary = {w: i + 1 for i, (w, _) in enumerate(counts.most_common(4))}
    assert corpus.train == [tuple(vocabulary.get(w, 0) for w in piece) for piece in train]
    assert corpus.held_out == [tuple(vocabulary.get(w, 0) for w in piece) for piece in held_out]
    unknown = sum(w not in vocabulary for piece in held_out for w in piece) / (10 * len(held_out))
    assert corpus.unknown_share == pytest.approx(unknown)
    again = language_modeling.word_documents(10, 5, 0.2, seed=0)
    assert (again.train, again.held_out) == (corpus.train, corpus.held_out)
    assert language_modeling.word_documents(10, 5, 0.2, seed=1).held_out != corpus.held_out


def test_language_modeling_in_words_smoke(tmp_path, monkeypatch, capsys):
    """--unit word trains and scores on word ids (perplexity = 2 ** bits per word), pairs its runs, and refuses the
    other unit's flags."""
    books = [("book one", background_text(800, seed=1)), ("book two", background_text(800, seed=2))]
    monkeypatch.setattr(language_modeling, "default_corpus_texts", lambda: books)
    args = ["--unit", "word", "--steps", "2", "--document-words", "100", "--segment-size", "32", "--vocabulary", "16"]
    args += ["--layers", "1", "--hidden", "32", "--memory", "4", "--no-progress", "--eval-documents", "6"]
    assert language_modeling.main([*args, "--kinds", "baseline", "rmt", "--output", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["document_bytes"] is None and results["documents"]["vocabulary"] == 16
    assert 0 < results["documents"]["unknown_share"] < 1
    for kind, run in results["runs"].items():
        assert "bpb" not in run and len(run["bpw_by_segment"]) == 4  # 100 words = 3 segments of 32 and one of 4
        assert run["perplexity"] == pytest.approx(2 ** run["bpw"])
        assert run["perplexity_by_segment"] == pytest.approx([2**b for b in run["bpw_by_segment"]])
        assert 0 < run["bpw"] < 5  # untrained: about log2(16) = 4 bits
        backbone = RecurrentMemoryModel.from_pretrained(tmp_path / "runs" / kind / "checkpoint" / "model").backbone
        assert backbone.config.vocab_size == 16
    assert (tmp_path / "perplexity_by_segment.png").exists() and "| perplexity | bpw |" in (
        tmp_path / "results.md"
    ).read_text()
    output = tmp_path / "paired.json"
    assert language_modeling_paired.main([f"{tmp_path}:rmt", f"{tmp_path}:baseline", "--output", str(output)]) == 0
    paired = json.loads(output.read_text())
    difference = results["runs"]["rmt"]["bpw"] - results["runs"]["baseline"]["bpw"]
    assert paired["mean_difference"] == pytest.approx(difference, abs=1e-6)
    assert paired["perplexity_ratio"] == pytest.approx(
        results["runs"]["rmt"]["perplexity"] / results["runs"]["baseline"]["perplexity"], rel=1e-5
    )
    assert "bpw, 95% interval" in capsys.readouterr().out
    other = tmp_path / "other-vocabulary"  # another vocabulary holds out the same words as other ids: refused
    assert language_modeling.main([*args, "--vocabulary", "12", "--kinds", "baseline", "--output", str(other)]) == 0
    with pytest.raises(SystemExit, match="held out other documents \\(--vocabulary 16 against 12\\)"):
        language_modeling_paired.main([f"{tmp_path}:rmt", f"{other}:baseline"])

    # Runs of separate folders in one plot and table: the later segments weighted by the words each predicts.
    compared = tmp_path / "compared"
    deeper = tmp_path / "deeper"  # another model size, written before memory_write_scale was recorded
    deeper.mkdir()
    older_rmt = {k: v for k, v in results["runs"]["rmt"]["rmt_config"].items() if k != "memory_write_scale"}
    older = {**results, "settings": {**results["settings"], "layers": 2}}
    older["runs"] = {"rmt": {**results["runs"]["rmt"], "rmt_config": older_rmt}}
    (deeper / "results.json").write_text(json.dumps(older))
    specs = [f"{tmp_path}:rmt=memory", f"{tmp_path}:baseline", f"{deeper}:rmt=two layers"]
    assert language_modeling_compare.main([*specs, "--output", str(compared)]) == 0
    rows = json.loads((compared / "comparison.json").read_text())["runs"]
    by_segment = results["runs"]["rmt"]["bpw_by_segment"]
    assert rows[0]["overall_perplexity"] == pytest.approx(results["runs"]["rmt"]["perplexity"])
    # 100 words in segments of 32: 31, 32, 32 and 4 words predicted
    assert rows[0]["later_segments"] == pytest.approx(
        (32 * by_segment[1] + 32 * by_segment[2] + 4 * by_segment[3]) / 68
    )
    assert [row["label"] for row in rows] == ["memory", f"{tmp_path}:baseline", "two layers"]
    assert [row["settings"]["memory"] for row in rows] == [4, 0, 4]
    assert [row["settings"]["write"] for row in rows] == ["hidden", "-", "hidden"]
    table = (compared / "comparison.md").read_text()
    assert "| memory | bptt | write | layers |" in table and table.count("| hidden |") == 2  # no column alike in all
    assert (compared / "comparison.png").exists()
    cut = tmp_path / "cut-otherwise"  # segments of another size do not line up: refused
    cut.mkdir()
    recut = {**results, "settings": {**results["settings"], "segment_size": 16}}
    (cut / "results.json").write_text(json.dumps(recut))
    for runs, message in (
        ([f"{tmp_path}:rmt", f"{cut}:rmt"], "segment_size 32 against 16"),
        ([f"{tmp_path}:rmt", f"{other}:baseline"], "vocabulary 16 against 12"),
        ([f"{tmp_path}:rmt", f"{tmp_path}:trxl"], "holds no 'trxl' run \\(it holds: baseline, rmt\\)"),
        ([f"{tmp_path}:rmt=a", f"{tmp_path}:baseline=a"], "two runs share a label"),
    ):
        with pytest.raises(SystemExit, match=message):
            language_modeling_compare.main([*runs, "--output", str(tmp_path / "refused-comparison")])
    assert not (tmp_path / "refused-comparison").exists()
    for flags, message in (
        (["--vocabulary", "64"], "--vocabulary: only for --unit word"),
        (["--unit", "word", "--document-bytes", "256"], "--document-bytes: only for --unit byte"),
        (["--unit", "word", "--vocabulary", "1"], "at least one word besides <unk>"),
    ):
        with pytest.raises(SystemExit):
            language_modeling.main([*flags, "--output", str(tmp_path / "refused")])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit, match="gives 0 document\\(s\\) of 100000 words: too few to train and hold out"):
        language_modeling.main([*args, "--document-words", "100000", "--output", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize(
    "segment_size, memory, cache", [(50, 10, None), (128, 20, None), (64, 4, None), (150, 10, 150)]
)
def test_language_modeling_backbone_covers_the_positions_every_kind_uses(segment_size, memory, cache):
    """Transformer-XL + memory at segments of 50 reached position 1243 where the backbone was given 1164 positions
    (harmless for a Llama's rotary positions, fatal for a position table)."""
    args = argparse.Namespace(memory=memory, segment_size=segment_size, bptt=-1, xl_recompute=False, cache=cache)
    args.memory_write_scale, args.xl_contiguous_positions = "hidden", False
    needed = language_modeling.positions_needed(1024, segment_size, memory)
    for kind in language_modeling.KINDS:
        backbone = random_backbone("llama", 256, 1, 16, 2, needed, seed=0)
        model = memory_model(backbone, language_modeling.config_of(kind, args))
        used = []
        model.backbone.base_model.register_forward_pre_hook(
            lambda _, __, kwargs, used=used: used.append(int(kwargs["position_ids"].max())), with_kwargs=True
        )
        with torch.no_grad():
            model(torch.randint(0, 256, (1, 1024)))
        assert len(used) == -(-1024 // segment_size) and max(used) < needed, (kind, used)


def test_language_modeling_paired_reads_the_models_again_and_pairs_their_documents(tmp_path, monkeypatch, capsys):
    """The per-document losses, summed per segment, give the bpb by segment that the benchmark recorded; the paired
    numbers (mean difference, interval, documents won, each side's bpb) are those of the per-document bpb; runs that
    scored different numbers of documents pair on the documents both scored."""
    from rmt.memory.recurrent import RecurrentMemoryModel

    books = [("book one", background_text(800, seed=1)), ("book two", background_text(800, seed=2))]
    monkeypatch.setattr(language_modeling, "default_corpus_texts", lambda: books)
    args = ["--steps", "2", "--document-bytes", "200", "--segment-size", "64"]
    args += ["--layers", "1", "--hidden", "32", "--no-progress", "--memory", "4"]
    six = ["--eval-documents", "6", "--kinds", "baseline", "rmt", "--output", str(tmp_path / "a")]
    assert language_modeling.main([*args, *six]) == 0
    recorded = json.loads((tmp_path / "a" / "results.json").read_text())["runs"]
    backbone = json.loads(
        (tmp_path / "a" / "runs" / "rmt" / "checkpoint" / "model" / "backbone" / "config.json").read_text()
    )
    assert backbone["max_position_embeddings"] == language_modeling.positions_needed(200, 64, 4)  # as the run sized it
    _, held_out = language_modeling.documents(200, language_modeling.HELD_OUT, 0)
    weights = language_modeling.predicted_tokens(200, 64)
    nats = {}
    for kind in ("rmt", "baseline"):
        model = RecurrentMemoryModel.from_pretrained(tmp_path / "a" / "runs" / kind / "checkpoint" / "model")
        nats[kind] = language_modeling.nats_by_document(model, held_out[:6], 64, 4)
        by_segment = (nats[kind].sum(0) / (6 * torch.tensor(weights)) / math.log(2)).tolist()
        assert by_segment == pytest.approx(recorded[kind]["bpb_by_segment"], rel=1e-6)  # the run's own record

    def check(result: dict, documents: int, first_segment: int) -> None:
        """`result` against the per-document bpb of rmt and baseline on the first `documents` documents."""
        rmt, baseline = (
            nats[kind][:documents, first_segment - 1 :].sum(1) / sum(weights[first_segment - 1 :]) / math.log(2)
            for kind in ("rmt", "baseline")
        )
        difference = rmt - baseline
        mean, half = float(difference.mean()), 1.96 * float(difference.std()) / math.sqrt(documents)
        assert result["documents"] == documents and result["from_segment"] == first_segment
        assert result["mean_difference"] == pytest.approx(mean, abs=1e-9)
        assert result["interval_95"] == pytest.approx([mean - half, mean + half], abs=1e-9)
        assert result["documents_first_better"] == int((difference < 0).sum())
        assert list(result["bpb"].values()) == pytest.approx([float(rmt.mean()), float(baseline.mean())], abs=1e-9)

    output = tmp_path / "paired.json"
    first, second = f"{tmp_path / 'a'}:rmt", f"{tmp_path / 'a'}:baseline"
    assert language_modeling_paired.main([first, second, "--output", str(output)]) == 0
    check(json.loads(output.read_text()), 6, 1)
    overall = recorded["rmt"]["bpb"] - recorded["baseline"]["bpb"]  # all segments: the difference of the overall bpb
    assert json.loads(output.read_text())["mean_difference"] == pytest.approx(overall, abs=1e-6)
    assert language_modeling_paired.main([first, second, "--from-segment", "2", "--output", str(output)]) == 0
    check(json.loads(output.read_text()), 6, 2)
    assert "documents, segments 2+:" in capsys.readouterr().out

    # The same no-memory run, scoring 4 documents: each side is checked on its own documents, paired on the first 4.
    assert language_modeling.main([*args, "--eval-documents", "4", "--kinds", "baseline", "--output",
                                   str(tmp_path / "b")]) == 0  # fmt: skip
    assert language_modeling_paired.main([first, f"{tmp_path / 'b'}:baseline", "--output", str(output)]) == 0
    check(json.loads(output.read_text()), 4, 1)

    # Runs of another seed held out other documents; a record the checkpoint does not give; a kind not trained.
    assert language_modeling.main([*args, "--kinds", "baseline", "--seed", "1", "--output", str(tmp_path / "c")]) == 0
    with pytest.raises(SystemExit, match="held out other documents \\(--seed 0 against 1\\)"):
        language_modeling_paired.main([first, f"{tmp_path / 'c'}:baseline"])
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    results["runs"]["rmt"]["bpb"] += 2e-4  # past the tolerance of 1e-4
    (tmp_path / "a" / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="the checkpoint is not the model that made the record"):
        language_modeling_paired.main([first, second])
    with pytest.raises(SystemExit, match="holds no 'trxl' run \\(it holds: baseline, rmt\\)"):
        language_modeling_paired.main([f"{tmp_path / 'a'}:trxl", second])
    with pytest.raises(SystemExit, match="--from-segment 5: the documents have segments 1 to 4"):
        language_modeling_paired.main([first, second, "--from-segment", "5"])


def test_bptt_memory_measures_the_trainer_steps(tmp_path, monkeypatch):
    """The two Trainer rows of benchmarks.bptt_memory run and are recorded (measured in this process here: each
    worker process of a real run imports the Trainer again, 10 s a measurement)."""
    monkeypatch.setattr(bptt_memory, "measure", bptt_memory.measure_once)
    output = tmp_path / "bptt.json"
    tiny = ["--layers", "1", "--hidden", "32", "--heads", "2", "--segment-size", "8", "--batch-size", "2"]
    bptt_memory.main([*tiny, "--segments", "2", "3", "--paths", "memory-trainer", "hf-trainer", "--json", str(output)])
    rows = json.loads(output.read_text())["rows"]
    assert [(row["path"], row["bptt_depth"]) for row in rows] == [("memory-trainer", 2), ("hf-trainer", 2)]
    assert all(len(row["peak_bytes"]) == 2 for row in rows)  # in one process a high-water mark: no values to check


def test_diagonal_precision_smoke(tmp_path):
    output = tmp_path / "precision.json"
    args = ["--config", "tiny", "--length", "80", "--segment-size", "16", "--memory-tokens", "2", "--d-mem", "8"]
    assert diagonal_precision.main([*args, "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["error_vs_sequential_bf16"]["diagonal_all_bf16"] == 0.0  # grouped cells: bit for bit on a CPU
    assert record["error_vs_sequential_bf16"]["diagonal_1_bf16"] == 0.0  # one cell at a time: the same kernels
    assert 0 < record["error_vs_fp32"]["sequential_bf16"] < 0.1  # bf16 rounding, but the same logits
    assert record["diagonal_all_fp32_vs_sequential_fp32"] < 1e-5  # in fp32 the grouped engine is exact


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
    # Each entry names its machine (parts of one file may be measured on different ones).
    entries = [entry for part in ("reading", "generation") for entry in record[part].values()]
    assert len(entries) == 3 and all(entry["device"] and entry["threads"] == 1 for entry in entries)
    # A run on another CPU keeps this one's entry and goes beside it.
    record = json.loads((tmp_path / "long.json").read_text())
    record["reading"]["rmt/4096"]["device"] = "another CPU"
    (tmp_path / "long.json").write_text(json.dumps(record))
    long_inputs.save(args, {"reading": {"rmt/4096": {"tokens_per_second": 5.0}}})
    reading = json.loads((tmp_path / "long.json").read_text())["reading"]
    here = long_inputs.device_name("cpu")
    assert reading["rmt/4096"]["tokens_per_second"] == 1.0 and reading[f"rmt/4096 @ {here}"]["tokens_per_second"] == 5.0


def test_long_inputs_bf16_gemm_times_each_projection_shape(tmp_path, monkeypatch):
    """The bf16 ceiling part: every projection shape of a layer, fp32 against bf16, and the layer's sum."""
    import rmt.build

    monkeypatch.setattr(rmt.build, "pretrained_backbone", lambda name: tiny_decoder("llama"))
    monkeypatch.setattr(long_inputs, "GEMM_CALLS", 2)
    args = argparse.Namespace(output=str(tmp_path / "long.json"), threads=1, segment_sizes=[8], repeats=1)
    long_inputs.bf16_gemm(args, {})
    record = json.loads((tmp_path / "long.json").read_text())["bf16_gemm"]
    rows = record["rows 24"]  # segment 8 + 16 memory tokens
    assert set(rows) == {"q, o", "k, v", "gate, up", "down", "layer", "device", "threads"}
    rows = {name: entry for name, entry in rows.items() if name not in ("device", "threads")}
    assert rows["gate, up"]["rows, in, out"][0] == 24
    for entry in (*rows.values(), record["square 1024"]):
        assert entry["bf16 speedup"] > 0 and entry["fp32 seconds"] > 0


def test_babilong_rescore_names_the_results_it_cannot_rescore(tmp_path, capsys):
    """A results folder without its answers (predictions.jsonl) keeps its scores, and the run says so."""
    (tmp_path / "old-eval").mkdir()
    (tmp_path / "old-eval" / "results.json").write_text(json.dumps({"cells": {}}))
    assert babilong_rescore.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 folders rescored" in out and "1 folders hold results without predictions.jsonl" in out
    assert str(tmp_path / "old-eval") in out


def test_babilong_rescore_applies_the_current_answer_check(tmp_path):
    """A saved answer that names two rooms was right under the old check; rescoring makes it wrong and updates the
    cell's count, accuracy and spans from the predictions, keeping its time."""
    cell = {"accuracy": 1.0, "ci95": [0.34, 1.0], "correct": 2, "samples": 2, "tokens": 10, "seconds": 1.0}
    cell.update(task="qa1", length="1k", method="memory", tokens_per_second=10.0)
    results = {"tasks": ["qa1"], "lengths": ["1k"], "methods": ["memory"], "cells": {"qa1/1k/memory": cell}}
    base = {"task": "qa1", "length": "1k", "method": "memory", "correct": True}
    predictions = [
        {**base, "sample": 0, "target": "kitchen", "answer": " kitchen office office", "facts_in_last_span": False},
        {**base, "sample": 1, "target": "garden", "answer": " garden.", "facts_in_last_span": True},
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    assert babilong_rescore.main([str(tmp_path)]) == 0
    rescored = json.loads((tmp_path / "results.json").read_text())["cells"]["qa1/1k/memory"]
    assert (rescored["correct"], rescored["accuracy"], rescored["seconds"]) == (1, 0.5, 1.0)
    assert rescored["facts_before_last_span"] == {"correct": 0, "samples": 1}
    assert rescored["facts_in_last_span"] == {"correct": 1, "samples": 1}
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["correct"] for line in lines] == [False, True]
    assert "0.50" in (tmp_path / "table.md").read_text()
    predictions[0]["task"] = "qa5"  # a qa5 question may name an answer: without it, no verdict
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    with pytest.raises(SystemExit, match="qa5 prediction without its question"):
        babilong_rescore.main([str(tmp_path)])


def test_time_in_turns_alternates_the_order_and_drops_the_warmup_rounds():
    calls: list[str] = []
    runs = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = time_in_turns(runs, rounds=3, warmup=1)
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c", "c", "b", "a"]
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0.0 for seconds in times.values() for t in seconds)


def test_long_inputs_bf16_speed_times_both_precisions_by_segment_size(tmp_path, monkeypatch):
    """The bf16-speed part on tiny models: one entry per (kind, segment size), each timing the model built in its
    precision with its segment size; the speed-up is the ratio of the two measured rates, and the profiled time is
    split by kind of operation (the backbone's projections are matmuls, ARMT's memory adds batched matmuls)."""
    built = []

    def tiny_build(kind, dtype=torch.float32, segment_size=long_inputs.SEGMENT):
        built.append((kind, dtype, segment_size))
        if kind == "full":
            return tiny_decoder("llama").to(dtype).eval()
        config = RMTConfig(num_memory_tokens=2, segment_size=segment_size)
        if kind == "armt":
            config = RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=segment_size, d_mem=8)
        return memory_model(tiny_decoder("llama"), config).to(dtype).eval()

    monkeypatch.setattr(long_inputs, "build", tiny_build)
    output = tmp_path / "long.json"
    args = ["bf16-speed", "--kinds", "rmt", "armt", "full", "--segment-sizes", "8", "16", "--length", "40"]
    assert long_inputs.main([*args, "--repeats", "1", "--output", str(output)]) == 0
    entries = json.loads(output.read_text())["bf16_speed"]
    kinds = ("rmt", "armt", "full")
    assert set(entries) == {f"{kind}/segment {size}" for kind in kinds for size in (8, 16)}
    for key, entry in entries.items():
        assert entry["length"] == 40 and entry["repeats"] == 1
        ratio = entry["bf16_tokens_per_second"] / entry["fp32_tokens_per_second"]
        assert entry["bf16_speedup"] == pytest.approx(ratio)
        for precision in ("fp32", "bf16"):
            seconds = entry["profile_seconds"][precision]
            assert set(seconds) == {"matmul", "batched matmul", "attention", "other"}
            assert seconds["matmul"] > 0 and seconds["other"] > 0
            assert (seconds["batched matmul"] > 0) == key.startswith("armt")
        assert ("batched matmul" in entry["profile_speedup"]) == key.startswith("armt")
        speedup = entry["profile_speedup"]["matmul"]
        assert speedup == entry["profile_seconds"]["fp32"]["matmul"] / entry["profile_seconds"]["bf16"]["matmul"]
    assert {(kind, size) for kind, _, size in built} == {(k, s) for k in kinds for s in (8, 16)}
    assert {dtype for *_, dtype, _ in built} == {torch.float32, torch.bfloat16}


def test_least_busy_profiles_takes_turns_and_keeps_each_runs_least_total(monkeypatch):
    calls: list[str] = []
    totals = {"fp32": iter([5.0, 3.0, 4.0]), "bf16": iter([2.0, 2.5, 1.0])}

    def fake_op_seconds(run):
        name = run()
        calls.append(name)
        return {"matmul": next(totals[name]), "other": 0.5}

    monkeypatch.setattr(long_inputs, "op_seconds", fake_op_seconds)
    runs = {"fp32": lambda: "fp32", "bf16": lambda: "bf16"}
    profiles = long_inputs.least_busy_profiles(runs, rounds=3)
    assert calls == ["fp32", "bf16", "bf16", "fp32", "fp32", "bf16"]
    assert profiles == {"fp32": {"matmul": 3.0, "other": 0.5}, "bf16": {"matmul": 1.0, "other": 0.5}}


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
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False)
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


def test_babilong_errors_sorts_generated_answers_from_predictions(tmp_path):
    assert named_room(" The Office. Then the garden") == "office"
    assert named_room("garden or kitchen") == "garden" and named_room("kitchen, not the garden") == "kitchen"
    assert named_room(" I do not know. The garden.") is None
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_folder(tmp_path / "bert", "bert", answer_labels("qa1")))
    haystack = tmp_path / "book.txt"
    haystack.write_text(background_text(400))
    samples = build_dataset("qa1", 100, 4, tokenizer, load_haystack(haystack), seed=0)
    other = next(room for room in PLACES if all(room not in fact for fact in samples[1].facts))
    hedge = f" {samples[3].target} or the {next(room for room in PLACES if room != samples[3].target)}"
    # Right or wrong as the evaluation scored it: the hedge names the target first but is wrong.
    answers = [(f" {samples[0].target}.", True), (f" the {other}", False), (" nowhere", False), (hedge, False)]
    records = [
        {"task": "qa1", "length": "100", "method": "memory", "seed": sample.seed, "target": sample.target,
         "answer": answer, "correct": correct, "facts_in_last_span": index == 0}
        for index, (sample, (answer, correct)) in enumerate(zip(samples, answers, strict=True))
    ]  # fmt: skip
    counts = classify_predictions(records, tokenizer, haystack=str(haystack))["100/memory"]
    right = kind_of(samples[0], samples[0].target)
    assert counts["fact in the last segment"] == {kind: int(kind == right) for kind in KINDS}
    before = counts["fact before the last segment"]
    assert before["a room not in the story"] == 1 and before["no room"] == 1
    assert before["the right room first, with another"] == 1 and sum(before.values()) == 3
    records[0]["target"] = other if other != samples[0].target else "hallway"
    with pytest.raises(SystemExit, match="rebuilt with another target"):
        classify_predictions(records, tokenizer, haystack=str(haystack))


def test_babilong_distractors_counts_rooms_after_the_fact_and_rereads_without_them(tmp_path):
    facts = ["Mary went to the kitchen."]
    text = "The Garden was wet. " + facts[0] + " She left the garden and the office; the GARDEN again."
    sample = BabilongSample(input=text, question="Where is Mary?", target="kitchen", facts=facts, supporting_facts=[0])
    rooms = babilong_distractors.rooms_after_fact(sample)  # the garden before the fact does not count
    assert rooms == {"hallway": 0, "bathroom": 0, "kitchen": 0, "office": 1, "bedroom": 0, "garden": 2}
    cleared = babilong_distractors.without_room_after_fact(sample, "garden")
    assert cleared.input == "The Garden was wet. " + facts[0] + " She left the cellar and the office; the cellar again."
    assert babilong_distractors.rooms_after_fact(cleared)["garden"] == 0
    # A story may repeat a sentence: the rooms after its last supporting fact start after the second one.
    story = ["Mary went to the kitchen.", "John moved to the office.", "Mary went to the kitchen."]
    repeated = BabilongSample(
        input=" ".join([story[0], "The garden.", story[1], story[2], "The hallway."]),
        question="Where is Mary?",
        target="kitchen",
        facts=story,
        supporting_facts=[2],
    )
    after_repeat = babilong_distractors.rooms_after_fact(repeated)
    assert after_repeat["hallway"] == 1 and after_repeat["garden"] == after_repeat["office"] == 0

    records = [
        {"target": "kitchen", "answer": "garden", "correct": False, "rooms": rooms},
        {"target": "kitchen", "answer": "kitchen", "correct": True, "rooms": rooms},
        {"target": "office", "answer": "bedroom", "correct": False, "rooms": dict.fromkeys(rooms, 0)},
    ]
    summary = babilong_distractors.summarise(records)
    assert summary["wrong"] == 2 and summary["wrong_answer_mentioned_after_fact"] == 1
    assert summary["control_other_room_mentioned_after_fact"] == 4 / 15  # garden, office in two records of five rooms
    assert summary["by_room"]["garden"] == {"samples_mentioning_it_after_the_fact": 2, "answered_with_it": 1}
    assert summary["by_room"]["office"] == {"samples_mentioning_it_after_the_fact": 2, "answered_with_it": 0}

    # End to end on a tiny encoder: rmt eval's predictions, rebuilt from their seeds, reread without the rooms.
    folder = tiny_model_folder(tmp_path / "bert", "bert", answer_labels("qa1"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    special = {"cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id}
    config = RMTConfig(num_memory_tokens=2, segment_size=32, mode="encoder", **special)
    model = memory_model(AutoModelForSequenceClassification.from_pretrained(folder), config)
    save_memory_model(model, tmp_path / "rmt", progress=False)
    tokenizer.save_pretrained(tmp_path / "rmt" / "backbone")
    haystack = tmp_path / "book.txt"
    rooms_sentence = " The bathroom, the bedroom, the garden, the hallway, the kitchen and the office were empty. "
    haystack.write_text(rooms_sentence.join(background_text(2, seed=seed) for seed in range(200)))
    results = evaluate_by_length(
        model,
        tokenizer,
        ["qa1"],
        [120],
        8,
        Haystack.from_text(haystack.read_text()),
        output_dir=tmp_path / "eval",
        progress=False,
        num_facts=1,
    )
    args = [str(tmp_path / "eval" / "predictions.jsonl"), "--model", str(tmp_path / "rmt"), "--facts", "1"]
    babilong_distractors.main([*args, "--haystack", str(haystack), "--reread", "--output", str(tmp_path / "d.json")])
    written = json.loads((tmp_path / "d.json").read_text())
    cell = written["summary"]["120/memory"]
    assert cell["samples"] == 8 and cell["wrong"] == 8 - results["cells"]["qa1/120/memory"]["correct"]
    reread = [s for s in written["samples"] if "answer_without_the_room" in s]
    assert 0 < len(reread) == cell["reread_without_the_room"] == cell["wrong_answer_mentioned_after_fact"]
    assert all(s["answer_without_the_room"] in answer_labels("qa1") for s in reread)
    assert cell["reread_now_right"] == sum(s["right_without_the_room"] for s in reread)
    with pytest.raises(SystemExit, match="another target"):  # rebuilt with other settings than the evaluation's
        babilong_distractors.main(
            [*args[:3], "--facts", "2", "--haystack", str(haystack), "--output", str(tmp_path / "x")]
        )


def test_babilong_memory_probe_swaps_the_fact_room_and_measures_whether_the_answer_follows(tmp_path):
    text = "The garden was wet. Mary went to the kitchen. The kitchen door was open."
    facts = ["Mary went to the kitchen."]
    sample = BabilongSample(input=text, question="Where is Mary?", target="kitchen", facts=facts, supporting_facts=[0])
    moved = babilong_memory_probe.with_fact_room(sample, "office")  # the fact only, not the background
    assert moved.input == "The garden was wet. Mary went to the office. The kitchen door was open."
    assert moved.target == "office" and moved.facts == ["Mary went to the office."]

    rooms = range(len(PLACES))  # readings[sample][fact's room][room's score]
    follower = [[[10.0 if room == fact else float(room) for room in rooms] for fact in rooms]] * 2
    ignorer = [[[float(room) for room in rooms] for _ in rooms]] * 2
    follows, ignores = babilong_memory_probe.summarise(follower), babilong_memory_probe.summarise(ignorer)
    assert follows["follows"] == 1.0 and follows["distinct_answers_per_sample"]["6"] == 2
    assert follows["median_lift"] == statistics.median(10.0 - room for room in rooms)  # a room scores itself otherwise
    assert ignores["follows"] == pytest.approx(1 / 6) and ignores["distinct_answers_per_sample"]["1"] == 2
    assert ignores["median_lift"] == 0.0 and ignores["median_score_spread_within_a_reading"] == 5.0

    # End to end on a tiny encoder and decoder: every fact ends in the first segment, and the decoder's room scores
    # are the last position's logits of a full forward pass.
    haystack = tmp_path / "book.txt"
    haystack.write_text(background_text(400))
    for kind, labels in (("bert", answer_labels("qa1")), ("llama", None)):
        folder = tiny_model_folder(tmp_path / kind, kind, labels)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if kind == "bert":
            special = {"cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id}
            config = RMTConfig(num_memory_tokens=2, segment_size=32, mode="encoder", **special)
            backbone = AutoModelForSequenceClassification.from_pretrained(folder)
        else:
            config, backbone = (
                RMTConfig(num_memory_tokens=2, segment_size=32),
                AutoModelForCausalLM.from_pretrained(folder),
            )
        model = memory_model(backbone, config).eval()
        save_memory_model(model, tmp_path / f"{kind}-rmt", progress=False)
        tokenizer.save_pretrained(tmp_path / f"{kind}-rmt" / "backbone")
        args = [str(tmp_path / f"{kind}-rmt"), "--length", "120", "--samples", "3", "--haystack", str(haystack)]
        babilong_memory_probe.main([*args, "--output", str(tmp_path / f"{kind}.json")])
        written = json.loads((tmp_path / f"{kind}.json").read_text())
        assert written["summary"]["samples"] == 3 and written["segment_size"] == 32
        assert all(
            len(s["room_scores"]) == 6 and all(len(r) == 6 for r in s["room_scores"]) for s in written["samples"]
        )
        samples = babilong_memory_probe.probe_samples(tokenizer, load_haystack([haystack]), 120, 32, 3, 0)
        assert [s.seed for s in samples] == [s["seed"] for s in written["samples"]]
        assert all(babilong_memory_probe.fact_end_token(s, tokenizer) <= 28 for s in samples)
        scorer = babilong_memory_probe.RoomScorer(model, tokenizer)
        for sample, recorded in zip(samples, written["samples"], strict=True):
            swapped = babilong_memory_probe.with_fact_room(sample, PLACES[2])
            assert scorer.scores(swapped) == pytest.approx(recorded["room_scores"][2])
            if kind == "llama":
                ids = torch.tensor(scorer.collate.prompt_ids([swapped.to_dict()]))
                with torch.no_grad():
                    full = model(ids).logits[0, -1]
                assert scorer.scores(swapped) == pytest.approx(full[scorer.columns].tolist(), abs=1e-5)
    # --attention on the decoder of the last round (args, model, scorer, swapped and ids are its): per layer, shares
    # of the answer position's attention that add up to 1; the model gets its own attention back and scores as before.
    babilong_memory_probe.main([*args, "--attention", "--output", str(tmp_path / "attention.json")])
    attention = json.loads((tmp_path / "attention.json").read_text())["summary"]["answer_attention"]
    layers, last_tokens = attention["by_layer"], attention["last_segment_tokens"]
    assert len(layers) == 2 and all(sum(layer.values()) == pytest.approx(1.0) for layer in layers)
    assert 0 < last_tokens <= 32 and attention["memory_share_of_keys"] == pytest.approx(2 / (2 + last_tokens), rel=0.2)
    assert all(layer["memory"] > 0 for layer in layers)
    implementation, before = model.backbone.config._attn_implementation, scorer.scores(swapped)
    assert babilong_memory_probe.answer_attention(model, [ids]) and scorer.scores(swapped) == before
    assert model.backbone.config._attn_implementation == implementation
    # Oracle: with the query projections zeroed every head attends uniformly over the keys the answer position sees,
    # so the memory gets exactly its share of them and the first token 1/(memory + last segment's tokens); the wrong
    # query (another position of the window) would give other shares.
    for layer in model.backbone.model.layers:
        layer.self_attn.q_proj.weight.data.zero_()
    uniform = babilong_memory_probe.answer_attention(model, [ids])
    visible = 2 + uniform["last_segment_tokens"]
    for layer in uniform["by_layer"]:
        assert layer["memory"] == pytest.approx(uniform["memory_share_of_keys"], abs=1e-5) == pytest.approx(2 / visible)
        assert layer["first_segment_token"] == pytest.approx(1 / visible, abs=1e-5)
    with pytest.raises(SystemExit, match="fits one segment"):
        babilong_memory_probe.main([*args[:1], "--length", "32", "--output", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="decoder RMT"):
        babilong_memory_probe.main(
            [str(tmp_path / "bert-rmt"), *args[1:], "--attention", "--output", str(tmp_path / "y.json")]
        )


def _full_pass_nll(backbone, ids: torch.Tensor) -> torch.Tensor:
    """NLL of tokens 1..n-1 from one forward pass of the backbone over all of `ids`: the oracle below."""
    logits = backbone(input_ids=ids[None]).logits[0]
    return torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="none")


def test_long_document_lm_scorers_match_full_forward_passes():
    backbone = tiny_decoder("llama", vocab_size=50, positions=512)
    ids = torch.randint(0, 50, (70,), generator=torch.Generator().manual_seed(0))
    # Sliding: targets [32, 48) are read in the window [16, 48), [48, 64) in [32, 64), [64, 70) in [38, 70).
    sliding = long_document_lm.sliding_nll(backbone, ids, window=32, stride=16)
    windows = [(16, 48, 16), (32, 64, 16), (38, 70, 6)]
    expected = torch.cat([_full_pass_nll(backbone, ids[start:end])[-scored:] for start, end, scored in windows])
    torch.testing.assert_close(sliding, expected, rtol=1e-4, atol=1e-5)
    # Segments alone: each segment's first token is not scored (NaN), the rest as a pass over that segment.
    segments = long_document_lm.segment_nll(backbone, ids, segment=32)
    assert segments.shape == (69,) and segments[31].isnan() and segments[63].isnan()
    torch.testing.assert_close(segments[:31], _full_pass_nll(backbone, ids[:32]))
    torch.testing.assert_close(segments[32:63], _full_pass_nll(backbone, ids[32:64]))
    torch.testing.assert_close(segments[64:], _full_pass_nll(backbone, ids[64:]))
    # The memory model through stream(), segment by segment: what one forward pass over the document gives.
    model = memory_model(backbone, RMTConfig(num_memory_tokens=4, segment_size=16)).eval()
    with torch.no_grad():
        one_pass = model(input_ids=ids[None]).logits[0]
    oracle = torch.nn.functional.cross_entropy(one_pass[:-1], ids[1:], reduction="none")
    torch.testing.assert_close(long_document_lm.memory_nll(model, ids), oracle, rtol=1e-4, atol=1e-5)


def test_long_document_lm_memory_scorer_holds_one_chunks_logits_at_a_time(monkeypatch):
    """When the stream makes a chunk's logits, no earlier chunk's are alive (the peak memory the benchmark reports
    would otherwise hold two or three chunks' [n, V] logits)."""
    import weakref

    backbone = tiny_decoder("llama", vocab_size=50, positions=512)
    model = memory_model(backbone, RMTConfig(num_memory_tokens=4, segment_size=16)).eval()
    ids = torch.randint(0, 50, (70,), generator=torch.Generator().manual_seed(0))
    made, alive_at_feed = [], []
    stream_of = model.stream

    def watched_stream(*args, **kwargs):
        stream = stream_of(*args, **kwargs)
        feed = stream.feed

        def watched_feed(*feed_args, **feed_kwargs):
            alive_at_feed.append(sum(ref() is not None for ref in made))
            logits = feed(*feed_args, **feed_kwargs)
            made.append(weakref.ref(logits))
            return logits

        stream.feed = watched_feed
        return stream

    monkeypatch.setattr(model, "stream", watched_stream)
    with torch.no_grad():
        long_document_lm.memory_nll(model, ids)
    assert alive_at_feed == [0] * 5


def test_long_document_lm_perplexities():
    nan = float("nan")
    losses = [torch.tensor([nan, 1.0, 1.0, 3.0]), torch.tensor([2.0, 2.0, nan, 0.0])]
    assert long_document_lm.perplexity(losses) == pytest.approx(math.exp(9 / 6))
    # Target positions 1-5; segments of 3 hold targets 1-2 (losses[:2]) and 3-5 (losses[2:5]).
    assert long_document_lm.by_segment(losses, 3) == pytest.approx([math.exp(5 / 3), math.exp(4 / 3)])
    low, high = long_document_lm.bootstrap_interval(losses, resamples=200)
    assert math.exp(4 / 3) <= low <= math.exp(9 / 6) <= high <= math.exp(5 / 3)
    # Paired: the first method is 0.1 nats better on every document but one, where it is 0.3 worse.
    methods = {
        "a": {"document_nll_beyond_window": [2.9, 3.4, 2.5, 3.3]},
        "b": {"document_nll_beyond_window": [3.0, 3.5, 2.6, 3.0]},
    }
    ratio, (low, high) = long_document_lm.paired_ratio(methods, "a", "b")
    assert ratio == pytest.approx(1.0) and math.exp(-0.1) <= low < 1 < high <= math.exp(0.3)


def test_long_document_lm_prepare_and_evaluate(tmp_path, monkeypatch):
    books = [(f"book {i}", background_text(300, seed=i)) for i in range(3)]
    monkeypatch.setattr(long_document_lm, "default_corpus_texts", lambda: books)
    base = tiny_model_folder(tmp_path / "base")
    common = ["--document-tokens", "96", "--held-out", "3", "--threads", "1"]
    data = tmp_path / "data"
    assert (
        long_document_lm.main(["prepare", "--model", str(base), "--train-tokens", "40", *common, "--output", str(data)])
        == 0
    )
    training = [json.loads(line)["text"] for line in (data / "train.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(base)
    blocks = long_document_lm.corpus_blocks(tokenizer, 96)
    held_out, _ = long_document_lm.split_blocks(blocks, 3, seed=0)
    held_out_text = {tokenizer.decode(block) for block in held_out}
    assert training and all(len(tokenizer(text)["input_ids"]) >= 40 for text in training)
    assert not any(text in document for text in training for document in held_out_text)

    backbone = AutoModelForCausalLM.from_pretrained(base)
    folder = tmp_path / "memory-model"
    save_memory_model(memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=32)), folder, progress=False)
    out = tmp_path / "results"
    args = ["evaluate", str(folder), "--base-model", str(base), "--documents", "2", "--window", "64", "--stride", "16"]
    assert long_document_lm.main([*args, *common, "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == set(long_document_lm.METHODS)
    for method, entry in results["methods"].items():
        assert 1 < entry["perplexity_beyond_window"] < 200 and len(entry["document_nll_beyond_window"]) == 2
        assert entry["interval_95"][0] <= entry["perplexity_beyond_window"] <= entry["interval_95"][1]
        assert (entry["perplexity_by_segment"] is None) == (method in ("sliding", "sliding_tuned"))
    # The memory model's backbone is the base model here: without memory it reads the segments as `segments` does,
    # and with the window sliding as `sliding` does.
    by_segment = {m: results["methods"][m]["perplexity_by_segment"] for m in ("segments", "memory_off")}
    assert len(by_segment["segments"]) == 3 and by_segment["segments"] == by_segment["memory_off"]
    sliding = {m: results["methods"][m]["document_nll_beyond_window"] for m in ("sliding", "sliding_tuned")}
    assert sliding["sliding"] == sliding["sliding_tuned"]
    assert "| sliding |" in (out / "results.md").read_text()
    # Paired ratios compare the tokens every method scores: the segment methods leave target 64 (a segment's first)
    # unscored, memory and sliding score it too.
    entries = results["methods"]
    segments = entries["segments"]
    assert segments["document_nll_shared_tokens"] == pytest.approx(segments["document_nll_beyond_window"])
    assert entries["memory"]["document_nll_shared_tokens"] != pytest.approx(
        entries["memory"]["document_nll_beyond_window"]
    )
    shared = {m: {"document_nll_beyond_window": e["document_nll_shared_tokens"]} for m, e in entries.items()}
    ratio = long_document_lm.paired_ratio(entries, "memory", "memory_off")[0]
    assert ratio == pytest.approx(long_document_lm.paired_ratio(shared, "memory", "memory_off")[0])
    # A second process adds its methods to the folder; one with other settings is refused before it scores anything.
    # The peak memory is what a document's scoring holds at its height (here 256 MiB more, freed before the document
    # ends), not the resident size between documents.
    (out / "results.json").write_text(json.dumps({**results, "methods": {}}))
    score = long_document_lm.memory_nll

    def holding_256_mib(model, ids):
        held = torch.ones(64 * 2**20)
        return score(model, ids) + 0 * held[0]

    monkeypatch.setattr(long_document_lm, "memory_nll", holding_256_mib)
    assert long_document_lm.main([*args, *common, "--methods", "memory", "--output", str(out)]) == 0
    memory = json.loads((out / "results.json").read_text())["methods"]
    assert set(memory) == {"memory"} and memory["memory"]["peak_rss_of"] == "scoring"
    assert memory["memory"]["peak_rss_mib"] - memory["memory"]["resident_before_scoring_mib"] > 250
    with pytest.raises(SystemExit, match="other settings \\(stride\\)"):
        long_document_lm.main([*args[:-1], "32", *common, "--output", str(out)])
    refusals = {
        "is not a saved memory model": ["evaluate", str(base), *args[2:]],
        "--documents must be between 1 and --held-out \\(3\\)": [*args[:5], "4", *args[6:]],
        "--window \\(96\\) must be shorter": [*args[:7], "96", *args[8:]],
    }
    for message, argv in refusals.items():
        with pytest.raises(SystemExit, match=message):
            long_document_lm.main([*argv, *common, "--output", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


def test_babilong_mentions_haystack_writes_a_background_that_reads_back(tmp_path, capsys):
    sentences = background_text(60).split(". ")
    book = tmp_path / "book.txt"
    book.write_text(
        " ".join(f"{s}. They sat in the kitchen." if i % 5 == 0 else f"{s}." for i, s in enumerate(sentences))
    )
    output, report = tmp_path / "rooms.txt", tmp_path / "report.json"
    tokenizer = tiny_model_folder(tmp_path / "bert", "bert", answer_labels("qa1"))
    args = ["--haystack", str(book), "--seed", "1", "--output", str(output), "--report", str(report)]
    babilong_mentions_haystack.main([*args, "--tokenizer", str(tokenizer)])
    expected = distractor_background(load_haystack(book), ["qa1"], seed=1)
    assert load_haystack(output).sentences == expected.sentences and len(expected) > 10
    assert f"{len(expected)} sentences" in capsys.readouterr().out
    counts = json.loads(report.read_text())
    assert counts["source"]["mentions"]["kitchen"] == 12 and sum(counts["source"]["mentions"].values()) == 12
    assert sum(counts["written"]["mentions"].values()) == 12 and counts["written"]["mentions"]["kitchen"] < 12
    assert (
        counts["written"]["sentences"] == len(expected) and 0 < counts["written"]["tokens"] < counts["source"]["tokens"]
    )


def test_armt_state_growth_records_the_state_and_activations_per_segment(tmp_path):
    haystack = tmp_path / "book.txt"
    haystack.write_text(background_text(400))
    folder = tiny_model_folder(tmp_path / "llama", "llama", None)
    config = RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=32, d_mem=4)
    untrained = memory_model(AutoModelForCausalLM.from_pretrained(folder), config).eval()  # W_v = 0: writes nothing
    writing = memory_model(AutoModelForCausalLM.from_pretrained(folder), config).eval()
    with torch.no_grad():
        writing.w_v.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    for name, model in (("untrained", untrained), ("writing", writing)):
        save_memory_model(model, tmp_path / name, progress=False)
        AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / name / "backbone")
    output = tmp_path / "growth.json"
    models = [str(tmp_path / "untrained"), str(tmp_path / "writing")]
    args = ["--length", "150", "--samples", "2", "--haystack", str(haystack), "--output", str(output)]
    armt_state_growth.main([*models, *args])
    written = json.loads(output.read_text())["models"]
    flat, grown = written[models[0]], written[models[1]]
    segments = len(flat["hidden_rms"])
    assert segments >= 4 and len(grown["hidden_rms"]) == segments  # the same prompts for both models
    assert all(len(layers) == 2 for layers in flat["A_norm"])
    assert all(value == 0.0 for layers in flat["A_norm"] for value in layers)  # nothing written
    assert all(value > 0.0 for layers in grown["A_norm"] for value in layers)
    assert all(value > 0.0 for layers in flat["z_norm"] for value in layers)  # keys are summed whatever W_v is
    assert all(value > 0.0 for value in flat["hidden_rms"])
    assert flat["hidden_rms"][0] == grown["hidden_rms"][0]  # segment 1 reads an empty memory in both
    assert flat["hidden_rms"][1] != grown["hidden_rms"][1]  # from segment 2 on, the written memory is read
    assert output.with_suffix(".png").stat().st_size > 0

    rmt_model = memory_model(AutoModelForCausalLM.from_pretrained(folder), RMTConfig(segment_size=32)).eval()
    save_memory_model(rmt_model, tmp_path / "rmt", progress=False)
    AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "rmt" / "backbone")
    with pytest.raises(SystemExit, match="not an ARMT model"):
        armt_state_growth.main([str(tmp_path / "rmt"), *args])


def test_armt_profile_counts_fewer_operators_for_the_grouped_engine(tmp_path):
    output = tmp_path / "profile.json"
    args = ["--config", "tiny", "--device", "cpu", "--length", "256", "--segment-size", "32", "--memory-tokens", "2"]
    armt_profile.main([*args, "--d-mem", "8", "--output", str(output)])
    record = json.loads(output.read_text())
    sequential, diagonal = record["sequential"], record["diagonal"]
    for path in (sequential, diagonal):
        assert path["wall_s"] > 0 and 0 < path["device_busy_s"] and len(path["top"]) == 6
    # 8 segments x 2 layers one cell at a time, against 9 diagonals of up to 2 cells per grouped call.
    assert diagonal["kernel_launches"] < sequential["kernel_launches"]


def test_babilong_fact_segment_bins_right_answers_by_the_segment_of_the_last_fact(tmp_path):
    def prediction(depths, tokens, correct, method="memory"):
        return {"method": method, "supporting_depths": depths, "tokens": tokens, "correct": correct}

    predictions = [
        prediction([0.0], 1024, True),  # token 0: segment 1
        prediction([0.1, 0.12], 1000, True),  # last fact at token 120: segment 1
        prediction([0.5], 1024, False),  # token 512: segment 5
        prediction([0.999], 1024, False),  # token 1022: segment 8
        prediction([0.99], 1024, True, method="no_memory"),  # another method: not counted
    ]
    bins = babilong_fact_segment.by_fact_segment(predictions, segment_size=128, bin_size=4)
    assert [(b["segments"], b["correct"], b["samples"]) for b in bins] == [([1, 4], 2, 2), ([5, 8], 0, 2)]
    assert bins[0]["accuracy"] == 1.0 and bins[0]["interval"][1] == 1.0 and bins[0]["interval"][0] < 1.0
    # A recorded offset places the fact exactly: token 127 is segment 1, though depth * tokens (with the question's
    # tokens in the prompt length) would put it at token 129, in segment 2.
    exact = {**prediction([0.126], 1024, True), "supporting_offsets": [127]}
    assert babilong_fact_segment.fact_segment(exact, segment_size=128) == 1
    assert babilong_fact_segment.fact_segment(prediction([0.126], 1024, True), segment_size=128) == 2

    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    output, figure = tmp_path / "by-segment.json", tmp_path / "by-segment.png"
    args = ["--run", f"a=b={path}", "--trained", "a=b=4", "--segment-size", "128", "--output", str(output)]
    assert babilong_fact_segment.main([*args, "--plot", str(figure)]) == 0
    record = json.loads(output.read_text())
    assert record["by_fact_segment"]["a=b"] == bins and record["trained"] == {"a=b": 4}
    assert figure.stat().st_size > 0
    with pytest.raises(SystemExit, match="no predictions file"):
        babilong_fact_segment.main(["--run", f"x={tmp_path / 'missing.jsonl'}", "--segment-size", "128"])
    with pytest.raises(SystemExit, match="no --run is labelled 'other'"):
        babilong_fact_segment.main(["--run", f"a={path}", "--trained", "other=4", "--segment-size", "128"])
    with pytest.raises(SystemExit, match="positive integer"):
        babilong_fact_segment.main(["--run", f"a={path}", "--trained", "a=four", "--segment-size", "128"])


def test_long_inputs_precision_compares_warmed_up_fp32_and_bf16_answers(tmp_path, monkeypatch):
    """The precision part on a tiny saved ARMT: both precisions warmed up before the timed prompts, answers compared."""
    import rmt.data.haystack

    folder = tiny_model_folder(tmp_path / "llama")
    config = RMTConfig(num_memory_tokens=2, segment_size=32, memory_kind="armt", d_mem=8)
    save_memory_model(memory_model(AutoModelForCausalLM.from_pretrained(folder), config), tmp_path / "armt")
    AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "armt" / "backbone")
    monkeypatch.setattr(rmt.data.haystack, "default_haystack", lambda: Haystack.from_text(background_text(400)))
    generated = []
    original = RecurrentMemoryModel.generate

    def counting(self, input_ids, **kwargs):
        generated.append((self.backbone.dtype, input_ids.shape[1], kwargs["max_new_tokens"]))
        return original(self, input_ids, **kwargs)

    monkeypatch.setattr(RecurrentMemoryModel, "generate", counting)
    output = tmp_path / "long.json"
    args = ["precision", "--model", str(tmp_path / "armt"), "--length", "200", "--samples", "2"]
    assert long_inputs.main([*args, "--threads", "1", "--output", str(output)]) == 0
    entry = json.loads(output.read_text())["precision"][str(tmp_path / "armt")]
    assert entry["warmed_up"] and entry["samples"] == 2 and 0 <= entry["same_answers"] <= 2
    assert generated[:2] == [(torch.float32, 64, 2), (torch.bfloat16, 64, 2)]  # the warm-up, untimed
    assert len(generated) == 2 + 2 * 2 and all(new == 8 for _, _, new in generated[2:])


def test_memory_scale_measures_the_written_memory_of_each_write_scale(tmp_path, monkeypatch):
    books = [(f"book {i}", background_text(300, seed=i)) for i in range(2)]
    monkeypatch.setattr(long_document_lm, "default_corpus_texts", lambda: books)
    folder = tiny_model_folder(tmp_path / "llama")
    output = tmp_path / "scale.json"
    settings = ["--segment-size", "16", "--memory-tokens", "2", "--segments", "3", "--documents", "2"]
    assert memory_scale.main(["--model", str(folder), *settings, "--output", str(output)]) == 0
    written = json.loads(output.read_text())

    backbone = AutoModelForCausalLM.from_pretrained(folder).eval()
    input_ids = memory_scale.documents(AutoTokenizer.from_pretrained(folder), 2, 48)
    torch.manual_seed(0)
    model = memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=16)).eval()
    with torch.no_grad():
        out = model(input_ids, output_segments=True)
        token_norm = backbone.get_input_embeddings()(input_ids).norm(dim=-1).mean()
        memory_norm = model.memory.norm(dim=-1).mean()
    hidden = written["write_scales"]["hidden"]
    assert written["token_embedding_norm"] == pytest.approx(float(token_norm), rel=1e-6)
    assert hidden["initial_memory_norm"] == pytest.approx(float(memory_norm), rel=1e-6)
    expected = [float(segment.memory_state.norm(dim=-1).mean()) for segment in out.segment_outputs]
    assert hidden["written_memory_norm"] == pytest.approx(expected, rel=1e-5)
    # RMS-normalised then scaled by a gain that starts at the embeddings' standard deviation: norm sqrt(D) * std.
    width = backbone.config.hidden_size
    scaled = written["write_scales"]["token_embeddings"]["written_memory_norm"]
    embedding_std = float(backbone.get_input_embeddings().weight.detach().std())
    assert scaled == pytest.approx([width**0.5 * embedding_std] * 3, rel=1e-3)
