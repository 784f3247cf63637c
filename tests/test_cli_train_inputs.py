"""`rmt train` and its inputs: a folder that holds a run is never replaced by accident, a failed start leaves nothing
behind, models that cannot load and flags that do not apply are refused in one line naming the flag or path, and the
help states what each default is."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from typing import Any

import pytest
import torch
from conftest import background_text, tiny_model_folder

from rmt.cli import build_parser, main
from rmt.cli.options import config_from_args
from rmt.errors import InputError
from rmt.train.config import TrainConfig

TINY = ["--task", "copy", "--task-size", "4", "--segments", "3", "--family", "llama", "--layers", "1"]
TINY += ["--hidden", "32", "--memory-tokens", "2", "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1"]
TINY += ["--eval-batch-size", "2", "--steps", "2", "--no-progress"]
QUICK = ["--steps", "2", "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1", "--eval-batch-size", "2"]
QUICK += ["--validation-samples", "4", "--no-progress"]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    """The one error line of the command; no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("rmt train: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(folder) -> dict[str, str]:
    """Every file under `folder` with a hash of its contents."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def trained_run(tmp_path, capsys):
    """A finished tiny run: metrics.jsonl, checkpoint/, model/."""
    output = tmp_path / "run"
    assert main(["train", *TINY, "--output", str(output)]) == 0
    capsys.readouterr()
    assert {"metrics.jsonl", "checkpoint", "model"} <= {p.name for p in output.iterdir()}
    return output


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny Llama with its word tokenizer, as a Hugging Face folder."""
    return tiny_model_folder(tmp_path_factory.mktemp("models") / "llama")


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    rooms = ["kitchen", "garden", "office", "hallway"]
    records = [
        {"input": f"Mary went to the {rooms[i % 4]}.", "question": "Where is Mary?", "target": rooms[i % 4]}
        for i in range(12)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def no_tensorboard(monkeypatch) -> None:
    """Make `from torch.utils.tensorboard import SummaryWriter` fail as it does without the tensorboard package."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


# 1. A folder that holds a run


def test_a_fresh_run_into_a_folder_that_holds_a_run_is_refused(trained_run, capsys):
    before = snapshot(trained_run)
    code, err = run_cli(["train", *TINY, "--output", str(trained_run)], capsys)
    assert code == 2
    assert "already holds a run (metrics.jsonl, checkpoint, model)" in error_line(err)
    assert "--resume" in err and "--overwrite" in err
    assert snapshot(trained_run) == before
    code, err = run_cli(["train", *TINY, "--output", str(trained_run), "--resume", "--overwrite"], capsys)
    assert code == 2 and "not both" in error_line(err) and snapshot(trained_run) == before


def test_save_best_names_its_model_and_overwrite_removes_it(tmp_path, capsys):
    output = tmp_path / "run"
    assert main(["train", *TINY, "--save-best", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    record = json.loads((output / "best" / "best.json").read_text())
    assert f"best model (held-out accuracy {record['score']:.4f} at step 2) saved to {output / 'best'}" in out
    assert (output / "best" / "backbone" / "config.json").is_file()
    code, err = run_cli(["train", *TINY, "--output", str(output)], capsys)
    assert code == 2 and "already holds a run (metrics.jsonl, checkpoint, model, best)" in err
    assert main(["train", *TINY, "--output", str(output), "--overwrite"]) == 0
    assert not (output / "best").exists()
    from rmt.cli.train import _best_model_line

    expected = "no best model: no held-out evaluation ran at the final number of segments"
    assert _best_model_line(output) == expected  # what a --save-best run whose curriculum ended early prints


def test_a_run_is_refused_for_any_of_its_parts(tmp_path, capsys):
    for part in ("metrics.jsonl", "model", "checkpoint"):
        output = tmp_path / part.replace(".", "-")
        output.mkdir()
        if part == "metrics.jsonl":
            (output / part).write_text('{"step": 1}\n')
        else:
            (output / part).mkdir()
        code, err = run_cli(["train", *TINY, "--output", str(output)], capsys)
        assert code == 2 and f"already holds a run ({part})" in error_line(err)
        if part != "checkpoint":  # as a run stopped (Ctrl-C) before its first checkpoint leaves it
            assert "it has no checkpoint to resume; give --overwrite to replace it" in error_line(err)
            code, err = run_cli(["train", *TINY, "--output", str(output), "--resume"], capsys)
            assert code == 2 and f"to continue from: start it again with --overwrite (it holds {part})" in err


def test_overwrite_replaces_the_run_only_once_start_up_succeeded(trained_run, capsys, monkeypatch):
    import rmt.train.loop as loop

    (trained_run / "model" / "old-marker").write_text("old")
    (trained_run / "notes.txt").write_text("mine")  # not part of a run: kept
    before = snapshot(trained_run)
    args = ["train", *TINY, "--output", str(trained_run), "--overwrite"]

    code, err = run_cli([*args, "--lr", "-1"], capsys)  # refused before start-up
    assert code == 2 and snapshot(trained_run) == before

    def failing_optimizer(*_, **__):
        raise InputError("the optimizer cannot be built")

    with monkeypatch.context() as patch:  # start-up fails inside the trainer, after the model and data are built
        patch.setattr(loop, "build_optimizer", failing_optimizer)
        code, err = run_cli(args, capsys)
    assert code == 2 and "the optimizer cannot be built" in error_line(err)
    assert snapshot(trained_run) == before

    assert run_cli([*args, "--log-every", "1"], capsys)[0] == 0
    assert not (trained_run / "model" / "old-marker").exists()
    assert (trained_run / "notes.txt").read_text() == "mine"
    log = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]  # the new run's log alone
    assert (trained_run / "model" / "memory.safetensors").exists()
    assert json.loads((trained_run / "checkpoint" / "trainer_state.json").read_text())["step"] == 2


def test_library_train_keeps_the_log_when_start_up_fails(tmp_path, monkeypatch):
    """A library run with overwrite=True replaces metrics.jsonl, but only once everything that can fail at start-up
    was built."""
    from rmt.build import memory_model, random_backbone
    from rmt.config import RMTConfig
    from rmt.data.sources import TaskSource
    from rmt.data.tasks import make_task
    from rmt.train.loop import train

    task = make_task("copy", length=4)
    backbone = random_backbone("llama", task.vocab_size, 1, 32, 4, 64)
    model = memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=task.segment_size_for(3)))
    (tmp_path / "metrics.jsonl").write_text('{"step": 7}\n')
    config = TrainConfig(steps=1, batch_size=2, eval_batches=1, eval_batch_size=2, tensorboard=True, progress=False)
    no_tensorboard(monkeypatch)
    with pytest.raises(InputError, match="needs the tensorboard package: pip install tensorboard"):
        train(model, TaskSource(task), config, tmp_path, overwrite=True)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 7}\n'


def test_library_train_into_a_folder_that_holds_a_run_is_refused_unless_overwrite(tmp_path):
    """A fresh train() kept an earlier run's checkpoint until its own first one replaced it, and its best model and
    TensorBoard logs beside the new run's: refused like `rmt train`, with nothing touched; overwrite=True replaces."""
    from rmt.build import memory_model, random_backbone
    from rmt.config import RMTConfig
    from rmt.data.sources import TaskSource
    from rmt.data.tasks import make_task
    from rmt.train.loop import train

    task = make_task("copy", length=4)

    def model() -> Any:
        backbone = random_backbone("llama", task.vocab_size, 1, 32, 4, 64)
        return memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=task.segment_size_for(3)))

    config = TrainConfig(steps=2, batch_size=2, eval_every=2, eval_batches=1, eval_batch_size=2, progress=False)
    train(model(), TaskSource(task), replace(config, save_best=True), tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert {"best", "checkpoint", "metrics.jsonl"} <= {path.split("/")[0] for path in before}
    with pytest.raises(InputError, match=r"already holds a run \(metrics.jsonl, checkpoint, best\): pass resume=True"):
        train(model(), TaskSource(task), config, tmp_path)
    assert snapshot(tmp_path) == before
    train(model(), TaskSource(task), config, tmp_path, overwrite=True)
    assert not (tmp_path / "best").exists()  # the earlier run's best model went with it
    assert (tmp_path / "notes.txt").read_text() == "mine"


# 2. --tensorboard without the package


def test_tensorboard_without_the_package_is_refused_before_anything_is_written(trained_run, capsys, monkeypatch):
    no_tensorboard(monkeypatch)
    before = snapshot(trained_run)
    code, err = run_cli(["train", *TINY, "--output", str(trained_run), "--overwrite", "--tensorboard"], capsys)
    assert code == 2
    assert error_line(err) == "rmt train: error: --tensorboard needs the tensorboard package: pip install tensorboard"
    assert snapshot(trained_run) == before


# 3. Models that cannot load


def test_a_name_that_is_no_model_is_one_error_line(tmp_path, qa_file, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network, no retries
    for name in ("nope", "fx/nope"):
        args = ["train", "--model", name, "--data", str(qa_file), "--output", str(tmp_path / "out"), *QUICK]
        code, err = run_cli(args, capsys)
        line = error_line(err)
        assert code == 2 and f"cannot load a model from '{name}'" in line and "hub id" in line
    assert not (tmp_path / "out").exists()


def _probe_hub_invalid(monkeypatch) -> None:
    """The hub probe on its own: online, the endpoint https://hub.invalid, no proxy whatever this machine's settings,
    nothing remembered from earlier probes."""
    import urllib.request

    import huggingface_hub.constants

    from rmt.backbones import loading

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(urllib.request, "getproxies", dict)
    monkeypatch.setattr(loading, "_connection_tried", {})


def test_a_hub_id_with_no_hub_to_reach_is_refused_from_the_cache_at_once(tmp_path, qa_file, capsys, monkeypatch):
    """With no connection to the Hub, a name tried as a hub id waited on the hub library's retries (about half a
    minute) before its one line; now only the local cache is read and the line says why."""
    import shutil
    import socket
    import urllib.request

    import huggingface_hub.constants

    from rmt.backbones import loading
    from rmt.build import pretrained_backbone

    _probe_hub_invalid(monkeypatch)
    clock = [1000.0]
    monkeypatch.setattr(loading.time, "monotonic", lambda: clock[0])
    tried = []

    def no_name_service(host, port, **kwargs):
        tried.append((host, port))
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_name_service)
    monkeypatch.setattr("huggingface_hub.utils._http._http_backoff_base", lambda *a, **k: pytest.fail("asked the hub"))
    assert loading.hub_unreachable() == "no connection to hub.invalid: Name or service not known"
    for command in (
        ["train", "--model", "nope", "--data", str(qa_file), *QUICK, "--output", str(tmp_path / "out")],
        ["eval", "someone/nope", "--task", "copy"],
    ):
        code, err = run_cli(command, capsys)
        [line] = [line for line in err.splitlines() if line.startswith(f"rmt {command[0]}: error: ")]
        assert code == 2 and "(the Hub cannot be reached: no connection to hub.invalid" in line, line
    assert not (tmp_path / "out").exists()
    # A model fetched before loads from the cache without a request (its PEFT adapter lookup included).
    repo = tmp_path / "cache" / "models--someone--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(tiny_model_folder(tmp_path / "tiny"), repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert pretrained_backbone("someone/tiny").config.model_type == "llama"
    assert tried == [("hub.invalid", 443)]  # tried once
    clock[0] += 61  # a failure is believed for a minute, then tried again
    assert loading.hub_unreachable() is not None and len(tried) == 2
    monkeypatch.setattr(urllib.request, "getproxies", lambda: {"https": "http://proxy:3128"})
    assert loading.hub_unreachable() is None  # a direct connection says nothing where a proxy serves the Hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert loading.hub_unreachable() == "HF_HUB_OFFLINE is set"


def test_a_name_service_that_does_not_answer_counts_as_an_unreachable_hub(monkeypatch):
    """getaddrinfo takes no timeout: a resolver that does not answer held the probe for the resolver's own retries.
    The lookup is given as long as the connection; one that answers leads to a connection to its address."""
    import socket
    import threading
    import time

    import huggingface_hub.constants

    from rmt.backbones import loading

    _probe_hub_invalid(monkeypatch)
    monkeypatch.setattr(loading, "_PROBE_TIMEOUT_S", 0.2)
    released = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: released.wait(30))
    started = time.monotonic()
    try:
        assert loading.hub_unreachable() == "no answer from the name service for hub.invalid within 0.2 s"
        assert time.monotonic() - started < 5
    finally:
        released.set()
    # A name that resolves: the connection goes to the address found (a local listener here).
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"https://hub.invalid:{port}")
    address = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port_asked, **kwargs: address)
    try:
        assert loading.hub_unreachable() is None
    finally:
        listener.close()
    monkeypatch.setattr(loading, "_connection_tried", {})
    reason = loading.hub_unreachable()  # nothing listens there now
    assert reason is not None and reason.startswith("no connection to hub.invalid: "), reason


