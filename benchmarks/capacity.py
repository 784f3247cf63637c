"""Memory capacity (the ARMT paper's associative-retrieval experiment): accuracy vs number of key-value pairs
stored across segments, ARMT vs RMT with the same number of memory tokens.

Run from the repository root:
    python -m benchmarks.capacity [--pairs 2 4 8] [--kinds armt rmt context] [--seeds 0 1] [--output DIR]

Each point trains a 2-layer Llama-shaped model (width 64) on associative retrieval with N pairs, cut into segments
of `--pairs-per-segment` pairs, so the pairs are spread over several segments and the query arrives in a later
segment: the answer can only come through memory. Accuracy is on the single answer token of held-out samples
(chance = 1 / number of values = 0.1). Writes capacity.json and capacity.md to the output folder.

In-context warm-up: trained on the one-query task alone, this backbone did not learn to bind a value to its key in
our attempts, even with every pair in its window (no result file of those attempts is kept), and a memory cannot
store bindings its backbone does not make. So for each N, the bare backbone (initial weight std `--init-std`) is
first trained in one window on multi-query retrieval (the same N pairs, `--warmup-queries` queries per sample) for
`--warmup-steps` steps, and every kind starts from a copy of that backbone. `--kinds ... context` adds the in-context
ceiling: the warmed-up backbone trained further without memory, the whole sample in one segment. `--warmup-steps 0`
runs without the warm-up.

Training at this size jumps from plateaus at a seed-dependent step, so one seed per point can mislead: `--seeds 0 1`
runs each point once per seed and the table gives the mean with every seed's value. Points are saved as they finish;
a later run into the same --output with the same settings keeps them and runs only what is missing (e.g. add a seed).

Committed results (the README quotes them): benchmarks/results/capacity-cpu.json and capacity-cpu.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from benchmarks.common import torch_threads, write_atomically, write_json
from rmt import RMTConfig
from rmt.build import memory_model, random_backbone
from rmt.data.tasks import AssociativeRetrievalTask
from rmt.train.loop import TaskSource, TrainConfig, evaluate, one_window, train, train_in_context

LABELS = {"armt": "ARMT", "rmt": "RMT", "context": "in context (no memory, 1 segment)"}


def warm_up(pairs: int, seed: int, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """A backbone for N pairs, trained in context on multi-query retrieval unless --warmup-steps is 0."""
    task = retrieval_task(pairs)
    warmup_task = retrieval_task(pairs, num_queries=args.warmup_queries)
    positions = max(warmup_task.sequence_length, 2 * args.pairs_per_segment + 2 * args.memory_tokens)
    backbone = random_backbone(
        "llama",
        task.vocab_size,
        num_layers=2,
        hidden_size=64,
        max_positions=positions,
        seed=seed,
        init_std=args.init_std,
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
        seed=seed,
        progress=False,
    )
    started = time.time()
    train_in_context(backbone, warmup_task, config, Path(args.output) / f"warmup-{pairs}-seed{seed}", overwrite=True)
    in_context = evaluate(one_window(backbone, task), TaskSource(task, seed=seed), batches=4, batch_size=128)[
        "accuracy"
    ]
    return backbone, {"seconds": round(time.time() - started, 1), "in_context_accuracy": in_context}


def retrieval_task(pairs: int, num_queries: int = 1) -> AssociativeRetrievalTask:
    """Associative retrieval with N pairs (at least 26 keys to draw them from) and `num_queries` queries."""
    return AssociativeRetrievalTask(num_pairs=pairs, num_keys=max(26, pairs), num_queries=num_queries)


def run_point(kind: str, pairs: int, seed: int, backbone: torch.nn.Module, args: argparse.Namespace) -> dict:
    """Train `kind` on N pairs from a copy of `backbone` (so every kind starts from the same weights)."""
    task = retrieval_task(pairs)
    if kind == "context":  # no memory, one segment holding the whole sample
        model = one_window(copy.deepcopy(backbone), task)
    else:
        associative = {"d_mem": args.d_mem} if kind == "armt" else {}  # d_mem sizes ARMT's keys only
        config = RMTConfig(
            memory_kind=kind,
            num_memory_tokens=args.memory_tokens,
            segment_size=2 * args.pairs_per_segment,
            **associative,
        )
        model = memory_model(copy.deepcopy(backbone), config)
    segment_size = model.config.segment_size
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=50,
        eval_every=args.steps,
        checkpoint_every=0,
        seed=seed,
        progress=False,
    )
    source = TaskSource(task, seed=seed)
    started = time.time()
    # A point not kept in capacity.json is trained again from the start, replacing what an earlier run left.
    history = train(model, source, train_config, Path(args.output) / f"{kind}-{pairs}-seed{seed}", overwrite=True)
    scores = evaluate(model, source, batches=4, batch_size=128)
    segments = -(-task.sequence_length // segment_size)
    final_loss = next((r["loss"] for r in reversed(history) if "loss" in r), None)
    seconds = round(time.time() - started, 1)
    row = {"kind": kind, "pairs": pairs, "seed": seed, "segments": segments, "seconds": seconds}
    return {**row, "final_loss": final_loss, **scores}


# Arguments that change a point's result: saved points are reused only when these match.
SETTINGS = (
    "pairs_per_segment",
    "memory_tokens",
    "d_mem",
    "steps",
    "lr",
    "batch_size",
    "warmup_steps",
    "warmup_queries",
    "init_std",
)


def load_points(path: Path, args: argparse.Namespace) -> tuple[list[dict], dict[str, dict]]:
    """Rows and warm-ups saved in `path` by an earlier run with the same settings (none otherwise). Files written
    before --seeds existed have one seed, args["seed"], and warm-ups keyed by the number of pairs alone."""
    if not path.exists():
        return [], {}
    saved = json.loads(path.read_text())
    if any(saved["args"].get(name) != getattr(args, name) for name in SETTINGS):
        print(f"{path}: saved with other settings, not reused", flush=True)
        return [], {}
    default_seed = saved["args"].get("seed", 0)
    rows = [{**row, "seed": row.get("seed", default_seed)} for row in saved["rows"]]
    warmups = {key if ":" in key else f"{key}:{default_seed}": value for key, value in saved["warmups"].items()}
    return rows, warmups


def format_table(args: argparse.Namespace, rows: list[dict], warmups: dict[str, dict]) -> str:
    """Markdown: accuracy per (pairs, kind), the mean over seeds with each seed's value in brackets."""
    warmup = (
        f"backbone warmed up in context for {args.warmup_steps} steps ({args.warmup_queries} queries per sample)"
        if args.warmup_steps
        else "no warm-up"
    )
    lines = [
        f"Associative retrieval, {args.memory_tokens} memory tokens, {args.pairs_per_segment} pairs per segment, "
        f"{args.steps} steps of batch {args.batch_size}, lr {args.lr}, d_mem {args.d_mem}, initial weight std "
        f"{args.init_std}, {warmup}; seeds {', '.join(map(str, args.seeds))} (chance 0.10)",
        "",
        "| pairs | segments | after warm-up, in one window | " + " | ".join(LABELS[k] for k in args.kinds) + " |",
        "|---|---|---|" + "---|" * len(args.kinds),
    ]
    for pairs in args.pairs:
        cells = []
        for kind in args.kinds:
            scores = [
                r["accuracy"] for r in rows if (r["kind"], r["pairs"]) == (kind, pairs) and r["seed"] in args.seeds
            ]
            each = f" ({', '.join(f'{v:.3f}' for v in scores)})" if len(scores) > 1 else ""
            cells.append(f"{sum(scores) / len(scores):.3f}{each}")
        segments = next((r["segments"] for r in rows if r["pairs"] == pairs and r["kind"] != "context"), 1)
        reached = [w["in_context_accuracy"] for seed in args.seeds if (w := warmups.get(f"{pairs}:{seed}"))]
        warmed = (
            f"{min(reached):.3f}-{max(reached):.3f}" if len(reached) > 1 else (f"{reached[0]:.3f}" if reached else "-")
        )
        lines.append(f"| {pairs} | {segments} | {warmed} | {' | '.join(cells)} |")
    return "\n".join(lines)


