"""Where an encoder's memory enters the model, and how it starts: what lets a BERT learn to carry a fact across
segments.

    python -m benchmarks.encoder_memory --steps 1500 --seeds 0 1 2 --output benchmarks/results/encoder_memory-cpu.json

Task: noise tokens in 2 segments of 16; a marker and one of 6 fact tokens somewhere in segment 1; the class to
predict after segment 2 is the fact (chance 1/6), so only the memory can answer. Model: a 2-layer, width-64 BERT with
4 memory tokens, AdamW (lr 3e-4 by default), batch 32. Three ways to feed the memory, each an RMTConfig setting:
- `embedding_layer` (`encoder_memory_input="embedding_layer"`): the memory replaces the word embeddings at its
  positions and goes through the embedding layer like a token (plus position and token-type embeddings, then the
  embedding LayerNorm);
- `after_embeddings` (the default): the memory replaces the embedding layer's output at its positions; the initial
  memory is scaled like the token embeddings;
- `after_embeddings_embedding_output_init` (`encoder_memory_init="embedding_output"`): the same, with the initial
  memory scaled like the embedding layer's normalised output.
Held-out accuracy on 256 samples every 100 steps, for each seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import RESULTS_DIR, torch_threads, write_json
from rmt import RMTConfig, RMTForSequenceClassification
from rmt.build import random_backbone

SEGMENT, NOISE, MARKER, FACTS, CLS, SEP = 16, 30, 36, 6, 40, 41
VARIANTS = {  # name: the RMTConfig settings it stands for
    "embedding_layer": {"encoder_memory_input": "embedding_layer"},
    "after_embeddings": {},
    "after_embeddings_embedding_output_init": {"encoder_memory_init": "embedding_output"},
}


def batch(size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, NOISE, (size, 2 * SEGMENT), generator=generator)
    where = torch.randint(0, SEGMENT - 1, (size,), generator=generator)
    fact = torch.randint(0, FACTS, (size,), generator=generator)
    ids[torch.arange(size), where] = MARKER
    ids[torch.arange(size), where + 1] = NOISE + fact
    return ids, fact


def run(variant: str, seed: int, steps: int, lr: float) -> list[tuple[int, float]]:
    torch.manual_seed(seed)
    backbone = random_backbone("bert", 50, 2, 64, 4, 64, num_labels=FACTS, seed=seed)
    config = RMTConfig(
        mode="encoder",
        num_memory_tokens=4,
        segment_size=SEGMENT,
        cls_token_id=CLS,
        sep_token_id=SEP,
        **VARIANTS[variant],
    )
    model = RMTForSequenceClassification(backbone, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed + 1)
    held_out = batch(256, torch.Generator().manual_seed(99))
    curve = []
    for step in range(steps + 1):
        if step % 100 == 0:
            with torch.no_grad():
                accuracy = float((model(held_out[0]).logits.argmax(-1) == held_out[1]).float().mean())
            curve.append((step, accuracy))
        if step < steps:
            ids, fact = batch(32, generator)
            model.forward_backward(ids, labels=fact)
            optimizer.step()
            optimizer.zero_grad()
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--output", default=str(RESULTS_DIR / "encoder_memory-cpu.json"), help="result file")
    args = parser.parse_args(argv)
    results = {}
    with torch_threads(args.threads):
        for variant in VARIANTS:
            for seed in args.seeds:
                results[f"{variant}/{seed}"] = run(variant, seed, args.steps, args.lr)
                print(variant, seed, " ".join(f"{s}:{a:.2f}" for s, a in results[f"{variant}/{seed}"]), flush=True)
    write_json(Path(args.output), {"steps": args.steps, "seeds": args.seeds, "lr": args.lr, "curves": results})
    print(format_table(results, args.seeds))
    return 0


def format_table(results: dict, seeds: list[int]) -> str:
    lines = ["| variant | seed | steps to >= 0.9 | final accuracy |", "|---|---|---|---|"]
    for variant in VARIANTS:
        for seed in seeds:
            curve = results[f"{variant}/{seed}"]
            reached = next((s for s, a in curve if a >= 0.9), None)
            lines.append(f"| {variant} | {seed} | {reached if reached is not None else 'never'} | {curve[-1][1]:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