def test_each_address_of_the_hub_gets_the_whole_connection_time(monkeypatch):
    """An address that drops packets (unrouted IPv6, often listed first) used up the time of the next one, so a hub
    reachable over IPv4 counted as unreachable and hub ids were read from the cache alone."""
    import socket

    from rmt.backbones import loading

    _probe_hub_invalid(monkeypatch)
    clock = [0.0]
    monkeypatch.setattr(loading.time, "monotonic", lambda: clock[0])
    dropped, answers = ("2001:db8::1", 443, 0, 0), ("192.0.2.1", 443)
    addresses = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", dropped),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", answers),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: addresses)
    timeouts = {}

    class Connection:
        def __init__(self, family, kind, protocol):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def settimeout(self, seconds):
            self.seconds = seconds

        def connect(self, address):
            timeouts[address] = self.seconds
            if address == dropped:
                clock[0] += self.seconds  # waits its whole time for an answer that never comes
                raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "socket", Connection)
    assert loading.hub_unreachable() is None
    assert timeouts == {dropped: loading._PROBE_TIMEOUT_S, answers: loading._PROBE_TIMEOUT_S}


def test_the_unreachable_hub_is_named_only_where_the_cache_alone_was_read(monkeypatch):
    """A caller's own local_files_only=False asked for the hub: its error does not claim that only the cache was
    read."""
    from rmt import build

    monkeypatch.setattr(build, "hub_unreachable", lambda: "no connection to hub.invalid")
    error = OSError("not found")
    assert "the Hub cannot be reached: no connection" in build._load_error("someone/x", "someone/x", error)
    assert "cannot be reached" not in build._load_error("someone/x", "someone/x", error, cache_only=False)


