"""The segment recurrence shared by every memory model (RMT decoder/encoder, ARMT).

A subclass says how one segment is processed (`initial_state`, `step`); this module does the rest:

- cuts inputs of any length into segments of `config.segment_size` (the last one may be short);
- handles padded batches: each sample's real tokens are packed to the front, so a sample is segmented from its
  own first token whatever the padding side, samples may have different numbers of segments (finished samples
  drop out of later steps and keep their memory), and a padded sample gives the same result as the sample alone;
- truncated BPTT: gradients flow through at most `bptt_depth` memory transitions, counted back from each
  sample's last segment (the RMT papers' scheme); earlier transitions are detached;
- losses: next-token cross-entropy with labels shifted over the whole input (so a segment's last token is
  trained to predict the next segment's first token), combined with per-token weights that implement the
  config's `loss_aggregation`; classification loss on each sample's last segment in encoder mode.

Two ways to train, with equal gradients (tests compare them):
- `forward(...)` builds one graph over all segments: simple, the reference; its memory grows with length.
- `forward_backward(...)` backpropagates each segment's loss as soon as no later gradient can reach that
  segment, runs segments that carry no loss and no reachable gradient under `no_grad`, and keeps only the
  last `bptt_depth` + 1 segments' activations alive: peak memory does not grow with the number of segments.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.utils import ModelOutput

from rmt.config import RMTConfig
from rmt.memory.state import State, batch_size_of, detach, detach_rows, merge_rows, select_rows

IGNORE_INDEX = -100
MEMORY_WEIGHTS = "memory.safetensors"
MEMORY_CONFIG = "rmt_config.json"
BACKBONE_DIR = "backbone"

_MODEL_CLASSES: dict[tuple[str, str], type[RecurrentMemoryModel]] = {}


def register_model(mode: str, memory_kind: str) -> Callable[[type], type]:
    """Class decorator: the model class used for (config.mode, config.memory_kind)."""

    def register(cls: type) -> type:
        _MODEL_CLASSES[(mode, memory_kind)] = cls
        return cls

    return register


def model_class(config: RMTConfig) -> type[RecurrentMemoryModel]:
    import rmt.memory  # noqa: F401  (registers every model class)

    key = (config.mode, config.memory_kind)
    if key not in _MODEL_CLASSES:
        raise ValueError(f"no memory model for mode={config.mode!r}, memory_kind={config.memory_kind!r}")
    return _MODEL_CLASSES[key]


@dataclass
class SegmentOutput:
    """What one segment step produced (returned when `output_segments=True`)."""

    rows: torch.Tensor  # [b] indices of the samples active in this segment
    logits: torch.Tensor  # decoder: [b, t, V]; encoder: [b, num_labels]
    memory_state: State  # state of the whole batch after this segment


@dataclass
class RMTOutput(ModelOutput):
    """Output of a memory model over a whole input.

    loss: combined loss (None without labels). logits: decoder [B, N, V] at the input's own positions (padding
    positions hold zeros); encoder [B, num_labels] from each sample's last segment. memory_state: state after
    each sample's last segment (pass it back in to continue). segment_outputs: per-segment outputs if asked.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    memory_state: State | None = None
    segment_outputs: list[SegmentOutput] | None = None


@dataclass
class _Plan:
    """The input packed and cut into segments, with everything the loop needs precomputed."""

    input_ids: torch.Tensor  # [B, N] real tokens first
    attention_mask: torch.Tensor  # [B, N]
    order: torch.Tensor | None  # [B, N] original position of each packed position; None if already packed
    lengths: torch.Tensor  # [B] real tokens per sample
    num_segments: torch.Tensor  # [B] segments per sample
    targets: torch.Tensor | None  # decoder: [B, N] next-token targets (IGNORE_INDEX where none); encoder: [B]
    weights: torch.Tensor | None  # decoder: [B, N] loss weight of each target; encoder: None


Backward = Callable[[torch.Tensor], None]


