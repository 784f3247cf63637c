"""How large the memory an RMT segment writes is, next to the token embeddings the next segment reads it beside.

    python -m benchmarks.memory_scale --model smollm2 --output benchmarks/results/memory_scale-smollm2-cpu.json

RMT's memory for the next segment is the backbone's last hidden state at the write slots. A pretrained decoder's
last hidden state (after its final norm) can be far larger than its token embeddings, and the next segment reads the
memory in place of embeddings: a memory many times larger than the tokens beside it is what
`RMTConfig.memory_write_scale='token_embeddings'` (each written vector RMS-normalised and scaled by a learned gain
that starts at the embeddings' standard deviation) is for. This script builds the memory model on --model as
`rmt train` would before any training (initial memory drawn at the token embeddings' scale, `--seed`), reads
--documents documents of the built-in public-domain books (consecutive blocks of --segments x --segment-size tokens
from the start of the corpus) one segment at a time, and records for each write scale, averaged over the documents:
- `token_embedding_norm`: the mean L2 norm of the documents' token embeddings (`vocabulary_embedding_norm`: of
  every row of the embedding matrix; `embedding_std`: the standard deviation of its entries, where the gain starts);
- `initial_memory_norm`: the mean L2 norm of the initial memory vectors;
- `written_memory_norm`: after each segment, the mean L2 norm of the memory vectors it wrote.
Prints a table and writes the JSON to --output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import device_name, torch_threads, write_json
from benchmarks.long_document_lm import corpus_blocks
from rmt import RMTConfig
from rmt.build import memory_model, pretrained_backbone, pretrained_tokenizer

WRITE_SCALES = ("hidden", "token_embeddings")


def documents(tokenizer, count: int, tokens: int) -> torch.Tensor:
    """`count` consecutive blocks of `tokens` tokens from the start of the built-in corpus, books in its order."""
    blocks = corpus_blocks(tokenizer, tokens, limit=count)
    if len(blocks) < count:
        raise SystemExit(f"the built-in corpus holds only {len(blocks)} blocks of {tokens} tokens, fewer than {count}")
    return torch.tensor(blocks)


def vector_norm(vectors: torch.Tensor) -> float:
    """Mean L2 norm of the vectors along the last dimension."""
    return float(vectors.float().norm(dim=-1).mean())


@torch.no_grad()
def measure(backbone: torch.nn.Module, input_ids: torch.Tensor, args: argparse.Namespace, scale: str) -> dict:
    torch.manual_seed(args.seed)
    config = RMTConfig(num_memory_tokens=args.memory_tokens, segment_size=args.segment_size, memory_write_scale=scale)
    model = memory_model(backbone, config).eval()
    state = model.initial_state(input_ids.shape[0])
    record = {"initial_memory_norm": vector_norm(state), "written_memory_norm": []}
    mask = torch.ones_like(input_ids)
    for start in range(0, input_ids.shape[1], args.segment_size):
        segment = slice(start, start + args.segment_size)
        _hidden, state = model.step(input_ids[:, segment], mask[:, segment], state)
        record["written_memory_norm"].append(vector_norm(state))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_scale",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="smollm2", help="a decoder: name, folder, .gguf file or hub id")
    parser.add_argument("--segment-size", type=int, default=1024)
    parser.add_argument("--memory-tokens", type=int, default=16)
    parser.add_argument("--segments", type=int, default=3, help="segments read per document")
    parser.add_argument("--documents", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial memory")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        tokenizer = pretrained_tokenizer(args.model)
        backbone = pretrained_backbone(args.model).eval()
        input_ids = documents(tokenizer, args.documents, args.segments * args.segment_size)
        with torch.no_grad():
            token_norm = vector_norm(backbone.get_input_embeddings()(input_ids))
            vocabulary_norm = vector_norm(backbone.get_input_embeddings().weight)
            embedding_std = float(backbone.get_input_embeddings().weight.float().std())
        scales = {scale: measure(backbone, input_ids, args, scale) for scale in WRITE_SCALES}
    results = {
        "meta": {
            "device": device_name("cpu"),
            "torch": torch.__version__,
            "args": vars(args) | {"output": str(args.output)},
        },
        "token_embedding_norm": token_norm,
        "vocabulary_embedding_norm": vocabulary_norm,
        "embedding_std": embedding_std,
        "write_scales": scales,
    }
    write_json(args.output, results)
    print(f"token embeddings: mean norm {token_norm:.2f} in the documents, {vocabulary_norm:.2f} over the vocabulary")
    print(
        "| memory_write_scale | initial memory | "
        + " | ".join(f"after segment {s + 1}" for s in range(args.segments))
        + " |"
    )
    print("|---" * (args.segments + 2) + "|")
    for scale, record in scales.items():
        written = " | ".join(f"{norm:.2f}" for norm in record["written_memory_norm"])
        print(f"| {scale} | {record['initial_memory_norm']:.2f} | {written} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
