"""The `rmt` command: help texts, a tiny train -> eval round trip, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rmt
from rmt.build import random_backbone
from rmt.cli import main
from rmt.cli.options import config_from_args
from rmt.train.config import TrainConfig


@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["eval"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: rmt")
    if command == ["train"]:
        assert "--memory-tokens" in text and "--bptt-depth" in text and "Truncated backpropagation" in text


def test_every_memory_flag_reaches_the_model_config():
    """Each RMTConfig field with an `rmt train` flag, set away from its default on the command line, is in the
    config the model is built with (a flag parsed and then dropped would train with the default, silently)."""
    from rmt.cli import build_parser
    from rmt.cli.train import MEMORY_SKIP, memory_config
    from rmt.config import RMTConfig

    non_default = {  # field: the flags that set it away from its default
        "num_memory_tokens": ["--memory-tokens", "3"],
        "bptt_depth": ["--bptt-depth", "2"],
        "write_init": ["--write-init", "learned"],
        "memory_positions": ["--memory-positions", "shared"],
        "loss_aggregation": ["--loss-aggregation", "segments"],
        "memory_kind": ["--memory", "armt"],
        "d_mem": ["--memory", "armt", "--d-mem", "16"],
        "armt_write_norm": ["--memory", "armt", "--armt-write-norm"],
        "read_memory_only": ["--read-memory-only"],
        "xl_cache_tokens": ["--xl-cache-tokens", "4"],
        "xl_cache_recompute": ["--xl-cache-tokens", "4", "--xl-cache-recompute"],
        "xl_contiguous_positions": ["--memory-tokens", "2", "--xl-cache-tokens", "4", "--xl-contiguous-positions"],
        "encoder_memory_input": ["--encoder-memory-input", "embedding_layer"],
        "encoder_memory_init": ["--encoder-memory-init", "embedding_output"],
        "memory_write_scale": ["--memory-write-scale", "token_embeddings"],
    }
    assert set(non_default) == {f.name for f in dataclasses.fields(RMTConfig)} - set(MEMORY_SKIP)  # new fields too
    parser = build_parser()
    defaults = RMTConfig()
    for name, flags in non_default.items():
        mode = "encoder" if name.startswith("encoder_") else "decoder"
        config = memory_config(parser.parse_args(["train", "--output", "x", *flags]), segment_size=8, mode=mode)
        assert getattr(config, name) != getattr(defaults, name), flags


def test_training_on_from_a_synthetic_task_checkpoint(tmp_path, capsys):
    """`--model CHECKPOINT` with a synthetic task continues the saved model whole, memory included, in the --dtype
    asked for; a task cut into other segments than the checkpoint's is refused."""
    from rmt.cli import build_parser
    from rmt.cli.train import build_setup
    from rmt.memory.recurrent import RecurrentMemoryModel

    task = ["--task", "copy", "--task-size", "4", "--segments", "3"]
    backbone = ["--layers", "2", "--hidden", "32", "--heads", "4"]  # a random backbone's: refused with --model
    first = tmp_path / "first"
    command = ["train", *task, *backbone, "--steps", "3", "--eval-every", "3", "--output", str(first), "--no-progress"]
    assert main(command) == 0
    again = ["train", "--model", str(first / "model"), *task, "--steps", "2", "--output", str(tmp_path / "again")]
    args = build_parser().parse_args(again)
    setup = build_setup(args, config_from_args(TrainConfig, args))
    saved = RecurrentMemoryModel.from_pretrained(first / "model")
    for (name, value), (_, expected) in zip(setup.model.state_dict().items(), saved.state_dict().items(), strict=True):
        assert torch.equal(value, expected), name
    args = build_parser().parse_args([*again, "--dtype", "bf16"])
    assert {p.dtype for p in build_setup(args, config_from_args(TrainConfig, args)).model.parameters()} == {
        torch.bfloat16
    }
    capsys.readouterr()
    assert main([*again, "--segments", "2"]) == 2  # the last --segments counts
    assert "cuts segments of" in capsys.readouterr().err
    assert main([*again, "--layers", "2"]) == 2
    assert "--layers applies to a random backbone (no --model) only" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "rmt"  # the console script pip put next to this interpreter
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "train" in out.stdout and "eval" in out.stdout
    module = subprocess.run([sys.executable, "-m", "rmt", "--version"], capture_output=True, text=True, check=True)
    assert module.stdout.strip() == f"rmt {rmt.__version__}"


