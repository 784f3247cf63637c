"""Memory capacity (the ARMT paper's associative-retrieval experiment): accuracy vs number of key-value pairs
stored across segments, ARMT vs RMT with the same number of memory tokens.

Run:  python benchmarks/capacity.py [--pairs 2 4 8] [--kinds armt rmt context] [--steps 2000] [--output DIR]

Each point trains a 2-layer Llama-shaped model (width 64) on associative retrieval with N pairs, cut into segments
of `--pairs-per-segment` pairs, so the pairs are spread over several segments and the query arrives in a later
segment: the answer can only come through memory. Accuracy is on the single answer token of held-out samples
(chance = 1 / number of values = 0.1). Writes capacity.json and capacity.md to the output folder.

In-context warm-up: trained on the one-query task alone, this backbone never learns to bind a value to its key
(~0.35 even with every pair in its window), and a memory cannot store bindings its backbone does not make. So for
each N, the bare backbone (initial weight std `--init-std`) is first trained in one window on multi-query retrieval
(the same N pairs, `--warmup-queries` queries per sample) for `--warmup-steps` steps, and every kind starts from a
copy of that backbone. `--kinds ... context` adds the in-context ceiling: the warmed-up backbone trained further
without memory, the whole sample in one segment. `--warmup-steps 0` runs without the warm-up.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rmt import RMTConfig  # noqa: E402
from rmt.build import memory_model, random_backbone  # noqa: E402
from rmt.data.tasks import AssociativeRetrievalTask  # noqa: E402
from rmt.train.loop import TaskSource, TrainConfig, evaluate, train, train_in_context  # noqa: E402

LABELS = {"armt": "ARMT", "rmt": "RMT", "context": "in context (no memory, 1 segment)"}


def warm_up(pairs: int, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """A backbone for N pairs, trained in context on multi-query retrieval unless --warmup-steps is 0."""
    task = retrieval_task(pairs)
    warmup_task = retrieval_task(pairs, num_queries=args.warmup_queries)
    positions = max(warmup_task.sequence_length, 2 * args.pairs_per_segment + 2 * args.memory_tokens)
    backbone = random_backbone(
        "llama", task.vocab_size, num_layers=2, hidden_size=64, max_positions=positions, init_std=args.init_std
    )
    if args.warmup_steps == 0:
        return backbone, {}
    config = TrainConfig(
        steps=args.warmup_steps,
        learning_rate=1e-3,
        weight_decay=0.0,
        min_lr_factor=1.0,  # constant: binding appears in a jump after a plateau, which a decayed rate delays
        warmup_steps=50,
        eval_every=args.warmup_steps,
        checkpoint_every=0,
        seed=args.seed,
        progress=False,
    )
    started = time.time()
    train_in_context(backbone, warmup_task, config, Path(args.output) / f"warmup-{pairs}")
    window = memory_model(backbone, RMTConfig(num_memory_tokens=0, segment_size=task.sequence_length))
    in_context = evaluate(window, TaskSource(task, seed=args.seed), batches=4, batch_size=128)["accuracy"]
    return backbone, {"seconds": round(time.time() - started, 1), "in_context_accuracy": in_context}


def retrieval_task(pairs: int, num_queries: int = 1) -> AssociativeRetrievalTask:
    return AssociativeRetrievalTask(num_pairs=pairs, num_keys=max(26, pairs), num_queries=num_queries)


def run_point(kind: str, pairs: int, backbone: torch.nn.Module, args: argparse.Namespace) -> dict:
    """Train `kind` on N pairs from a copy of `backbone` (so every kind starts from the same weights)."""
    task = retrieval_task(pairs)
    if kind == "context":  # no memory, one segment holding the whole sample
        segment_size = task.sequence_length
        config = RMTConfig(num_memory_tokens=0, segment_size=segment_size)
    else:
        segment_size = 2 * args.pairs_per_segment
        config = RMTConfig(
            memory_kind=kind, num_memory_tokens=args.memory_tokens, segment_size=segment_size, d_mem=args.d_mem
        )
    model = memory_model(copy.deepcopy(backbone), config)
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=50,
        eval_every=args.steps,
        checkpoint_every=0,
        seed=args.seed,
        progress=False,
    )
    source = TaskSource(task, seed=args.seed)
    started = time.time()
    history = train(model, source, train_config, Path(args.output) / f"{kind}-{pairs}")
    scores = evaluate(model, source, batches=4, batch_size=128)
    segments = -(-task.sequence_length // segment_size)
    final_loss = next((r["loss"] for r in reversed(history) if "loss" in r), None)
    seconds = round(time.time() - started, 1)
    return {"kind": kind, "pairs": pairs, "segments": segments, "seconds": seconds, "final_loss": final_loss, **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--pairs-per-segment", type=int, default=2)
    parser.add_argument("--memory-tokens", type=int, default=2)
    parser.add_argument("--d-mem", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=2000, help="in-context warm-up steps (0: none)")
    parser.add_argument("--warmup-queries", type=int, default=8, help="queries per warm-up sample")
    parser.add_argument("--init-std", type=float, default=0.1, help="initial weight std of the backbone")
    parser.add_argument("--kinds", nargs="+", default=["armt", "rmt"], choices=["armt", "rmt", "context"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/capacity")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    Path(args.output).mkdir(parents=True, exist_ok=True)

    if args.warmup_steps < 0:
        parser.error(f"--warmup-steps must be >= 0, got {args.warmup_steps}")

    rows, warmups = [], {}
    for pairs in args.pairs:
        backbone, warmups[pairs] = warm_up(pairs, args)
        if warmups[pairs]:
            print(
                f"warm-up pairs={pairs:<3} in-context accuracy={warmups[pairs]['in_context_accuracy']:.3f}", flush=True
            )
        for kind in args.kinds:
            row = run_point(kind, pairs, backbone, args)
            rows.append(row)
            print(
                f"{kind:<5} pairs={pairs:<3} segments={row['segments']:<3} accuracy={row['accuracy']:.3f} "
                f"({row['seconds']:.0f}s)",
                flush=True,
            )

    warmup = (
        f"backbone warmed up in context for {args.warmup_steps} steps ({args.warmup_queries} queries per sample)"
        if args.warmup_steps
        else "no warm-up"
    )
    lines = [
        f"Associative retrieval, {args.memory_tokens} memory tokens, {args.pairs_per_segment} pairs per segment, "
        f"{args.steps} steps of batch {args.batch_size}, lr {args.lr}, d_mem {args.d_mem}, initial weight std "
        f"{args.init_std}, {warmup} (chance 0.10)",
        "",
        "| pairs | segments | after warm-up, in one window | " + " | ".join(LABELS[k] for k in args.kinds) + " |",
        "|---|---|---|" + "---|" * len(args.kinds),
    ]
    for pairs in args.pairs:
        by_kind = {r["kind"]: r for r in rows if r["pairs"] == pairs}
        scores = " | ".join(f"{by_kind[k]['accuracy']:.3f}" for k in args.kinds)
        segments = next((r["segments"] for r in by_kind.values() if r["kind"] != "context"), 1)
        warmed = f"{warmups[pairs]['in_context_accuracy']:.3f}" if warmups[pairs] else "-"
        lines.append(f"| {pairs} | {segments} | {warmed} | {scores} |")
    table = "\n".join(lines)
    print("\n" + table)
    (Path(args.output) / "capacity.md").write_text(table + "\n")
    record = {"args": vars(args), "warmups": warmups, "rows": rows}
    (Path(args.output) / "capacity.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
