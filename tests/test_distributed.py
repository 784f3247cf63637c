"""Training on two processes (torchrun, gloo on the CPU): both processes end with the weights of a one-process run
with the same global batch; the saved model loads and evaluates; a job killed with SIGKILL mid-run and resumed ends
with the weights of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from rmt.cli import main

WORKER = Path(__file__).parent / "helpers" / "distributed_train.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(output: Path, processes: int, *args: str, background: bool = False):
    command = [str(TORCHRUN), "--nproc_per_node", str(processes), "--master-port", str(_free_port())]
    command += [str(WORKER), str(output), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if background:
        return subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def kill_job(job: subprocess.Popen) -> None:
    """SIGKILL a torchrun job: torchrun and every worker. The workers run in sessions of their own (torch's elastic
    agent starts them so), so killing torchrun's process group would leave them training to the end, and a resume
    after that would have nothing left to do."""
    root = psutil.Process(job.pid)
    processes = [root, *root.children(recursive=True)]
    assert len(processes) > 1, "the job's workers have not started"
    for process in processes:
        process.kill()
    job.wait()
    psutil.wait_procs(processes, timeout=30)


def checkpoint_step(output: Path) -> int:
    return json.loads((output / "checkpoint" / "trainer_state.json").read_text())["step"]


def eval_records(output: Path) -> list[dict]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if v is not None} for record in records if "eval_loss" in record]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_two_processes_equal_one_and_resume_exactly_after_sigkill(tmp_path, capsys):
    launch(tmp_path / "one", 1, "--batch-size", "4")
    launch(tmp_path / "two", 2, "--batch-size", "2")
    one, rank0, rank1 = (weights(tmp_path / p) for p in ("one/rank0.pt", "two/rank0.pt", "two/rank1.pt"))
    assert max_difference(rank0, rank1) == 0.0  # the processes agree exactly
    assert max_difference(rank0, one) <= 1e-6  # and with one process over the same global batch
    # Held-out scores shared out over the processes are those of one process scoring every batch.
    evals = [eval_records(tmp_path / run) for run in ("one", "two")]
    assert len(evals[0]) == len(evals[1]) == 2
    for alone, shared in zip(*evals, strict=True):
        assert shared == pytest.approx(alone, rel=1e-5)

    assert main(["eval", str(tmp_path / "two" / "model"), "--task", "copy", "--task-size", "4", "--segments", "3"]) == 0
    assert '"accuracy"' in capsys.readouterr().out

    # Kill the whole job (both processes) with SIGKILL once it has written the checkpoint of step 2, then resume.
    # With dropout, so that the resumed run must also restore every process's random numbers.
    launch(tmp_path / "dropout", 2, "--batch-size", "2", "--dropout", "0.3", "--record-rng")
    straight = weights(tmp_path / "dropout" / "rank0.pt")
    assert max_difference(straight, rank0) > 1e-3  # the dropout is drawn
    # ...by each process from generators of its own (with one seed for all, their masks were the same)
    states = [torch.load(tmp_path / "dropout" / f"rng{rank}.pt") for rank in (0, 1)]
    assert not torch.equal(*states)
    job = launch(tmp_path / "killed", 2, "--batch-size", "2", "--dropout", "0.3", "--slow-after", "3", background=True)
    state = tmp_path / "killed" / "checkpoint" / "trainer_state.json"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert state.exists(), job.stderr.read().decode()[-3000:] if job.poll() is not None else "no checkpoint"
    kill_job(job)
    time.sleep(1.5)  # a worker that outlived the kill would have finished a step (0.5 s each) by now
    assert not (tmp_path / "killed" / "rank0.pt").exists()  # it really stopped before the end
    assert checkpoint_step(tmp_path / "killed") < 6  # and the resume has steps left to run
    launch(tmp_path / "killed", 2, "--batch-size", "2", "--dropout", "0.3", "--resume")
    resumed = weights(tmp_path / "killed" / "rank0.pt")
    assert max_difference(resumed, straight) == 0.0
    assert max_difference(weights(tmp_path / "killed" / "rank1.pt"), straight) == 0.0


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_fsdp_sharded_layers_train_like_one_process_and_resume(tmp_path, capsys):
    """The backbone's layers sharded over two processes (FSDP2 on gloo): the same weights as one process, a saved
    checkpoint that loads and evaluates, and a SIGKILL mid-run followed by resume that ends where a straight run
    does."""
    launch(tmp_path / "one", 1, "--batch-size", "4")
    launch(tmp_path / "fsdp", 2, "--batch-size", "2", "--fsdp")
    one, rank0, rank1 = (weights(tmp_path / p) for p in ("one/rank0.pt", "fsdp/rank0.pt", "fsdp/rank1.pt"))
    assert max_difference(rank0, rank1) == 0.0
    assert max_difference(rank0, one) <= 1e-6
    model = str(tmp_path / "fsdp" / "checkpoint" / "model")
    assert main(["eval", model, "--task", "copy", "--task-size", "4", "--segments", "3"]) == 0
    assert '"accuracy"' in capsys.readouterr().out

    dropout = ["--dropout", "0.3"]  # every step draws random numbers: the resume must restore them
    launch(tmp_path / "dropout", 2, "--batch-size", "2", "--fsdp", *dropout)
    straight = weights(tmp_path / "dropout" / "rank0.pt")
    assert max_difference(straight, rank0) > 1e-3
    job = launch(tmp_path / "killed", 2, "--batch-size", "2", "--fsdp", *dropout, "--slow-after", "3", background=True)
    state = tmp_path / "killed" / "checkpoint" / "trainer_state.json"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert state.exists(), "no checkpoint"
    kill_job(job)
    time.sleep(1.5)  # a worker that outlived the kill would have finished a step (0.5 s each) by now
    assert not (tmp_path / "killed" / "rank0.pt").exists()  # it really stopped before the end
    assert checkpoint_step(tmp_path / "killed") < 6  # and the resume has steps left to run
    launch(tmp_path / "killed", 2, "--batch-size", "2", "--fsdp", *dropout, "--resume")
    assert max_difference(weights(tmp_path / "killed" / "rank0.pt"), straight) == 0.0


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_two_processes_train_lora_adapters_like_one(tmp_path):
    """LoRA adapters (their gradients averaged like any other) on two processes: the merged weights of one process
    with the same global batch, and the same in both processes."""
    launch(tmp_path / "one", 1, "--batch-size", "4", "--trainable", "lora")
    launch(tmp_path / "two", 2, "--batch-size", "2", "--trainable", "lora")
    one, rank0, rank1 = (weights(tmp_path / p) for p in ("one/rank0.pt", "two/rank0.pt", "two/rank1.pt"))
    assert max_difference(rank0, rank1) == 0.0
    assert max_difference(rank0, one) <= 1e-6
    assert not any("lora" in name for name in one)  # merged: the model's own names


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_parameters_without_a_gradient_stay_untouched_on_two_processes_as_on_one(tmp_path):
    """ARMT at one segment gives its write projections no gradient: one process leaves them to AdamW as None (no
    step), and two processes must too. Averaged as zeros they moved by their momentum and counted Adam steps, and
    the weights differed from one process by 4.7e-3 once a second segment came."""
    args = ("--memory", "armt", "--first-segments", "1")
    launch(tmp_path / "one", 1, "--batch-size", "4", *args)
    launch(tmp_path / "two", 2, "--batch-size", "2", *args)
    one, rank0, rank1 = (weights(tmp_path / p) for p in ("one/rank0.pt", "two/rank0.pt", "two/rank1.pt"))
    assert max_difference(rank0, rank1) == 0.0
    assert max_difference(rank0, one) <= 2e-6


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_a_process_whose_samples_have_no_target_sits_the_step_out(tmp_path):
    """Process 1's half of every global batch has no target: it adds nothing (it crashed with "labels contain no
    target token"), and both processes end with the weights of one process over the whole batch."""
    launch(tmp_path / "one", 1, "--batch-size", "4", "--untargeted-half")
    launch(tmp_path / "two", 2, "--batch-size", "2", "--untargeted-half")
    one, rank0, rank1 = (weights(tmp_path / p) for p in ("one/rank0.pt", "two/rank0.pt", "two/rank1.pt"))
    assert max_difference(rank0, rank1) == 0.0
    assert max_difference(rank0, one) <= 1e-6


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_fsdp_refuses_processes_whose_samples_differ_in_segments_instead_of_hanging(tmp_path):
    """Process 1's samples are a segment shorter: its sharded layers would be called once less than process 0's,
    and the job hung in the weight gathers until killed. Both processes now stop at the first step, saying why."""
    command = [str(TORCHRUN), "--nproc_per_node", "2", "--master-port", str(_free_port()), str(WORKER)]
    command += [str(tmp_path / "fsdp"), "--batch-size", "2", "--fsdp", "--ragged"]
    done = subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "fsdp: at step 1 the processes' samples differ in layout (segments per micro-batch: process 0: 3, " in (
        done.stderr
    )
    assert not (tmp_path / "fsdp" / "rank0.pt").exists()