def test_a_misspelt_offline_model_is_named_at_once_and_its_capitals_do_not_matter(tmp_path, monkeypatch):
    """A misspelt offline name was tried on the hub (half a minute of retries) before one line said nothing loaded."""
    from rmt.build import resolve_model
    from rmt.errors import MissingFileError

    monkeypatch.setattr("rmt.build._package_dir", lambda module, package: str(tmp_path / package))
    assert resolve_model("SmolLM2") == resolve_model("smollm2")
    for typed, meant in (("smollm", "smollm2"), ("mini-lm", "minilm")):
        with pytest.raises(
            MissingFileError, match=f"no model named '{typed}' and no folder of that name: did you mean '{meant}'"
        ):
            resolve_model(typed)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm").mkdir()  # e.g. an earlier --output minilm: the exact offline name still wins
    (tmp_path / "SmolLM2").mkdir()  # another spelling: the folder is meant
    assert resolve_model("minilm") == resolve_model("MiniLM")
    with pytest.raises(MissingFileError, match="SmolLM2 is not a model folder"):
        resolve_model("SmolLM2")
    assert resolve_model("gpt2") == ("gpt2", None)  # a hub id without an organisation is still one
    assert resolve_model("fx/smollm") == ("fx/smollm", None)
    (tmp_path / "runs").mkdir()  # a mistyped run folder under a local folder: named at once, no hub retries
    with pytest.raises(MissingFileError, match="no model at runs/modle: the folder runs has no 'modle'"):
        resolve_model("runs/modle")
    monkeypatch.setattr("rmt.build._in_hub_cache", lambda repo_id: True)  # a hub id fetched before: still one
    assert resolve_model("runs/modle") == ("runs/modle", None)


def _broken_folder(source, target, damage: str):
    import shutil

    shutil.copytree(source, target)
    if damage == "config":
        (target / "config.json").write_text("{not json")
    elif damage == "tokenizer":
        (target / "tokenizer.json").write_text("{not json")
    elif damage == "weights":
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:10])
    else:  # a family the memory models do not support
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "model_type": damage}))
    return target


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("config", "config.json is not valid JSON"),
        ("weights", "damaged weights in"),
        ("tokenizer", "cannot load a tokenizer from"),
        ("distilbert", "unknown model family 'distilbert'"),
    ],
)
def test_a_model_folder_that_cannot_load_is_one_error_line(tmp_path, model_folder, qa_file, capsys, damage, expected):
    folder = _broken_folder(model_folder, tmp_path / "model", damage)
    args = ["train", "--model", str(folder), "--data", str(qa_file), "--output", str(tmp_path / "out"), *QUICK]
    code, err = run_cli(args, capsys)
    line = error_line(err)
    assert code == 2 and expected in line and str(folder) in line and len(line) < 400
    assert not (tmp_path / "out").exists()


# 4. Sizes: 0 is not "the default"


@pytest.mark.parametrize("value", ["0", "-5"])
def test_segment_size_zero_or_negative_is_refused(tmp_path, model_folder, qa_file, capsys, value):
    args = ["train", "--model", str(model_folder), "--data", str(qa_file), "--segment-size", value]
    code, err = run_cli([*args, "--output", str(tmp_path / "out"), *QUICK], capsys)
    assert code == 2 and error_line(err) == f"rmt train: error: --segment-size must be > 0, got {value}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--heads", "--hidden", "--layers"])