class RecurrentMemoryModel(nn.Module):
    """Base class: a Hugging Face backbone plus a memory carried across segments.

    Subclasses implement `initial_state`, `step`, and set `token_logits` (True when `step` returns one logit
    vector per input token, False for one vector per segment as in classification).
    """

    token_logits: bool = True

    def __init__(self, backbone: nn.Module, config: RMTConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config

    # --- to implement -----------------------------------------------------------------------------------
    def initial_state(self, batch_size: int) -> State:
        raise NotImplementedError

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Process one segment: input_ids/attention_mask [b, t] (real tokens first), state for those b rows.
        Returns (logits, new_state): logits [b, t, V] if `token_logits` else [b, num_labels]."""
        raise NotImplementedError

    # --- public API ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def memory_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapper's own parameters and buffers (everything except the backbone)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write `path/backbone/` (the backbone's own HF format), `path/memory.safetensors` and
        `path/rmt_config.json`. Written to a temporary folder first and swapped in, so a crash never leaves a
        half-written checkpoint and an existing one is replaced only once the new one is complete."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            self.backbone.save_pretrained(tmp / BACKBONE_DIR, safe_serialization=True)
            tensors = {k: v.detach().contiguous().cpu() for k, v in self.memory_state_dict().items()}
            save_file(tensors, str(tmp / MEMORY_WEIGHTS), metadata={"format": "pt"})
            self.config.save(tmp / MEMORY_CONFIG)
            replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **backbone_kwargs) -> RecurrentMemoryModel:
        """Load a model written by `save_pretrained`. `backbone_kwargs` go to the backbone's from_pretrained
        (e.g. dtype). Raises FileNotFoundError / ValueError naming the missing or corrupt file."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no checkpoint at {path}: the folder does not exist")
        missing = [n for n in (MEMORY_CONFIG, MEMORY_WEIGHTS, BACKBONE_DIR) if not (path / n).exists()]
        if missing:
            raise FileNotFoundError(f"no complete checkpoint at {path}: missing {', '.join(missing)}")
        config = RMTConfig.load(path / MEMORY_CONFIG)
        model_cls = model_class(config)
        if cls is not RecurrentMemoryModel and not issubclass(model_cls, cls):
            raise ValueError(f"checkpoint {path} holds a {model_cls.__name__}, not a {cls.__name__}")
        try:
            tensors = load_file(str(path / MEMORY_WEIGHTS))
        except Exception as err:  # safetensors raises several error types for damaged files
            raise ValueError(f"corrupt checkpoint: cannot read {path / MEMORY_WEIGHTS}: {err}") from err
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        auto = AutoModelForCausalLM if config.mode == "decoder" else AutoModelForSequenceClassification
        try:
            backbone = auto.from_pretrained(path / BACKBONE_DIR, **backbone_kwargs)
        except Exception as err:
            raise ValueError(f"corrupt checkpoint: cannot load the backbone from {path / BACKBONE_DIR}: {err}") from err
        model = model_cls(backbone, config)
        expected = model.memory_state_dict()
        if set(tensors) != set(expected):
            raise ValueError(
                f"corrupt checkpoint: {path / MEMORY_WEIGHTS} holds {sorted(tensors)}, expected {sorted(expected)}"
            )
        for name, tensor in tensors.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(
                    f"corrupt checkpoint: {name} has shape {tuple(tensor.shape)} in {path / MEMORY_WEIGHTS}, "
                    f"expected {tuple(expected[name].shape)}"
                )
        model.load_state_dict(tensors, strict=False)
        return model.to(backbone.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        memory_state: State | None = None,
        output_segments: bool = False,
    ) -> RMTOutput:
        """Run the whole input through the recurrence in one autograd graph (the reference path)."""
        plan = self._plan(input_ids, attention_mask, labels)
        return self._run(plan, memory_state, backward=None, output_segments=output_segments)

    def forward_backward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        memory_state: State | None = None,
        backward: Backward | None = None,
        recompute: bool = False,
    ) -> RMTOutput:
        """Compute the loss and accumulate its gradients into `.grad`, with memory that does not grow with the
        number of segments. Same gradients as `forward(...).loss.backward()`. `backward` replaces
        `loss.backward()` (e.g. `accelerator.backward`). Returns the detached loss and final memory state
        (logits are not kept).

        Peak memory: the activations of the last `bptt_depth` + 1 segments (all segments at depth -1). With
        `recompute=True` those segments keep only their inputs and are recomputed one at a time during the
        backward pass (gradient checkpointing per segment): about one segment's activations at any depth, for
        one extra forward pass of the window segments."""
        if labels is None:
            raise ValueError("forward_backward needs labels")
        plan = self._plan(input_ids, attention_mask, labels)
        return self._run(plan, memory_state, backward=backward or (lambda loss: loss.backward()), recompute=recompute)

    # --- input preparation --------------------------------------------------------------------------------
    def _plan(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None) -> _Plan:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a [batch, length] tensor, got {shape}")
        if input_ids.numel() == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): nothing to process")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        mask = attention_mask.bool()
        lengths = mask.sum(dim=1)
        empty = (lengths == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"sample(s) {empty} have no tokens (attention_mask is all zeros)")

        order = None
        if not bool((mask == _prefix_mask(lengths, mask.shape[1])).all()):
            # Pack real tokens to the front (stable, so their order is kept): left padding or gaps allowed.
            order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
            input_ids = input_ids.gather(1, order)
        packed_mask = _prefix_mask(lengths, mask.shape[1]).long()
        num_segments = (lengths + self.config.segment_size - 1) // self.config.segment_size

        targets = weights = None
        if labels is not None:
            if self.token_logits:
                if labels.shape != input_ids.shape:
                    raise ValueError(
                        f"labels shape {tuple(labels.shape)} does not match input_ids shape {tuple(input_ids.shape)}"
                    )
                if order is not None:
                    labels = labels.gather(1, order)
                targets = torch.full_like(labels, IGNORE_INDEX)
                targets[:, :-1] = labels[:, 1:]
                # A sample's last real token has nothing to predict; padding predicts nothing.
                targets = targets.masked_fill(~_prefix_mask(lengths - 1, labels.shape[1]), IGNORE_INDEX)
                weights = self._loss_weights(targets, num_segments)
            else:
                if labels.dim() != 1 or labels.shape[0] != input_ids.shape[0]:
                    raise ValueError(
                        f"labels must have shape [batch] = [{input_ids.shape[0]}] for classification, "
                        f"got {tuple(labels.shape)}"
                    )
                targets = labels
        return _Plan(input_ids, packed_mask, order, lengths, num_segments, targets, weights)

    def _loss_weights(self, targets: torch.Tensor, num_segments: torch.Tensor) -> torch.Tensor:
        """Per-target weights [B, N] whose weighted sum of token losses is the configured aggregate."""
        valid = targets != IGNORE_INDEX
        seg_size = self.config.segment_size
        segment_of = torch.arange(targets.shape[1], device=targets.device) // seg_size  # [N]
        aggregation = self.config.loss_aggregation
        if aggregation == "last_segment":
            valid = valid & (segment_of[None, :] == (num_segments - 1)[:, None])
        if not bool(valid.any()):
            raise ValueError(
                "labels contain no target token to train on (all -100"
                + (" in each sample's last segment)" if aggregation == "last_segment" else ")")
            )
        weights = valid.float()
        if aggregation == "segments":
            n_seg = math.ceil(targets.shape[1] / seg_size)
            counts = torch.zeros(targets.shape[0], n_seg, device=targets.device)
            counts.scatter_add_(1, segment_of.expand_as(weights), weights)  # [B, S] targets per segment
            per_token_count = counts.gather(1, segment_of.expand_as(weights)).clamp(min=1)
            return weights / per_token_count / (counts > 0).sum()
        return weights / weights.sum()

    # --- the loop -------------------------------------------------------------------------------------------
    def _run(
        self,
        plan: _Plan,
        memory_state: State | None,
        backward: Backward | None,
        output_segments: bool = False,
        recompute: bool = False,
    ) -> RMTOutput:
        batch, length = plan.input_ids.shape
        seg_size, depth = self.config.segment_size, self.config.bptt_depth
        if memory_state is None:
            state = self.initial_state(batch)
        else:
            if batch_size_of(memory_state) != batch:
                raise ValueError(f"memory_state holds {batch_size_of(memory_state)} samples but input_ids has {batch}")
            state = memory_state
        streaming = backward is not None
        has_loss = plan.targets is not None
        total_segments = int(plan.num_segments.max())

        token_logits = [] if (self.token_logits and not streaming) else None
        class_logits: torch.Tensor | None = None
        segments: list[SegmentOutput] | None = [] if output_segments else None
        window_loss: torch.Tensor | None = None  # streaming: losses whose graph must wait for the end
        loss_value = torch.zeros((), device=plan.input_ids.device)

        for s in range(total_segments):
            start = s * seg_size
            active = plan.num_segments > s
            all_active = bool(active.all())
            width = int((plan.lengths[active] - start).clamp(max=seg_size).max())
            last_step = plan.num_segments - 1 == s  # [B] samples whose last segment this is

            # Truncated BPTT: the memory entering segment s is transition s; keep only each sample's last
            # `depth` transitions (transition numbers num_segments - depth .. num_segments - 1).
            if depth >= 0 and s >= 1:
                state = detach_rows(state, active & (s < plan.num_segments - depth))

            groups = self._groups(plan, s, active, all_active, streaming)
            for rows, mode in groups:
                row_index = None if rows is None else rows
                ids = _rows(plan.input_ids, row_index)[:, start : start + width]
                mask = _rows(plan.attention_mask, row_index)[:, start : start + width]
                state_in = select_rows(state, row_index)
                if mode in ("nograd", "stream") and s >= 1:
                    state_in = detach(state_in)  # already detached by the rule; cut the graph link as well
                ending = _rows(last_step, row_index)
                if mode == "window" and streaming and recompute:
                    # Keep only this step's inputs; its activations are recomputed during the backward pass.
                    # The loss is computed inside so that the logits are not kept either.
                    part, new_state = checkpoint(
                        self._step_with_loss,
                        plan,
                        ids,
                        mask,
                        state_in,
                        row_index,
                        ending,
                        start,
                        width,
                        use_reentrant=False,
                    )
                    logits = None
                else:
                    with torch.set_grad_enabled(torch.is_grad_enabled() and mode != "nograd"):
                        logits, new_state = self.step(ids, mask, state_in)
                    wants_loss = has_loss and mode != "nograd"
                    part = self._segment_loss(plan, logits, row_index, ending, start, width) if wants_loss else None
                if mode == "stream":
                    new_state = detach(new_state)
                state = merge_rows(state, row_index, new_state)

                if not streaming:
                    if segments is not None:  # the reference path runs a single group per segment
                        all_rows = torch.arange(batch, device=active.device)
                        segments.append(SegmentOutput(all_rows if rows is None else rows, logits, state))
                    if self.token_logits:
                        token_logits.append((row_index, start, logits))
                    elif bool(ending.any()):
                        if class_logits is None:
                            class_logits = logits.new_zeros(batch, logits.shape[-1])
                        ending_rows = torch.arange(batch, device=ending.device) if rows is None else rows
                        class_logits = class_logits.index_copy(0, ending_rows[ending], logits[ending])

                if part is not None:
                    loss_value = loss_value + part.detach()
                    if mode == "stream":
                        backward(part)
                    else:
                        window_loss = part if window_loss is None else window_loss + part
        loss = None
        if has_loss:
            if streaming:
                if window_loss is not None and window_loss.requires_grad:
                    backward(window_loss)
                loss = loss_value
            else:
                loss = window_loss
        if streaming:
            state = detach(state)
        logits_out = class_logits
        if token_logits:
            logits_out = self._assemble_logits(plan, token_logits, batch, length)
        return RMTOutput(loss=loss, logits=logits_out, memory_state=state, segment_outputs=segments)

    def _groups(
        self, plan: _Plan, s: int, active: torch.Tensor, all_active: bool, streaming: bool
    ) -> list[tuple[torch.Tensor | None, str]]:
        """Split the samples active in segment s into groups processed by one `step` call each.

        Reference path: one group. Streaming path: 'window' (inside the last bptt_depth + 1 segments: keep the
        graph), 'stream' (has a loss but no later gradient reaches it: backpropagate now), 'nograd' (neither)."""
        if not streaming:
            return [(None if all_active else active.nonzero().flatten(), "window")]
        depth = self.config.bptt_depth
        in_window = active if depth < 0 else active & (s >= plan.num_segments - depth - 1)
        carries_loss = self._segment_has_loss(plan, s)
        kinds = {
            "window": in_window,
            "stream": active & ~in_window & carries_loss,
            "nograd": active & ~in_window & ~carries_loss,
        }
        groups = []
        for mode, member in kinds.items():
            if bool(member.any()):
                rows = None if bool(member.all()) else member.nonzero().flatten()
                groups.append((rows, mode))
        return groups

    def _step_with_loss(
        self,
        plan: _Plan,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        state: State,
        rows: torch.Tensor | None,
        ending: torch.Tensor,
        start: int,
        width: int,
    ) -> tuple[torch.Tensor, State]:
        logits, new_state = self.step(input_ids, attention_mask, state)
        part = self._segment_loss(plan, logits, rows, ending, start, width)
        return (logits.new_zeros(()) if part is None else part), new_state

    def _segment_has_loss(self, plan: _Plan, s: int) -> torch.Tensor:
        if plan.weights is None:  # classification: the loss sits on each sample's last segment
            return plan.num_segments - 1 == s
        seg_size = self.config.segment_size
        return (plan.weights[:, s * seg_size : (s + 1) * seg_size] > 0).any(dim=1)

    def _segment_loss(
        self,
        plan: _Plan,
        logits: torch.Tensor,
        rows: torch.Tensor | None,
        ending: torch.Tensor,
        start: int,
        width: int,
    ) -> torch.Tensor | None:
        if plan.weights is None:  # classification, loss = mean over the batch of each sample's last segment
            if not bool(ending.any()):
                return None
            targets = _rows(plan.targets, rows)[ending]
            return F.cross_entropy(logits[ending].float(), targets, reduction="sum") / plan.targets.shape[0]
        weights = _rows(plan.weights, rows)[:, start : start + width]
        if not bool((weights > 0).any()):
            return None
        targets = _rows(plan.targets, rows)[:, start : start + width]
        token_loss = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        )
        return (token_loss * weights.flatten()).sum()

    def _assemble_logits(
        self, plan: _Plan, pieces: list[tuple[torch.Tensor | None, int, torch.Tensor]], batch: int, length: int
    ) -> torch.Tensor:
        vocab = pieces[0][2].shape[-1]
        out = pieces[0][2].new_zeros(batch, length, vocab)
        for rows, start, logits in pieces:
            width = logits.shape[1]
            if rows is None:
                out[:, start : start + width] = logits
            else:
                out[rows, start : start + width] = logits
        out = out * plan.attention_mask[..., None].to(out.dtype)
        if plan.order is not None:  # back to the caller's positions
            out = torch.zeros_like(out).scatter(1, plan.order[..., None].expand_as(out), out)
        return out


def replace_dir(new: Path, target: Path) -> None:
    """Move the complete folder `new` to `target`, replacing any folder there only after the move succeeds."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _prefix_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] bool mask, True at the first `lengths[b]` positions of row b."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def _rows(tensor: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return tensor if rows is None else tensor.index_select(0, rows)
