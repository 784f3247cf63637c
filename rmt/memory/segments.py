"""Input preparation for the segment loop: validation, packing of padded samples, segmentation, next-token targets
and the loss weights that implement `RMTConfig.loss_aggregation`.

Every sample is segmented from its own first real token: its real tokens are packed to the front (stable, so their
order is kept; left padding or gaps allowed), so samples may have different numbers of segments and a padded sample
gives the same result as the sample alone. `SegmentPlan` holds the packed input and everything the loop needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rmt.config import RMTConfig
from rmt.errors import InputError

IGNORE_INDEX = -100


@dataclass
class SegmentPlan:
    """The input packed and cut into segments, with everything the loop needs precomputed."""

    input_ids: torch.Tensor  # [B, N] real tokens first
    attention_mask: torch.Tensor  # [B, N] 1 on the packed real tokens
    order: torch.Tensor | None  # [B, N] original position of each packed position; None if already packed
    lengths: torch.Tensor  # [B] real tokens per sample
    num_segments: torch.Tensor  # [B] segments per sample
    targets: torch.Tensor | None  # decoder: [B, N] next-token targets (IGNORE_INDEX where none); encoder: [B]
    weights: torch.Tensor | None  # decoder: [B, N] loss weight of each target; encoder: None


def validate_input_ids(input_ids: torch.Tensor, vocab_size: int | None) -> None:
    """Raise an InputError unless input_ids is a non-empty [batch, length] integer tensor of ids < vocab_size."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise InputError(f"input_ids must be a [batch, length] tensor, got {shape}")
    if input_ids.dtype not in (torch.int64, torch.int32):  # what embedding lookups take
        raise InputError(f"input_ids must hold integer token ids (int64 or int32), got dtype {input_ids.dtype}")
    if input_ids.numel() == 0:
        raise InputError(f"input_ids is empty (shape {tuple(input_ids.shape)}): nothing to process")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        raise InputError(
            f"input_ids hold ids from {low} to {high}, but the backbone's vocabulary has ids 0..{vocab_size - 1}"
            if vocab_size is not None
            else f"input_ids hold a negative id ({low})"
        )


def validate_attention_mask(
    attention_mask: torch.Tensor | None, input_ids: torch.Tensor, allow_empty: bool = False
) -> torch.Tensor:
    """The attention mask as integers (all ones when None), checked: same shape as input_ids, values 0 or 1 (of any
    dtype: a float or bool mask is read the same), and (unless `allow_empty`) at least one real token per sample."""
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
        raise InputError(f"attention_mask shape {shape} does not match input_ids shape {tuple(input_ids.shape)}")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise InputError("attention_mask must hold only 0 (padding) and 1 (real token)")
    empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty and not allow_empty:
        raise InputError(f"sample(s) {empty} have no tokens (attention_mask is all zeros)")
    return attention_mask.long()


def plan_segments(
    config: RMTConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    token_labels: bool,
    vocab_size: int | None = None,
    num_classes: int | None = None,
    require_targets: bool = True,
) -> SegmentPlan:
    """Validate and pack the input, cut it into segments of `config.segment_size` and derive targets and loss weights.

    token_labels: True for causal LMs (labels [B, N], unshifted, -100 = ignore; ids < vocab_size), False for
    classification (labels [B], classes < num_classes). require_targets=False: token labels with no target give
    all-zero weights instead of an InputError (`loss_weights`)."""
    validate_input_ids(input_ids, vocab_size)
    mask = validate_attention_mask(attention_mask, input_ids).bool()
    lengths = mask.sum(dim=1)

    order = None
    if not bool((mask == prefix_mask(lengths, mask.shape[1])).all()):
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
        input_ids = input_ids.gather(1, order)
    packed_mask = prefix_mask(lengths, mask.shape[1]).long()
    num_segments = (lengths + config.segment_size - 1) // config.segment_size

    targets = weights = None
    if labels is not None:
        validate_labels(labels, vocab_size if token_labels else num_classes, token_labels)
        if token_labels:
            if labels.shape != input_ids.shape:
                raise InputError(
                    f"labels shape {tuple(labels.shape)} does not match input_ids shape {tuple(input_ids.shape)}"
                )
            if order is not None:
                labels = labels.gather(1, order)
            targets = torch.full_like(labels, IGNORE_INDEX)
            targets[:, :-1] = labels[:, 1:]
            # A sample's last real token has nothing to predict; padding predicts nothing.
            targets = targets.masked_fill(~prefix_mask(lengths - 1, labels.shape[1]), IGNORE_INDEX)
            weights = loss_weights(config, targets, num_segments, require_targets)
        else:
            if labels.dim() == 2 and labels.shape[1] == 1:  # [batch, 1], as Hugging Face's classifiers take too
                labels = labels[:, 0]
            if labels.dim() != 1 or labels.shape[0] != input_ids.shape[0]:
                raise InputError(
                    f"labels must have shape [batch] = [{input_ids.shape[0]}] (or [batch, 1]) for classification, "
                    f"got {tuple(labels.shape)}"
                )
            targets = labels
    return SegmentPlan(input_ids, packed_mask, order, lengths, num_segments, targets, weights)