def run(args: argparse.Namespace, output: Path) -> None:
    """Run every point missing from OUTPUT/capacity.json, saving each as it finishes, then write the table."""
    # Points already in the output folder (same settings) are kept and not run again.
    rows, warmups = load_points(output / "capacity.json", args)
    for seed in args.seeds:
        for pairs in args.pairs:
            done = {r["kind"] for r in rows if (r["pairs"], r["seed"]) == (pairs, seed)}
            missing = [kind for kind in args.kinds if kind not in done]
            if not missing:
                continue
            backbone, warmups[f"{pairs}:{seed}"] = warm_up(pairs, seed, args)
            if warmups[f"{pairs}:{seed}"]:
                accuracy = warmups[f"{pairs}:{seed}"]["in_context_accuracy"]
                print(f"warm-up pairs={pairs:<3} seed={seed} in-context accuracy={accuracy:.3f}", flush=True)
            for kind in missing:
                row = run_point(kind, pairs, seed, backbone, args)
                rows.append(row)
                print(
                    f"{kind:<5} pairs={pairs:<3} seed={seed} segments={row['segments']:<3} "
                    f"accuracy={row['accuracy']:.3f} ({row['seconds']:.0f}s)",
                    flush=True,
                )
                settings = {k: v for k, v in vars(args).items() if k != "output"}  # no machine-specific path
                write_json(output / "capacity.json", {"args": settings, "warmups": warmups, "rows": rows})

    table = format_table(args, rows, warmups)
    print("\n" + table)
    write_atomically(output / "capacity.md", table + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pairs",
        type=int,
        nargs="+",
        default=[2, 4, 8, 16],
        help="numbers of key-value pairs per sample, one point each (default: %(default)s)",
    )
    parser.add_argument(
        "--pairs-per-segment",
        type=int,
        default=2,
        help="key-value pairs per segment (2 tokens each) (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-tokens", type=int, default=2, help="memory tokens of armt and rmt (default: %(default)s)"
    )
    parser.add_argument(
        "--d-mem",
        type=int,
        default=16,
        help="size of ARMT's associative memory keys before the DPFP map (armt only) (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=2000,
        help="training steps per kind and point, after the warm-up (default: %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=2e-3,
        help="peak learning rate per kind and point (the warm-up uses 1e-3) (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, help="samples per training step of each kind (default: %(default)s)"
    )
    parser.add_argument("--warmup-steps", type=int, default=2000, help="in-context warm-up steps (0: none)")
    parser.add_argument("--warmup-queries", type=int, default=8, help="queries per warm-up sample")
    parser.add_argument("--init-std", type=float, default=0.1, help="initial weight std of the backbone")
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["armt", "rmt"],
        choices=["armt", "rmt", "context"],
        help="models per point; context: the backbone without memory, the whole sample in one segment "
        "(default: %(default)s)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed; the table averages them")
    parser.add_argument(
        "--output",
        default="runs/capacity",
        help="folder for capacity.json, capacity.md and the runs; points saved with the same settings are reused "
        "(default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    args = parser.parse_args(argv)
    if args.warmup_steps < 0:
        parser.error(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with torch_threads(args.threads):
        run(args, output)


if __name__ == "__main__":
    main()