def test_random_backbone_sizes_must_be_positive(tmp_path, capsys, flag):
    code, err = run_cli(["train", *TINY, flag, "0", "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and error_line(err) == f"rmt train: error: {flag} must be > 0, got 0"


def test_random_backbone_refuses_sizes_that_are_not_positive():
    from rmt.build import random_backbone

    with pytest.raises(InputError, match="num_heads must be an integer > 0, got 0"):
        random_backbone("llama", 16, 1, 32, 0)


# 5. Segment counts with a data file


def parsed(args: list[str]) -> tuple[argparse.Namespace, TrainConfig]:
    namespace = build_parser().parse_args(["train", *args, "--output", "unused"])
    return namespace, config_from_args(TrainConfig, namespace)


@pytest.mark.parametrize("flags", [["--curriculum", "0:1,1:2"], ["--segments", "4"]])
def test_segment_counts_with_a_data_file_are_refused(tmp_path, model_folder, qa_file, capsys, flags):
    args = ["train", "--model", str(model_folder), "--data", str(qa_file), *flags]
    code, err = run_cli([*args, "--output", str(tmp_path / "out"), *QUICK], capsys)
    line = error_line(err)
    assert code == 2 and line.startswith(f"rmt train: error: {flags[0]} sets the number of segments")
    assert "synthetic tasks and generated BABILong data" in line
    assert not (tmp_path / "out").exists()


def test_segment_counts_still_set_generated_babilong_data(tmp_path, model_folder):
    from rmt.cli.train import build_setup

    haystack = tmp_path / "book.txt"
    haystack.write_text(background_text(200))
    babilong = ["--model", str(model_folder), "--data", "babilong:qa1", "--haystack", str(haystack)]
    babilong += ["--segment-size", "64", "--facts-before-last", "0"]
    setup = build_setup(*parsed([*babilong, "--segments", "2"]))
    assert setup.source.default_segments == 2 and setup.eval_segments == 2
    setup = build_setup(*parsed([*babilong, "--curriculum", "0:1,5:3"]))
    assert setup.eval_segments == 3
    with pytest.raises(InputError, match="--segments sets the length of BABILong samples when there is no"):
        build_setup(*parsed([*babilong, "--segments", "2", "--curriculum", "0:1,5:3"]))


def test_the_recorded_data_names_each_babilong_flag_off_its_default(tmp_path, model_folder, monkeypatch):
    """What a checkpoint records as its data, and a resume compares: other samples are other data."""
    import rmt.cli.train
    from rmt.cli.train import build_setup
    from rmt.data.haystack import Haystack

    given = rmt.cli.train.load_background  # the built-in corpus is an optional install: a stand-in for it
    rooms = " The bathroom, the bedroom, the garden, the hallway, the kitchen and the office were empty. "
    built_in = Haystack.from_text(rooms.join(background_text(2, seed=seed) for seed in range(100)))  # --distractors
    monkeypatch.setattr(rmt.cli.train, "load_background", lambda files: given(files) if files else built_in)
    haystack = tmp_path / "book.txt"
    haystack.write_text(background_text(200))
    babilong = ["--model", str(model_folder), "--data", "babilong:qa1", "--segment-size", "64"]

    def data(*flags: str) -> str:
        return build_setup(*parsed([*babilong, *flags])).description

    assert data() == "babilong:qa1"
    assert data("--segments", "3", "--facts-before-last", "0.5", "--distractors", "0") == "babilong:qa1"
    assert data("--segments", "2") == "babilong:qa1 (--segments 2)"
    assert data("--haystack", str(haystack)) == "babilong:qa1 (--haystack book.txt)"
    assert data("--facts", "1-2", "--facts-before-last", "0") == "babilong:qa1 (--facts 1-2, --facts-before-last 0.0)"
    assert data("--facts", "1", "--distractors", "0.5") == "babilong:qa1 (--facts 1, --distractors 0.5)"


def test_a_resume_on_a_data_file_split_or_cut_otherwise_is_refused(tmp_path, model_folder, qa_file, capsys):
    output = str(tmp_path / "run")
    args = ["train", "--model", str(model_folder), "--data", str(qa_file), "--output", output, *QUICK]
    assert run_cli(args, capsys)[0] == 0
    before = snapshot(tmp_path / "run")
    resumed = [*args, "--steps", "4", "--resume"]
    code, err = run_cli([*resumed, "--validation-samples", "3"], capsys)
    expected = "it trained on 'qa.jsonl (--validation-samples 4)', this run reads 'qa.jsonl (--validation-samples 3)'"
    assert code == 2 and expected in error_line(err)
    code, err = run_cli([*resumed, "--streaming"], capsys)
    assert code == 2 and "this run reads 'qa.jsonl (--validation-samples 4, streamed)'" in error_line(err)
    code, err = run_cli([*resumed, "--max-length", "64"], capsys)
    assert code == 2 and "--max-length cuts text for language modelling; " in error_line(err)
    assert snapshot(tmp_path / "run") == before
    assert run_cli(resumed, capsys)[0] == 0
    from rmt.cli.train import build_setup

    text = tmp_path / "book.txt"
    text.write_text("\n".join(background_text(40).split(". ")))
    lm = ["--model", str(model_folder), "--data", str(text), "--max-length", "64", "--validation-samples", "4"]
    assert build_setup(*parsed(lm)).description == "book.txt (--max-length 64, --validation-samples 4)"
    other = tmp_path / "other-book.txt"
    other.write_text("\n".join(background_text(10).split(". ")))
    held_out = ["--model", str(model_folder), "--data", str(text), "--validation-data", str(other)]
    assert build_setup(*parsed(held_out)).description == "book.txt (--validation-data other-book.txt)"


def test_a_resume_from_files_of_the_same_names_with_other_contents_is_refused(tmp_path, model_folder, qa_file, capsys):
    """A checkpoint names its data files by their names, so that moved files resume; files of those names with other
    records (another folder's qa.jsonl, or the file rewritten) are refused, --data, --validation-data and --haystack
    alike. Moved files with the same contents resume."""
    import shutil

    records = [json.loads(line) for line in qa_file.read_text().splitlines()]
    first, moved, other = (tmp_path / name for name in ("first", "moved", "other"))
    for folder in (first, moved, other):
        folder.mkdir()
        shutil.copy(qa_file, folder / "qa.jsonl")
        (folder / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:4]))
    (other / "qa.jsonl").write_text("".join(json.dumps({**r, "target": "office"}) + "\n" for r in records))
    (other / "held.jsonl").write_text("".join(json.dumps({**r, "target": "garden"}) + "\n" for r in records[:4]))
    output = str(tmp_path / "run")
    quick = [flag for flag in QUICK if flag not in ("--validation-samples", "4")]

    def train(folder, *flags: str) -> tuple[int, str]:
        files = ["--data", str(folder / "qa.jsonl"), "--validation-data", str(folder / "held.jsonl")]
        return run_cli(["train", "--model", str(model_folder), *files, "--output", output, *quick, *flags], capsys)

    assert train(first)[0] == 0
    before = snapshot(tmp_path / "run")
    code, err = train(other, "--steps", "4", "--resume")
    assert code == 2 and "--data qa.jsonl; --validation-data held.jsonl: not the contents it trained on" in err
    shutil.copy(other / "held.jsonl", moved / "held.jsonl")
    code, err = train(moved, "--steps", "4", "--resume")
    assert code == 2 and "checkpoint: --validation-data held.jsonl: not the contents it trained on" in err
    assert snapshot(tmp_path / "run") == before
    shutil.copy(first / "held.jsonl", moved / "held.jsonl")
    assert train(moved, "--steps", "4", "--resume")[0] == 0
    # BABILong's background text: the same check (the flag's value is the file, which the description names)
    haystack = tmp_path / "book.txt"
    haystack.write_text(background_text(200))
    babilong = ["train", "--model", str(model_folder), "--data", "babilong:qa1", "--haystack", str(haystack)]
    babilong += ["--segment-size", "64", "--segments", "1", "--output", str(tmp_path / "babilong"), *quick]
    assert run_cli(babilong, capsys)[0] == 0
    haystack.write_text(background_text(200, seed=1))
    code, err = run_cli([*babilong, "--steps", "4", "--resume"], capsys)
    assert code == 2 and "--haystack book.txt: not the contents it trained on (the same names, other bytes)" in err


