"""Diagonal batching: ARMT inference with the cells of each anti-diagonal of the (segment, layer) grid run together.

`DiagonalARMT(model)` runs a trained `ARMTForCausalLM` without gradients. Cell (s, l) only needs (s, l - 1) and
(s - 1, l), so step t runs every cell with s + l = t (`rmt.inference.schedule`) as ONE grouped computation: the
layers' weights are stacked once at construction ([L, out, in], `rmt.backbones.layers.StackedLayers`) and the
group's contiguous layer range applies them with batched matmuls; attention takes the G cells x B samples as its
batch (each segment is self-contained); the associative read and write run on the group's stacked memories.
L + S - 1 grouped steps replace S * L layer calls, which fills a GPU that per-layer matmuls of one segment leave idle.

Layout. A wavefront buffer [L + 1, B, T + M, D] holds, for each layer l, the input of the segment it works on next;
step t reads rows lo..hi-1 and writes its outputs one row down, and row L receives each finished segment. Every cell
is [real tokens | memory tokens | padding] of width T + M with positions 0..T + M - 1: the ragged last segment and
shorter samples are padded at the end, where causal attention keeps the padding out of sight, so plain causal
attention is exact for every cell. A sample with fewer segments than the longest skips the rest: its memory writes are
masked out, as the sequential loop drops finished samples.

`generate` consumes the prompt's complete segments with the diagonal pass, then decodes greedily with a key/value
cache of the open segment, under the rule documented in `rmt.memory.armt` (the open segment holds 1..T tokens and is
written once complete), so it equals `ARMTForCausalLM.generate`.

Exactness: the same arithmetic as the sequential model up to the order of floating-point sums (fp32: logits within
~1e-5). Dropout is not applied: run the model in eval mode when comparing.

Speed: grouping pays off on a GPU. On a CPU a stacked computation over many cells has a larger working set than one
cell's and loses cache locality: measured on a shared 2-core machine, one grouped call per step ran 0.93-1.2x the
sequential time (slowest with few segments). `group_size=1` runs the cells of a step one at a time, each its own
memory read, layer and memory write, so a cell's activations stay in cache from its read to its write: timed
alternately with it in one process (10 rounds), 1.03-1.04x the sequential time on a 2-core Intel Xeon at 8k-16k
tokens; 1.00-1.01x on an AMD EPYC (3 rounds, an interrupted run; batching the reads and writes over the diagonal
instead cost 1.06x there). The few percent left most likely come from the order: a step's cells belong to different
segments, so a cell reads its input from memory rather than from the layer before it still in cache. The default
`group_size="auto"` picks 1 on a CPU and the whole diagonal elsewhere. See benchmarks/armt_speed.py.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from rmt.backbones.layers import StackedLayers
from rmt.errors import InputError
from rmt.inference.schedule import layer_range
from rmt.memory.armt import ARMTForCausalLM, layout_segment
from rmt.memory.outputs import GenerateOutput, RMTOutput
from rmt.memory.segments import assemble_logits, closed_length
from rmt.memory.state import State
from rmt.ops.associative import associative_read, associative_write

Logits = Literal["all", "last", "none"]


class DiagonalARMT:
    """Diagonal-batching inference engine for an `ARMTForCausalLM` (build it after moving the model to its device
    and dtype; it copies the decoder layers' weights into stacked tensors)."""

    def __init__(self, model: ARMTForCausalLM, group_size: int | Literal["auto"] | None = "auto") -> None:
        """group_size: at most this many cells per grouped computation (memory read, layers, memory write). None:
        every cell of the diagonal at once, the point of the engine on a GPU. On a CPU a group of many cells loses
        cache locality against one cell at a time, so group_size=1 is faster there. "auto" (default): 1 if the
        model is on the CPU, else None."""
        if not isinstance(model, ARMTForCausalLM):
            raise TypeError(f"DiagonalARMT runs an ARMTForCausalLM, got {type(model).__name__}")
        if group_size == "auto":
            group_size = 1 if model.memory.device.type == "cpu" else None
        elif group_size is not None and (not isinstance(group_size, int) or group_size < 1):
            raise InputError(f"group_size must be an int >= 1, None or 'auto', got {group_size!r}")
        self.group_size = group_size
        self.model = model
        self.adapter = model.adapter
        self.layers = StackedLayers(model.adapter)
        self.num_layers = model.adapter.num_layers

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        memory_state: State | None = None,
        logits: Logits = "all",
    ) -> RMTOutput:
        """Same inputs and result as `model.forward` (without labels): logits [B, N, V] ("all"), or [B, V] at each
        sample's last token ("last"), or None ("none": only the memory); memory_state after each sample's end."""
        if logits not in ("all", "last", "none"):
            raise InputError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
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

        state = model.initial_state(batch) if memory_state is None else memory_state
        A = torch.stack([a for a, _ in state[0]])  # [L, B, K, D] fp32
        z = torch.stack([z for _, z in state[0]])  # [L, B, K]
        written = state[1][None].repeat(layers, 1)  # [L, B]: per layer, since layers lag behind one another
        dtype = model.memory.dtype
        wave = torch.zeros(layers + 1, batch, width, model.memory.shape[1], dtype=dtype, device=device)
        rope = adapter.rotary_table(wave, positions)
        w_q, w_k, w_v, w_b = model.w_q, model.w_k, model.w_v, model.w_b

        pieces: list[tuple[None, int, torch.Tensor]] = []
        last_hidden = wave.new_zeros(batch, wave.shape[-1])  # [B, D] final hidden state at each sample's last token
        rows = torch.arange(batch, device=device)
        for step in range(segments + layers - 1):
            if step < segments:  # segment `step` enters layer 0
                x, _ = layout_segment(
                    adapter.embed(ids[:, step * seg : (step + 1) * seg]), model.memory, seg_lengths[step]
                )
                wave[0] = adapter.add_positions(x, positions)
            lo, hi = layer_range(step, segments, layers)
            size = self.group_size or hi - lo
            # The step's cells in groups of at most `size` layers, each group read -> layers -> write on its own
            # (on a CPU one cell at a time keeps a cell's activations in cache, as the sequential loop does). The
            # highest group goes first: a group writes its outputs into the rows the groups above it read.
            for top in range(hi, lo, -size):
                bottom = max(top - size, lo)
                cells = slice(bottom, top)
                lengths = seg_lengths[step - top + 1 : step - bottom + 1].flip(0)  # [G, B]: layer l on segment step-l
                first = ~written[cells]
                h = associative_read(wave[cells], A[cells], z[cells], w_q[cells], first)  # [G, B, W, D]
                h = self.layers.forward(h, bottom, top, rope)[0]
                index = (lengths[..., None] + slots)[..., None].expand(-1, -1, -1, h.shape[-1])  # [G, B, M, D]
                new_A, new_z = associative_write(
                    h.gather(2, index), A[cells], z[cells], w_k[cells], w_v[cells], w_b[cells], first
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
                    pieces.append((None, s * seg, adapter.head(wave[layers][:, : widths[s]])))
                elif logits == "last":
                    ends = plan.num_segments - 1 == s  # [B] samples whose last token is in segment s
                    at_end = wave[layers][rows, (seg_lengths[s] - 1).clamp(min=0)]  # [B, D]
                    last_hidden = torch.where(ends[:, None], at_end, last_hidden)

        final_state = (tuple((A[layer], z[layer]) for layer in range(layers)), written[-1])
        out = None
        if logits == "all":
            out = assemble_logits(plan, pieces, batch, length)
        elif logits == "last":
            out = adapter.head(last_hidden)
        return RMTOutput(logits=out, memory_state=final_state)

    __call__ = forward

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, max_new_tokens: int, memory_state: State | None = None
    ) -> GenerateOutput:
        """Greedy decoding after input_ids [B, P] (no padding): the prompt's complete segments through the diagonal
        pass, then token by token with a key/value cache of the open segment. Equals `model.generate`."""
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        model, adapter = self.model, self.adapter
        seg, mem = model.config.segment_size, model.config.num_memory_tokens
        batch, length = input_ids.shape
        closed = closed_length(length, seg)
        if closed:
            state = self.forward(input_ids[:, :closed], memory_state=memory_state, logits="none").memory_state
        else:
            state = model.initial_state(batch) if memory_state is None else memory_state
        layer_states, written = state
        positions = torch.arange(seg + mem, device=input_ids.device)
        rope = adapter.rotary_table(model.memory, positions)
        memory = model.memory.expand(batch, -1, -1)  # [B, M, D]

        current = input_ids[:, closed:]  # the open segment: 1..T tokens
        filled = current.shape[1]
        hidden, cache, _ = self._chunk(adapter.embed(current), 0, rope, layer_states, written, None, False)
        tokens, scores = [input_ids], []
        for i in range(max_new_tokens):
            logits = adapter.head(hidden[:, -1])  # [B, V]
            scores.append(logits)
            next_token = logits.argmax(dim=-1, keepdim=True)  # [B, 1]
            tokens.append(next_token)
            if i == max_new_tokens - 1:
                break
            if filled == seg:  # the open segment is complete: its memory tokens write, a new segment opens
                _, _, layer_states = self._chunk(memory, seg, rope, layer_states, written, cache, True)
                written = torch.ones_like(written)
                cache, filled = None, 0
            hidden, cache, _ = self._chunk(adapter.embed(next_token), filled, rope, layer_states, written, cache, False)
            filled += 1
        return GenerateOutput(torch.cat(tokens, dim=1), torch.stack(scores, dim=1))

    def _chunk(
        self,
        x: torch.Tensor,
        start: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        layer_states: tuple,
        written: torch.Tensor,
        cache: list | None,
        write: bool,
    ) -> tuple[torch.Tensor, list, tuple]:
        """Embeddings x [B, c, D] at positions start.. of the open segment through every layer (one at a time), after
        the `cache`d earlier positions. With `write`, x are the memory tokens and their outputs write each layer's
        memory. Returns (last hidden [B, c, D], the extended cache, the layer states)."""
        model = self.model
        c = x.shape[1]
        positions = torch.arange(start, start + c, device=x.device)
        h = self.adapter.add_positions(x, positions)[None]  # [1, B, c, D]: a group of one layer
        chunk_rope = None if rope is None else (rope[0][start : start + c], rope[1][start : start + c])
        first = ~written[None]  # [1, B]
        new_cache, new_states = [], []
        for layer, (A, z) in enumerate(layer_states):
            cells = slice(layer, layer + 1)
            h = associative_read(h, A[None], z[None], model.w_q[cells], first)
            h, kv = self.layers.forward(h, layer, layer + 1, chunk_rope, None if cache is None else cache[layer])
            new_cache.append(kv)
            if write:
                A, z = associative_write(
                    h, A[None], z[None], model.w_k[cells], model.w_v[cells], model.w_b[cells], first
                )
                new_states.append((A[0], z[0]))
        return h[0], new_cache, tuple(new_states) if write else layer_states