def validate_labels(labels: torch.Tensor, bound: int | None, token_labels: bool) -> None:
    """Raise an InputError unless labels are integer ids in 0..bound-1 (token labels may also be -100, ignored):
    out-of-range targets would otherwise fail deep inside the loss (on a GPU as a device-side assert)."""
    what = "token labels" if token_labels else "class labels"
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:  # what cross_entropy takes
        kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise InputError(f"{what} must be an int64 tensor, got {kind}")
    scored = labels[labels != IGNORE_INDEX] if token_labels else labels
    if not scored.numel():
        return
    low, high = int(scored.min()), int(scored.max())
    if low < 0 or (bound is not None and high >= bound):
        allowed = f"0..{bound - 1}" if bound is not None else "non-negative"
        ignore = f" or {IGNORE_INDEX} (ignored)" if token_labels else ""
        raise InputError(f"{what} hold values from {low} to {high}; allowed: {allowed}{ignore}")


def loss_weights(
    config: RMTConfig, targets: torch.Tensor, num_segments: torch.Tensor, require_targets: bool = True
) -> torch.Tensor:
    """Per-target weights [B, N] whose weighted sum of token losses is the configured aggregate. Without a target
    to train on: an InputError, or all zeros with require_targets=False (a trainer's micro-batch that adds nothing)."""
    valid = targets != IGNORE_INDEX
    seg_size = config.segment_size
    segment_of = torch.arange(targets.shape[1], device=targets.device) // seg_size  # [N]
    aggregation = config.loss_aggregation
    if aggregation == "last_segment":
        valid = valid & (segment_of[None, :] == (num_segments - 1)[:, None])
    if not bool(valid.any()):
        if not require_targets:
            return valid.float()
        raise InputError(
            "labels contain no target token to train on (all -100"
            + (
                " among the predictions made in each sample's last segment; with loss_aggregation='last_segment' a "
                "label at the segment's first position is predicted by the segment before and does not count)"
                if aggregation == "last_segment"
                else " after the shift: the label at a sample's first token is predicted by nothing and does not count)"
            )
        )
    weights = valid.float()
    if aggregation == "segments":
        n_seg = math.ceil(targets.shape[1] / seg_size)
        counts = torch.zeros(targets.shape[0], n_seg, device=targets.device)
        counts.scatter_add_(1, segment_of.expand_as(weights), weights)  # [B, S] targets per segment
        per_token_count = counts.gather(1, segment_of.expand_as(weights)).clamp(min=1)
        return weights / per_token_count / (counts > 0).sum()
    return weights / weights.sum()


def loss_terms(config: RMTConfig, weights: torch.Tensor) -> int:
    """How many terms the configured loss is the mean of, from a plan's per-target weights [B, N] (packed positions):
    its targets, or with loss_aggregation="segments" the (sample, segment) pairs that hold targets. A loss over
    several batches, each weighted by this count, is the loss of all of them as one batch."""
    scored = (weights > 0).to(torch.int8)
    if config.loss_aggregation != "segments":
        return int(scored.sum())
    seg_size = config.segment_size
    scored = torch.nn.functional.pad(scored, (0, -scored.shape[1] % seg_size))
    return int(scored.view(scored.shape[0], -1, seg_size).amax(dim=2).sum())


class LogitsCanvas:
    """[B, N, V] logits at the caller's positions, filled segment by segment as the logits are computed; padding
    positions hold zeros. Each segment's logits go straight to the caller's positions and the padding is zeroed in
    place at the end, so the result is the only [B, N, V] tensor held (a 1M-token input's logits at a 49k vocabulary
    are 200 GB)."""

    def __init__(self, plan: SegmentPlan) -> None:
        self.plan = plan
        self.out: torch.Tensor | None = None
        batch, length = plan.input_ids.shape
        device = plan.input_ids.device
        self.every_row = torch.arange(batch, device=device)
        # The caller's position of each packed position (the identity where nothing was packed).
        self.caller = plan.order if plan.order is not None else torch.arange(length, device=device).expand(batch, -1)

    def put(self, rows: torch.Tensor | None, start: int, logits: torch.Tensor) -> None:
        """Logits [b, t, V] of `rows` (None: every sample) at packed positions start..start + t."""
        if self.out is None:
            self.out = logits.new_zeros(*self.plan.input_ids.shape, logits.shape[-1])
        index = self.every_row if rows is None else rows
        self.out[index[:, None], self.caller[index, start : start + logits.shape[1]]] = logits

    def result(self) -> torch.Tensor:
        if self.out is None:
            raise RuntimeError("LogitsCanvas.result before any logits were put")
        packed = self.plan.attention_mask
        mask = torch.empty_like(packed).scatter_(1, self.caller, packed)  # at the caller's positions
        return self.out.masked_fill_((mask == 0)[..., None], 0)


def closed_length(length: int, segment_size: int) -> int:
    """Tokens of a `length`-token input that lie in segments closed before its last token's segment.

    Decoding continues the segment that holds the last token (the open segment, 1..T tokens); the segments before it
    are complete and their memory is final. Used by every generate path."""
    return (length - 1) // segment_size * segment_size


def prefix_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] bool mask, True at the first `lengths[b]` positions of row b."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def select(tensor: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Rows `rows` of a batch-first tensor (None: all rows, returned as is)."""
    return tensor if rows is None else tensor.index_select(0, rows)


def check_one_text(token_type_ids: torch.Tensor | None) -> None:
    """Refuse token types that mark a second text (a BERT tokenizer's sentence pair): the memory models read one text,
    cut into segments, and pass no token types on."""
    if token_type_ids is not None and bool((token_type_ids != 0).any()):
        raise InputError(
            "token_type_ids marks a second text (type 1): the model reads one text, cut into segments; join the "
            "texts into one"
        )