def test_the_command_starts_without_torch():
    """Help prints at once, and Ctrl-C while torch loads reaches the command's handler (one line, no traceback):
    the parser and `import rmt` leave torch and transformers to the first thing that uses them."""
    check = (
        "import sys, rmt, rmt.train; from rmt.cli import build_parser; build_parser(); rmt.RMTConfig; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_attributes_load_on_first_use():
    import rmt.memory
    import rmt.train.evaluation
    import rmt.train.loop

    assert rmt.RMTForCausalLM is rmt.memory.RMTForCausalLM and rmt.train.train is rmt.train.loop.train
    assert rmt.train.evaluate is rmt.train.evaluation.evaluate  # a function, not a submodule of the same name
    assert set(rmt.__all__) <= set(dir(rmt)) and "evaluate" in dir(rmt.train)
    with pytest.raises(AttributeError, match="module 'rmt' has no attribute 'RMTForCausalLm'"):
        rmt.RMTForCausalLm  # noqa: B018


def test_ctrl_c_while_a_command_loads_is_one_line(capsys, monkeypatch):
    import rmt.cli.train

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rmt.cli.train, "run", interrupted)
    assert main(["train", "--output", "unused"]) == 130
    assert capsys.readouterr().err == "rmt train: interrupted\n"


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "MODEL", "--data", "babilong:qa1", "--output", "out"],
        ["generate", "MODEL", "--prompt", "Hi", "--memory-file", "out"],
        ["babilong", "--output", "out"],
        ["demo", "--output", "out"],
    ],
)
def test_commands_that_run_in_one_process_refuse_a_multi_process_launch(command, tmp_path, capsys, monkeypatch):
    """Under torchrun each process ran the whole evaluation and wrote the same output folder at once."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"rmt {command[0]}: error: launched as 2 processes (WORLD_SIZE), and rmt {command[0]} runs in one: each would "
        "do all of the work and write the same files; start it without torchrun or accelerate launch (or with "
        "WORLD_SIZE unset, where a job's environment sets it for every process)\n"
    )
    assert not (tmp_path / "out").exists()


def test_rmt_train_runs_under_a_multi_process_launch(tmp_path, capsys, monkeypatch):
    """Not refused as the one-process commands are: the flags are read (here a bad one, refused as such)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--task", "copy", "--lr", "-1", "--output", str(tmp_path / "out")]) == 2
    assert "--lr: learning_rate must be a finite number > 0" in capsys.readouterr().err


def test_running_out_of_memory_is_one_line_with_the_size(tmp_path, capsys):
    # A memory of 10^13 tokens of width 64 is 2.3 PiB, beyond any address space: refused before a page is touched,
    # whatever the overcommit policy (torch.empty shows it here first).
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        torch.empty(10**13, 64)
    args = ["train", "--task", "copy", "--task-size", "8", "--segments", "2", "--memory-tokens", str(10**13)]
    assert main([*args, "--hidden", "64", "--steps", "1", "--no-progress", "--output", str(tmp_path / "run")]) == 1
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(r"rmt train: error: out of memory: could not allocate \d\.\d PiB \(.*\)", last_line)
    assert not (tmp_path / "run").exists()  # the run failed before it wrote anything: no empty folder left


def test_sizes_in_out_of_memory_lines_are_in_the_unit_they_fill():
    from rmt.cli import out_of_memory

    def line(size: int) -> str | None:
        return out_of_memory(
            RuntimeError(
                f"[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to "
                f"allocate {size} bytes. Error code 12 (Cannot allocate memory)"
            )
        )

    assert "could not allocate 15.7 MiB (" in line(16_449_536)
    assert "could not allocate 3.0 GiB (" in line(3 * 2**30)
    assert "could not allocate 100 bytes (" in line(100)
    assert "could not allocate 1.0 GiB (" in line(2**30 - 1)  # not 1,024.0 MiB
    assert out_of_memory(RuntimeError("something else")) is None