def test_recorded_data_contents_survive_old_checkpoints_python_resumes_and_files_of_one_name(
    tmp_path, model_folder, qa_file, capsys
):
    """A checkpoint from before contents were recorded resumes and records them; a resume that names no files (from
    Python, without data_contents) keeps the record; two background files of one name are told apart."""
    from rmt.train.loop import TrainerState, _check_same_contents

    output = tmp_path / "run"
    args = ["train", "--model", str(model_folder), "--data", str(qa_file), "--output", str(output), *QUICK]
    assert run_cli(args, capsys)[0] == 0
    state_file = output / "checkpoint" / "trainer_state.json"
    saved = json.loads(state_file.read_text())
    del saved["trainer"]["data_contents"]
    state_file.write_text(json.dumps(saved))
    assert run_cli([*args, "--steps", "4", "--resume"], capsys)[0] == 0
    recorded = json.loads(state_file.read_text())["trainer"]["data_contents"]
    assert list(recorded) == ["--data qa.jsonl"]
    state = TrainerState(data_contents=dict(recorded))
    _check_same_contents(state, {}, output)
    assert state.data_contents == recorded
    with pytest.raises(InputError, match="--data qa.jsonl: not the contents it trained on"):
        _check_same_contents(state, {"--data qa.jsonl": "0" * 64}, output)
    from rmt.cli.train import _data_contents

    class OneProcess:
        is_main_process, num_processes = True, 1

    for folder, text in (("a", "one"), ("b", "two")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "book.txt").write_text(text)
    both = f"{tmp_path / 'a' / 'book.txt'},{tmp_path / 'b' / 'book.txt'}"
    contents = _data_contents(parsed(["--data", "babilong:qa1", "--haystack", both])[0], OneProcess())
    assert list(contents) == ["--haystack book.txt", "--haystack book.txt (file 2)"]
    assert len(set(contents.values())) == 2


def test_a_bad_streamed_record_is_named_by_its_place_in_the_file_with_held_out_records_split_off(
    tmp_path, model_folder, capsys
):
    records = [
        {"input": f"Mary went to room {i}.", "question": "Where is Mary?", "target": "office"} for i in range(60)
    ]
    records[50]["target"] = " "
    data = tmp_path / "late.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["train", "--model", str(model_folder), "--data", str(data), "--streaming", "--output", str(tmp_path / "r")]
    args += ["--steps", "40", "--batch-size", "4", "--eval-every", "100", "--no-progress", "--validation-samples", "8"]
    code, err = run_cli(args, capsys)
    assert code == 2 and f"{data}: record 50: the field 'target' is blank" in error_line(err)


# 6. A failed start leaves no folder


def test_a_start_up_that_fails_in_the_trainer_leaves_no_output_folder(tmp_path, capsys, monkeypatch):
    import rmt.train.loop as loop

    def failing_optimizer(*_, **__):
        raise InputError("the optimizer cannot be built")

    monkeypatch.setattr(loop, "build_optimizer", failing_optimizer)
    code, err = run_cli(["train", *TINY, "--output", str(tmp_path / "new" / "out")], capsys)
    assert code == 2 and "the optimizer cannot be built" in error_line(err)
    assert not (tmp_path / "new").exists()


def test_a_run_that_fails_before_it_writes_anything_leaves_no_empty_folder(tmp_path, capsys, monkeypatch):
    """Out of memory at the first step: the output folder (made once start-up succeeded) is removed again, with the
    folders made for it; a run that wrote something keeps it."""
    import rmt.train.loop as loop

    def out_of_memory(*_, **__):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 16449536 bytes.")

    monkeypatch.setattr(loop, "_train_step", out_of_memory)
    (tmp_path / "kept").mkdir()
    code, err = run_cli(["train", *TINY, "--output", str(tmp_path / "kept" / "new" / "out")], capsys)
    assert code == 1 and "could not allocate 15.7 MiB" in error_line(err)
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())
    monkeypatch.setattr(loop, "_train_step", lambda *_, **__: 1.0)  # trains (no gradients), logs, then fails
    monkeypatch.setattr(loop, "save_checkpoint", out_of_memory)
    code, err = run_cli(["train", *TINY, "--log-every", "1", "--output", str(tmp_path / "new" / "out")], capsys)
    assert code == 1 and (tmp_path / "new" / "out" / "metrics.jsonl").is_file()


