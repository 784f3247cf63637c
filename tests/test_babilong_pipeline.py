"""BABILong and real data end to end on tiny local model folders: `rmt babilong` writes the public file layout,
`rmt train --model DIR --data FILE` then `rmt eval` on the file and by length (decoder and encoder), and the
by-length evaluation's arithmetic (accuracy, Wilson intervals, methods on the same samples)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import background_text, tiny_model_folder

import rmt.eval.by_length as by_length_module
from rmt.build import pretrained_tokenizer
from rmt.cli import build_parser, main
from rmt.cli.data_flags import load_background
from rmt.cli.options import config_from_args
from rmt.cli.train import build_setup
from rmt.data.babilong import answer_labels, build_dataset, load_babilong, save_babilong
from rmt.data.haystack import Haystack
from rmt.eval.by_length import Outcome, Reader, evaluate_by_length, format_table, wilson_interval
from rmt.train.config import TrainConfig


@pytest.fixture(scope="module")
def haystack_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("haystack") / "book.txt"
    path.write_text(background_text(800))
    return path


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("bert"), "bert", answer_labels("qa1"))


TRAIN = ["--steps", "3", "--batch-size", "2", "--eval-every", "3", "--eval-batches", "1", "--eval-batch-size", "2"]


def test_babilong_command_writes_the_public_layout(tmp_path, decoder_dir, haystack_file, capsys):
    args = ["babilong", "--tasks", "qa1,qa4", "--lengths", "0k,200", "--samples", "3", "--tokenizer", str(decoder_dir)]
    assert main([*args, "--haystack", str(haystack_file), "--output", str(tmp_path), "--no-progress"]) == 0
    # The default seed gives what rmt eval scores by default: said, so that no one trains on it unawares.
    assert "these are the samples that rmt eval --data babilong:TASK scores by default" in capsys.readouterr().err
    evaluated = build_dataset("qa1", "200", 3, pretrained_tokenizer(decoder_dir), load_background(str(haystack_file)))
    assert [s.input for s in load_babilong(tmp_path / "data" / "qa1" / "200.json")] == [s.input for s in evaluated]
    for task in ("qa1", "qa4"):
        for name in ("0k", "200"):
            records = json.loads((tmp_path / "data" / task / f"{name}.json").read_text())
            assert len(records) == 3 and {"input", "question", "target"} <= set(records[0])
    assert load_babilong(tmp_path / "data" / "qa1" / "200.json")[0].num_tokens <= 200
    single = [*args, "--facts", "1", "--haystack", str(haystack_file), "--no-progress", "--output"]
    assert main([*single, str(tmp_path / "refused")]) == 2  # qa4 stories have two facts
    assert not (tmp_path / "refused").exists()
    single[2] = "qa1"
    assert main([*single, str(tmp_path / "single")]) == 0
    assert all(sample.num_facts == 1 for sample in load_babilong(tmp_path / "single" / "data" / "qa1" / "200.json"))


def test_train_on_a_file_then_evaluate_decoder(tmp_path, decoder_dir, haystack_file, capsys):
    haystack = Haystack.from_text(haystack_file.read_text())
    tokenizer_dir = str(decoder_dir)
    from rmt.build import pretrained_tokenizer

    samples = build_dataset("qa1", 60, 12, pretrained_tokenizer(tokenizer_dir), haystack, seed=0)
    data = save_babilong(samples, tmp_path / "train.jsonl")
    output = tmp_path / "run"
    args = [
        "train",
        "--model",
        tokenizer_dir,
        "--data",
        str(data),
        "--validation-samples",
        "4",
        "--output",
        str(output),
    ]
    assert main([*args, "--segment-size", "16", "--memory-tokens", "2", *TRAIN, "--no-progress"]) == 0
    trained = json.loads(capsys.readouterr().out.split("model saved")[0])
    assert (output / "model" / "backbone" / "tokenizer.json").exists()  # the tokenizer travels with the model
    assert main(["eval", str(output / "model"), "--data", str(data), "--batches", "2", "--batch-size", "4"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert set(evaluated) >= {"loss", "accuracy", "exact_match"} and set(trained) >= {"loss", "accuracy"}
    assert math.isfinite(evaluated["loss"]) and evaluated["loss"] > 0

    by_length = tmp_path / "by-length"
    args = ["eval", str(output / "model"), "--data", "babilong:qa1", "--lengths", "0k,120", "--samples", "3"]
    args += ["--methods", "memory,no_memory,full_attention", "--window", "48", "--haystack", str(haystack_file)]
    assert main([*args, "--output", str(by_length), "--no-progress"]) == 0
    results = json.loads((by_length / "results.json").read_text())
    assert results["complete"] and results["settings"]["checkpoint"] == str(output / "model")  # how it was made
    assert results["settings"]["window"] == 48 and results["settings"]["lengths"] == "0k,120"
    assert set(results["cells"]) == {
        f"qa1/{n}/{m}" for n in ("0k", "120") for m in ("memory", "no_memory", "full_attention")
    }
    long_cell = results["cells"]["qa1/120/full_attention"]
    assert long_cell["samples"] == 3 and long_cell["tokens"] <= 3 * 48  # read the last window only
    assert results["cells"]["qa1/120/memory"]["tokens"] > long_cell["tokens"]
    for cell in results["cells"].values():  # every sample is counted once, by where its facts are
        assert cell["facts_in_last_span"]["samples"] + cell["facts_before_last_span"]["samples"] == cell["samples"]
        assert cell["facts_depth_unknown"]["samples"] == 0  # generated samples record their facts' depths
    assert (by_length / "heatmap-memory.png").stat().st_size > 0 and (by_length / "table.md").exists()
    assert (by_length / "accuracy.png").stat().st_size > 0


def test_train_encoder_on_generated_babilong_with_a_curriculum(tmp_path, encoder_dir, haystack_file, capsys):
    output = tmp_path / "enc"
    args = ["train", "--model", str(encoder_dir), "--data", "babilong:qa1", "--haystack", str(haystack_file)]
    args += ["--segment-size", "32", "--memory-tokens", "2", "--curriculum", "0:1,2:2", "--output", str(output)]
    # Two segments of 32 tokens leave 8 tokens before the last for a qa1 story of 2 or more facts: none fits, so no
    # sample can have its facts before the last segment (tests/test_data_inputs.py checks that this is refused).
    args += ["--facts-before-last", "0"]
    assert main([*args, *TRAIN, "--log-every", "1", "--no-progress"]) == 0
    log = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["segments"] for r in log if "loss" in r] == [1, 1, 2]
    out = json.loads(capsys.readouterr().out.split("model saved")[0])
    assert out["segments"] == 2
    args = ["eval", str(output / "model"), "--data", "babilong:qa1", "--lengths", "100", "--samples", "4"]
    assert main([*args, "--haystack", str(haystack_file), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "| qa1 | memory |" in captured.out and "note: no --output: the table is printed" in captured.err
    assert main([*args, "--lengths", "zz", "--no-progress"]) == 2  # refused before the note
    assert "note: no --output" not in capsys.readouterr().err
    single = tmp_path / "single-fact"
    assert (
        main([*args, "--facts", "1", "--haystack", str(haystack_file), "--output", str(single), "--no-progress"]) == 0
    )
    assert json.loads((single / "results.json").read_text())["num_facts"] == 1
    capsys.readouterr()

    # Trained on from its own folder: its memory settings and segment size hold (a flag that says otherwise would be
    # ignored, so it is refused, before anything is written).
    again = ["train", "--model", str(output / "model"), "--data", "babilong:qa1", "--haystack", str(haystack_file)]
    again += ["--curriculum", "0:2", "--facts-before-last", "0", *TRAIN, "--no-progress"]
    assert main([*again, "--output", str(tmp_path / "on")]) == 0
    args = build_parser().parse_args([*again, "--output", str(tmp_path / "on")])
    setup = build_setup(args, config_from_args(TrainConfig, args))
    assert setup.model.config.segment_size == setup.source.segment_size == 32  # samples cut as the model cuts them
    args = build_parser().parse_args([*again, "--facts", "1", "--output", str(tmp_path / "single")])
    assert build_setup(args, config_from_args(TrainConfig, args)).source.num_facts == 1
    capsys.readouterr()
    assert main(["train", "--task", "copy", "--facts", "1", "--output", str(tmp_path / "copy")]) == 2
    assert "--facts sets facts per BABILong story: it needs --data babilong:TASK" in capsys.readouterr().err
    assert not (tmp_path / "copy").exists()
    assert main(["train", "--task", "copy", "--distractors", "0.5", "--output", str(tmp_path / "copy")]) == 2
    assert "--distractors draws BABILong backgrounds: it needs --data babilong:TASK" in capsys.readouterr().err
    assert main([*again, "--distractors", "0.5", "--output", str(tmp_path / "no-rooms")]) == 2
    assert "no sentence of the background text names any of bathroom" in capsys.readouterr().err
    assert not (tmp_path / "copy").exists() and not (tmp_path / "no-rooms").exists()
    # Its head answers with qa1's rooms; qa5's answers are people and objects, which it cannot be trained on.
    other = [*again, "--data", "babilong:qa5", "--output", str(tmp_path / "qa5")]
    assert main(other) == 2
    assert "answers with the classes ['bathroom', 'bedroom'" in capsys.readouterr().err
    assert not (tmp_path / "qa5").exists()
    capsys.readouterr()
    refused = [*again, "--segment-size", "16", "--memory-tokens", "3", "--output", str(tmp_path / "refused")]
    assert main(refused) == 2
    error = capsys.readouterr().err
    assert "--memory-tokens 3 (the checkpoint has 2), --segment-size 16 (the checkpoint has 32)" in error
    assert not (tmp_path / "refused").exists()
    # Given at its default value (10), which argparse alone cannot tell from not given: refused as well.
    assert main([*again, "--memory-tokens", "10", "--output", str(tmp_path / "refused")]) == 2
    assert "--memory-tokens 10 (the checkpoint has 2)" in capsys.readouterr().err
    assert main([*again, "--memory-tokens", "2", "--output", str(tmp_path / "same")]) == 0


def test_train_with_the_same_seed_repeats_the_run(tmp_path, haystack_file):
    """A pretrained folder gets new memory parameters (and here a new classifier head, its labels being another
    task's) and keeps its dropout: with the same --seed, two runs log the same losses; another seed, other losses."""
    folder = tiny_model_folder(tmp_path / "bert", "bert", ["yes", "no"])
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    (folder / "config.json").write_text(json.dumps(config))

    def losses(seed: str, name: str) -> list[float]:
        args = ["train", "--model", str(folder), "--data", "babilong:qa1", "--haystack", str(haystack_file)]
        args += ["--segment-size", "32", "--memory-tokens", "2", "--seed", seed, "--output", str(tmp_path / name)]
        assert main([*args, *TRAIN, "--log-every", "1", "--no-progress"]) == 0
        log = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [record["loss"] for record in map(json.loads, log) if "loss" in record]

    first = losses("0", "first")
    assert losses("0", "again") == first
    assert losses("1", "other") != first


def test_a_classifier_head_for_other_classes_is_replaced_with_a_one_line_warning(
    tmp_path, haystack_file, capsys, monkeypatch
):
    """transformers' LOAD REPORT table said so before it was held back; rmt's own warning reads like its errors when
    the command prints it, and stays a warning that recorders (pytest.warns) and filters see."""
    import sys
    import warnings

    from rmt.errors import RMTWarning

    folder = tiny_model_folder(tmp_path / "bert", "bert", ["yes", "no"])
    args = ["train", "--model", str(folder), "--data", "babilong:qa1", "--haystack", str(haystack_file)]
    args += ["--segment-size", "32", "--memory-tokens", "2", *TRAIN, "--no-progress"]
    with pytest.warns(RMTWarning, match="its classifier head is for other classes and starts anew"):
        assert main([*args, "--output", str(tmp_path / "recorded")]) == 0

    def printed(message, category, filename, lineno, file=None, line=None):  # as Python shows a warning
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", printed)
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "printed")]) == 0
    err = capsys.readouterr().err
    assert "rmt train: warning: " in err and "its classifier head is for other classes and starts anew" in err
    assert "RMTWarning" not in err and "LOAD REPORT" not in err
    assert warnings.formatwarning("x", UserWarning, "f.py", 1).startswith("f.py:1: UserWarning")  # restored after


