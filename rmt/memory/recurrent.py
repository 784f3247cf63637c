"""The segment recurrence shared by every memory model (RMT decoder/encoder, ARMT).

A subclass says how one segment is processed (`initial_state`, `step`, and for causal LMs `head`); this module does
the rest:

- cuts inputs of any length into segments of `config.segment_size` (the last one may be short), every sample from its
  own first real token (`rmt.memory.segments`): samples may have different numbers of segments (finished samples drop
  out of later steps and keep their memory), and a padded sample gives the same result as the sample alone;
- truncated BPTT: gradients flow through at most `bptt_depth` memory transitions, counted back from each sample's last
  segment (the RMT papers' scheme); earlier transitions are detached. A `memory_state` passed in (the state an earlier
  call returned) is the transition into the call's first segment and follows the same rule, so a finite depth also
  cuts the graph back into the earlier call;
- losses: next-token cross-entropy with labels shifted over the whole input (so a segment's last token is trained to
  predict the next segment's first token), combined with per-token weights that implement `loss_aggregation`;
  classification loss on each sample's last segment in encoder mode. The LM head runs only where a loss or an output
  asks for logits, so answer-only labels and `logits="last"` never build a [B, N, V] tensor.

Two ways to train, with equal gradients (tests compare them):
- `forward(...)` builds one graph over all segments: simple, the reference; its memory grows with length.
- `forward_backward(...)` backpropagates each segment's loss as soon as no later gradient can reach that segment, runs
  segments that carry no loss and no reachable gradient under `no_grad`, and keeps only the last `bptt_depth` + 1
  segments' activations alive: with a finite `bptt_depth`, peak memory does not grow with the number of segments.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils.checkpoint import checkpoint

from rmt.config import RMTConfig
from rmt.errors import InputError
from rmt.memory.generation import generate
from rmt.memory.outputs import GenerateOutput, RMTOutput, SegmentOutput
from rmt.memory.pretrained import load_memory_model, save_memory_model, upload_to_hub
from rmt.memory.segments import LogitsCanvas, SegmentPlan, check_one_text, plan_segments, select
from rmt.memory.state import (
    State,
    batch_size_of,
    check_state,
    detach,
    detach_rows,
    merge_rows,
    select_rows,
    tree_map,
)
from rmt.memory.stream import MemoryStream

Backward = Callable[[torch.Tensor], None]
LogitsRequest = Literal["all", "last", "none"] | torch.Tensor


class SegmentMode(enum.Enum):
    """How the loop runs a group of samples in one segment."""

    WINDOW = "window"  # keeps its graph: inside the reference forward, or within bptt_depth + 1 of the sample's end
    STREAM = "stream"  # has a loss that no later gradient reaches: backpropagated at once (if it reaches a trainable
    # parameter at all), graph released
    NOGRAD = "nograd"  # neither a loss nor a reachable gradient: run without autograd


def check_config(config: object, model_class: str) -> None:
    """Refuse a memory config that is not an RMTConfig (a dict of its fields failed with an AttributeError)."""
    if not isinstance(config, RMTConfig):
        hint = ": build one from it, RMTConfig(**fields)" if isinstance(config, dict) else ""
        raise InputError(f"{model_class} takes an RMTConfig, got a {type(config).__name__}{hint}")


class RecurrentMemoryModel(nn.Module):
    """Base class: a Hugging Face backbone plus a memory carried across segments.

    Subclasses implement `initial_state` and `step`, and set `token_logits`: True for causal LMs, whose `step` returns
    hidden states at the token positions that `head` turns into logits; False for classification, whose `step` returns
    one logit vector per segment."""

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
        Returns (output, new_state): output = hidden states [b, t, D] if `token_logits` else class logits [b, C]."""
        raise NotImplementedError

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] from hidden states [..., D] returned by `step` (causal LMs)."""
        raise NotImplementedError

    # --- public API ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's dtype (an ARMT keeps its associative state in fp32 whatever it is)."""
        return self.backbone.dtype

    @property
    def vocab_size(self) -> int:
        """Number of token ids the backbone embeds."""
        return self.backbone.get_input_embeddings().weight.shape[0]

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters of the backbone and the memory together (Hugging Face's name and meaning: `exclude_embeddings`
        leaves out the nn.Embedding tables)."""
        embeddings = {
            id(p) for module in self.modules() if isinstance(module, nn.Embedding) for p in module.parameters()
        }
        return sum(
            p.numel()
            for p in self.parameters()
            if (p.requires_grad or not only_trainable) and not (exclude_embeddings and id(p) in embeddings)
        )

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Recompute each backbone layer's activations in the backward pass instead of keeping them (the backbone's
        own Hugging Face activation checkpointing, with its `every_n_layers` and `offload`; same gradients), as
        transformers' Trainer asks for with `gradient_checkpointing=True`. `forward_backward(recompute=True)`
        recomputes whole segments instead. Refused with a Transformer-XL cache, which the layers would then drop."""
        if getattr(self, "cache_tokens", 0):
            raise InputError(
                "activation checkpointing drops the key/value cache the Transformer-XL cache (xl_cache_tokens) "
                "feeds the layers: use forward_backward(recompute=True), which recomputes whole segments"
            )
        backbone = self.backbone
        if hasattr(backbone, "activation_checkpointing_enable"):
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers, offload)
            return
        if every_n_layers != 1 or offload:
            raise InputError(
                f"{type(backbone).__name__} has no activation_checkpointing_enable, so every_n_layers and offload "
                "cannot be set: it checkpoints every layer in place"
            )
        backbone.gradient_checkpointing_enable(activation_checkpointing_kwargs)

    def activation_checkpointing_disable(self) -> None:
        backbone = self.backbone
        getattr(backbone, "activation_checkpointing_disable", backbone.gradient_checkpointing_disable)()

    # transformers' older names for the same (deprecated in transformers 5, still what most training scripts call)
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    def memory_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapper's own parameters and buffers (everything except the backbone)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def save_pretrained(
        self, path: str | os.PathLike, safe_serialization: bool = True, max_shard_size: int | str | None = None
    ) -> None:
        """Write `path/backbone/` (the backbone's own HF format), `path/memory.safetensors` and `path/rmt_config.json`,
        atomically (see `rmt.memory.pretrained`). Weights are always safetensors (`safe_serialization=False` is
        refused); `max_shard_size` ("2GB", as in Hugging Face) splits the backbone's weights into files of that size."""
        if not safe_serialization:
            raise InputError("rmt checkpoints are written as safetensors only: safe_serialization=False is refused")
        save_memory_model(self, path, max_shard_size=max_shard_size)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str = "Upload rmt model",
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = None,
        tokenizer: Any = None,
    ) -> str:
        """Upload the model to the Hugging Face Hub repository `repo_id` ("owner/name", created if missing) as
        `save_pretrained` writes it, in one commit; returns the commit's URL. `from_pretrained(repo_id)` loads it.
        `tokenizer`: saved with it (in backbone/), so that `rmt eval` and `rmt generate` can read the hub id."""
        return upload_to_hub(
            self, repo_id, commit_message, private, token, revision, create_pr, max_shard_size, tokenizer
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> RecurrentMemoryModel:
        """Load a model written by `save_pretrained` from its folder, or one `push_to_hub` uploaded by its hub id
        ("owner/name", with `revision`, `token`, `cache_dir`, `local_files_only`, `force_download` as in Hugging
        Face). Keyword arguments named after RMTConfig fields change the saved config (`segment_size=256`,
        `bptt_depth=2`; not those that decide the memory weights, such as num_memory_tokens); the others go to the
        backbone's from_pretrained (e.g. dtype, device_map). Raises MissingFileError / InputError naming the missing or
        corrupt file."""
        return load_memory_model(path, None if cls is RecurrentMemoryModel else cls, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        memory_state: State | None = None,
        output_segments: bool = False,
        logits: LogitsRequest = "all",
        token_type_ids: torch.Tensor | None = None,
    ) -> RMTOutput:
        """Run the whole input through the recurrence in one autograd graph (the reference path).

        logits (causal LMs): "all" = [B, N, V] at every position; "last" = [B, V] at each sample's last real token;
        "none" = no logits; a LongTensor [B, K] of positions (in input_ids' coordinates) = [B, K, V] there. Only what
        is asked for goes through the LM head.

        The returned `memory_state` keeps its graph, as a recurrent layer's state does: passed back as
        `memory_state=`, gradients flow into the earlier call as far as `bptt_depth` allows (for the rows of no more
        segments than bptt_depth, and at depth -1 all the way), so a loop that steps its optimizer between calls
        passes `rmt.memory.detach_state(out.memory_state)`. A `memory_state` holds one row per sample, or one row
        for the whole batch (given to every sample: one document's memory and several questions).

        An encoder gives class logits [B, C] and refuses `logits` other than its default. `token_type_ids`, which
        BERT tokenizers return, is taken so that `model(**tokenizer(texts, add_special_tokens=False, ...))` runs, and
        must mark one text (all 0)."""
        if not self.token_logits and not (isinstance(logits, str) and logits == "all"):
            raise InputError(
                f"logits={logits!r} chooses a causal LM's token logits: an encoder gives class logits [B, C] of each "
                "sample's last segment"
            )
        check_one_text(token_type_ids)
        plan = self.plan(input_ids, attention_mask, labels)
        return self._run(plan, memory_state, backward=None, output_segments=output_segments, logits=logits)

    def forward_backward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        memory_state: State | None = None,
        backward: Backward | None = None,
        recompute: bool = False,
        token_type_ids: torch.Tensor | None = None,
    ) -> RMTOutput:
        """Compute the loss and accumulate its gradients into `.grad`, with memory that does not grow with the
        number of segments once `bptt_depth` is finite. Same gradients as `forward(...).loss.backward()`.
        `backward` replaces `loss.backward()` (e.g. `accelerator.backward`). Returns the detached loss and final
        memory state (logits are not kept). `token_type_ids` as `forward` takes them.

        Peak memory: the activations of the last `bptt_depth` + 1 segments (all segments at depth -1). With
        `recompute=True` those segments keep only their inputs and are recomputed one at a time during the
        backward pass (gradient checkpointing per segment): their inputs and one segment's activations, for one
        extra forward pass of the window segments (at depth -1 the inputs of every segment, so it still grows)."""
        if labels is None:
            raise InputError("forward_backward needs labels")
        check_one_text(token_type_ids)
        plan = self.plan(input_ids, attention_mask, labels)
        return self._run(
            plan, memory_state, backward=backward or (lambda loss: loss.backward()), recompute=recompute, logits="none"
        )

    def generate(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor | GenerateOutput:
        """Generate after each prompt row (causal LMs), in Hugging Face terms: max_new_tokens, do_sample, temperature,
        top_k, top_p, eos_token_id, pad_token_id, memory_state, ... (`rmt.memory.generation.generate`). Returns the
        sequences [B, P + N], or a `GenerateOutput` with `return_dict_in_generate=True`, as Hugging Face does."""
        return generate(self, input_ids, attention_mask, **kwargs)

    def stream(self, batch_size: int = 1, memory_state: State | None = None) -> MemoryStream:
        """A `MemoryStream` that reads inputs chunk by chunk and gives what one `forward` gives (rmt.memory.stream),
        starting from `memory_state` (e.g. a document's memory loaded from a file) or the initial memory."""
        return MemoryStream(self, batch_size, memory_state)

    def plan(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        require_targets: bool = True,
    ) -> SegmentPlan:
        """The validated, packed and segmented input (`rmt.memory.segments.plan_segments`) for this model."""
        num_classes = None if self.token_logits else getattr(self.backbone.config, "num_labels", None)
        plan = plan_segments(
            self.config,
            input_ids,
            attention_mask,
            labels,
            self.token_logits,
            self.vocab_size,
            num_classes,
            require_targets=require_targets,
        )
        self.check_planned_input(plan)
        return plan

    def check_planned_input(self, plan: SegmentPlan) -> None:
        """Raise an InputError for input this kind of model cannot read as meant (every check `plan_segments` makes
        holds for all kinds; a subclass adds its own here)."""

    def call_schedule(self, plan: SegmentPlan) -> tuple[tuple[str, ...], ...]:
        """The backbone calls and backward passes that `forward_backward` makes for `plan`, in order: per segment the
        modes of its groups (`_groups`; a STREAM group is backpropagated at once, unless its loss reaches no trainable
        parameter, which holds alike in every process), then ("BACKWARD",) when the
        window's loss is backpropagated at the end. Processes whose layers are sharded (FSDP) gather each layer's
        weights at every call, so they must make the same calls."""
        calls = []
        window_loss = False
        for s in range(int(plan.num_segments.max())):
            groups = self._groups(plan, s, plan.num_segments > s, streaming=True)
            calls.append(tuple(mode.name for _, mode in groups))
            has_loss = self._segment_has_loss(plan, s)
            window_loss |= any(
                mode is SegmentMode.WINDOW and bool(select(has_loss, rows).any()) for rows, mode in groups
            )
        return (*calls, ("BACKWARD",) if window_loss else ())

    def start_state(self, batch_size: int, memory_state: State | None) -> State:
        """`memory_state` checked against this model's own state layout and put in its dtypes and on its device, or
        the initial state when None. A state of one sample is given to every row of a larger batch (one document's
        memory asked several questions at once)."""
        initial = self.initial_state(batch_size)
        if memory_state is None:
            return initial
        check_state(memory_state, initial)
        held = batch_size_of(memory_state)
        if held not in (1, batch_size):
            raise InputError(
                f"memory_state holds {held} samples but the batch has {batch_size} (a state of one sample is given "
                "to every row; otherwise one row of state per sample)"
            )
        # In this model's own dtypes and on its device (a state kept in another precision, or moved off the GPU).
        memory_state = tree_map(lambda leaf, own: leaf.to(own.device, own.dtype), memory_state, initial)
        if held == 1 and batch_size > 1:
            memory_state = select_rows(memory_state, torch.zeros(batch_size, dtype=torch.long, device=self.device))
        return memory_state

    def _links_to_an_earlier_graph(self, memory_state: State) -> bool:
        """Whether a passed-in state is a transition from an earlier call (a state that call returned, with its
        graph), as opposed to a state without a graph (detached, loaded from a file) or this model's own initial
        memory passed explicitly (`initial_state`: a view of its parameters, which must keep training as when no
        state is passed)."""
        own = {id(parameter) for parameter in self.parameters()}
        return any(leaf.requires_grad and id(leaf._base) not in own for leaf in pytree.tree_leaves(memory_state))

    # --- the loop -------------------------------------------------------------------------------------------
    def _run(
        self,
        plan: SegmentPlan,
        memory_state: State | None,
        backward: Backward | None,
        output_segments: bool = False,
        recompute: bool = False,
        logits: LogitsRequest = "all",
    ) -> RMTOutput:
        batch, length = plan.input_ids.shape
        seg_size, depth = self.config.segment_size, self.config.bptt_depth
        state = self.start_state(batch, memory_state)
        carried = memory_state is not None and self._links_to_an_earlier_graph(memory_state)
        streaming = backward is not None
        has_loss = plan.targets is not None
        total_segments = int(plan.num_segments.max())
        outputs = _LogitsCollector(self, plan, logits) if self.token_logits else None

        class_logits: torch.Tensor | None = None
        segments: list[SegmentOutput] | None = [] if output_segments else None
        window_loss: torch.Tensor | None = None  # streaming: losses whose graph must wait for the end
        loss_value = torch.zeros((), device=plan.input_ids.device)

        for s in range(total_segments):
            start = s * seg_size
            active = plan.num_segments > s
            width = int((plan.lengths[active] - start).clamp(max=seg_size).max())
            last_step = plan.num_segments - 1 == s  # [B] samples whose last segment this is

            # Truncated BPTT: the memory entering segment s is transition s; keep only each sample's last
            # `depth` transitions (transition numbers num_segments - depth .. num_segments - 1). The memory entering
            # segment 0 is a transition only when it was passed in; the model's own initial memory is a parameter.
            if depth >= 0 and (s >= 1 or carried):
                state = detach_rows(state, active & (s < plan.num_segments - depth))

            # Every group reads the memory as it entered the segment, not `state` after an earlier group's merge:
            # a STREAM group's backward would otherwise run through the WINDOW group's graph (and free it) on the
            # way to the initial memory, which segment 0 does not detach.
            entering = state
            for rows, mode in self._groups(plan, s, active, streaming):
                ids = select(plan.input_ids, rows)[:, start : start + width]
                mask = select(plan.attention_mask, rows)[:, start : start + width]
                state_in = select_rows(entering, rows)
                if mode is not SegmentMode.WINDOW and (s >= 1 or carried):
                    state_in = detach(state_in)  # already detached by the rule; cut the graph link as well
                ending = select(last_step, rows)
                if mode is SegmentMode.WINDOW and streaming and recompute:
                    # Keep only this step's inputs; its activations are recomputed during the backward pass.
                    # The loss is computed inside so that the outputs are not kept either.
                    part, new_state = checkpoint(
                        self._step_with_loss, plan, ids, mask, state_in, rows, ending, start, use_reentrant=False
                    )
                    output = None
                else:
                    with torch.set_grad_enabled(torch.is_grad_enabled() and mode is not SegmentMode.NOGRAD):
                        output, new_state = self.step(ids, mask, state_in)
                    wants_loss = has_loss and mode is not SegmentMode.NOGRAD
                    part = self._segment_loss(plan, output, rows, ending, start) if wants_loss else None
                if mode is SegmentMode.STREAM:
                    new_state = detach(new_state)
                state = merge_rows(state, rows, new_state)

                if not streaming:
                    if outputs is not None:
                        outputs.add(rows, start, output)
                    elif bool(ending.any()):
                        if class_logits is None:
                            class_logits = output.new_zeros(batch, output.shape[-1])
                        ending_rows = torch.arange(batch, device=ending.device) if rows is None else rows
                        class_logits = class_logits.index_copy(0, ending_rows[ending], output[ending])
                    if segments is not None:  # the reference path runs a single group per segment
                        all_rows = torch.arange(batch, device=active.device) if rows is None else rows
                        seg_logits = self.head(output) if outputs is not None else output
                        segments.append(SegmentOutput(all_rows, seg_logits, state))

                if part is not None:
                    loss_value = loss_value + part.detach()
                    if mode is SegmentMode.STREAM:
                        # With the backbone frozen, a segment that reads detached memory may reach no trainable
                        # parameter (RMT's memory enters through the first segment only): nothing to backpropagate.
                        if part.requires_grad:
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
        logits_out = outputs.result() if outputs is not None else class_logits
        return RMTOutput(loss=loss, logits=logits_out, memory_state=state, segment_outputs=segments)

    def _groups(
        self, plan: SegmentPlan, s: int, active: torch.Tensor, streaming: bool
    ) -> list[tuple[torch.Tensor | None, SegmentMode]]:
        """Split the samples active in segment s into groups processed by one `step` call each (rows None: all).

        Reference path: one WINDOW group. Streaming path: WINDOW inside the last bptt_depth + 1 segments of a sample,
        STREAM where a loss but no later gradient is, NOGRAD for the rest."""
        if not streaming:
            return [(None if bool(active.all()) else active.nonzero().flatten(), SegmentMode.WINDOW)]
        depth = self.config.bptt_depth
        in_window = active if depth < 0 else active & (s >= plan.num_segments - depth - 1)
        carries_loss = self._segment_has_loss(plan, s)
        members = {
            SegmentMode.WINDOW: in_window,
            SegmentMode.STREAM: active & ~in_window & carries_loss,
            SegmentMode.NOGRAD: active & ~in_window & ~carries_loss,
        }
        groups = []
        for mode, member in members.items():
            if bool(member.any()):
                groups.append((None if bool(member.all()) else member.nonzero().flatten(), mode))
        return groups

    def _step_with_loss(
        self,
        plan: SegmentPlan,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        state: State,
        rows: torch.Tensor | None,
        ending: torch.Tensor,
        start: int,
    ) -> tuple[torch.Tensor, State]:
        output, new_state = self.step(input_ids, attention_mask, state)
        part = self._segment_loss(plan, output, rows, ending, start)
        return (output.new_zeros(()) if part is None else part), new_state

    def _segment_has_loss(self, plan: SegmentPlan, s: int) -> torch.Tensor:
        if plan.weights is None:  # classification: the loss sits on each sample's last segment
            return plan.num_segments - 1 == s
        seg_size = self.config.segment_size
        return (plan.weights[:, s * seg_size : (s + 1) * seg_size] > 0).any(dim=1)

    def _segment_loss(
        self, plan: SegmentPlan, output: torch.Tensor, rows: torch.Tensor | None, ending: torch.Tensor, start: int
    ) -> torch.Tensor | None:
        if plan.weights is None:  # classification, loss = mean over the batch of each sample's last segment
            if not bool(ending.any()):
                return None
            targets = select(plan.targets, rows)[ending]
            return F.cross_entropy(output[ending].float(), targets, reduction="sum") / plan.targets.shape[0]
        width = output.shape[1]
        weights = select(plan.weights, rows)[:, start : start + width]
        scored = weights > 0  # [b, t]: the head runs on these positions only
        if not bool(scored.any()):
            return None
        targets = select(plan.targets, rows)[:, start : start + width][scored]
        token_loss = F.cross_entropy(self.head(output[scored]).float(), targets, reduction="none")
        return (token_loss * weights[scored]).sum()


class _LogitsCollector:
    """Gathers a causal LM's logits segment by segment, for what `forward(logits=...)` asked, running the head only
    there: every position ("all"), each sample's last real token ("last"), given positions, or nothing ("none")."""

    def __init__(self, model: RecurrentMemoryModel, plan: SegmentPlan, request: LogitsRequest) -> None:
        self.model, self.plan = model, plan
        self.kind = "positions" if isinstance(request, torch.Tensor) else request
        if self.kind not in ("all", "last", "none", "positions"):
            raise InputError(
                f"logits must be 'all', 'last', 'none' or a [batch, K] tensor of positions, got {request!r}"
            )
        batch, length = plan.input_ids.shape
        self.canvas = LogitsCanvas(plan) if self.kind == "all" else None  # filled as segments end, not kept in a list
        self.hidden: torch.Tensor | None = None  # [B, K, D] hidden states at the kept positions
        if self.kind == "last":
            self.wanted = (plan.lengths - 1)[:, None]  # [B, 1] packed position of each sample's last token
        elif self.kind == "positions":
            self.wanted = self._packed_positions(request, batch, length)

    def _packed_positions(self, positions: torch.Tensor, batch: int, length: int) -> torch.Tensor:
        if (
            positions.dim() != 2
            or positions.shape[0] != batch
            or positions.is_floating_point()
            or positions.dtype == torch.bool
        ):
            raise InputError(
                f"logits positions must be an integer [batch={batch}, K] tensor of positions, got {positions!r}"
            )
        if bool(((positions < 0) | (positions >= length)).any()):
            raise InputError(f"logits positions must lie in 0..{length - 1}")
        positions = positions.to(self.plan.input_ids.device).long()
        if self.plan.order is not None:
            packed_of = torch.empty_like(self.plan.order).scatter_(  # caller position -> packed position
                1, self.plan.order, torch.arange(length, device=positions.device).expand(batch, -1).contiguous()
            )
            positions = packed_of.gather(1, positions)
        # Checked for every padding side: a padding place's hidden state is no token's (right padding gave garbage).
        if not bool(self.plan.attention_mask.gather(1, positions).bool().all()):
            raise InputError("logits positions must be real tokens (attention_mask 1), not padding")
        return positions

    def add(self, rows: torch.Tensor | None, start: int, hidden: torch.Tensor) -> None:
        if self.kind == "none":
            return
        if self.canvas is not None:
            self.canvas.put(rows, start, self.model.head(hidden))
            return
        if self.hidden is None:
            self.hidden = hidden.new_zeros(self.wanted.shape[0], self.wanted.shape[1], hidden.shape[-1])
        wanted = select(self.wanted, rows) - start  # [b, K] offsets in this segment
        inside = (wanted >= 0) & (wanted < hidden.shape[1])
        if not bool(inside.any()):
            return
        picked = hidden.gather(1, wanted.clamp(0, hidden.shape[1] - 1)[..., None].expand(-1, -1, hidden.shape[-1]))
        index = torch.arange(self.wanted.shape[0], device=hidden.device) if rows is None else rows
        current = self.hidden.index_select(0, index)
        self.hidden = self.hidden.index_copy(0, index, torch.where(inside[..., None], picked, current))

    def result(self) -> torch.Tensor | None:
        if self.kind == "none":
            return None
        if self.canvas is not None:
            return self.canvas.result()
        logits = self.model.head(self.hidden)  # [B, K, V]
        return logits[:, 0] if self.kind == "last" else logits