def test_fsdp_refuses_the_recomputed_transformer_xl_cache(tmp_path, capsys):
    """Recomputing the cache's keys/values calls the layers' projections outside their forward, where FSDP would
    not gather sharded weights: refused with one line before anything is written."""
    args = ["train", "--task", "copy", "--task-size", "4", "--segments", "3", "--memory-tokens", "0", "--layers", "2"]
    args += ["--hidden", "32", "--xl-cache-tokens", "5", "--xl-cache-recompute", "--fsdp", "--steps", "2"]
    assert main([*args, "--output", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "fsdp cannot shard a model with xl_cache_recompute" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_fsdp_checkpoint_random_states_restore_the_generator_from_new_and_older_records():
    """FSDP checkpoints record each process's generators as {"cpu", "cuda"}; older ones hold the CPU state alone."""
    from rmt.train.fsdp import _rng_states, _set_rng_states

    cpu = torch.device("cpu")
    torch.manual_seed(1)
    record = _rng_states(cpu)
    expected = torch.rand(3)
    assert record["cuda"] is None  # no GPU generator on a CPU device
    for saved in (record, record["cpu"]):
        torch.manual_seed(2)
        _set_rng_states(saved, cpu)
        assert torch.equal(torch.rand(3), expected)


def test_an_fsdp_state_file_without_its_optimizer_state_is_refused(tmp_path, monkeypatch):
    """One process in a gloo group of one: the optimizer state travels shard by shard, and a file that lost it is
    refused on every process (it resumed with a fresh optimizer, silently)."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from rmt.build import memory_model, random_backbone
    from rmt.config import RMTConfig
    from rmt.train import fsdp
    from rmt.train.config import TrainConfig
    from rmt.train.optim import build_optimizer

    def unsharded():
        backbone = random_backbone("llama", 16, num_layers=1, hidden_size=32, max_positions=64, seed=0)
        return memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=8))

    def sharded():
        model = unsharded()
        fsdp.shard_layers(model, SimpleNamespace(num_processes=2))
        return (model, *build_optimizer(model, TrainConfig(steps=10), foreach=False))

    monkeypatch.setattr(fsdp, "gather_object", lambda objects: objects)  # one process: its own list
    accelerator = SimpleNamespace(is_main_process=True, process_index=0, device=torch.device("cpu"))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        model, optimizer, scheduler = sharded()
        ids = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(0))
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        scheduler.step()
        unsharded().save_pretrained(tmp_path / "model")  # the weights' values do not matter here
        fsdp.save_state(tmp_path, model, optimizer, scheduler, accelerator)
        resumed = sharded()
        fsdp.load_state(tmp_path, *resumed, accelerator)
        assert resumed[1].state and resumed[2].last_epoch == 1  # the optimizer's moments and the schedule
        state = torch.load(tmp_path / fsdp.STATE_FILE, weights_only=False)
        del state["optimizer"]
        torch.save(state, tmp_path / fsdp.STATE_FILE)
        with pytest.raises(KeyError, match="holds no optimizer state"):
            fsdp.load_state(tmp_path, *sharded(), accelerator)
    finally:
        dist.destroy_process_group()