def test_a_full_disk_is_one_line_and_other_os_errors_keep_their_traceback(tmp_path, capsys, monkeypatch):
    """A write the machine refuses (no space, no permission, read-only) is the machine's problem, not a bug in rmt:
    one line, status 1. An error rmt does not expect from a write still shows its traceback."""
    import errno

    import rmt.files

    def failing(code: int):
        def fsync(*args, **kwargs):
            raise OSError(code, os.strerror(code))

        return fsync

    args = ["train", "--task", "copy", "--task-size", "4", "--segments", "2", "--memory-tokens", "2", "--hidden", "32"]
    args += ["--steps", "2", "--no-progress", "--output", str(tmp_path / "run")]
    monkeypatch.setattr(rmt.files.os, "fsync", failing(errno.ENOSPC))
    assert main(args) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "rmt train: error: No space left on device"
    monkeypatch.setattr(rmt.files.os, "fsync", failing(errno.EIO))
    with pytest.raises(OSError, match="Input/output error"):
        main([*args, "--overwrite"])
    monkeypatch.setattr(rmt.files.os, "fsync", failing(errno.EACCES))  # no file named: not a refused write
    with pytest.raises(PermissionError):
        main([*args, "--overwrite"])
    monkeypatch.undo()

    def full_zip_writer(*args, **kwargs):  # what torch.save raised on a full tmpfs (torch 2.13)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", full_zip_writer)  # Accelerate saves the optimizer's state with it
    assert main([*args, "--overwrite"]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("rmt train: error: torch could not write a file (is the disk full?): [enforce fail at")


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB"),
        RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    ],
)
def test_running_out_of_gpu_memory_is_one_line(error, capsys, monkeypatch):
    import rmt.cli.train

    def out_of_memory(args):
        raise error

    monkeypatch.setattr(rmt.cli.train, "run", out_of_memory)
    assert main(["train", "--output", "unused"]) == 1
    first_line = str(error).splitlines()[0]
    assert capsys.readouterr().err == f"rmt train: error: out of GPU memory: {first_line} (a smaller batch, " + (
        "segment or memory needs less)\n"
    )


def test_other_runtime_errors_keep_their_traceback(monkeypatch):
    import rmt.cli.train

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(rmt.cli.train, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "--output", "unused"])


