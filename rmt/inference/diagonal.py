"""Diagonal batching: ARMT inference with the cells of each anti-diagonal of the (segment, layer) grid run together.

`DiagonalARMT(model)` runs a trained `ARMTForCausalLM` without gradients. Cell (s, l) only needs (s, l - 1) and
(s - 1, l), so step t runs every cell with s + l = t (`rmt.inference.schedule`) as ONE grouped computation: the
layers' weights are stacked ([L, out, in], `rmt.backbones.layers.StackedLayers`) and the group's contiguous layer
range applies them with batched matmuls (on a CPU layer by layer, see Exactness); attention takes the G cells x B
samples as its batch (each segment is self-contained); the associative read and write run on the group's stacked
memories. L + S - 1 grouped steps replace S * L layer calls, which fills a GPU that per-layer matmuls of one segment
leave idle. With one cell per group
(`group_size=1`, the CPU default) each cell runs the model's own layer: the same kernels as the sequential model, so
the same result in any dtype over whole segments (a ragged last segment, padded to a whole cell, agrees up to float
rounding), and no stacked copy of the weights.

Layout. A wavefront buffer [L + 1, B, T + M, D] holds, for each layer l, the input of the segment it works on next;
step t reads rows lo..hi-1 and writes its outputs one row down, and row L receives each finished segment. Every cell
is [real tokens | memory tokens | padding] of width T + M with positions 0..T + M - 1: the ragged last segment and
shorter samples are padded at the end, where causal attention keeps the padding out of sight, so plain causal
attention is exact for every cell. A sample with fewer segments than the longest skips the rest: its memory writes are
masked out, as the sequential loop drops finished samples.

`generate` reads the prompt's complete segments with the diagonal pass and hands the rest to the model's own stream
(`rmt.memory.generation`): same arguments and the same tokens as `model.generate`.

The engine stays in step with its model: it records the version counters and storages of the parameters it stacked
and the process's optimizer step count, and restacks before the next grouped computation if any changed (an optimizer
step, fused kernels included; `load_state_dict`; an in-place edit under `torch.no_grad()`; a `.to()` round trip), so
training the model further and then running the engine never uses stale weights. (An in-place change of `p.data`
itself bypasses all of these: call `refresh(force=True)` after it.) ARMT's own projections and memory tokens are read
from the model at every call.

Exactness: on a CPU the grouped cells give the sequential model's result bit for bit over whole segments, in fp32 and
bf16 (tested; at the Llama-3.2-1B shape and on SmolLM2 in bf16: benchmarks/results/diagonal_precision-*-cpu.json), with
SDPA attention, transformers' default: grouped cells always use SDPA, so a backbone set to eager attention agrees only
up to rounding. Every product of a group there is the layer's own `F.linear` (Llama's q, k and v apart, as the layer
projects them), a LayerNorm the layer's own call, the MLP is split by layers and never by rows, the memory's
matrix-vector products are elementwise sums and its sigmoid is rounded from float64: each of these made grouped cells
round differently from one layer's, and a recurrence amplifies a last-bit difference from segment to segment. (Checked
natively on an Intel Xeon with AMX and with MKL, oneDNN and ATen held to AVX2.) A ragged last segment is padded to a
whole cell, and a product over more rows may sum in another order (SmolLM2, fp32: logits within 1e-4 of the largest). On
a GPU a group's products are batched matmuls and its LayerNorms one batched normalisation (`rmt.ops.grouped`), whose
order of summation may differ from one layer's. One cell per group is the sequential model's own computation on any
device (over whole segments). The engine runs in eval mode: no dropout, whatever mode the model is in.

Speed: grouping pays off on a GPU. On a CPU a stacked computation over many cells has a larger working set than one
cell's and loses cache locality, so `group_size=1` runs the cells of a step one at a time, each its own memory read,
layer and memory write, keeping a cell's activations in cache from its read to its write; the default
`group_size="auto"` picks 1 on a CPU and the whole diagonal elsewhere. Measured times are in
benchmarks/results/armt_speed-*.json (`python -m benchmarks.armt_speed`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from rmt.backbones.layers import StackedLayers
from rmt.errors import InputError
from rmt.inference.schedule import layer_range
from rmt.memory.armt import ARMTForCausalLM, layout_segment
from rmt.memory.generation import evaluation_mode, generate
from rmt.memory.outputs import GenerateOutput, RMTOutput
from rmt.memory.segments import LogitsCanvas
from rmt.memory.state import State
from rmt.ops.associative import associative_read, associative_write

Logits = Literal["all", "last", "none"]

_optimizer_steps = 0  # optimizer steps taken in this process since the first engine was built
_step_hook = None


def _count_optimizer_steps() -> None:
    """Count every optimizer step from now on (once per process): a global post-step hook, a counter increment."""
    global _step_hook
    if _step_hook is None:
        _step_hook = register_optimizer_step_post_hook(_counted_step)


def _counted_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


class DiagonalARMT:
    """Diagonal-batching inference engine for an `ARMTForCausalLM`. Grouped cells use stacked copies of the decoder
    layers' weights, rebuilt whenever the model's change (`refresh`); single cells use the model's own layers."""

    def __init__(self, model: ARMTForCausalLM, group_size: int | Literal["auto"] | None = "auto") -> None:
        """group_size: at most this many cells per grouped computation (memory read, layers, memory write). None:
        every cell of the diagonal at once, the point of the engine on a GPU. On a CPU a group of many cells loses
        cache locality against one cell at a time, so group_size=1 is faster there. "auto" (default): 1 if the
        model is on the CPU, else None."""
        if not isinstance(model, ARMTForCausalLM):
            raise TypeError(f"DiagonalARMT runs an ARMTForCausalLM, got {type(model).__name__}")
        if group_size != "auto" and group_size is not None and (not isinstance(group_size, int) or group_size < 1):
            raise InputError(f"group_size must be an int >= 1, None or 'auto', got {group_size!r}")
        self._group_size = group_size
        self.model = model
        self.adapter = model.adapter
        self.num_layers = model.adapter.num_layers
        self._stacked: StackedLayers | None = None  # built when a group of several cells first needs it
        self._versions: tuple | None = None
        _count_optimizer_steps()

    @property
    def layers(self) -> StackedLayers:
        """The decoder layers' weights stacked for grouped cells, built on first use after `refresh` dropped them
        (`forward` and `generate` refresh once per call, not once per grouped step)."""
        if self._stacked is None:
            self._stacked = StackedLayers(self.adapter)
            self._versions = self._source_versions()
        return self._stacked

    def refresh(self, force: bool = False) -> bool:
        """Drop the stacked weights if the model's changed since they were stacked (or if `force`): the next grouped
        computation restacks them. Returns whether it dropped them. Called by `forward` and `generate`."""
        if self._stacked is None or (not force and self._source_versions() == self._versions):
            return False
        self._stacked = None
        return True

    def _source_versions(self) -> tuple[int, list[tuple[int, int, int, torch.device, torch.dtype]]]:
        """The process's optimizer step count, and the identity, version counter, storage, device and dtype of every
        parameter of the decoder layers. Fused optimizer kernels update weights without bumping version counters,
        and `.to()` round trips or `vector_to_parameters` swap `.data` (a new storage): any optimizer step, this
        model's or another's, restacks."""
        params = self.adapter.layers.parameters()
        return _optimizer_steps, [(id(p), p._version, p.data_ptr(), p.device, p.dtype) for p in params]

    @property
    def group_size(self) -> int | None:
        """The cells per grouped call; "auto" is decided by where the model is now (it may have moved since)."""
        if self._group_size == "auto":
            return 1 if self.model.memory.device.type == "cpu" else None
        return self._group_size

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        memory_state: State | None = None,
        logits: Logits = "last",
    ) -> RMTOutput:
        """Same inputs and result as `model.forward` (without labels) in eval mode: logits [B, V] at each sample's
        last token ("last", the default), or [B, N, V] ("all"), or None ("none": only the memory); memory_state after
        each sample's end. Dropout is off whatever mode the model is in (the model's own flags are kept)."""
        if logits not in ("all", "last", "none"):
            raise InputError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
        self.refresh()
        with evaluation_mode(self.model):
            return self._forward(input_ids, attention_mask, memory_state, logits)

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, memory_state: State | None, logits: Logits
    ) -> RMTOutput:
        model, adapter = self.model, self.adapter
        plan = model.plan(input_ids, attention_mask, None)  # the shared loop's packing and segmentation
        ids = plan.input_ids
        batch, length = ids.shape
        seg, mem, layers = model.config.segment_size, model.config.num_memory_tokens, self.num_layers
        segments = int(plan.num_segments.max())
        width = seg + mem
        device = ids.device

        starts = seg * torch.arange(segments, device=device)
        seg_lengths = (plan.lengths[None, :] - starts[:, None]).clamp(0, seg)  # [S, B] real tokens per cell
        widths = seg_lengths.max(dim=1).values.tolist()  # host copies made once, not once per step
        full = (seg_lengths > 0).all(dim=1).tolist()  # [S]: every sample has tokens in segment s
        ids = F.pad(ids, (0, segments * seg - length))  # every segment slice has T columns
        positions = torch.arange(width, device=device)
        slots = torch.arange(mem, device=device)

        state = model.start_state(batch, memory_state)
        A = torch.stack([a for a, _ in state[0]])  # [L, B, K, D] fp32
        z = torch.stack([z for _, z in state[0]])  # [L, B, K]
        written = state[1][None].repeat(layers, 1)  # [L, B]: per layer, since layers lag behind one another
        dtype = model.memory.dtype
        wave = torch.zeros(layers + 1, batch, width, model.memory.shape[1], dtype=dtype, device=device)
        rope = adapter.rotary_table(wave, positions)
        # One cell at a time runs the model's own layers: the same kernels as the sequential model, no weight copies.
        group_size = self.group_size  # decided once per call, not at every step
        own_layers = adapter.layer_kwargs(wave[0], positions) if group_size == 1 else None
        w_q, w_k, w_v, w_b = model.w_q, model.w_k, model.w_v, model.w_b

        canvas = LogitsCanvas(plan)
        last_hidden = wave.new_zeros(batch, wave.shape[-1])  # [B, D] final hidden state at each sample's last token
        rows = torch.arange(batch, device=device)
        for step in range(segments + layers - 1):
            if step < segments:  # segment `step` enters layer 0
                x, _ = layout_segment(
                    adapter.embed(ids[:, step * seg : (step + 1) * seg]), model.memory, seg_lengths[step]
                )
                wave[0] = adapter.add_positions(x, positions)
            lo, hi = layer_range(step, segments, layers)
            size = group_size or hi - lo
            # The step's cells in groups of at most `size` layers, each group read -> layers -> write on its own
            # (on a CPU one cell at a time keeps a cell's activations in cache, as the sequential loop does). The
            # highest group goes first: a group writes its outputs into the rows the groups above it read.
            for top in range(hi, lo, -size):
                bottom = max(top - size, lo)
                cells = slice(bottom, top)
                lengths = seg_lengths[step - top + 1 : step - bottom + 1].flip(0)  # [G, B]: layer l on segment step-l
                first = ~written[cells]
                h = associative_read(wave[cells], A[cells], z[cells], w_q[cells], first)  # [G, B, W, D]
                if own_layers is not None:
                    h = adapter.run_layer(bottom, h[0], own_layers)[None]
                else:
                    h = self.layers.forward(h, bottom, top, rope)
                index = (lengths[..., None] + slots)[..., None].expand(-1, -1, -1, h.shape[-1])  # [G, B, M, D]
                new_A, new_z = associative_write(
                    h.gather(2, index),
                    A[cells],
                    z[cells],
                    w_k[cells],
                    w_v[cells],
                    w_b[cells],
                    first,
                    normalize=model.config.armt_write_norm,
                )
                if all(full[step - top + 1 : step - bottom + 1]):
                    A[cells], z[cells] = new_A, new_z
                    written[cells] = True
                else:  # a sample past its last segment keeps its memory
                    active = lengths > 0  # [G, B]
                    A[cells] = torch.where(active[..., None, None], new_A, A[cells])
                    z[cells] = torch.where(active[..., None], new_z, z[cells])
                    written[cells] |= active
                wave[bottom + 1 : top + 1] = h

            if hi == layers:  # segment s has left the last layer
                s = step - layers + 1
                if logits == "all":
                    canvas.put(None, s * seg, adapter.head(wave[layers][:, : widths[s]]))
                elif logits == "last":
                    ends = plan.num_segments - 1 == s  # [B] samples whose last token is in segment s
                    at_end = wave[layers][rows, (seg_lengths[s] - 1).clamp(min=0)]  # [B, D]
                    last_hidden = torch.where(ends[:, None], at_end, last_hidden)

        final_state = (tuple((A[layer], z[layer]) for layer in range(layers)), written[-1])
        out = None
        if logits == "all":
            out = canvas.result()
        elif logits == "last":
            out = adapter.head(last_hidden)
        return RMTOutput(logits=out, memory_state=final_state)

    __call__ = forward

    def generate(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor | GenerateOutput:
        """`model.generate` with the same arguments and result, the prompt's complete segments read by the diagonal
        pass; the open segment and the new tokens then go through the model's stream (one position per token)."""
        self.refresh()
        return generate(self.model, input_ids, attention_mask, prefill=self._prefill, **kwargs)

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, memory_state: State | None) -> State:
        return self.forward(input_ids, attention_mask, memory_state=memory_state, logits="none").memory_state
