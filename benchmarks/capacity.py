"""Memory capacity (the ARMT paper's associative-retrieval experiment): accuracy vs number of key-value pairs
stored across segments, ARMT vs RMT with the same number of memory tokens.

Run:  python benchmarks/capacity.py [--pairs 2 4 8 16] [--steps 600] [--memory-tokens 2] [--output DIR]

Each point trains a fresh 2-layer Llama-shaped model (width 64) on associative retrieval with N pairs, cut into
segments of `--pairs-per-segment` pairs, so the pairs are spread over N / pairs-per-segment segments and the query
arrives in a later segment: the answer can only come through memory. Accuracy is on the single answer token of
held-out samples (chance = 1 / number of values = 0.1). Writes capacity.json and capacity.md to the output folder.

`--kinds ... context` adds the in-context ceiling: the same backbone without memory, the whole sample in one segment.
Memory cannot be expected to beat what the backbone learns when every pair is in its attention window: when that
stays near the ~0.3-0.5 of recalling the values without binding them to their keys, a row measures the training
budget, not memory capacity.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rmt import RMTConfig  # noqa: E402
from rmt.build import memory_model, random_backbone  # noqa: E402
from rmt.data.tasks import AssociativeRetrievalTask  # noqa: E402
from rmt.train.loop import TaskSource, TrainConfig, evaluate, train  # noqa: E402

LABELS = {"armt": "ARMT", "rmt": "RMT", "context": "in context (no memory, 1 segment)"}


def run_point(kind: str, pairs: int, args: argparse.Namespace) -> dict:
    task = AssociativeRetrievalTask(num_pairs=pairs, num_keys=max(26, pairs))
    if kind == "context":  # no memory, one segment holding the whole sample
        segment_size = task.sequence_length
        config = RMTConfig(num_memory_tokens=0, segment_size=segment_size)
    else:
        segment_size = 2 * args.pairs_per_segment
        config = RMTConfig(
            memory_kind=kind, num_memory_tokens=args.memory_tokens, segment_size=segment_size, d_mem=args.d_mem
        )
    backbone = random_backbone(
        "llama", task.vocab_size, num_layers=2, hidden_size=64, max_positions=segment_size + 2 * args.memory_tokens
    )
    model = memory_model(backbone, config)
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=50,
        eval_every=args.steps,
        checkpoint_every=0,
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
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--kinds", nargs="+", default=["armt", "rmt"], choices=["armt", "rmt", "context"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/capacity")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    Path(args.output).mkdir(parents=True, exist_ok=True)

    rows = []
    for pairs in args.pairs:
        for kind in args.kinds:
            row = run_point(kind, pairs, args)
            rows.append(row)
            print(
                f"{kind:<5} pairs={pairs:<3} segments={row['segments']:<3} accuracy={row['accuracy']:.3f} "
                f"({row['seconds']:.0f}s)",
                flush=True,
            )

    lines = [
        f"Associative retrieval, {args.memory_tokens} memory tokens, {args.pairs_per_segment} pairs per segment, "
        f"{args.steps} steps of batch {args.batch_size}, lr {args.lr}, d_mem {args.d_mem} (chance 0.10)",
        "",
        "| pairs | segments | " + " | ".join(LABELS[k] for k in args.kinds) + " |",
        "|---|---|" + "---|" * len(args.kinds),
    ]
    for pairs in args.pairs:
        by_kind = {r["kind"]: r for r in rows if r["pairs"] == pairs}
        scores = " | ".join(f"{by_kind[k]['accuracy']:.3f}" for k in args.kinds)
        segments = next((r["segments"] for r in by_kind.values() if r["kind"] != "context"), 1)
        lines.append(f"| {pairs} | {segments} | {scores} |")
    table = "\n".join(lines)
    print("\n" + table)
    (Path(args.output) / "capacity.md").write_text(table + "\n")
    (Path(args.output) / "capacity.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
