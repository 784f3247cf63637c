"""How an ARMT model's carried state and activations grow segment by segment on an input longer than it was trained on.

    python -m benchmarks.armt_state_growth MODEL [MODEL ...] --length 2048 --samples 4 --output FILE.json

Each MODEL is a saved ARMT model (rmt train's OUTPUT/model). Every model reads the same single-fact qa1 samples of
--length tokens (built with the first model's tokenizer; the models must share it), one segment at a time through
the model's own per-segment code (`encode`), and after each segment records, averaged over the samples:
- `A_norm`: the Frobenius norm of each layer's associative matrix A (what the memory has written so far);
- `z_norm`: the norm of each layer's normaliser z (the weighted sum of the keys written so far; reads divide by it);
- `hidden_rms`: the root mean square of the last layer's hidden states at the segment's tokens (before the final
  norm): how far the backbone's activations move from what it produces on a short input.
A model trained on n segments whose answers break down beyond them (benchmarks/results/babilong/) shows here whether
that comes with a growing state or with activations that leave their trained range. A plot (FILE.png) draws the
mean over layers of A_norm and hidden_rms against the segment, one line per model.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import torch_threads, write_json
from rmt.build import pretrained_tokenizer
from rmt.cli.data_flags import load_background
from rmt.data.babilong import build_sample
from rmt.eval.by_length import Reader
from rmt.memory.armt import ARMTForCausalLM
from rmt.memory.pretrained import load_memory_model
from rmt.plotting import pyplot, save_figure


def sample_prompts(
    tokenizer: Any, reader: Reader, background: Any, length: int, count: int, seed: int
) -> list[list[int]]:
    """`count` single-fact qa1 prompts of about `length` tokens (fact anywhere), as token ids."""
    seeds = random.Random(f"armt-state-growth/{seed}")
    samples = [
        build_sample("qa1", length, tokenizer, background, seeds.getrandbits(53), (0.0, 1.0), 1) for _ in range(count)
    ]
    return reader.collate.prompt_ids([sample.to_dict() for sample in samples])


@torch.no_grad()
def growth(model: ARMTForCausalLM, prompts: list[list[int]]) -> dict[str, list]:
    """Per segment (over the shortest prompt's whole segments): A_norm and z_norm [layers], hidden_rms, averaged
    over the prompts."""
    segment = model.config.segment_size
    width = min(len(ids) for ids in prompts) // segment * segment
    if width == 0:
        raise SystemExit(f"the prompts are shorter than one segment of {segment} tokens; use a longer --length")
    input_ids = torch.tensor([ids[:width] for ids in prompts])
    mask = torch.ones_like(input_ids)
    state = model.initial_state(input_ids.shape[0])
    record: dict[str, list] = {"A_norm": [], "z_norm": [], "hidden_rms": []}
    for start in range(0, width, segment):
        hidden, state = model.encode(input_ids[:, start : start + segment], mask[:, start : start + segment], state)
        layers, _written = state
        record["A_norm"].append([float(A.float().flatten(1).norm(dim=1).mean()) for A, _ in layers])
        record["z_norm"].append([float(z.float().norm(dim=1).mean()) for _, z in layers])
        record["hidden_rms"].append(float(hidden.float().pow(2).mean().sqrt()))
    return record


def plot(results: dict[str, dict], path: Path) -> None:
    plt = pyplot()

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, record in results.items():
        segments = range(1, len(record["hidden_rms"]) + 1)
        left.plot(segments, [sum(layers) / len(layers) for layers in record["A_norm"]], marker="o", label=name)
        right.plot(segments, record["hidden_rms"], marker="o", label=name)
    left.set(xlabel="segment", ylabel="|A| (mean over layers)", title="associative state", yscale="log")
    right.set(xlabel="segment", ylabel="RMS", title="last layer's hidden states", yscale="log")
    left.legend(fontsize=7)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="saved ARMT models (rmt train's OUTPUT/model)")
    parser.add_argument("--length", type=int, default=2048, help="tokens per sample (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=4, help="samples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default: %(default)s)")
    parser.add_argument("--haystack", default=None, help="background text files (default: the built-in corpus)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--output", type=Path, required=True, help="result JSON file (the plot goes beside it)")
    args = parser.parse_args(argv)

    tokenizer = pretrained_tokenizer(args.models[0])
    results: dict[str, dict] = {}
    with torch_threads(args.threads):
        prompts = None
        for path in args.models:
            model = load_memory_model(path).eval()
            if not isinstance(model, ARMTForCausalLM):
                raise SystemExit(f"{path} is a {type(model).__name__}, not an ARMT model")
            if prompts is None:
                reader, background = Reader(model, tokenizer), load_background(args.haystack)
                prompts = sample_prompts(tokenizer, reader, background, args.length, args.samples, args.seed)
            results[path] = growth(model, prompts) | {"segment_size": model.config.segment_size}
            print(path, "hidden RMS by segment:", " ".join(f"{v:.1f}" for v in results[path]["hidden_rms"]))
    settings = {"length": args.length, "samples": args.samples, "seed": args.seed, "task": "qa1, one fact"}
    write_json(args.output, {**settings, "models": results})
    plot(results, args.output.with_suffix(".png"))


if __name__ == "__main__":
    main()