# 7. Messages name the flags


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--lr", "-1"], "--lr: learning_rate must be a finite number > 0, got -1.0"),
        (["--lr", "inf"], "--lr: learning_rate must be a finite number > 0, got inf"),
        (["--memory-lr", "0"], "--memory-lr: memory_learning_rate must be a finite number > 0, got 0.0"),
        (["--weight-decay", "-1"], "--weight-decay: weight_decay must be a finite number >= 0, got -1.0"),
        (["--grad-clip", "nan"], "--grad-clip: grad_clip must be >= 0 (0: off), got nan"),
        (["--seed", "-1"], "--seed: seed must be an integer in [0, 2**32), got -1"),
        (["--warmup", "-1"], "--warmup: warmup_steps must be >= 0, got -1"),
        (["--segments", "0"], "--segments: num_segments must be an integer >= 1, got 0"),
        (["--segments", "100"], "--segments: num_segments must be an integer in [1, 13], got 100"),
        (["--memory-tokens", "-1"], "--memory-tokens: num_memory_tokens must be >= 0, got -1"),
    ],
)
def test_errors_name_the_flag(tmp_path, capsys, flags, expected):
    code, err = run_cli(["train", *TINY, *flags, "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and error_line(err) == f"rmt train: error: {expected}"


def test_the_library_keeps_its_own_names():
    with pytest.raises(InputError, match=r"^TrainConfig.learning_rate must be a finite number > 0, got -1$"):
        TrainConfig(learning_rate=-1)


# 8. Help text


def train_help() -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    return {option: action.help for action in sub._actions for option in action.option_strings}


def test_help_states_every_default():
    helps = train_help()
    assert helps["--family"].endswith("(default: %(default)s)")
    assert "(default: off" in helps["--curriculum-accuracy"]
    assert "(default: 128; for an rmt checkpoint --model, the checkpoint's own)" in helps["--segment-size"]
    assert helps["--overwrite"] == "replace the run already in --output"
    assert "(default: 3)" in helps["--segments"]


def test_segments_default_is_three_for_synthetic_tasks(tmp_path):
    from rmt.cli.train import build_setup

    args = ["--task", "copy", "--task-size", "4", "--family", "llama", "--layers", "1", "--hidden", "32"]
    setup = build_setup(*parsed(args))
    assert setup.model.config.segment_size == 5  # copy of 4 symbols: 13 tokens in 3 segments
    assert torch.is_tensor(next(setup.model.parameters()))


def test_data_that_cannot_be_batched_is_refused_before_overwrite_clears_the_run(
    trained_run, model_folder, qa_file, capsys
):
    """A record with a blank answer, or held-out records of another kind than the training data, failed only when a
    batch drew them: with --overwrite the previous run was already gone."""
    before = snapshot(trained_run)
    blank = qa_file.parent / "blank-answer.jsonl"
    records = [json.loads(line) for line in qa_file.read_text().splitlines()]
    for record in records[5:]:  # the first 4 are held out when streamed; any training batch draws a blank one
        record["target"] = "  "
    blank.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = qa_file.parent / "text.txt"
    text.write_text("Mary went to the kitchen.\nJohn went to the garden.\n")
    held_out = QUICK.index("--validation-samples")
    base = ["train", "--model", str(model_folder), "--segment-size", "16", *QUICK[:held_out], *QUICK[held_out + 2 :]]
    base += ["--output", str(trained_run)]
    for data, message in (
        ([blank, "--streaming", "--validation-samples", "4"], "the field 'target' is blank ('  '): nothing to learn"),
        ([qa_file, "--validation-data", text], "holds text for language modelling, but --data"),
    ):
        code, err = run_cli([*base[:-2], "--data", *map(str, data), *base[-2:], "--overwrite"], capsys)
        assert code == 2 and message in error_line(err)
        assert snapshot(trained_run) == before
    code, err = run_cli([*base, "--data", str(blank), "--validation-samples", "4", "--overwrite"], capsys)  # at load
    assert code == 2 and "blank-answer.jsonl: record 5: the field 'target' is blank" in error_line(err)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lora-rank", "4"], "--lora-rank applies to --trainable lora only"),
        (["--d-mem", "8"], "--d-mem applies to ARMT (--memory armt) only"),
        (["--memory", "armt", "--write-init", "learned"], "--write-init applies to RMT memory tokens"),
        (["--lr-schedule", "linear", "--min-lr-factor", "0.2"], "--min-lr-factor applies to the cosine schedule"),
        (["--encoder-memory-init", "embedding_output"], "--encoder-memory-init applies to an encoder --model"),
        (["--curriculum-metric", "exact_match"], "--curriculum-metric applies to runs that read the held-out score"),
        (["--trainable", "memory", "--memory-lr", "1e-2", "--lr", "0.5"], "--lr applies to runs that train backbone"),
        (["--memory-tokens", "0", "--trainable", "memory"], "trainable='memory' leaves nothing to train"),
    ],
)
def test_flags_that_would_be_ignored_are_refused(tmp_path, capsys, flags, message):
    code, err = run_cli(["train", *TINY, *flags, "--output", str(tmp_path / "run")], capsys)
    assert code == 2 and message in error_line(err) and not (tmp_path / "run").exists()


def test_task_size_of_a_task_without_one_and_validation_samples_next_to_validation_data(
    tmp_path, model_folder, qa_file, capsys
):
    task = TINY.index("--task") + 1
    quadratic = [*TINY[:task], "quadratic", *TINY[task + 1 :]]  # keeps --task-size 4
    code, err = run_cli(["train", *quadratic, "--output", str(tmp_path / "run")], capsys)
    assert code == 2 and "quadratic has one size" in error_line(err)
    args = ["train", "--model", str(model_folder), "--segment-size", "16", "--data", str(qa_file)]
    args += ["--validation-data", str(qa_file), *QUICK]
    code, err = run_cli([*args, "--output", str(tmp_path / "run")], capsys)
    assert code == 2 and "with --validation-data, drop it" in error_line(err)


