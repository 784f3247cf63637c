"""`rmt eval`, `rmt generate`, `rmt babilong` and `rmt demo`: bad input is refused at start-up with one line that names
the flag, before anything is read or written; an earlier run's results are never lost or mixed with a new run's, and
an interrupted one resumed gives the cells of an uninterrupted one."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import background_text, tiny_model_folder
from safetensors.torch import load_file, save_file

from rmt.build import memory_model, pretrained_backbone, pretrained_tokenizer, random_backbone
from rmt.cli import build_parser, main
from rmt.cli.evaluate_by_length import parse_samples
from rmt.config import RMTConfig
from rmt.data.babilong import answer_labels, babilong_file, build_dataset, save_babilong
from rmt.data.haystack import Haystack
from rmt.errors import InputError

LENGTHS = ["0k", "1k", "4k", "16k", "64k", "1M"]


def _checkpoint(folder: Path, kind: str) -> Path:
    """A tiny memory model saved as `rmt train` saves one (tokenizer in backbone/)."""
    source = tiny_model_folder(folder / "hf", kind, answer_labels("qa1") if kind == "bert" else None)
    tokenizer = pretrained_tokenizer(source)
    if kind == "bert":
        special = {"cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id}
        config = RMTConfig(num_memory_tokens=2, segment_size=32, mode="encoder", **special)
        backbone = pretrained_backbone(source, mode="encoder", labels=answer_labels("qa1"))
    else:
        config = RMTConfig(num_memory_tokens=2, segment_size=16)
        backbone = pretrained_backbone(source)
    model = memory_model(backbone, config)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model" / "backbone")
    return folder / "model"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> str:
    return str(_checkpoint(tmp_path_factory.mktemp("decoder"), "llama"))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    return str(_checkpoint(tmp_path_factory.mktemp("encoder"), "bert"))


@pytest.fixture(scope="module")
def haystack(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("haystack") / "book.txt"
    path.write_text(background_text(400))
    return str(path)


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory, decoder, haystack) -> str:
    """10 qa1 records of varied length (their answers too: the decoder scores the answer's tokens)."""
    tokenizer = pretrained_tokenizer(decoder)
    samples = build_dataset("qa1", 60, 10, tokenizer, Haystack.from_text(Path(haystack).read_text()), seed=0)
    for i, sample in enumerate(samples):
        sample.target = " ".join([sample.target] * (1 + i % 3))
    return str(save_babilong(samples, tmp_path_factory.mktemp("data") / "qa.jsonl"))


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([*args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _earlier_run(folder: Path) -> dict[str, str]:
    """An earlier run's results, three methods, in `folder`."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text('{"earlier": true}\n')
    (folder / "predictions.jsonl").write_text('{"earlier": true}\n')
    (folder / "table.md").write_text("| earlier |\n")
    for name in ("accuracy.png", "heatmap-memory.png", "heatmap-no_memory.png", "heatmap-full_attention.png"):
        (folder / name).write_bytes(b"earlier png")
    return _digest(folder)


# ------------------------------------------------------------------------------------------ 1. earlier results


def test_an_input_error_found_after_start_up_writes_nothing(decoder, haystack, tmp_path, capsys):
    """10 tokens cannot hold a qa1 story: found when the samples are built, which is now before the first cell."""
    output = tmp_path / "new"
    args = ["eval", decoder, "--data", "babilong:qa1", "--lengths", "0k,10", "--samples", "2", "--haystack", haystack]
    code, _, err = _run([*args, "--output", str(output)], capsys)
    assert code == 2 and "exceed the 10-token length" in err
    assert not output.exists()  # the 0k cell did not run, so nothing was written


def test_earlier_results_are_kept_unless_overwrite_and_never_mixed(decoder, haystack, tmp_path, capsys):
    output = tmp_path / "by-length"
    before = _earlier_run(output)
    args = [
        "eval",
        decoder,
        "--data",
        "babilong:qa1",
        "--samples",
        "2",
        "--haystack",
        haystack,
        "--output",
        str(output),
    ]
    code, _, err = _run([*args, "--lengths", "0k,10"], capsys)
    assert code == 2 and "holds the results of an earlier run (results.json" in err and "--overwrite" in err
    assert _digest(output) == before
    code, _, err = _run([*args, "--lengths", "0k"], capsys)  # a good call too: the earlier run is not replaced
    assert code == 2 and _digest(output) == before
    code, _, err = _run([*args, "--lengths", "0k,10", "--overwrite"], capsys)  # refused before the first cell
    assert code == 2 and "exceed the 10-token length" in err
    assert _digest(output) == before
    code, _, err = _run([*args[:-4], *args[-2:], "--lengths", "0k", "--overwrite"], capsys)  # 0k: no haystack
    assert code == 0, err
    assert sorted(p.name for p in output.iterdir()) == [
        "accuracy.png",
        "heatmap-memory.png",
        "predictions.jsonl",
        "results.json",
        "table.md",
    ]  # the earlier run's heatmaps of no_memory and full_attention are gone
    assert json.loads((output / "results.json").read_text())["methods"] == ["memory"]
    assert "| qa1 | memory |" in (output / "table.md").read_text()


def test_write_results_writes_every_file_atomically(tmp_path, monkeypatch):
    import rmt.eval.by_length as by_length

    written = []
    original = by_length.write_atomic

    def recording(path, data):
        written.append(Path(path).name)
        original(path, data)

    monkeypatch.setattr(by_length, "write_atomic", recording)
    cell = {**by_length.Outcome(1, 2, 20, 1.0).record(), "task": "qa1", "length": "0k", "method": "memory"}
    results = {"tasks": ["qa1"], "lengths": ["0k"], "methods": ["memory"], "cells": {"qa1/0k/memory": cell}}
    by_length.write_results(results, tmp_path)
    assert {"results.json", "predictions.jsonl", "table.md"} <= set(written)


# A run of four cells (two lengths, two methods), as tests of --resume interrupt it or take cells from it.
RESUMABLE = ["--data", "babilong:qa1", "--lengths", "0k,60", "--samples", "2", "--methods", "memory,no_memory"]
# What a cell measures that varies from run to run.
TIMINGS = ("seconds", "tokens_per_second", "peak_rss_mib", "peak_rss_scope")


def _resumable(decoder: str, haystack: str, output: Path) -> list[str]:
    return ["eval", decoder, *RESUMABLE, "--haystack", haystack, "--output", str(output)]


def _with(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with another value for `flag`."""
    at = args.index(flag) + 1
    return [*args[:at], value, *args[at + 1 :]]


def _measured(results: dict) -> list:
    """The cells, in their order, without their timings."""
    return [(key, {k: v for k, v in cell.items() if k not in TIMINGS}) for key, cell in results["cells"].items()]


def _cells_run(monkeypatch, interrupt_after: int | None = None) -> list[str]:
    """The cells evaluated from now on, by label ("qa1 0k memory"), filled as they run; with `interrupt_after`, the
    next cell after that many raises KeyboardInterrupt (Ctrl-C during it)."""
    import rmt.eval.by_length as by_length

    monkeypatch.undo()  # the cell runner of an earlier call, if any
    run_cell, labels = by_length._run_cell, []

    def counted(reader, samples, task, label, progress):
        if len(labels) == interrupt_after:
            raise KeyboardInterrupt
        labels.append(label)
        return run_cell(reader, samples, task, label, progress)

    monkeypatch.setattr(by_length, "_run_cell", counted)
    return labels


@pytest.fixture(scope="module")
def finished(tmp_path_factory, decoder, haystack) -> Path:
    """The results of the RESUMABLE run, uninterrupted."""
    output = tmp_path_factory.mktemp("finished") / "by-length"
    assert main([*_resumable(decoder, haystack, output), "--no-progress"]) == 0
    return output


def test_an_interrupted_evaluation_resumed_gives_the_cells_of_an_uninterrupted_one(
    decoder, haystack, finished, tmp_path, capsys, monkeypatch
):
    output = tmp_path / "by-length"
    args = _resumable(decoder, haystack, output)
    _cells_run(monkeypatch, interrupt_after=1)
    code, _, err = _run(args, capsys)
    assert code == 130 and "the same command with --resume" in err
    interrupted = json.loads((output / "results.json").read_text())
    assert not interrupted["complete"] and list(interrupted["cells"]) == ["qa1/0k/memory"]

    run = _cells_run(monkeypatch)
    code, _, err = _run([*args, "--resume"], capsys)
    assert code == 0, err
    assert "1 of 4 cells kept, 3 to compute" in err
    assert run == ["qa1 0k no_memory", "qa1 60 memory", "qa1 60 no_memory"]  # the first cell is not run again
    resumed = json.loads((output / "results.json").read_text())
    assert resumed["cells"]["qa1/0k/memory"] == interrupted["cells"]["qa1/0k/memory"]  # kept, timings and all
    # The cells of the uninterrupted run, in its order: the samples of a cell do not depend on the cells run before.
    uninterrupted = json.loads((finished / "results.json").read_text())
    assert resumed["complete"] and _measured(resumed) == _measured(uninterrupted)
    assert sorted(p.name for p in output.iterdir()) == sorted(p.name for p in finished.iterdir())
    for name in ("predictions.jsonl", "table.md"):  # every answer, the kept cell's too, in the uninterrupted order
        assert (output / name).read_text() == (finished / name).read_text()


def test_a_resumed_evaluation_computes_only_the_cells_not_finished(
    decoder, haystack, finished, tmp_path, capsys, monkeypatch
):
    output = tmp_path / "by-length"
    shutil.copytree(finished, output)
    args = _resumable(decoder, haystack, output)
    run = _cells_run(monkeypatch)
    # Complete: nothing to run and nothing rewritten, whatever the runtime flags and however the flags spell the run.
    before = _digest(output)
    respelled = _with(_with(args, "--lengths", "60,0k"), "--methods", "no_memory,memory")
    code, out, err = _run([*respelled, "--seed", "0", "--threads", "1", "--resume"], capsys)
    assert code == 0, err
    assert run == [] and "holds every cell already: nothing computed, no file rewritten" in err
    assert "| qa1 | no_memory |" in out and _digest(output) == before

    # A cell missing from results.json, and one whose answers are missing from predictions.jsonl: both run again.
    results = json.loads((output / "results.json").read_text())
    del results["cells"]["qa1/60/memory"]
    results["complete"] = False
    (output / "results.json").write_text(json.dumps(results))
    lines = (output / "predictions.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if not ('"length": "0k"' in line and '"method": "no_memory"' in line)]
    assert len(kept) == len(lines) - 2
    (output / "predictions.jsonl").write_text("".join(kept))
    code, _, err = _run([*args, "--resume"], capsys)
    assert code == 0, err
    assert run == ["qa1 0k no_memory", "qa1 60 memory"] and "2 of 4 cells kept, 2 to compute" in err
    resumed, uninterrupted = (json.loads((f / "results.json").read_text()) for f in (output, finished))
    assert resumed["complete"] and _measured(resumed) == _measured(uninterrupted)
    for key in ("qa1/0k/memory", "qa1/60/no_memory"):
        assert resumed["cells"][key] == uninterrupted["cells"][key]  # not measured again
    assert (output / "predictions.jsonl").read_text() == (finished / "predictions.jsonl").read_text()


def test_resume_refuses_other_flags_naming_each_with_both_values(decoder, haystack, finished, tmp_path, capsys):
    output = tmp_path / "by-length"
    shutil.copytree(finished, output)
    results = json.loads((output / "results.json").read_text())
    del results["cells"]["qa1/60/no_memory"]
    results["complete"] = False
    (output / "results.json").write_text(json.dumps(results))
    before = _digest(output)
    args = _resumable(decoder, haystack, output)
    code, _, err = _run([*_with(args, "--samples", "3"), "--seed", "1", "--threads", "2", "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--samples: 2 in results.json, 3 in this command" in err
    assert "--seed: 0 in results.json, 1 in this command" in err
    assert "--lengths" not in err and "--threads" not in err  # the samples of the same lengths; a runtime flag
    code, _, err = _run([*_with(args, "--methods", "memory"), "--resume"], capsys)
    assert code == 2 and "--methods: memory,no_memory in results.json, memory in this command" in err
    code, _, err = _run([*args, "--max-new-tokens", "4", "--resume"], capsys)
    assert code == 2 and "--max-new-tokens: 8 in results.json, 4 in this command" in err
    assert _digest(output) == before


def test_resume_refuses_a_folder_without_results_and_overwrite(decoder, haystack, finished, tmp_path, capsys):
    args = _resumable(decoder, haystack, tmp_path / "new")[:-2]
    code, _, err = _run([*args, "--output", str(tmp_path / "new"), "--resume"], capsys)
    assert code == 2 and f"--output {tmp_path / 'new'} holds no results.json to continue: run without --resume" in err
    assert not (tmp_path / "new").exists()
    half = tmp_path / "half"  # interrupted in its first write, before results.json
    half.mkdir()
    shutil.copy(finished / "predictions.jsonl", half)
    code, _, err = _run([*args, "--output", str(half), "--resume"], capsys)
    assert code == 2 and "run without --resume (with --overwrite: it holds predictions.jsonl)" in err
    code, _, err = _run([*args, "--resume"], capsys)
    assert code == 2 and "--resume continues the results in --output: give --output" in err

    output = tmp_path / "by-length"
    shutil.copytree(finished, output)
    before = _digest(output)
    code, _, err = _run([*args, "--output", str(output), "--resume", "--overwrite"], capsys)
    assert code == 2 and "--resume continues the run in --output, --overwrite replaces it: give one of them" in err
    assert _digest(output) == before
    results = json.loads((output / "results.json").read_text())
    del results["settings"]  # written by an rmt that did not record them
    for text, message in ((json.dumps(results), "does not record the flags it was made with"), ("{", "is not JSON")):
        (output / "results.json").write_text(text)
        before = _digest(output)
        code, _, err = _run([*args, "--output", str(output), "--resume"], capsys)
        assert code == 2 and err.startswith("rmt eval: error: --resume: ") and len(err.strip().splitlines()) == 1
        assert message in err and _digest(output) == before


def test_resume_takes_the_same_places_spelled_otherwise_and_refuses_other_weights_at_the_same_path(
    decoder, haystack, finished, tmp_path, capsys, monkeypatch
):
    """The checkpoint and --haystack were compared as typed (./model against model was refused, naming a flag
    --checkpoint that the positional argument is not), and a checkpoint trained further at the same path resumed
    with the earlier weights' cells kept."""
    model = tmp_path / "model"
    shutil.copytree(decoder, model)
    output = tmp_path / "by-length"
    shutil.copytree(finished, output)
    results = json.loads((output / "results.json").read_text())
    del results["cells"]["qa1/60/no_memory"]
    results["complete"] = False
    results["settings"]["checkpoint"] = str(model)
    (output / "results.json").write_text(json.dumps(results))
    args = _with(_resumable("./model/", haystack, output), "--haystack", os.path.relpath(haystack, tmp_path))
    run = _cells_run(monkeypatch)  # (undoes the monkeypatch's earlier changes: the folder is changed after it)
    monkeypatch.chdir(tmp_path)
    code, _, err = _run([*args, "--resume"], capsys)
    assert code == 0 and run == ["qa1 60 no_memory"], err
    assert json.loads((output / "results.json").read_text())["settings"]["haystack"] == os.path.realpath(haystack)
    elsewhere = tmp_path / "elsewhere"  # the same spelling from another folder: another file, refused
    elsewhere.mkdir()
    (elsewhere / "model").symlink_to(model)
    (elsewhere / os.path.relpath(haystack, tmp_path)).parent.mkdir(parents=True, exist_ok=True)
    (elsewhere / os.path.relpath(haystack, tmp_path)).write_text(background_text(400, seed=9))
    monkeypatch.chdir(elsewhere)
    code, _, err = _run([*args, "--resume"], capsys)
    assert code == 2 and "--haystack: " in err and "the checkpoint" not in err, err
    monkeypatch.chdir(tmp_path)

    results = json.loads((output / "results.json").read_text())
    del results["cells"]["qa1/60/no_memory"]
    (output / "results.json").write_text(json.dumps({**results, "complete": False}))
    weights = load_file(model / "memory.safetensors")
    save_file({name: tensor + 0.01 for name, tensor in weights.items()}, model / "memory.safetensors")
    before = _digest(output)
    code, _, err = _run([*args, "--resume"], capsys)
    assert code == 2 and "--resume: the model at ./model/ is not the one" in err and "(its weights differ)" in err
    assert "resuming" not in err  # said only once the resume goes ahead
    assert _digest(output) == before


def test_resume_refuses_the_same_weights_in_another_dtype(decoder, haystack, finished, tmp_path, capsys):
    """The weights' fingerprint rounds to bf16, so a checkpoint saved again in bf16 at the same path shares it with
    the fp32 one: its dtype, recorded in results.json, tells them apart (the cells kept would be fp32 answers)."""
    from rmt.memory.recurrent import RecurrentMemoryModel

    assert json.loads((finished / "results.json").read_text())["settings"]["dtype"] == "float32"
    model = tmp_path / "model"
    RecurrentMemoryModel.from_pretrained(decoder).to(torch.bfloat16).save_pretrained(model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(decoder) / "backbone" / name, model / "backbone")
    output = tmp_path / "by-length"
    shutil.copytree(finished, output)
    results = json.loads((output / "results.json").read_text())
    del results["cells"]["qa1/60/no_memory"]
    results["settings"]["checkpoint"] = str(model)
    (output / "results.json").write_text(json.dumps({**results, "complete": False}))
    before = _digest(output)
    code, _, err = _run([*_resumable(str(model), haystack, output), "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"the model at {model} holds bfloat16 weights" in err and "was made with float32 ones" in err
    assert _digest(output) == before
    del results["settings"]["dtype"]  # written by an rmt that did not record it: resumed as before
    (output / "results.json").write_text(json.dumps({**results, "complete": False}))
    code, _, err = _run([*_resumable(str(model), haystack, output), "--resume"], capsys)
    assert code == 0 and "3 of 4 cells kept, 1 to compute" in err, err
    assert json.loads((output / "results.json").read_text())["settings"]["dtype"] is None  # the kept cells' unknown


@pytest.mark.parametrize("flag", ["--haystack", "--babilong-dir", "--full-attention-model"])
def test_resume_refuses_files_whose_contents_changed_at_the_same_paths(flag, decoder, haystack, tmp_path, capsys):
    """These flags were compared by path alone: a background text, a samples file or a baseline replaced at the same
    path was resumed, the cells of the earlier one kept."""
    tokenizer = pretrained_tokenizer(decoder)
    output, place = tmp_path / "by-length", tmp_path / "input"
    one_length = ["eval", decoder, "--data", "babilong:qa1", "--lengths", "0k", "--samples", "1"]
    if flag == "--haystack":
        shutil.copy(haystack, place)
        args = _resumable(decoder, str(place), output)

        def change() -> None:
            place.write_text(background_text(400, seed=9))

    elif flag == "--babilong-dir":
        save_babilong(build_dataset("qa1", 0, 2, tokenizer, None, seed=0), babilong_file(place, "qa1", "0k"))
        args = [*one_length[:-2], "--babilong-dir", str(place), "--output", str(output)]

        def change() -> None:
            save_babilong(build_dataset("qa1", 0, 2, tokenizer, None, seed=1), babilong_file(place, "qa1", "0k"))

    else:
        pretrained_backbone(decoder).save_pretrained(place)
        tokenizer.save_pretrained(place)
        args = [*one_length, "--methods", "memory,full_attention", "--full-attention-model", str(place)]
        args += ["--output", str(output)]

        def change() -> None:
            backbone = pretrained_backbone(place)
            with torch.no_grad():
                for weight in backbone.parameters():
                    weight.add_(0.01)
            backbone.save_pretrained(place)

    def drop_a_cell() -> None:
        results = json.loads((output / "results.json").read_text())
        results["cells"].popitem()
        (output / "results.json").write_text(json.dumps({**results, "complete": False}))

    assert _run(args, capsys)[0] == 0
    drop_a_cell()
    code, _, err = _run([*args, "--resume"], capsys)  # the same contents: resumed
    assert code == 0 and "cells kept, 1 to compute" in err, err
    drop_a_cell()
    change()
    before = _digest(output)
    code, _, err = _run([*args, "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--resume: {flag} {place}: not what {output / 'results.json'} was made from (the same paths" in err
    assert _digest(output) == before


def test_an_overwrite_interrupted_before_its_first_cell_does_not_point_to_resume(
    decoder, haystack, finished, tmp_path, capsys, monkeypatch
):
    """Stopped before it wrote a cell, an --overwrite run leaves the earlier run's results.json: resuming that would
    keep the results the user meant to replace, so the note does not suggest it."""
    output = tmp_path / "by-length"
    shutil.copytree(finished, output)
    _cells_run(monkeypatch, interrupt_after=0)
    code, _, err = _run([*_resumable(decoder, haystack, output), "--overwrite"], capsys)
    assert code == 130 and "--resume" not in err
    assert f"{output / 'results.json'} is still the earlier run's: this run wrote no cell" in err
    results = json.loads((output / "results.json").read_text())  # a resume stopped before its first cell: resume
    del results["cells"]["qa1/60/no_memory"]
    (output / "results.json").write_text(json.dumps({**results, "complete": False}))
    _cells_run(monkeypatch, interrupt_after=0)
    code, _, err = _run([*_resumable(decoder, haystack, output), "--resume"], capsys)
    assert code == 130 and "the same command with --resume (not --overwrite) computes the others" in err


# ------------------------------------------------------------------------------------------ 2. files and folders


def test_output_that_is_a_file_is_refused_at_start_up(decoder, haystack, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    args = ["eval", decoder, "--data", "babilong:qa1", "--lengths", "0k", "--samples", "1", "--output", str(afile)]
    code, _, err = _run(args, capsys)
    assert code == 2 and f"--output {afile} exists and is not a folder" in err
    code, _, err = _run([*args[:-1], str(afile / "under")], capsys)
    assert code == 2 and f"{afile} is a file, not a folder" in err
    babilong = ["babilong", "--tokenizer", decoder, "--lengths", "0k", "--samples", "1"]
    code, _, err = _run([*babilong, "--output", str(afile)], capsys)
    assert code == 2 and f"--output {afile} exists and is not a folder" in err
    code, _, err = _run(["demo", "--steps", "1", "--output", str(afile)], capsys)
    assert code == 2 and f"output folder {afile} exists and is not a folder" in err
    assert afile.read_text() == "mine\n"


def test_an_interrupted_demo_rerun_leaves_the_earlier_demo_whole(tmp_path, capsys, monkeypatch):
    """The rerun emptied the earlier demo's RMT/ folder at its start, so Ctrl-C left results.json describing runs
    that were gone; now the new demo replaces the folder only once it is complete."""
    import rmt.demo

    demo = ["demo", "--steps", "1", "--no-progress", "--output", str(tmp_path / "demo")]
    assert _run(demo, capsys)[0] == 0
    (tmp_path / "demo" / ".DS_Store").write_bytes(b"")

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in (tmp_path / "demo").rglob("*") if p.is_file()}

    before = files()
    assert "demo/RMT/metrics.jsonl" in before and "demo/no_memory/metrics.jsonl" in before
    evaluate = rmt.demo.evaluate

    def interrupted_at_the_second_model(model, *args, **kwargs):
        if model.config.num_memory_tokens == 0:
            raise KeyboardInterrupt
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(rmt.demo, "evaluate", interrupted_at_the_second_model)
    assert _run(demo, capsys)[0] == 130
    assert files() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary folder left


def test_demo_replaces_only_an_earlier_demo(tmp_path, capsys):
    """The demo is meant to be rerun into its folder; a folder holding another command's results (it replaced their
    results.json and mixed its files with theirs) is refused, nothing in it touched."""
    demo = ["demo", "--steps", "1", "--no-progress", "--output", str(tmp_path / "demo")]
    assert _run(demo, capsys)[0] == 0
    (tmp_path / "demo" / ".DS_Store").write_bytes(b"")  # hidden files pass, and a results.json cut short
    (tmp_path / "demo" / "results.json").write_text('{"task": "cop')
    assert _run(demo, capsys)[0] == 0
    results = tmp_path / "results"
    results.mkdir()
    (results / "results.json").write_text('{"settings": {}}\n')
    code, _, err = _run([*demo[:-1], str(results)], capsys)
    assert code == 2 and "results.json (not a demo's)" in err
    (results / "predictions.jsonl").write_text("{}\n")
    code, _, err = _run([*demo[:-1], str(results)], capsys)
    assert code == 2 and "holds what is not an earlier demo's (predictions.jsonl)" in err
    assert sorted(p.name for p in results.iterdir()) == ["predictions.jsonl", "results.json"]
    assert (results / "results.json").read_text() == '{"settings": {}}\n'


def test_missing_babilong_dir_files_are_named(decoder, tmp_path, capsys):
    args = ["eval", decoder, "--data", "babilong:qa1", "--lengths", "0k"]
    code, _, err = _run([*args, "--babilong-dir", str(tmp_path / "nope")], capsys)
    assert code == 2 and str(tmp_path / "nope" / "data" / "qa1" / "0k.json") in err
    tokenizer = pretrained_tokenizer(decoder)
    save_babilong(build_dataset("qa1", 0, 2, tokenizer, None), tmp_path / "b" / "data" / "qa1" / "0k.json")
    code, _, err = _run([*args[:-1], "0k,1k", "--babilong-dir", str(tmp_path / "b")], capsys)
    assert code == 2 and f"no file {tmp_path / 'b' / 'data' / 'qa1' / '1k.json'}" in err


def test_babilong_dir_files_whose_samples_say_another_task_or_length_are_refused(decoder, tmp_path, capsys):
    """A file in the public layout's place of one task and length holding samples built for another: its results
    would be reported under the wrong cell. Samples without metadata (the public files) are taken."""
    tokenizer = pretrained_tokenizer(decoder)
    root = tmp_path / "b"
    args = ["eval", decoder, "--data", "babilong:qa1", "--lengths", "0k", "--babilong-dir", str(root)]
    qa5 = build_dataset("qa5", 0, 2, tokenizer, None)
    save_babilong(qa5, root / "data" / "qa1" / "0k.json")
    code, _, err = _run([*args, "--output", str(tmp_path / "out")], capsys)
    expected = f"{root / 'data' / 'qa1' / '0k.json'}: record 0 is a qa5 sample (its field 'task'), in qa1's folder"
    assert code == 2 and expected in err and not (tmp_path / "out").exists()
    qa1 = build_dataset("qa1", 0, 2, tokenizer, None)
    save_babilong(qa1, root / "data" / "qa1" / "1k.json")
    code, _, err = _run([*args[:-3], "1k", *args[-2:], "--output", str(tmp_path / "out")], capsys)
    expected = f"{root / 'data' / 'qa1' / '1k.json'}: record 0 was built for 0k tokens (its field 'length'), in 1k's"
    assert code == 2 and expected in err and not (tmp_path / "out").exists()
    public = [{"input": s.input, "question": s.question, "target": s.target} for s in qa5]  # no metadata
    save_babilong(public, root / "data" / "qa1" / "0k.json")
    assert _run([*args, "--samples", "2", "--output", str(tmp_path / "out")], capsys)[0] == 0


# ------------------------------------------------------------------------------------------ 3. --samples


def test_samples_per_length_do_not_depend_on_their_order():
    expected = {"0k": 100, "1k": 100, "4k": 100, "16k": 100, "64k": 10, "1M": 10}
    assert parse_samples("0k=100,64k=10,1M=10", LENGTHS) == expected
    assert parse_samples("1M=10,64k=10,0k=100", LENGTHS) == expected
    assert parse_samples("64k=10,1M=10", LENGTHS) == expected  # lengths not named: 100
    assert parse_samples("5,1M=10", LENGTHS) == {**dict.fromkeys(LENGTHS, 5), "1M": 10}  # a bare count: the default
    assert parse_samples("1M=10,5", LENGTHS) == {**dict.fromkeys(LENGTHS, 5), "1M": 10}
    assert parse_samples("7", LENGTHS) == dict.fromkeys(LENGTHS, 7)
    with pytest.raises(ValueError, match="--samples 0k=5,128k=3: 128k is not among --lengths"):
        parse_samples("0k=5,128k=3", LENGTHS)


# ------------------------------------------------------------------------------------------ 4-6. flags


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lengths", ","], "--lengths ',': give at least one length"),
        (["--methods", ","], "--methods ',': give at least one of memory, no_memory, full_attention"),
        (["--methods", "full_attention", "--window", "0"], "--window must be > 0"),
        (["--methods", "full_attention", "--window", "-5"], "--window must be > 0"),
        (
            ["--methods", "full_attention", "--window", "100000"],
            "--window 100000: the full-attention backbone reads at",
        ),
        (["--segments", "7", "--task-size", "3"], "--task-size 3, --segments 7: only for synthetic tasks (--task)"),
        (
            ["--methods", "full_attention", "--max-new-tokens", "100000"],
            "--max-new-tokens 100000: the full-attention backbone's window of",
        ),
        (["--babilong-dir", "BABILONG_DIR_FILE"], "is a file, not a folder"),
        (["--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
        (["--seed", str(2**32)], f"--seed must be in [0, 2**32), got {2**32}"),
    ],
)
def test_by_length_settings_are_refused_with_the_flag_named(decoder, flags, message, tmp_path, capsys):
    output = tmp_path / "out"
    (tmp_path / "notes.txt").write_text("a file")
    flags = [str(tmp_path / "notes.txt") if flag == "BABILONG_DIR_FILE" else flag for flag in flags]
    args = ["eval", decoder, "--data", "babilong:qa1", "--lengths", "0k", "--samples", "1", "--output", str(output)]
    code, _, err = _run([*args, *flags], capsys)
    assert code == 2 and message in err and "segment_size" not in err
    assert len(err.strip().splitlines()) == 1 and not output.exists()


def test_max_new_tokens_is_refused_for_an_encoder(encoder, tmp_path, capsys):
    output = tmp_path / "out"
    args = ["eval", encoder, "--data", "babilong:qa1", "--lengths", "0k", "--samples", "1", "--output", str(output)]
    code, _, err = _run([*args, "--max-new-tokens", "5"], capsys)
    assert code == 2 and "--max-new-tokens: " in err and "is an encoder" in err and not output.exists()


def test_babilong_refuses_an_empty_length_list(decoder, tmp_path, capsys):
    code, _, err = _run(["babilong", "--tokenizer", decoder, "--lengths", ",", "--output", str(tmp_path / "b")], capsys)
    assert code == 2 and "--lengths ',': give at least one length" in err
    assert not (tmp_path / "b").exists()


def test_eval_help_describes_segments_for_synthetic_tasks_only():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["eval"]
    text = next(a for a in sub._actions if a.dest == "segments").help
    assert text.startswith("synthetic tasks") and "curriculum" not in text and "training" not in text


# ------------------------------------------------------------------------------------------ 7. rmt generate


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--do-sample", "--top-p", "2"], "top_p"),
        (["--do-sample", "--temperature", "0"], "temperature"),
        (["--do-sample", "--temperature", "inf"], "temperature must be a finite number, got inf"),
        (["--do-sample", "--top-p", "nan"], "top_p must be a finite number, got nan"),
        (["--do-sample", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["--do-sample", "--top-k", "-1"], "top_k must be a whole number >= 0"),
        (["--temperature", "0.5"], "--temperature 0.5 sets sampling, but without --do-sample decoding is greedy"),
    ],
)
def test_generate_checks_its_settings_before_reading(decoder, flags, message, tmp_path, capsys):
    document = tmp_path / "doc.txt"
    document.write_text(background_text(20))
    code, out, err = _run(["generate", decoder, "--document", str(document), "--prompt", "Where", *flags], capsys)
    assert code == 2 and message in err
    assert "read " not in out  # refused before the document was read


def test_generate_notes_a_seed_without_sampling(decoder, tmp_path, capsys):
    """--seed changes nothing under greedy decoding: a note says so, and the answer is given as without it."""
    document = tmp_path / "doc.txt"
    document.write_text(background_text(20))
    args = ["generate", decoder, "--document", str(document), "--prompt", "Where", "--max-new-tokens", "2"]
    code, plain, err = _run(args, capsys)
    assert code == 0 and "--seed" not in err
    code, seeded, err = _run([*args, "--seed", "7"], capsys)
    assert code == 0 and "note: --seed has no effect without --do-sample" in err
    assert seeded.splitlines()[-1] == plain.splitlines()[-1]
    code, _, err = _run([*args, "--seed", "7", "--do-sample"], capsys)
    assert code == 0 and "--seed" not in err


def test_generate_refuses_a_document_that_is_not_text_before_reading(decoder, tmp_path, capsys):
    """A binary file was read with replacement characters and answered from noise (exit 0); a pipe said "no such
    file"."""
    binary = tmp_path / "random.bin"
    binary.write_bytes(random.Random(0).randbytes(4096))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Mary went to the caf\xe9.".encode("latin-1"))
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for document, message in [
        (binary, f"--document {binary} is not UTF-8 text: a NUL byte at offset"),
        (latin, f"--document {latin} is not UTF-8 text: byte 0xe9 at offset 20"),
        (pipe, f"--document {pipe} is not a regular file (a pipe or a device)"),
    ]:
        code, out, err = _run(["generate", decoder, "--document", str(document), "--prompt", "Where"], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err and "read " not in out


def test_babilong_refuses_a_haystack_that_is_not_text(decoder, tmp_path, capsys):
    binary = tmp_path / "random.bin"
    binary.write_bytes(random.Random(0).randbytes(4096))
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    args = ["babilong", "--tokenizer", decoder, "--lengths", "1k", "--samples", "1", "--output", str(tmp_path / "b")]
    code, _, err = _run([*args, "--haystack", str(binary)], capsys)
    assert code == 2 and err.count("\n") == 1 and f"--haystack {binary} is not UTF-8 text: a NUL byte" in err
    code, _, err = _run([*args, "--haystack", str(pipe)], capsys)
    assert code == 2 and f"--haystack {pipe} is not a regular file" in err
    code, _, err = _run([*args, "--haystack", str(tmp_path / "missing.txt")], capsys)
    assert code == 2 and "--haystack " in err and "missing.txt: no such file" in err
    assert not (tmp_path / "b").exists()


def test_train_and_eval_refuse_a_haystack_that_is_not_text_before_the_model_loads(
    decoder, tmp_path, capsys, monkeypatch
):
    """Found when the BABILong samples were first built, after the model had loaded (minutes for a real one)."""
    import rmt.build
    from rmt.memory.recurrent import RecurrentMemoryModel

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before --haystack was checked")

    monkeypatch.setattr(rmt.build, "pretrained_backbone", no_loading)
    monkeypatch.setattr(RecurrentMemoryModel, "from_pretrained", no_loading)
    binary = tmp_path / "random.bin"
    binary.write_bytes(random.Random(0).randbytes(4096))
    train = ["train", "--model", decoder, "--data", "babilong:qa1", "--output", str(tmp_path / "run")]
    evaluate = ["eval", decoder, "--data", "babilong:qa1", "--lengths", "1k", "--output", str(tmp_path / "eval")]
    for args in (train, evaluate):
        code, _, err = _run([*args, "--haystack", str(binary)], capsys)
        assert code == 2 and err.count("\n") == 1 and f"--haystack {binary} is not UTF-8 text: a NUL byte" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


def test_generate_refuses_an_empty_prompt_before_reading(decoder, tmp_path, capsys):
    document = tmp_path / "doc.txt"
    document.write_text(background_text(20))
    code, out, err = _run(["generate", decoder, "--document", str(document), "--prompt", ""], capsys)
    assert code == 2 and "--prompt is empty" in err and "read " not in out


def test_generate_refuses_a_run_that_would_do_nothing_and_a_folder_for_a_document(decoder, tmp_path, capsys):
    document = tmp_path / "doc.txt"
    document.write_text(background_text(20))
    code, out, err = _run(["generate", decoder, "--document", str(document)], capsys)
    assert code == 2 and "nothing to do" in err and "read " not in out
    code, _, err = _run(["generate", decoder, "--document", str(tmp_path), "--prompt", "Where"], capsys)
    assert code == 2 and "is a folder, not a text file" in err
    # An unset shell variable ("$MEMORY") read the document, answered and saved nothing.
    args = ["generate", decoder, "--document", str(document), "--memory-file", "", "--prompt", "Where"]
    code, out, err = _run(args, capsys)
    assert code == 2 and "--memory-file is empty" in err and "read " not in out


def test_generate_refuses_a_saved_memory_of_another_document(decoder, tmp_path, capsys):
    """A memory file answers for the document it holds, told by content: another --document is refused (it answered
    from the first document with a note and exit 0, so a loop over documents sharing one file answered every question
    from the first), a copy at another path or the same file spelled otherwise is the same document, and a file
    changed since it was read is refused."""
    first, second, memory = tmp_path / "first.txt", tmp_path / "second.txt", tmp_path / "doc.memory"
    first.write_text(background_text(20))
    second.write_text(background_text(30))
    assert _run(["generate", decoder, "--document", str(first), "--memory-file", str(memory)], capsys)[0] == 0
    args = ["generate", decoder, "--document", str(second), "--memory-file", str(memory), "--prompt", "Where"]
    code, out, err = _run([*args, "--max-new-tokens", "2"], capsys)
    assert code == 2 and f"holds the memory of {first}, and --document {second} is another document" in err
    assert "loaded" not in out
    copy = tmp_path / "copy.txt"
    copy.write_bytes(first.read_bytes())
    for document in (str(copy), os.path.relpath(first)):
        same = ["generate", decoder, "--document", document, "--memory-file", str(memory), "--prompt", "W"]
        code, out, err = _run([*same, "--max-new-tokens", "2"], capsys)
        assert code == 0 and f"loaded the memory of {first}" in err
    code, _, err = _run(["generate", decoder, "--memory-file", str(memory)], capsys)
    assert code == 2 and "nothing to do" in err
    # The same path, another text: the memory of the text as it was is refused (it answered from it unawares).
    first.write_text(background_text(3))
    code, _, err = _run([*same, "--max-new-tokens", "2"], capsys)
    assert code == 2 and f"and --document {os.path.relpath(first)} has changed since it was read" in err
    code, _, err = _run(
        ["generate", decoder, "--memory-file", str(memory), "--prompt", "W", "--max-new-tokens", "2"], capsys
    )
    assert code == 0  # without --document nothing is compared
    code, _, err = _run([*same[:3], str(tmp_path / "gone.txt"), *same[4:]], capsys)
    assert code == 2 and "gone.txt: no such file" in err


def test_generate_refuses_a_memory_file_of_a_batch_and_a_folder_path(decoder, tmp_path, capsys):
    from rmt.memory.memory_file import save_memory
    from rmt.memory.recurrent import RecurrentMemoryModel

    model = RecurrentMemoryModel.from_pretrained(decoder)
    memory = tmp_path / "batch.memory"
    save_memory(model, model.initial_state(2), memory, document=7)  # the Python API: any JSON metadata
    args = ["generate", decoder, "--memory-file", str(memory), "--prompt", "Where", "--max-new-tokens", "2"]
    code, _, err = _run(args, capsys)
    assert code == 2 and "holds the memories of 2 documents" in err
    document = tmp_path / "doc.txt"
    document.write_text(background_text(5))
    args = ["generate", decoder, "--document", str(document), "--memory-file", f"{tmp_path}/new/", "--prompt", "W"]
    code, _, err = _run(args, capsys)
    assert code == 2 and "names a folder: give a file in it" in err and not (tmp_path / "new").exists()


def test_generate_answers_when_its_memory_file_cannot_be_written(decoder, tmp_path, capsys, monkeypatch):
    """A full disk while the memory is saved: one line naming the file, the answer still given (the document read
    is not lost), exit 1, and no file left."""
    import errno

    import rmt.files

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    document, memory = tmp_path / "doc.txt", tmp_path / "doc.memory"
    document.write_text(background_text(5))
    args = ["generate", decoder, "--document", str(document), "--prompt", "Where", "--max-new-tokens", "2"]
    code, expected, _ = _run(args, capsys)
    monkeypatch.setattr(rmt.files.os, "fsync", full_disk)
    code, out, err = _run([*args, "--memory-file", str(memory)], capsys)
    assert code == 1 and f"could not save the memory to {memory}: No space left on device" in err
    assert "Traceback" not in err and out.splitlines()[-1] == expected.splitlines()[-1]
    assert not memory.exists() and list(tmp_path.iterdir()) == [document]
    code, _, err = _run(args[:4] + ["--memory-file", str(memory)], capsys)  # only to save it: exit 1 too (was 0)
    assert code == 1 and "could not save the memory" in err and not memory.exists()


def test_generate_notes_a_memory_read_in_another_way(decoder, tmp_path, capsys):
    """--prompt reads a document with its trailing line breaks, --question without them, and a memory file records
    how it was read (and in which dtype): reused the other way, a note says so."""
    document, memory = tmp_path / "doc.txt", tmp_path / "doc.memory"
    document.write_text(background_text(5) + "\n")
    args = ["generate", decoder, "--document", str(document), "--memory-file", str(memory), "--max-new-tokens", "2"]
    assert _run([*args, "--prompt", "Where"], capsys)[0] == 0
    code, _, err = _run([*args, "--prompt", "Where"], capsys)
    assert code == 0 and "note:" not in err
    code, _, err = _run([*args, "--question", "Where is Mary?"], capsys)
    assert code == 0 and (
        "note: the memory was read with the document's trailing line breaks; this --question run reads the document "
        "without them" in err
    )
    code, _, err = _run([*args, "--prompt", "Where", "--dtype", "bf16"], capsys)
    assert code == 0 and "note: the document was read in fp32; the answer is generated in bf16" in err
    # Read once and saved, then asked with --question (the usage's workflow): read the way --question reads, no note.
    saved = tmp_path / "saved.memory"
    save_only = ["generate", decoder, "--document", str(document), "--memory-file", str(saved)]
    assert _run(save_only, capsys)[0] == 0
    asked = ["generate", decoder, "--memory-file", str(saved), "--max-new-tokens", "2", "--question", "Where is Mary?"]
    code, out, err = _run(asked, capsys)
    assert code == 0 and "note:" not in err
    code, read_again, _ = _run([*args[:4], "--max-new-tokens", "2", "--question", "Where is Mary?"], capsys)
    assert out.splitlines()[-1] == read_again.splitlines()[-1]
    code, _, err = _run([*asked[:4], "--max-new-tokens", "2", "--prompt", "Where"], capsys)
    assert code == 0 and "note: the memory was read without the document's trailing line breaks; this --prompt" in err


def test_a_memory_file_names_its_document_for_runs_from_another_folder(decoder, tmp_path, capsys, monkeypatch):
    """The file kept --document as typed (relative), so a run from another folder with the same document said it
    was another one."""
    (tmp_path / "here" / "deep").mkdir(parents=True)
    (tmp_path / "there").mkdir()
    (tmp_path / "doc.txt").write_text(background_text(20))
    monkeypatch.chdir(tmp_path / "here" / "deep")
    first = ["generate", decoder, "--document", "../../doc.txt", "--memory-file", "../../doc.memory"]
    assert _run(first, capsys)[0] == 0
    monkeypatch.chdir(tmp_path / "there")
    args = ["generate", decoder, "--document", "../doc.txt", "--memory-file", "../doc.memory", "--prompt", "Where"]
    code, _, err = _run([*args, "--max-new-tokens", "2"], capsys)
    assert code == 0 and "is not read" not in err


def test_babilong_tasks_named_twice_are_evaluated_once_and_synthetic_segments_follow_the_model(decoder, capsys):
    """babilong:qa1,qa1 evaluated qa1 twice (twice the time, duplicate rows and predictions); --segments of a
    fixed-length synthetic task changed only a note, never how the model cut the input."""
    from rmt.cli.common import task_from_flags
    from rmt.cli.data_flags import babilong_tasks

    assert babilong_tasks("babilong:qa2,qa1,qa2") == ["qa2", "qa1"]
    cut = -(-task_from_flags("copy", 4, 3).sequence_length // 16)  # the decoder fixture cuts at 16 tokens
    args = ["eval", decoder, "--task", "copy", "--task-size", "4", "--batches", "1"]
    code, _, err = _run([*args, "--segments", str(cut + 1)], capsys)
    assert code == 2 and f"segments of 16, that is {cut}; its segment size, not --segments, decides" in err
    code, out, err = _run([*args, "--segments", str(cut)], capsys)
    assert code == 0 and json.loads(out)["segments"] == cut and "--task-size not given" not in err
    assert json.loads(out)["dtype"] == "float32"  # the weights as read
    code, _, err = _run(["eval", decoder, "--task", "copy", "--batches", "1"], capsys)  # a copy-24 task, silently
    assert code == 0 and "note: --task-size not given, so the copy task has its default size 24" in err


def test_model_kinds_and_missing_tokenizers_are_refused_in_one_line(decoder, encoder, tmp_path, capsys):
    text = tmp_path / "lm.txt"
    text.write_text(background_text(5))
    code, _, err = _run(["eval", encoder, "--data", str(text)], capsys)
    assert code == 2 and "holds text for language modelling, which needs a decoder" in err
    code, _, err = _run(["eval", encoder, "--task", "copy"], capsys)
    assert code == 2 and "is an encoder (it answers with a class); synthetic tasks score a decoder" in err
    code, _, err = _run(["eval", str(text), "--task", "copy"], capsys)
    assert code == 2 and "is a file, not a checkpoint folder" in err
    untokenized = tmp_path / "no-tokenizer"
    shutil.copytree(decoder, untokenized)
    for name in os.listdir(untokenized / "backbone"):
        if "token" in name or name in ("vocab.json", "merges.txt", "vocab.txt"):
            os.remove(untokenized / "backbone" / name)
    code, _, err = _run(["eval", str(untokenized), "--data", str(text)], capsys)
    assert code == 2 and "has no tokenizer" in err and "Traceback" not in err


def test_a_folder_without_tokenizer_files_is_not_told_to_install_a_converter(tmp_path):
    """transformers' advice for a Llama folder without tokenizer files (install sentencepiece or tiktoken to convert a
    slow tokenizer) sent a user of a synthetic-task model to install packages that do not help."""
    random_backbone("llama", 64, 1, 32, 4, 256).save_pretrained(tmp_path / "model")
    with pytest.raises(InputError, match=r"has no tokenizer \(.*a pretrained --model\)$"):
        pretrained_tokenizer(tmp_path / "model")


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "bert"])
def test_a_model_folder_without_tokenizer_files_has_no_tokenizer_in_any_family(family, tmp_path, capsys):
    """transformers builds GPT-2's, GPT-NeoX's and BERT's tokenizers from their config alone: empty, or [UNK] for
    every word. `rmt train --model DIR --data babilong:qa1` trained on all-[UNK] input and exited 0."""
    random_backbone(family, 64, 1, 32, 4, 256).save_pretrained(tmp_path / "model")
    with pytest.raises(InputError, match="has no tokenizer .*and no words"):
        pretrained_tokenizer(tmp_path / "model")
    args = ["train", "--model", str(tmp_path / "model"), "--data", "babilong:qa1", "--output", str(tmp_path / "run")]
    code, _, err = _run([*args, "--steps", "1"], capsys)
    assert code == 2 and "has no tokenizer" in err and not (tmp_path / "run").exists()


def test_a_full_attention_baseline_that_cannot_read_the_samples_is_refused_before_any_cell(encoder, tmp_path, capsys):
    """A baseline with other classes would fail at its first cell, after the memory cells were written."""
    other = tmp_path / "other"
    tiny_model_folder(other, "bert", ["yes", "no"])
    output = tmp_path / "out"
    args = ["eval", encoder, "--data", "babilong:qa1", "--lengths", "0k", "--samples", "1", "--output", str(output)]
    code, _, err = _run([*args, "--methods", "memory,full_attention", "--full-attention-model", str(other)], capsys)
    assert code == 2 and "answers with the classes ['yes', 'no']" in err and not output.exists()
    headless = tmp_path / "headless"
    shutil.copytree(other, headless)
    weights = load_file(headless / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, headless / "model.safetensors")
    code, _, err = _run([*args, "--methods", "memory,full_attention", "--full-attention-model", str(headless)], capsys)
    assert code == 2 and "has no classification head: it must be a classifier trained on the same answers" in err
    assert not output.exists()  # a head at random scored the baseline by chance before


def test_a_full_attention_baseline_reads_in_the_checkpoints_dtype(decoder, tmp_path, capsys, monkeypatch):
    """It was read in fp32 whatever the checkpoint's dtype: a bf16 memory model was compared with an fp32 baseline."""
    from rmt.eval import by_length
    from rmt.memory.recurrent import RecurrentMemoryModel

    model = tmp_path / "model"
    RecurrentMemoryModel.from_pretrained(decoder).to(torch.bfloat16).save_pretrained(model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(decoder) / "backbone" / name, model / "backbone")
    read_in = []
    original = by_length.evaluate_by_length

    def recording(memory_model, *args, full_attention_backbone=None, **kwargs):
        read_in.append((memory_model.backbone.dtype, full_attention_backbone.dtype))
        return original(memory_model, *args, full_attention_backbone=full_attention_backbone, **kwargs)

    monkeypatch.setattr(by_length, "evaluate_by_length", recording)
    baseline = str(Path(decoder) / "backbone")  # saved in fp32
    args = ["--data", "babilong:qa1", "--lengths", "0k", "--samples", "1", "--no-progress"]
    args += ["--methods", "memory,full_attention", "--full-attention-model", baseline]
    code, _, err = _run(["eval", str(model), *args], capsys)
    assert code == 0, err
    assert read_in == [(torch.bfloat16, torch.bfloat16)]
    code, _, err = _run(["eval", decoder, *args, "--dtype", "bf16"], capsys)  # an fp32 checkpoint, read in bf16
    assert code == 0, err
    assert read_in[1:] == [(torch.bfloat16, torch.bfloat16)]
    code, _, err = _run(["eval", str(model), *args, "--dtype", "fp32"], capsys)
    assert code == 0, err
    assert read_in[2:] == [(torch.float32, torch.float32)]


def test_dtype_reads_a_checkpoint_in_another_precision_and_a_resume_keeps_it(
    decoder, haystack, finished, tmp_path, capsys
):
    """--dtype casts the weights after loading; the output records the dtype read in, and a resume in another one
    is refused naming the flag (its kept cells were computed in the first)."""
    copy = ["eval", decoder, "--task", "copy", "--task-size", "4", "--batches", "1"]
    code, out, err = _run([*copy, "--dtype", "bf16"], capsys)
    assert code == 0, err
    assert json.loads(out)["dtype"] == "bfloat16"
    output = tmp_path / "by-length"
    shutil.copytree(finished, output)
    results = json.loads((output / "results.json").read_text())
    del results["cells"]["qa1/60/no_memory"]
    (output / "results.json").write_text(json.dumps({**results, "complete": False}))
    before = _digest(output)
    code, _, err = _run([*_resumable(decoder, haystack, output), "--resume", "--dtype", "bf16"], capsys)
    assert code == 2 and f"the model at {decoder} is read in bfloat16 (--dtype bf16)" in err, err
    assert "was made with float32 ones" in err and "or resume with --dtype fp32" in err and _digest(output) == before
    code, _, err = _run([*_resumable(decoder, haystack, output), "--resume", "--dtype", "fp32"], capsys)
    assert code == 0 and "3 of 4 cells kept, 1 to compute" in err, err


def test_a_full_attention_baseline_with_a_smaller_vocabulary_is_refused_before_any_cell(decoder, tmp_path, capsys):
    small = tmp_path / "small"
    random_backbone("llama", 16, 1, 32, 4, 256).save_pretrained(small)
    output = tmp_path / "out"
    args = ["eval", decoder, "--data", "babilong:qa1", "--lengths", "0k", "--samples", "1", "--output", str(output)]
    code, _, err = _run([*args, "--methods", "memory,full_attention", "--full-attention-model", str(small)], capsys)
    assert code == 2 and "embeds 16 token ids, fewer than the" in err and not output.exists()


def test_a_full_attention_baseline_with_another_tokenizer_is_refused_before_any_cell(decoder, tmp_path, capsys):
    """It embeds enough ids, but its own tokenizer gives the samples' words other ids than the checkpoint's, which
    writes the samples: it read ids that meant other words to it, and scored 0.00 without a word said."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rmt.build import pretrained_tokenizer

    ours = pretrained_tokenizer(decoder)
    shifted = {token: i + 1 for token, i in ours.get_vocab().items()} | {"[EXTRA]": 0}  # every id one further
    words = Tokenizer(models.WordLevel(shifted, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    other = tmp_path / "other"
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(other)
    random_backbone("llama", len(shifted), 1, 32, 4, 2048).save_pretrained(other)
    output = tmp_path / "out"
    args = ["eval", decoder, "--data", "babilong:qa1", "--lengths", "0k", "--samples", "1", "--output", str(output)]
    code, _, err = _run([*args, "--methods", "memory,full_attention", "--full-attention-model", str(other)], capsys)
    assert code == 2 and "has another tokenizer than the checkpoint's" in err and not output.exists()


def test_unused_haystack_is_refused(decoder, haystack, tmp_path, capsys):
    args = ["--lengths", "0k", "--haystack", haystack]
    code, _, err = _run(["eval", decoder, "--data", "babilong:qa1", "--samples", "1", *args], capsys)
    assert code == 2 and "no length above 0k reads background text" in err
    code, _, err = _run(["babilong", "--tokenizer", decoder, "--output", str(tmp_path / "b"), *args], capsys)
    assert code == 2 and "no length above 0k reads background text" in err


# ------------------------------------------------------------------------------------------ 8. data files


def test_eval_on_a_file_says_what_it_scored_and_its_loss_ignores_the_batch_size(decoder, qa_file, capsys):
    scores = {}
    for batch_size in ("4", "10"):
        code, out, err = _run(
            ["eval", decoder, "--data", qa_file, "--batches", "5", "--batch-size", batch_size], capsys
        )
        assert code == 0, err
        scores[batch_size] = json.loads(out)
        assert scores[batch_size]["records"] == 10 and scores[batch_size]["scored"] == 10
        assert scores[batch_size]["dtype"] == "float32"  # the weights as read
    assert scores["4"]["loss"] == pytest.approx(scores["10"]["loss"], rel=1e-5)  # 4+4+2 records: not a mean of means
    code, out, err = _run(["eval", decoder, "--data", qa_file, "--batches", "2", "--batch-size", "3"], capsys)
    assert code == 0 and json.loads(out)["scored"] == 6
    assert "scored the first 6 of the 10 records (--batches 2 x --batch-size 3)" in err


def test_classifier_loss_is_sample_weighted(encoder, tmp_path, capsys):
    tokenizer = pretrained_tokenizer(encoder)
    data = save_babilong(build_dataset("qa1", 0, 5, tokenizer, None), tmp_path / "qa.jsonl")
    losses = []
    for batch_size in ("2", "5"):
        code, out, err = _run(["eval", encoder, "--data", str(data), "--batch-size", batch_size], capsys)
        assert code == 0, err
        losses.append(json.loads(out)["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # batches of 2, 2 and 1 samples


# ------------------------------------------------------------------------------------------ 9. file permissions


def test_babilong_files_get_the_umasks_permissions(decoder, tmp_path, capsys):
    mask = os.umask(0o022)
    try:
        code, _, err = _run(["babilong", "--tokenizer", decoder, "--lengths", "0k", "--samples", "1", "--output",
                             str(tmp_path / "b")], capsys)  # fmt: skip
    finally:
        os.umask(mask)
    assert code == 0, err
    assert (tmp_path / "b" / "data" / "qa1" / "0k.json").stat().st_mode & 0o777 == 0o644


def test_a_failed_babilong_run_changes_no_file(decoder, tmp_path, capsys):
    output = tmp_path / "b"
    haystack = tmp_path / "background.txt"  # not the built-in corpus, which CI does not install
    haystack.write_text(background_text())
    args = ["babilong", "--tokenizer", decoder, "--samples", "2", "--haystack", str(haystack), "--output", str(output)]
    no_haystack = [*args[:5], *args[7:]]  # 0k reads no background
    assert _run([*no_haystack, "--lengths", "0k"], capsys)[0] == 0
    before = _digest(output / "data" / "qa1")
    code, _, err = _run([*args, "--lengths", "0k,10", "--seed", "3"], capsys)
    assert code == 2 and "already holds" in err and "give --overwrite" in err
    code, _, err = _run([*args, "--lengths", "0k,10", "--seed", "3", "--overwrite"], capsys)
    assert code == 2 and "exceed the 10-token length" in err
    assert _digest(output / "data" / "qa1") == before  # no 0k file of the new seed, no temporary file
    code, _, err = _run([*args[:-1], str(tmp_path / "new" / "b"), "--lengths", "0k,10"], capsys)
    assert code == 2 and not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------ 10. messages


def test_messages_name_the_flag_given(decoder, encoder, tmp_path, capsys):
    babilong = ["babilong", "--tokenizer", decoder, "--lengths", "0k", "--output", str(tmp_path / "b")]
    code, _, err = _run([*babilong, "--tasks", "qa9"], capsys)
    assert code == 2 and "--tasks 'qa9': unknown task(s) qa9" in err and "--data" not in err
    code, _, err = _run([*babilong, "--facts", "9-2"], capsys)
    assert code == 2 and "--facts 9-2: the range is empty" in err and "num_facts" not in err
    code, _, err = _run([*babilong, "--seed", "-1"], capsys)
    assert code == 2 and "--seed must be in [0, 2**32), got -1" in err and not (tmp_path / "b").exists()
    code, _, err = _run(["eval", decoder, "--data", "babilong:qa1", "--lengths", "0k", "--facts", "9-2"], capsys)
    assert code == 2 and "--facts 9-2: the range is empty" in err
    train = ["train", "--model", decoder, "--data", "babilong:qa1", "--output", str(tmp_path / "t")]
    code, _, err = _run([*train, "--facts", "9-2"], capsys)  # every command words --facts alike
    assert code == 2 and "--facts 9-2: the range is empty" in err and not (tmp_path / "t").exists()
    for command in (train, [*babilong, "--tasks", "qa1"]):
        code, _, err = _run([*command, "--facts", "x"], capsys)
        assert code == 2 and "--facts 'x': give a count (e.g. 1) or a range" in err
    record = {"input": "Mary went to the kitchen.", "question": "Where is Mary?", "target": "cellar"}
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(record) + "\n")
    code, _, err = _run(["eval", encoder, "--data", str(data)], capsys)
    assert code == 2 and "the evaluation samples: record 0" in err and "training data" not in err


# ------------------------------------------------------------------------------------------ 11. help


def _help(command: str) -> tuple[str, str]:
    """The description and the whole help text of `rmt COMMAND --help`."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return sub.description, sub.format_help()


def test_help_states_defaults_and_descriptions_are_sentences():
    for command in ("eval", "babilong", "generate"):
        description, _ = _help(command)
        assert not description.startswith("`"), description
        assert description[0].isupper(), description
    text = " ".join(_help("eval")[1].split())
    assert "(default: 0k,1k,4k,16k)" in text and "answer tokens to generate (default: 8)" in text
    text = " ".join(_help("babilong")[1].split())
    assert "(default: 0k,1k,4k)" in text and "(default: 0,1)" in text
    import rmt.demo

    assert "about a minute" in rmt.demo.__doc__ and "a few minutes" not in rmt.demo.__doc__


def test_a_detect_memorize_model_evaluated_at_another_segment_size_is_told_so(tmp_path, capsys):
    """The segment-size note covered every task but detect_memorize, whose size is its segment size."""
    from rmt.data.tasks import make_task

    task = make_task("detect_memorize", num_segments=2, segment_size=8)
    backbone = random_backbone("llama", task.vocab_size, num_layers=1, hidden_size=32, max_positions=64)
    model = memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=task.segment_size_for(2)))
    model.save_pretrained(tmp_path / "model")
    args = ["eval", str(tmp_path / "model"), "--task", "detect_memorize", "--segments", "2", "--batches", "1"]
    assert main([*args, "--task-size", "8"]) == 0
    assert "note: the model was trained with segment_size" not in capsys.readouterr().err
    assert main(args) == 0  # the default task size, 64 tokens per segment
    out, err = capsys.readouterr()
    assert f"note: the model was trained with segment_size={task.segment_size_for(2)}" in err
    longer = make_task("detect_memorize", num_segments=2, segment_size=64)
    assert json.loads(out)["segments"] == -(-longer.sequence_length // task.segment_size_for(2))  # how it was cut


def test_rmt_generate_stops_at_an_end_token_the_generation_config_names(decoder, tmp_path, capsys):
    """rmt generate passed the tokenizer's eos_token_id alone, which overrode the backbone's generation config."""
    from rmt.build import pretrained_tokenizer

    document = tmp_path / "doc.txt"
    document.write_text(background_text(5))
    args = ["--document", str(document), "--prompt", "Where is Mary", "--max-new-tokens", "4"]
    code, out, _ = _run(["generate", decoder, *args], capsys)
    assert code == 0
    tokenizer = pretrained_tokenizer(decoder)
    answer = tokenizer(out.splitlines()[-1], add_special_tokens=False).input_ids
    assert len(answer) == 4 and tokenizer.eos_token_id not in answer
    stopping = tmp_path / "model"
    shutil.copytree(decoder, stopping)
    config_file = stopping / "backbone" / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config["eos_token_id"] = [answer[1]]
    config_file.write_text(json.dumps(config))
    code, out, _ = _run(["generate", str(stopping), *args], capsys)
    assert code == 0 and out.splitlines()[-1] == tokenizer.decode(answer[:2], skip_special_tokens=True).strip()


def test_rmt_generate_asks_a_question_in_the_format_models_are_trained_on(decoder, tmp_path, capsys, monkeypatch):
    """--prompt is continued as typed; --question is asked as the trainer and rmt eval ask (Question: ... Answer:)."""
    import rmt.build
    from rmt.build import pretrained_tokenizer
    from rmt.data.collate import qa_prompt
    from rmt.memory.recurrent import RecurrentMemoryModel
    from rmt.memory.stream import MemoryStream

    def recording(calls: list, method):  # `method`, recording the first row of the ids it is given
        def record(self, input_ids, *args, **kwargs):
            calls.append(input_ids[0].tolist())
            return method(self, input_ids, *args, **kwargs)

        return record

    prompts, fed = [], []
    monkeypatch.setattr(RecurrentMemoryModel, "generate", recording(prompts, RecurrentMemoryModel.generate))
    monkeypatch.setattr(MemoryStream, "feed", recording(fed, MemoryStream.feed))
    texts = []
    real_tokenizer = rmt.build.pretrained_tokenizer

    class Recording:  # the model's tokenizer, recording the texts it tokenizes
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def __call__(self, text, *args, **kwargs):
            texts.append(text)
            return self.tokenizer(text, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.tokenizer, name)

        def __len__(self):  # not looked up through __getattr__
            return len(self.tokenizer)

    monkeypatch.setattr(rmt.build, "pretrained_tokenizer", lambda name: Recording(real_tokenizer(name)))
    document = tmp_path / "doc.txt"
    document.write_text(background_text(5) + "\n\n")  # a file's last line break would come before "\n\nQuestion:"
    common = ["--document", str(document), "--max-new-tokens", "2"]
    assert _run(["generate", decoder, *common, "--question", "Where is Mary?"], capsys)[0] == 0
    assert _run(["generate", decoder, *common, "--prompt", "Where is Mary?"], capsys)[0] == 0
    tokenizer = pretrained_tokenizer(decoder)
    assert fed[0] == tokenizer(background_text(5).rstrip(), add_special_tokens=False).input_ids  # one chunk
    assert texts[:2] == [qa_prompt("", "Where is Mary?"), background_text(5).rstrip()]  # no line break left
    assert texts[2:4] == ["Where is Mary?", background_text(5) + "\n\n"]  # --prompt continues the text as it is
    asked = tokenizer(qa_prompt("", "Where is Mary?"), add_special_tokens=False).input_ids
    assert prompts == [asked, tokenizer("Where is Mary?", add_special_tokens=False).input_ids]
    assert tokenizer.decode(asked).strip().startswith("Question") and asked != prompts[1]
    code, _, err = _run(["generate", decoder, *common, "--question", " "], capsys)
    assert code == 2 and "--question is empty" in err
    with pytest.raises(SystemExit):
        main(["generate", decoder, *common, "--question", "Where?", "--prompt", "Where?"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_rmt_generate_reads_a_checkpoint_by_its_hub_id(decoder, tmp_path, capsys, monkeypatch):
    """The model and its tokenizer (in backbone/) come from the Hub's cache, as after a download; no Hub is reachable
    in tests, so the hub library runs offline on a cache holding the checkpoint's files."""
    import huggingface_hub.constants

    repo = tmp_path / "cache" / "models--someone--tiny-rmt"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(decoder, repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    document = tmp_path / "doc.txt"
    document.write_text(background_text(5))
    args = ["--document", str(document), "--prompt", "Where is Mary", "--max-new-tokens", "4"]
    runs = [_run(["generate", model, *args], capsys) for model in (decoder, "someone/tiny-rmt")]
    assert [code for code, _, _ in runs] == [0, 0]
    assert runs[1][1].splitlines()[-1] == runs[0][1].splitlines()[-1]  # the same answer


def test_eval_and_generate_refuse_a_checkpoint_whose_tokenizer_belongs_to_another_model(decoder, tmp_path, capsys):
    """rmt train checked it; rmt eval and rmt generate failed later, on ids outside the vocabulary."""
    other = tmp_path / "model"
    shutil.copytree(decoder, other)
    tokenizer = pretrained_tokenizer(decoder)
    tokenizer.add_tokens([f"extra{i}" for i in range(1000)])
    tokenizer.save_pretrained(other / "backbone")
    record = {"input": "Mary went to the kitchen.", "question": "Where is Mary?", "target": "kitchen"}
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps(record) + "\n")
    document = tmp_path / "doc.txt"
    document.write_text(background_text(3))
    for args in (
        ["eval", str(other), "--data", str(data)],
        ["eval", str(other), "--data", "babilong:qa1", "--lengths", "0k", "--samples", "2"],
        ["generate", str(other), "--document", str(document), "--prompt", "Where is Mary"],
    ):
        code, _, err = _run(args, capsys)
        assert code == 2 and "the tokenizer belongs to another model" in err, args


def test_eval_on_a_file_makes_records_of_the_scored_ones_alone(decoder, tmp_path, capsys, monkeypatch):
    """All of a data file's records became Python dicts (400 MiB more for a 400 MiB file), though only --batches x
    --batch-size of them are scored."""
    import rmt.data.files

    held = []
    original = rmt.data.files.DatasetSource.__init__

    def recording(self, train, collate, seed=0, validation=None, metric="accuracy"):
        held.append((len(train), len(validation)))
        original(self, train, collate, seed, validation, metric)

    monkeypatch.setattr(rmt.data.files.DatasetSource, "__init__", recording)
    record = {"input": "Mary went to the kitchen.", "question": "Where is Mary?", "target": "kitchen"}
    data = tmp_path / "qa.jsonl"
    data.write_text((json.dumps(record) + "\n") * 50)
    code, out, _ = _run(["eval", decoder, "--data", str(data), "--batches", "2", "--batch-size", "3"], capsys)
    assert code == 0 and json.loads(out)["scored"] == 6 and held == [(6, 6)]


def test_a_broken_json_lines_line_and_an_empty_haystack_are_named(decoder, tmp_path, capsys):
    """json counted the lines of the one line it was given ('line 1 column 29' for line 3), and --haystack ','
    reached load_haystack, whose message named the function instead of the flag."""
    from rmt.data.babilong import load_babilong

    lines = tmp_path / "qa1.jsonl"
    record = {"input": "Mary went to the kitchen.", "question": "Where is Mary?", "target": "kitchen"}
    lines.write_text(json.dumps(record) + "\n\n" + '{"input": "x" "question": "q"}\n')
    with pytest.raises(InputError, match=r"qa1\.jsonl: line 3 is not JSON \(Expecting ',' delimiter at column 15\)"):
        load_babilong(lines)
    for spec in (",", ""):
        babilong = ["babilong", "--tokenizer", decoder, "--lengths", "1k", "--output", str(tmp_path / "b")]
        code, _, err = _run([*babilong, "--haystack", spec], capsys)
        assert code == 2 and f"--haystack {spec!r}: no file named" in err and not (tmp_path / "b").exists()


def test_eval_cuts_text_documents_as_training_did(decoder, tmp_path, capsys):
    """A run trained with --max-length scored its held-out text cut; rmt eval scored whole documents and had no way
    to cut them, so it could not reproduce the run's held-out loss."""
    from rmt.data.collate import TextCollator
    from rmt.data.files import DatasetSource, load_records
    from rmt.memory.recurrent import RecurrentMemoryModel
    from rmt.train.evaluation import evaluate

    text = tmp_path / "val.txt"
    text.write_text("\n".join(background_text(3, seed=i) for i in range(8)) + "\n")
    args = ["eval", decoder, "--data", str(text), "--batches", "2", "--batch-size", "4"]
    code, out, _ = _run([*args, "--max-length", "8"], capsys)
    assert code == 0
    cut = json.loads(out)["loss"]
    code, out, _ = _run(args, capsys)
    assert code == 0 and json.loads(out)["loss"] != cut
    records = load_records(text, streaming=False)
    source = DatasetSource(records, TextCollator(pretrained_tokenizer(decoder), 8), validation=records, metric="loss")
    model = RecurrentMemoryModel.from_pretrained(decoder)
    assert evaluate(model, source, batches=2, batch_size=4)["loss"] == pytest.approx(cut, rel=1e-6)
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"input": "Mary went to the kitchen.", "question": "Where is Mary?", "target": "kitchen"}))
    code, _, err = _run(["eval", decoder, "--data", str(qa), "--max-length", "8"], capsys)
    assert code == 2 and "--max-length: only for a data file of text" in err
    code, _, err = _run(["eval", decoder, "--task", "copy", "--max-length", "8"], capsys)
    assert code == 2 and "--max-length 8: only for a data file of text" in err
    train = ["train", "--model", decoder, "--validation-samples", "2", "--output", str(tmp_path / "run")]
    for command in (["eval", decoder], train):
        code, _, err = _run([*command, "--data", str(text), "--max-length", "1"], capsys)
        assert code == 2 and "error: --max-length must be at least 2 (a document's first token predicts" in err