def test_by_length_scores_every_method_on_the_same_samples(encoder_dir, haystack_file, monkeypatch, tmp_path):
    from rmt import RMTConfig
    from rmt.build import memory_model, pretrained_backbone, pretrained_tokenizer

    tokenizer = pretrained_tokenizer(str(encoder_dir))
    backbone = pretrained_backbone(str(encoder_dir), mode="encoder")
    # Weights drawn large enough that the answer depends on what the model reads: at transformers' initial scale the
    # tiny BERT answers one class whatever the input, and any baseline would agree with the memory model.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in backbone.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, 0.5, generator=generator)
    config = RMTConfig(mode="encoder", num_memory_tokens=0, segment_size=40, cls_token_id=2, sep_token_id=3)
    model = memory_model(backbone, config)
    haystack = Haystack.from_text(haystack_file.read_text())
    out = tmp_path / "by-length"
    written_complete = []
    write = by_length_module.write_results
    monkeypatch.setattr(
        by_length_module,
        "write_results",
        lambda results, *a, **k: written_complete.append(results["complete"]) or write(results, *a, **k),
    )
    results = evaluate_by_length(
        model, tokenizer, ["qa1"], [80], 6, haystack, methods=["memory", "no_memory"], progress=False, output_dir=out
    )
    assert written_complete == [False, True]  # a file written after the first cell says it is not all there
    memory, no_memory = (results["cells"][f"qa1/80/{m}"] for m in ("memory", "no_memory"))
    # Memory off (M = 0) is already what no_memory runs: the same samples must get the same answers.
    assert memory["correct"] == no_memory["correct"] and memory["tokens"] == no_memory["tokens"]
    assert "| qa1 | memory |" in format_table(results)

    # Every answer is kept, in the returned results and in predictions.jsonl (results.json keeps the scores only).
    written = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert written == results["predictions"]
    assert "predictions" not in json.loads((out / "results.json").read_text())
    samples = build_dataset("qa1", 80, 6, tokenizer, haystack, seed=0)
    for method in ("memory", "no_memory"):
        answers = [record for record in written if record["method"] == method]
        assert [record["seed"] for record in answers] == [sample.seed for sample in samples]
        assert [record["target"] for record in answers] == [sample.target for sample in samples]
        assert [record["supporting_depths"] for record in answers] == [sample.supporting_depths for sample in samples]
        # Each supporting fact's recorded offset is where its own tokens start in the text the model read.
        collate = Reader(model, tokenizer).collate
        for record, sample in zip(answers, samples, strict=True):
            read = collate([sample.to_dict()]).input_ids[0].tolist()
            for offset, index in zip(record["supporting_offsets"], sample.supporting_facts, strict=True):
                fact = tokenizer(sample.facts[index], add_special_tokens=False).input_ids
                assert read[offset : offset + len(fact)] == fact
        assert sum(record["correct"] for record in answers) == results["cells"][f"qa1/80/{method}"]["correct"]
        assert all(record["task"] == "qa1" and record["length"] == "80" for record in answers)
    answers = [r["answer"] for r in written if r["method"] == "memory"]
    assert answers == [r["answer"] for r in written if r["method"] == "no_memory"]
    assert len(set(answers)) > 1  # answers that follow the input: a baseline reading other segments would differ

    # --facts reaches the generated samples, not only the record.
    built = []

    def recording_build_dataset(*args, **kwargs):
        samples = build_dataset(*args, **kwargs)
        built.extend(samples)
        return samples

    monkeypatch.setattr(by_length_module, "build_dataset", recording_build_dataset)
    results = evaluate_by_length(model, tokenizer, ["qa1"], [80], 6, haystack, progress=False, num_facts=1)
    assert results["num_facts"] == 1 and len(built) == 6 and all(sample.num_facts == 1 for sample in built)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="per-cell peak RSS needs Linux's clear_refs")