def test_a_curriculum_sizes_a_learned_position_table_and_the_final_score_for_its_longest_stage(tmp_path, capsys):
    """GPT-2's learned positions under a Transformer-XL cache number the whole input: the table was sized for the
    default 3 segments, so the 6-segment stage crashed at step 2; and the final score was taken at those 3 segments,
    which a 0:1,2:2 curriculum never trained."""
    args = ["train", "--task", "detect_memorize", "--task-size", "8", "--family", "gpt2", "--layers", "1"]
    args += ["--hidden", "32", "--memory-tokens", "2", "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1"]
    args += ["--eval-batch-size", "2", "--steps", "4", "--no-progress"]
    assert main([*args, "--curriculum", "0:1,2:6", "--xl-cache-tokens", "4", "--output", str(tmp_path / "xl")]) == 0
    capsys.readouterr()
    assert main([*args, "--curriculum", "0:1,2:2", "--output", str(tmp_path / "short")]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{") : printed.rindex("}") + 1])["segments"] == 2


def test_an_encoder_without_a_head_on_a_data_file_is_told_what_it_needs(tmp_path, qa_file, capsys):
    """The missing-weights refusal reached `rmt train --model minilm --data FILE` before the data did, with advice
    (pass labels) that the command line has no flag for."""
    from safetensors.torch import load_file, save_file

    folder = tiny_model_folder(tmp_path / "bert", "bert", ["yes", "no"])
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, folder / "model.safetensors")
    args = ["train", "--model", str(folder), "--data", str(qa_file), *QUICK, "--output", str(tmp_path / "run")]
    code, err = run_cli(args, capsys)
    assert code == 2 and "has no classification head and --data" in error_line(err)
    assert "babilong:TASK (the task's answers are the classes)" in error_line(err) and not (tmp_path / "run").exists()


def test_a_missing_data_file_is_named_before_the_model_loads(tmp_path, model_folder, capsys, monkeypatch):
    """`--model minilm --data nofile` was told the encoder has no head (after loading it), not that the file is
    missing; a BABILong task's bare name gets the babilong: spelling."""
    import rmt.cli.train as train_cli

    monkeypatch.setattr(train_cli, "_mode_of", lambda name: pytest.fail("the model was read before the data"))
    output = str(tmp_path / "run")
    code, err = run_cli(
        ["train", "--model", "minilm", "--data", str(tmp_path / "no.jsonl"), "--output", output], capsys
    )
    assert code == 2 and error_line(err).endswith(f"no data file at {tmp_path / 'no.jsonl'}")
    code, err = run_cli(["train", "--model", "minilm", "--data", "qa1", "--output", output], capsys)
    assert code == 2 and "no data file at qa1 (for the generated BABILong task, write babilong:qa1)" in err
    code, err = run_cli(["eval", "run/model", "--data", "qa2"], capsys)
    assert code == 2 and "no data file at qa2 (for the generated BABILong task, write babilong:qa2)" in err
    code, err = run_cli(["train", "--model", "minilm", "--data", "babilong", "--output", output], capsys)
    assert code == 2 and "no data file at babilong (BABILong samples: name the tasks: babilong:TASK[,TASK...]" in err
    assert not (tmp_path / "run").exists()
    # The checks that name the real problem still come first.
    monkeypatch.undo()
    code, err = run_cli(["train", "--task", "copy", "--data", "qa1", "--output", output], capsys)
    assert code == 2 and "give either --task (synthetic) or --data, not both" in err
    missing = str(tmp_path / "no.jsonl")
    args = ["train", "--model", str(model_folder), "--data", "babilong:qa1", "--validation-data", missing]
    args += ["--output", output]
    code, err = run_cli(args, capsys)
    assert code == 2 and "no data file" not in err and "--validation-data" in err


def test_too_few_records_to_hold_out_names_the_flags_that_fix_it(tmp_path, model_folder, qa_file, capsys):
    args = ["train", "--model", str(model_folder), "--data", str(qa_file), *QUICK, "--output", str(tmp_path / "run")]
    code, err = run_cli([*args, "--validation-samples", "12"], capsys)
    line = error_line(err)
    assert code == 2 and f"--data {qa_file}: cannot hold out 12 records for validation: the data has only 12" in line
    assert "hold out fewer with --validation-samples, or give --validation-data" in line


def test_an_output_folder_that_cannot_be_created_is_one_error_line(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    real_mkdir = Path.mkdir

    def refuse(path, *args, **kwargs):
        if path == tmp_path / "run":
            raise FileNotFoundError(2, "No such file or directory")
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)  # as under /proc, which passes every earlier check
    code, err = run_cli(["train", *TINY, "--output", str(tmp_path / "run")], capsys)
    assert code == 2
    assert error_line(err).endswith(f"cannot create the output folder {tmp_path / 'run'}: No such file or directory")


def test_a_run_folder_given_as_the_model_points_to_its_model(trained_run, tmp_path, capsys):
    code, err = run_cli(["eval", str(trained_run), "--task", "copy", "--task-size", "4"], capsys)
    assert code == 2 and f"(its model is {trained_run / 'model'})" in err
    code, err = run_cli(["eval", str(trained_run / "checkpoint"), "--task", "copy", "--task-size", "4"], capsys)
    assert code == 2 and f"(its model is {trained_run / 'checkpoint' / 'model'})" in err
    code, err = run_cli(
        ["train", "--model", str(trained_run), "--task", "copy", "--output", str(tmp_path / "b")], capsys
    )
    assert code == 2 and f"(its model is {trained_run / 'model'})" in err


