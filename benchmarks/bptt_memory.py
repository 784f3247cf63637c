"""Peak training memory vs number of segments, at truncated BPTT depth 2 and at full depth.

Run from the repository root:
    python -m benchmarks.bptt_memory [--device cpu|cuda] [--segments 2 8 32] [--json out.json]
    python -m benchmarks.bptt_memory --json benchmarks/results/bptt_memory-cpu.json   (the committed CPU run)

One training step (loss on every token, gradients into .grad) of a GPT-2-shaped RMT for each (path, depth,
number of segments):
- `streaming`: `model.forward_backward` (the trainer's path): each segment's loss is backpropagated as soon as
  no later gradient can reach that segment, so at depth k only k + 1 segments' activations are alive;
- `recompute`: the same with `recompute=True`: window segments keep only their inputs and are recomputed one at
  a time in the backward pass, so about one segment's activations are alive at any depth;
- `reference`: `model(...).loss.backward()` (one graph over the whole input), for contrast;
- `memory-trainer`: one `training_step` of `rmt.train.MemoryTrainer` (Hugging Face's Trainer), which runs
  `forward_backward`;
- `hf-trainer`: the same Trainer's own `transformers.Trainer.training_step` (`model(**batch).loss`, then backward).

`--paths` picks the rows (default: the first five; the two Trainer rows are measured at depth 2:
`python -m benchmarks.bptt_memory --paths memory-trainer hf-trainer --json
benchmarks/results/bptt_memory-trainer-cpu.json`).

How memory is measured: on CUDA, `torch.cuda.max_memory_allocated` minus the memory allocated before the step.
On CPU there is no allocator counter, so each measurement runs in a fresh subprocess and reports the peak
resident set size (`ru_maxrss`) minus the resident size just before the step (model and inputs already built).
Both are peaks of the step itself. The claim checked: at depth 2, 32 segments stay within 1.5x of 2 segments; the
last line prints PASS or FAIL. The committed CPU run, benchmarks/results/bptt_memory-cpu.json, fails it: 1.59x (the
2-segment step fills only 2 of the 3 segments' activations that depth 2 keeps; 8 and 32 segments use the same).
The Trainer rows (benchmarks/results/bptt_memory-trainer-cpu.json): MemoryTrainer's step 1.69x for the same reason,
787 MiB at 8 segments and 796 MiB at 32; the Trainer's own step 12.89x (510 -> 6,571 MiB).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from benchmarks.common import add_device_argument, rss_bytes, run_module, write_json
from rmt import RecurrentMemoryModel, RMTConfig
from rmt.build import memory_model, random_backbone
from rmt.train import MemoryTrainer

# (path, BPTT depth) of every row this script can measure, in the order it prints them
ROWS = [
    ("streaming", 2),
    ("streaming", -1),
    ("recompute", 2),
    ("recompute", -1),
    ("reference", 2),
    ("memory-trainer", 2),
    ("hf-trainer", 2),
]
TRAINER_PATHS = ("memory-trainer", "hf-trainer")


def build(segments: int, depth: int, args: argparse.Namespace) -> tuple[RecurrentMemoryModel, torch.Tensor]:
    """The GPT-2-shaped RMT at BPTT depth `depth` and a random batch of `segments` segments, on args.device."""
    backbone = random_backbone(
        "gpt2",
        vocab_size=args.vocab,
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_heads=args.heads,
        max_positions=args.segment_size + 2 * args.memory_tokens,
    )
    model = memory_model(
        backbone, RMTConfig(num_memory_tokens=args.memory_tokens, segment_size=args.segment_size, bptt_depth=depth)
    ).to(args.device)
    ids = torch.randint(0, args.vocab, (args.batch_size, segments * args.segment_size), device=args.device)
    return model, ids


def measure_once(path: str, segments: int, depth: int, args: argparse.Namespace) -> float:
    """Peak bytes used by one training step, in this process."""
    model, ids = build(segments, depth, args)
    model.train()
    with tempfile.TemporaryDirectory() as folder:  # the Trainer's output_dir: it writes nothing there in one step
        trainer = _trainer(model, path, folder)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = rss_bytes()
        if path in ("streaming", "recompute"):
            model.forward_backward(ids, labels=ids, recompute=path == "recompute")
        elif trainer is not None:
            step = MemoryTrainer.training_step if path == "memory-trainer" else Trainer.training_step
            step(trainer, model, {"input_ids": ids, "labels": ids})
        else:
            model(ids, labels=ids).loss.backward()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def _trainer(model: RecurrentMemoryModel, path: str, folder: str) -> MemoryTrainer | None:
    """For the two Trainer paths, a MemoryTrainer around `model` in one process (output_dir `folder`), as its
    training loop leaves it before a step of one micro-batch; None for the other paths."""
    if path not in TRAINER_PATHS:
        return None
    arguments = TrainingArguments(folder, report_to=[], use_cpu=model.device.type == "cpu", disable_tqdm=True)
    trainer = MemoryTrainer(model=model, args=arguments)
    trainer.current_gradient_accumulation_steps = 1  # what the Trainer's loop sets before each step
    return trainer


def measure(path: str, segments: int, depth: int, args: argparse.Namespace) -> float:
    """Peak bytes used by one training step: in this process on CUDA, in a fresh worker process on CPU."""
    if args.device.startswith("cuda"):
        return measure_once(path, segments, depth, args)
    # A fresh process per measurement: ru_maxrss is a high-water mark that never goes down.
    result = run_module("benchmarks.bptt_memory", ["--one", path, str(segments), str(depth), *_passthrough(args)])
    result.check_returncode()
    return float(result.stdout.strip().splitlines()[-1])


def _passthrough(args: argparse.Namespace) -> list[str]:
    names = ("device", "layers", "hidden", "heads", "vocab", "segment_size", "memory_tokens", "batch_size")
    return [item for name in names for item in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bptt_memory", description=__doc__.split("\n\n")[0])
    add_device_argument(parser)
    parser.add_argument(
        "--segments",
        type=int,
        nargs="+",
        default=[2, 8, 32],
        help="numbers of segments per sample to measure; the ratio is the last one's peak over the first's "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--layers", type=int, default=4, help="layers of the random GPT-2 backbone (default: %(default)s)"
    )
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the backbone (default: %(default)s)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of the backbone (default: %(default)s)")
    parser.add_argument(
        "--vocab",
        type=int,
        default=1000,
        help="vocabulary size of the backbone and the random token ids (default: %(default)s)",
    )
    parser.add_argument("--segment-size", type=int, default=256, help="input tokens per segment (default: %(default)s)")
    parser.add_argument("--memory-tokens", type=int, default=16, help="RMT memory tokens (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per training step (default: %(default)s)")
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=list(dict(ROWS)),
        default=["streaming", "recompute", "reference"],
        help="which training paths to measure (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--one", nargs=3, metavar=("PATH", "SEGMENTS", "DEPTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    if args.one:
        print(measure_once(args.one[0], int(args.one[1]), int(args.one[2]), args))
        return

    rows = []
    print(
        f"device={args.device}  GPT-2 shape: {args.layers} layers, hidden {args.hidden}, segment {args.segment_size}, "
        f"memory {args.memory_tokens}, batch {args.batch_size}"
    )
    print(f"{'path':<14} {'depth':>5} " + " ".join(f"{n:>8} seg" for n in args.segments) + "   ratio last/first")
    rows_to_measure = [(path, depth) for path, depth in ROWS if path in args.paths]
    for path, depth in rows_to_measure:
        peaks = [measure(path, n, depth, args) for n in args.segments]
        ratio = peaks[-1] / peaks[0]
        rows.append({"path": path, "bptt_depth": depth, "segments": args.segments, "peak_bytes": peaks, "ratio": ratio})
        cells = " ".join(f"{p / 2**20:>8.0f} MiB" for p in peaks)
        print(f"{path:<14} {depth:>5} {cells}   {ratio:.2f}x")
    for row in rows:
        if row["path"] in ("streaming", "memory-trainer") and row["bptt_depth"] == 2:
            verdict = "PASS" if row["ratio"] <= 1.5 else "FAIL"
            print(
                f"\n{row['path']}, depth 2: {args.segments[-1]} segments use {row['ratio']:.2f}x the memory of "
                f"{args.segments[0]} (target <= 1.5x): {verdict}"
            )
    if args.json:
        write_json(args.json, {"device": args.device, "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