def test_by_length_peak_rss_is_each_cells_own(encoder_dir, haystack_file, monkeypatch):
    """A method that needs much memory (here 400 MB touched while it reads, then freed) does not raise the peak RSS
    recorded for the cells after it: each cell's peak is reset before it runs."""
    from rmt import RMTConfig
    from rmt.build import memory_model, pretrained_backbone, pretrained_tokenizer

    tokenizer = pretrained_tokenizer(str(encoder_dir))
    backbone = pretrained_backbone(str(encoder_dir), mode="encoder")
    config = RMTConfig(mode="encoder", num_memory_tokens=0, segment_size=40, cls_token_id=2, sep_token_id=3)
    model = memory_model(backbone, config)

    class HungryReader(Reader):
        def answer(self, sample, task=None):
            held = torch.ones(100_000_000)  # 400 MB, written so that its pages are resident
            del held
            return super().answer(sample, task)

    monkeypatch.setattr(
        by_length_module,
        "readers",
        lambda model, tokenizer, methods, *args: {
            "hungry": HungryReader(model, tokenizer),
            "memory": Reader(model, tokenizer),
        },
    )
    haystack = Haystack.from_text(haystack_file.read_text())
    results = evaluate_by_length(model, tokenizer, ["qa1"], [80], 2, haystack, progress=False)
    hungry, memory = (results["cells"][f"qa1/80/{m}"] for m in ("hungry", "memory"))
    assert hungry["peak_rss_scope"] == memory["peak_rss_scope"] == "cell"
    assert hungry["peak_rss_mib"] - memory["peak_rss_mib"] > 300  # the process's peak would be the same for both


def test_wilson_interval_and_outcome():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    for total in range(1, 500):  # the interval holds the proportion exactly at 0 and 1 (plots draw bars from it)
        assert wilson_interval(total, total)[1] == 1.0 and wilson_interval(0, total)[0] == 0.0
    record = Outcome(correct=3, total=4, tokens=400, seconds=2.0).record()
    assert record["accuracy"] == 0.75 and record["tokens_per_second"] == 200.0