def test_a_synthetic_run_reports_its_segments_and_a_warmup_longer_than_the_run(tmp_path, capsys):
    without_segments = [arg for i, arg in enumerate(TINY) if "--segments" not in TINY[max(0, i - 1) : i + 1]]
    assert main(["train", *without_segments, "--output", str(tmp_path / "run")]) == 0  # the default, 3
    captured = capsys.readouterr()
    printed = captured.out
    assert json.loads(printed[printed.index("{") : printed.rindex("}") + 1])["segments"] == 3  # was null
    assert "note: the warmup (100 steps) is not shorter than the run (2 steps)" in captured.err
    assert main(["train", *TINY, "--warmup", "1", "--output", str(tmp_path / "short")]) == 0
    assert "note: the warmup" not in capsys.readouterr().err
    detect = ["--task", "detect_memorize", "--task-size", "8", *TINY[6:], "--curriculum", "0:1,20:2"]
    assert main(["train", *detect, "--output", str(tmp_path / "late")]) == 0
    assert "note: the curriculum's stage(s) from step 20 lie past the run's 2 steps" in capsys.readouterr().err
    accuracy = ["--curriculum-accuracy", "0.9", "--overwrite"]  # stages may begin early: still noted (was silent)
    assert main(["train", *detect, *accuracy, "--output", str(tmp_path / "late")]) == 0
    assert "adds steps, or if held-out accuracy reaches 0.9 soon enough to start them early" in capsys.readouterr().err


def test_a_bf16_run_reports_its_final_scores_as_it_logged_them_and_bf16_weights_are_named(
    tmp_path, model_folder, qa_file, capsys, monkeypatch
):
    """The summary rmt train prints was scored in fp32 after a bf16 run whose logged held-out scores were autocast
    (5.29 against 5.14 on SmolLM2); --dtype bf16 trained bf16 weights that lose small updates without a word."""
    import rmt.train.evaluation

    precisions = []
    evaluate = rmt.train.evaluation.evaluate

    def recording(*args, **kwargs):  # rmt train's final evaluation (the trainer's own is bound in its module)
        precisions.append(torch.is_autocast_enabled("cpu"))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(rmt.train.evaluation, "evaluate", recording)
    args = ["train", "--model", str(model_folder), "--data", str(qa_file), "--validation-samples", "4"]
    args += ["--segment-size", "16", "--memory-tokens", "2", "--steps", "1", "--batch-size", "2", "--no-progress"]
    assert main([*args, "--mixed-precision", "bf16", "--output", str(tmp_path / "mixed")]) == 0
    assert precisions and all(precisions)  # the final evaluation too
    assert "--dtype bf16 trains bf16 weights" not in capsys.readouterr().err
    assert main([*args, "--dtype", "bf16", "--output", str(tmp_path / "bf16")]) == 0
    assert "note: --dtype bf16 trains bf16 weights with no fp32 copy" in capsys.readouterr().err


def test_held_out_evaluation_shows_a_progress_bar_unless_asked_not_to(capfd):
    from rmt.build import memory_model, random_backbone
    from rmt.config import RMTConfig
    from rmt.data.sources import TaskSource
    from rmt.data.tasks import CopyTask
    from rmt.train.evaluation import evaluate

    task = CopyTask(length=4)
    backbone = random_backbone("llama", task.vocab_size, num_layers=1, hidden_size=32, max_positions=64)
    model = memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=task.segment_size_for(3)))
    for progress in (True, False):
        evaluate(model, TaskSource(CopyTask(length=4)), batches=2, batch_size=2, progress=progress)
        assert ("held-out" in capfd.readouterr().err) is progress


@pytest.mark.parametrize(
    "flag",
    [["--write-init", "learned"], ["--memory-write-scale", "token_embeddings"], ["--loss-aggregation", "segments"]],
)
def test_decoder_memory_flags_are_refused_for_an_encoder(tmp_path, qa_file, capsys, flag):
    """They warned that RMTConfig ignores them and the run went on, recording them in its rmt_config.json."""
    folder = tiny_model_folder(tmp_path / "bert", "bert", ["kitchen", "garden", "office", "hallway"])
    args = ["train", "--model", str(folder), "--data", str(qa_file), *QUICK, *flag, "--output", str(tmp_path / "run")]
    code, err = run_cli(args, capsys)
    assert code == 2 and f"{flag[0]} applies to decoders (an encoder writes" in error_line(err)
    assert not (tmp_path / "run").exists()


def test_a_resume_of_a_finished_run_says_that_nothing_was_left_to_train(trained_run, capsys):
    """--resume of a run with every step done trained nothing and said nothing; it says so now (and saves the model
    again from the checkpoint, which a crash between the two writes may have left newer); with more steps it trains
    on without the note."""
    args = ["train", *TINY, "--output", str(trained_run), "--resume"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"note: the run in {trained_run} had finished at step 2" in captured.err
    assert f"model saved to {trained_run / 'model'}" in captured.out
    assert main([*args, "--steps", "3"]) == 0
    assert "had finished" not in capsys.readouterr().err


def test_checkpoint_step_reads_the_step_or_nothing(trained_run):
    from rmt.train.loop import checkpoint_step

    assert checkpoint_step(trained_run) == 2
    (trained_run / "checkpoint" / "trainer_state.json").write_text("{")
    assert checkpoint_step(trained_run) is None
    assert checkpoint_step(trained_run / "nowhere") is None


@pytest.mark.parametrize("flag", [["--memory", "armt"], ["--xl-cache-tokens", "4"]])
def test_decoder_only_memories_are_refused_for_an_encoder_in_flag_terms(tmp_path, qa_file, capsys, flag):
    """They were refused by RMTConfig in its own terms ("memory_kind='armt' requires mode='decoder'"), naming a mode
    that no flag sets."""
    folder = tiny_model_folder(tmp_path / "bert", "bert", ["kitchen", "garden", "office", "hallway"])
    args = ["train", "--model", str(folder), "--data", str(qa_file), *QUICK, *flag, "--output", str(tmp_path / "run")]
    code, err = run_cli(args, capsys)
    expected = f"{' '.join(flag) if flag[0] == '--memory' else flag[0]}: needs a decoder, and --model {folder} is an"
    assert code == 2 and expected in error_line(err)
    assert not (tmp_path / "run").exists()
