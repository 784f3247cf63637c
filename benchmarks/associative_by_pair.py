"""What a trained associative-retrieval cell remembers: its answer accuracy split by which of the 4 pairs was asked.

    python -m benchmarks.associative_by_pair runs/reproduce/cells/associative_retrieval-5-rmt/checkpoint/model \
        --segments 5 [--samples 2048] [--output FILE.json]

A cell of `benchmarks.reproduce` stores its trained model under OUTPUT/cells/KEY/checkpoint/model. This script reads
held-out samples of the cell's task (the same ones the harness scores: `TaskSource(task).eval_batch`), takes the
argmax at the answer position as the harness does, and groups the answers by the queried pair. At 5 segments of 3
tokens the sample is `_ _ _ | _ k1 v1 | k2 v2 k3 | v3 k4 v4 | ? k v`: pair 1 lies in segment 2, pair 2 in segment 3,
pair 3 across segments 3 and 4, pair 4 in segment 4, and the query in segment 5. A model that keeps only the last
segment's pairs in memory scores near 1 on pair 4 and near chance (0.1) on pairs 1-2; one that keeps every pair
scores alike on all four. It also counts how often the answer is one of the sample's four values, against what a
guess among them scores (about 0.33): a memory that keeps the values but not which key each belongs to answers among
them at about that accuracy. Several model folders are measured one after the other (one line each).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.reproduce import TASKS
from rmt.data.sources import TaskSource
from rmt.data.tasks import AssociativeRetrievalTask
from rmt.memory.recurrent import RecurrentMemoryModel


def task_for(segments: int) -> AssociativeRetrievalTask:
    """The harness's own associative-retrieval task at this many segments (4 filler tokens in front at 5)."""
    return TASKS["associative_retrieval"].make(segments)


@torch.no_grad()
def accuracy_by_pair(model: RecurrentMemoryModel, task: AssociativeRetrievalTask, samples: int) -> dict[str, object]:
    """Answer accuracy overall and for each queried pair (1 = the first pair of the sample), over `samples` held-out
    samples in batches of 256 (up to 256, or a multiple of it), with the count of samples that asked each pair (None:
    no sample asked it). Also how often the answer is one of the sample's values (`answer_among_values`) and the
    accuracy of a guess drawn uniformly from them (`guess_among_values`): a memory that keeps which values came but
    not which key each belongs to answers among them at about that guess's accuracy."""
    if samples > 256 and samples % 256:
        raise ValueError(f"samples must be 1-256 or a multiple of 256, got {samples}")
    model.eval()
    hits, asked = torch.zeros(task.num_pairs), torch.zeros(task.num_pairs)
    among, guess = 0.0, 0.0
    batch_size = min(256, samples)
    for index in range(max(1, samples // batch_size)):
        batch = TaskSource(task).eval_batch(index, batch_size).to(model.device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        answer = task.answer_start
        predicted = logits[:, answer - 1].argmax(dim=-1).cpu()  # the value is predicted at the queried key
        target = batch.input_ids[:, answer].cpu()
        pairs = batch.input_ids[:, task.lead_padding : task.lead_padding + 2 * task.num_pairs].cpu()
        keys, values = pairs[:, 0::2], pairs[:, 1::2]
        among += float((values == predicted[:, None]).any(dim=1).sum())
        guess += float((values == target[:, None]).float().mean(dim=1).sum())
        pair = (keys == batch.input_ids[:, answer - 1 : answer].cpu()).float().argmax(dim=1)
        right = (predicted == target).float()
        hits += torch.zeros(task.num_pairs).index_add_(0, pair, right)
        asked += torch.bincount(pair, minlength=task.num_pairs).float()
    return {
        "accuracy": round(float(hits.sum() / asked.sum()), 4),
        "by_pair": [round(float(h / a), 4) if a else None for h, a in zip(hits, asked, strict=True)],
        "samples_by_pair": [int(a) for a in asked],
        "answer_among_values": round(among / float(asked.sum()), 4),
        "guess_among_values": round(guess / float(asked.sum()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.associative_by_pair", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("models", nargs="+", help="saved cell models (OUTPUT/cells/KEY/checkpoint/model)")
    parser.add_argument(
        "--segments", type=int, required=True, choices=(1, 2, 3, 5), help="the cell's number of segments"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=2048,
        help="held-out samples, up to 256 or a multiple of 256 (batches of 256, as the harness draws them; default: "
        "%(default)s)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results to this JSON file")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.samples < 1 or (args.samples > 256 and args.samples % 256):
        raise SystemExit(
            f"benchmarks.associative_by_pair: --samples must be 1-256 or a multiple of 256, got {args.samples}"
        )
    torch.set_num_threads(1)
    task = task_for(args.segments)
    results = {}
    for folder in args.models:
        model = RecurrentMemoryModel.from_pretrained(folder)
        if model.config.segment_size != task.segment_size_for(args.segments):
            raise SystemExit(
                f"benchmarks.associative_by_pair: {folder} reads segments of {model.config.segment_size} tokens, not "
                f"the {task.segment_size_for(args.segments)} of {args.segments} segments: give its --segments"
            )
        result = accuracy_by_pair(model, task, args.samples)
        results[str(folder)] = result
        by_pair = " / ".join("-" if value is None else f"{value:.2f}" for value in result["by_pair"])
        print(
            f"{folder}: {result['accuracy']:.3f} overall; by pair 1-4: {by_pair}; answers among the sample's values "
            f"{result['answer_among_values']:.2f} (a guess among them scores {result['guess_among_values']:.2f})",
            flush=True,
        )
    if args.output is not None:
        record = {"command": " ".join(["python -m benchmarks.associative_by_pair", *argv]), "results": results}
        record["segments"], record["samples"] = args.segments, args.samples
        args.output.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