@pytest.mark.parametrize(("memory", "family"), [("rmt", "llama"), ("armt", "llama"), ("armt", "qwen2")])
def test_train_then_eval(tmp_path, capsys, memory, family):
    output = tmp_path / "run"
    args = [
        "train",
        "--task",
        "copy",
        "--task-size",
        "6",
        "--segments",
        "3",
        "--output",
        str(output),
        "--family",
        family,
        "--layers",
        "1",
        "--hidden",
        "32",
        "--memory-tokens",
        "2",
        "--memory",
        memory,
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--checkpoint-every",
        "2",
        "--no-progress",
    ]
    assert main(args) == 0
    trained = json.loads(capsys.readouterr().out.split("model saved")[0])
    assert (output / "model" / "memory.safetensors").exists()
    assert (output / "checkpoint" / "trainer_state.json").exists()
    assert len((output / "metrics.jsonl").read_text().splitlines()) > 0

    assert main(["eval", str(output / "model"), "--task", "copy", "--task-size", "6", "--segments", "3"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(trained["accuracy"])


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing"), "--task", "copy"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["train", "--output", str(tmp_path / "x"), "--memory-tokens", "-1", "--no-progress"]) == 2
    assert "num_memory_tokens must be >= 0" in capsys.readouterr().err
    assert main(["train", "--output", str(tmp_path / "y"), "--segments", "0", "--no-progress"]) == 2
    assert "num_segments" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--output", str(tmp_path / "z"), "--task", "sorting"])
    assert "invalid choice: 'sorting'" in capsys.readouterr().err


def test_ci_runs_the_readme_test_command():
    root = Path(__file__).resolve().parents[1]
    ci_command = (root / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme_head = (root / "README.md").read_text().splitlines()[:10]
    assert any(line.strip() == ci_command for line in readme_head), ci_command


def test_a_flag_value_that_does_not_parse_is_refused_with_its_own_message(capsys):
    """argparse replaces a parse function's ValueError with "invalid <function> value"; the flags generated from the
    config dataclasses keep the message that says what was expected."""
    with pytest.raises(SystemExit):
        main(["train", "--curriculum", "1-2", "--output", "unused"])
    assert "--curriculum: curriculum must look like 0:1,500:2,1000:4 (STEP:SEGMENTS,...), got '1-2'" in (
        capsys.readouterr().err
    )


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rmt {rmt.__version__}"


@pytest.mark.parametrize("progress", [True, False])
def test_the_gguf_conversion_bar_follows_the_progress_switch(tmp_path, monkeypatch, progress):
    """transformers draws that bar with tqdm itself, past its own switch that --no-progress turns off: loading a
    GGUF file hides it too, and puts transformers' tqdm back afterwards."""
    import transformers.modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging as hf_logging

    import rmt.build

    shown = []

    def load(location, **kwargs):
        shown.append(not gguf_loading.tqdm(range(1)).disable)
        return random_backbone("llama", vocab_size=16, num_layers=1, hidden_size=32, num_heads=2), {}

    monkeypatch.setattr(rmt.build.AutoModelForCausalLM, "from_pretrained", load)
    (tmp_path / "model.gguf").write_bytes(b"")
    bar, was_enabled = gguf_loading.tqdm, hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar)()
    try:
        rmt.build.pretrained_backbone(tmp_path / "model.gguf")
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()
    assert shown == [progress] and gguf_loading.tqdm is bar

    def fails(location, **kwargs):
        raise ValueError("a damaged file")

    monkeypatch.setattr(rmt.build.AutoModelForCausalLM, "from_pretrained", fails)
    hf_logging.disable_progress_bar()
    try:
        with pytest.raises(ValueError, match="a damaged file"):
            rmt.build.pretrained_backbone(tmp_path / "model.gguf")
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()
    assert gguf_loading.tqdm is bar  # put back after a failed load too


def test_argparse_errors_are_one_line_naming_the_command(capsys):
    """argparse printed the whole usage block before its error (44 lines for rmt train), and reported a stray
    argument under `rmt` instead of the command it was given to."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--task", "cpy", "--output", "unused"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("rmt train: error: argument --task: invalid choice: 'cpy'") and "see rmt train --help" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["babilong", "--tasks", "qa1,", "qa2", "--output", "unused"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == "rmt babilong: error: unrecognized arguments: qa2 (see rmt babilong --help)\n"
    with pytest.raises(SystemExit):
        main(["--bogus", "babilong", "--tasks", "qa1", "--output", "unused"])  # before the command: rmt's
    assert capsys.readouterr().err == "rmt: error: unrecognized arguments: --bogus (see rmt --help)\n"


def test_help_names_flags_not_config_fields(capsys):
    """The help is generated from the config dataclasses' docs, which name fields; the help shows their flags."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--memory-tokens MEMORY_TOKENS" in text and "--lr LR" in text and "NUM_MEMORY_TOKENS" not in text
    assert "(needs --xl-cache-tokens > 0)" in text and "xl_cache_tokens" not in text


def test_demo_help_states_the_demos_own_step_limit(capsys):
    from rmt.demo import DemoSettings

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert f"(default: {DemoSettings().steps}, fewer on a plateau)" in " ".join(capsys.readouterr().out.split())


def test_demo_scores_on_samples_its_early_stop_did_not_see_and_states_what_no_memory_can_reach(tmp_path, monkeypatch):
    """The final score drew the same first samples as the trainer's held-out evaluations, which chose when to stop;
    and "chance 0.10" was the only reference, where 3 of the 48 answer tokens need no memory."""
    import rmt.demo
    from rmt.data.tasks import CopyTask
    from rmt.demo import DemoSettings, UnwatchedHeldOut, demo_train_config, format_table, run_demo
    from rmt.train.loop import TaskSource

    settings = DemoSettings(steps=2, eval_every=1, warmup_steps=0, batch_size=4)
    watched = demo_train_config(settings).eval_batches
    task = CopyTask(length=24)
    final, seen = UnwatchedHeldOut(task, watched).eval_batch(0, 256), TaskSource(task).eval_batch(watched, 256)
    assert torch.equal(final.input_ids, seen.input_ids)
    trainer_saw = torch.cat([TaskSource(task).eval_batch(i, 128).input_ids for i in range(watched)])
    assert not (final.input_ids[:, None] == trainer_saw[None]).all(-1).any()  # no sample of the final score seen
    scored_on = []
    real_evaluate = rmt.demo.evaluate

    def recording_evaluate(model, source, **kwargs):
        scored_on.append(source)
        return real_evaluate(model, source, **kwargs)

    monkeypatch.setattr(rmt.demo, "evaluate", recording_evaluate)
    results = run_demo(tmp_path / "demo", settings, progress=False)
    assert len(scored_on) == 2 and all(isinstance(s, UnwatchedHeldOut) and s.watched == watched for s in scored_on)
    assert results["no_memory_ceiling"] == pytest.approx((3 + 45 / 10) / 48)
    assert "(chance 0.10; without memory at most 0.16)" in format_table(results)
    assert (tmp_path / "demo" / "accuracy.png").is_file()
