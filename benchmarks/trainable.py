"""What training all parameters, the memory only, or LoRA adapters costs on a real model (`TrainConfig.trainable`).

    python -m benchmarks.trainable --threads 1 --output benchmarks/results/trainable-smollm2-cpu.json

SmolLM2-135M with RMT (16 memory tokens, segments of 256 tokens), batches of 2 samples of 2 segments of random
tokens, every token scored. For each setting a fresh worker process (so that its peak resident memory is its own)
builds the model and the trainer's optimizer (`rmt.train.optim.build_optimizer`, AdamW), takes warm-up steps and
then timed ones (streaming forward_backward + optimizer step), and reports the median seconds per step, the
trainable parameters, the optimizer state's bytes and the process's peak RSS. The settings run one after another,
so a machine busy with other work slows them unevenly: run it on an idle core. Ratios are against `all`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from benchmarks.common import RESULTS_DIR, device_name, run_module, torch_threads, write_json
from rmt import RMTConfig
from rmt.backbones.lora import add_lora
from rmt.build import memory_model, pretrained_backbone
from rmt.train.config import TrainConfig
from rmt.train.optim import build_optimizer

SETTINGS = ("all", "memory", "lora")
SEGMENT, MEMORY_TOKENS, BATCH, SEGMENTS, LORA_RANK = 256, 16, 2, 2, 8


def measure(trainable: str, steps: int, warmup: int) -> dict:
    """One setting, in this process: seconds per step and what the optimizer holds."""
    torch.manual_seed(0)
    model = memory_model(
        pretrained_backbone("smollm2"), RMTConfig(num_memory_tokens=MEMORY_TOKENS, segment_size=SEGMENT)
    )
    if trainable == "lora":
        add_lora(model.backbone, rank=LORA_RANK, alpha=2 * LORA_RANK)
    config = TrainConfig(trainable=trainable, learning_rate=1e-5, memory_learning_rate=1e-4, warmup_steps=0)
    optimizer, _ = build_optimizer(model, config)
    model.train()
    vocab = model.backbone.config.vocab_size
    ids = torch.randint(0, vocab, (BATCH, SEGMENTS * SEGMENT), generator=torch.Generator().manual_seed(0))
    times = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        model.forward_backward(ids, labels=ids)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    state_bytes = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    return {
        "trainable": trainable,
        "seconds_per_step": statistics.median(times),
        "all_seconds": times,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in model.parameters()),
        "optimizer_state_bytes": state_bytes,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=SETTINGS,
        default=list(SETTINGS),
        help="what trains: all parameters, the memory only, or LoRA adapters (default: every setting)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument(
        "--output",
        default=str(RESULTS_DIR / "trainable-smollm2-cpu.json"),
        help="JSON result file (default: %(default)s)",
    )
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)  # one setting, printed as JSON
    args = parser.parse_args()
    if args.worker:
        with torch_threads(args.threads):
            print(json.dumps(measure(args.worker, args.steps, args.warmup)))
        return
    rows = []
    for setting in args.settings:
        flags = ["--worker", setting, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        done = run_module("benchmarks.trainable", [*flags, "--threads", str(args.threads)])
        if done.returncode != 0:
            raise SystemExit(f"the {setting} worker failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(
            f"{setting:>6}: {row['seconds_per_step']:.2f} s/step, {row['trainable_parameters']:,} trainable "
            f"parameters, optimizer state {row['optimizer_state_bytes'] / 2**20:.1f} MiB, "
            f"peak RSS {row['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    baseline = next((r for r in rows if r["trainable"] == "all"), None)
    if baseline is not None:
        for row in rows:
            row["speedup_vs_all"] = baseline["seconds_per_step"] / row["seconds_per_step"]
    write_json(
        args.output,
        {
            "device": device_name("cpu"),
            "threads": args.threads,
            "model": f"SmolLM2-135M + RMT ({MEMORY_TOKENS} memory tokens), {SEGMENTS} segments of {SEGMENT} tokens, "
            f"batch {BATCH}, fp32; LoRA rank {LORA_RANK} on every linear layer but the LM head",
            "rows": rows,
        },
    )
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
