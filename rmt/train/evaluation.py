"""Held-out evaluation of a memory model on a data source: loss, answer accuracy and exact match.

Causal LMs are scored at the answer positions only (the labelled tokens): the model is asked for the logits there
(`forward(logits=positions)`), so a long input never builds a [B, N, V] tensor. Classifiers are scored on their class
logits. Language-modelling sources report loss and perplexity.

The loss is the mean over everything scored, not the mean of the batches' means: each batch's loss counts with the
number of targets it averages (answer or text tokens for a causal LM, samples for a classifier), so the score does not
depend on the batch size. With `loss_aggregation="tokens"` (the default) that is exactly the mean over every scored
token.

With several processes (`processes=accelerator`, outside FSDP) each process scores every n-th held-out batch and the
sums are added over the processes: the same scores as one process (up to the order of the additions), in 1/n of the
time, and no process idles at a collective while another evaluates alone (a long evaluation could otherwise outlast
the process group's timeout).
"""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rmt.data.batch import Batch
from rmt.data.sources import Source
from rmt.data.tasks import IGNORE_INDEX
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.memory.segments import loss_terms


@torch.no_grad()
def evaluate(
    model: RecurrentMemoryModel,
    source: Source,
    batches: int,
    batch_size: int,
    num_segments: int | None = None,
    processes: Accelerator | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Mean loss (over every term the configured loss averages: `loss_terms` for causal LMs, samples for
    classifiers) and, for answer tasks, per-token answer accuracy and full-answer exact match, over `batches`
    held-out batches of `source` (fewer if the source has fewer). With `processes` (an Accelerator of several
    processes, all of which must call this) the batches are shared out and every process gets the scores of all.
    `progress`: a progress bar of the batches (the main process's share), which goes when done."""
    available = source.num_eval_batches(batch_size)
    count = batches if available is None else min(batches, available)
    rank, world = (processes.process_index, processes.num_processes) if processes is not None else (0, 1)
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(("loss", "weight", "hits", "total", "exact", "samples"), 0.0)
    try:
        shares = tqdm(range(rank, count, world), desc="held-out", disable=not progress or rank != 0, leave=False)
        for index in shares:
            batch = source.eval_batch(index, batch_size, num_segments).to(model.device)
            result = score_batch(model, batch, with_accuracy=source.metric == "accuracy")
            result["loss"] *= result["weight"]  # summed, then divided by the total weight
            for key in sums:
                sums[key] += result[key]
    finally:
        model.train(was_training)
    if world > 1:
        added = processes.reduce(torch.tensor(list(sums.values()), dtype=torch.float64, device=model.device), "sum")
        sums = dict(zip(sums, added.tolist(), strict=True))
    loss, weight = sums["loss"], sums["weight"]
    hits, total, exact, samples = (int(sums[key]) for key in ("hits", "total", "exact", "samples"))
    scores = {"loss": loss / weight if weight else float("nan")}
    if source.metric == "accuracy":
        scores.update(accuracy=hits / max(total, 1), exact_match=exact / max(samples, 1))
    else:
        scores["perplexity"] = math.exp(min(scores["loss"], 50.0))
    return scores


def score_batch(model: RecurrentMemoryModel, batch: Batch, with_accuracy: bool = True) -> dict[str, float]:
    """Loss, correct answer tokens, answer tokens, samples answered exactly and samples with an answer in `batch`, and
    the loss's weight: the number of terms it is the mean of (samples of a classifier; for a causal LM `loss_terms`:
    targets, or (sample, segment) pairs with loss_aggregation="segments")."""
    if not model.token_logits:  # classification: one label per sample
        out = model(**batch.model_inputs())
        correct = out.logits.argmax(dim=-1) == batch.labels
        n = int(correct.numel())
        return {
            "loss": float(out.loss),
            "weight": n,
            "hits": int(correct.sum()),
            "total": n,
            "exact": int(correct.sum()),
            "samples": n,
        }
    weight = loss_terms(model.config, model.plan(batch.input_ids, batch.attention_mask, batch.labels).weights)
    targets = batch.labels[:, 1:]  # the token each position predicts
    scored = targets != IGNORE_INDEX  # [B, N - 1]
    if not with_accuracy:
        out = model(**batch.model_inputs(), logits="none")
        return {"loss": float(out.loss), "weight": weight, "hits": 0, "total": 0, "exact": 0, "samples": 0}
    counts = scored.sum(dim=1)
    width = max(int(counts.max()), 1)
    # Positions of each sample's scored predictions, padded with a real token's position (masked out below).
    order = torch.sort((~scored).to(torch.int8), dim=1, stable=True).indices[:, :width]  # scored positions first
    valid = torch.arange(width, device=scored.device)[None, :] < counts[:, None]  # [B, K]
    filler = torch.where(counts > 0, order[:, 0], batch.attention_mask.argmax(dim=1))  # [B]
    positions = torch.where(valid, order, filler[:, None])
    out = model(**batch.model_inputs(), logits=positions)
    predicted = out.logits.argmax(dim=-1)  # [B, K]
    # A row without an answer may have its filler at the last position, which predicts nothing (targets are one
    # shorter than the input); its entries are not valid, so any target index in range serves.
    hit = (predicted == targets.gather(1, positions.clamp(max=targets.shape[1] - 1))) & valid
    has_answer = counts > 0
    exact = ((hit | ~valid).all(dim=1) & has_answer).sum()
    return {
        "loss": float(out.loss),
        "weight": weight,
        "hits": int(hit.sum()),
        "total": int(valid.sum()),
        "exact": int(exact),
        "samples": int(has_answer.sum()),
    }
