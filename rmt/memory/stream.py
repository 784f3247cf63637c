"""Reading an input in chunks of any size, at constant memory: `model.stream()`.

    stream = model.stream(batch_size=1)
    for chunk in chunks:                                   # any sizes: 1 token, a segment and a half, 100k tokens
        stream.feed(chunk)                                 # logits="none": nothing is kept but the memory
    last = stream.feed(question_ids, logits="last")        # [B, V] at each sample's last token
    stream.memory_state                                    # what forward(everything fed).memory_state would be

A stream gives what one pass of `forward` over everything fed so far gives: the memory bit for bit when the batch's
rows are fed equal lengths (otherwise up to float rounding: forward runs a short row's last segment at the batch's
width), the logits of the open segment's tokens up to float rounding (they come from a key/value cache, another
order of sums; tests: random chunkings against the one-pass logits and final memory, RMT and ARMT, decoder and
encoder). How:
- A sample is cut into segments from its own first token, as in `forward`. Tokens of a segment that is not complete
  yet wait in a buffer; when the buffer holds `segment_size` tokens the segment is run by the model's own `step`, the
  same computation `forward` makes, and its memory becomes the state. A chunk that starts at a segment boundary and
  holds whole segments goes straight through `step`.
- Logits of tokens of the open segment (decoders) come from a key/value cache of that segment (`OpenCache`): token t
  of a segment sees the memory read and the tokens before it, never the memory write that follows, so its logits are
  final as soon as it is fed. One new token costs one position through the layers; closing the segment re-runs it
  once with `step`, so the memory is the one `forward` writes (bit for bit as above). The cache is only built when
  logits are asked for: a stream fed with logits="none" costs what `forward` costs.
- Samples of a batch may be fed different numbers of tokens (attention_mask): each has its own buffer and fill level,
  and a segment closes for the samples that completed it.
Memory held: the state, one segment of tokens per sample, the open segment's keys/values (decoders, when logits are
asked for) and the logits returned; nothing grows with the input.

Bad input is refused before anything is read, and the stream stays usable. A feed that stops half-way (an error
inside the model, Ctrl-C) has put part of its chunk into the memory: the stream then refuses every further use.

Encoders (classification) keep the buffer only; `classify()` gives the class logits one pass would give (the last
segment's: the buffered partial segment if there is one, else the last completed one).
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Literal

import torch

from rmt.errors import InputError
from rmt.memory.open_cache import OpenCache
from rmt.memory.segments import validate_attention_mask, validate_input_ids
from rmt.memory.state import State, merge_rows, select_rows

if TYPE_CHECKING:
    from rmt.memory.interface import MemoryModel

StreamLogits = Literal["none", "last", "all"]


class MemoryStream:
    """A memory model reading inputs chunk by chunk (see the module docstring). Build it with `model.stream()`."""

    def __init__(self, model: MemoryModel, batch_size: int = 1, memory_state: State | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):  # 1.5 failed deep in torch
            raise InputError(f"batch_size must be a whole number of samples, got {batch_size!r}")
        batch_size = int(batch_size)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        device = model.device
        self.state = model.start_state(batch_size, memory_state)
        seg = model.config.segment_size
        self.buffer = torch.zeros(batch_size, seg, dtype=torch.long, device=device)
        self.fill = torch.zeros(batch_size, dtype=torch.long, device=device)  # tokens in each open segment
        self.cached = torch.zeros(batch_size, dtype=torch.long, device=device)  # of those, in the key/value cache
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=device)  # tokens fed so far
        self.cache: OpenCache | None = None  # decoders, built when logits are first asked for
        self.stale = torch.ones(batch_size, dtype=torch.bool, device=device)  # cache rows that need a new prefix
        self.last_hidden: torch.Tensor | None = None  # [B, D] at each sample's last token (decoders)
        self.last_class_logits: torch.Tensor | None = None  # [B, C] of each sample's last completed segment
        # Encoders: each sample's first and latest token fed, for the check of forward's that classify() repeats.
        self.first_token = torch.full((batch_size,), -1, dtype=torch.long, device=device)
        self.latest_token = torch.full((batch_size,), -1, dtype=torch.long, device=device)
        self._extended_from = torch.zeros_like(self.fill)  # buffer position where the last cache extension began
        self._cache_places: int | None = None  # places a sliding-window backbone's key/value cache keeps
        self._failure: str | None = None  # the error that stopped a feed half-way (the state is then incomplete)
        self._rows = torch.arange(batch_size, device=device)

    @torch.no_grad()
    def feed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, logits: StreamLogits = "none"
    ) -> torch.Tensor | None:
        """Append input_ids [B, n] (attention_mask 0 = nothing fed at that place) to each sample's input; n may be 0.

        logits (decoders): "none"; "last" = [B, V] at each sample's last token fed so far; "all" = [B, n, V] at the
        chunk's positions (zeros where nothing was fed)."""
        model = self.model
        self._check_usable()
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[1] == 0:
            # An empty chunk (e.g. the end of a split document) feeds nothing; the checks below need a token.
            if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
                raise InputError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}"
                )
            input_ids = input_ids.new_zeros(input_ids.shape[0], 1)
            attention_mask = torch.zeros_like(input_ids)
            empty_chunk = True
        else:
            empty_chunk = False
        validate_input_ids(input_ids, model.vocab_size)
        if input_ids.shape[0] != self.batch_size:
            raise InputError(f"this stream reads {self.batch_size} samples, got a chunk of {input_ids.shape[0]}")
        if logits not in ("none", "last", "all"):
            raise InputError(f"logits must be 'none', 'last' or 'all', got {logits!r}")
        if logits != "none" and not model.token_logits:
            raise InputError("an encoder stream has no token logits: use classify()")
        mask = (
            validate_attention_mask(attention_mask, input_ids, allow_empty=True) if attention_mask is not None else None
        )
        input_ids = input_ids.to(model.device, torch.long)  # int32 ids too, as forward takes them
        mask = torch.ones_like(input_ids) if mask is None else mask.to(model.device)
        # Each sample's fed tokens to the front, in order (`order` maps them back for logits="all").
        order = torch.sort((mask == 0).to(torch.int8), dim=1, stable=True).indices
        packed = input_ids.gather(1, order)
        counts = mask.sum(dim=1)
        if logits == "last" and bool((self.seen + counts == 0).any()):  # refused before the stream changes
            raise InputError("every sample needs at least one token before its logits")
        cursor = torch.zeros_like(counts)
        want = logits != "none"
        hidden_all = None
        if logits == "all":
            dtype = model.backbone.get_input_embeddings().weight.dtype
            hidden_all = torch.zeros(self.batch_size, input_ids.shape[1], self._hidden_size(), dtype=dtype)
            hidden_all = hidden_all.to(model.device)

        try:
            self._read(packed, counts, cursor, want, hidden_all)
        except BaseException as err:  # part of the chunk may be in the state, part not (Ctrl-C too)
            self._failure = f"{type(err).__name__}: {err}"
            raise
        if not model.token_logits:
            fed = counts > 0
            self.first_token = torch.where(fed & (self.seen == 0), packed[:, 0], self.first_token)
            last_fed = packed.gather(1, (counts - 1).clamp(min=0)[:, None])[:, 0]
            self.latest_token = torch.where(fed, last_fed, self.latest_token)
        self.seen += counts

        if logits == "none":
            return None
        if logits == "last":
            return self.last_logits()
        # hidden_all is in packed order (each sample's fed tokens first): put it back in the chunk's order while it is
        # [B, n, D], then build the logits once and zero the padding's in place, so that one [B, n, V] tensor is made
        # (at SmolLM2's 49k vocabulary a 1024-token chunk's logits are 200 MB each).
        hidden = torch.zeros_like(hidden_all).scatter(1, order[..., None].expand_as(hidden_all), hidden_all)
        out = model.head(hidden).masked_fill_((mask == 0)[..., None], 0)
        return out[:, :0] if empty_chunk else out

    def _read(
        self,
        packed: torch.Tensor,
        counts: torch.Tensor,
        cursor: torch.Tensor,
        want: bool,
        hidden_all: torch.Tensor | None,
    ) -> None:
        """Take each sample's `counts` tokens from `packed` (its fed tokens first) into its segments: complete
        segments go through `step`, the rest into the buffer (and the open-segment cache when logits are wanted)."""
        seg = self.model.config.segment_size
        while bool((cursor < counts).any()):
            remaining = counts - cursor
            direct = (self.fill == 0) & (remaining >= seg)
            if bool(direct.any()):  # whole segments from a boundary: straight through step
                rows = self._rows[direct]
                ids = packed[rows[:, None], cursor[rows, None] + torch.arange(seg, device=packed.device)]
                hidden = self._close(rows, ids)
                self._emit(rows, cursor[rows], torch.full_like(rows, seg), hidden, hidden_all)
                cursor[rows] += seg
                continue
            rows = self._rows[remaining > 0]
            take = torch.minimum(remaining[rows], seg - self.fill[rows])  # [r] tokens into the open segments
            width = int(take.max())
            offsets = torch.arange(width, device=packed.device)
            valid = offsets[None, :] < take[:, None]  # [r, width]
            ids = packed[rows[:, None], (cursor[rows, None] + offsets).clamp(max=packed.shape[1] - 1)]
            ids = ids.masked_fill(~valid, 0)
            starts = self.fill[rows]
            row_index = rows[:, None].expand_as(valid)
            self.buffer[row_index[valid], (starts[:, None] + offsets).expand_as(valid)[valid]] = ids[valid]
            self.fill[rows] += take
            if want:
                hidden = self._extend_cache()  # [B, W, D] for the buffered tokens not yet cached
                self._emit_buffered(rows, cursor[rows], take, starts, hidden, hidden_all)
            cursor[rows] += take
            full = rows[self.fill[rows] == seg]
            if full.numel():
                hidden = self._close(full, self.buffer[full])
                self._remember_last(full, hidden[:, -1])

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise InputError(
                f"this stream stopped half-way through a chunk ({self._failure}): its memory holds part of that chunk; "
                "start a new stream"
            )

    @torch.no_grad()
    def last_logits(self) -> torch.Tensor:
        """Decoders: logits [B, V] at each sample's last token fed so far (built from the buffer if those tokens were
        fed with logits="none")."""
        self._check_usable()
        if not self.model.token_logits:
            raise InputError("an encoder stream has no token logits: use classify()")
        if bool((self.seen == 0).any()):
            raise InputError("every sample needs at least one token before its logits")
        if bool((self.fill > self.cached).any()):
            self._extend_cache()  # remembers the last token of every sample it brings up to date
        return self.model.head(self.last_hidden)

    @property
    @torch.no_grad()
    def memory_state(self) -> State:
        """The memory one `forward` over everything fed would return: after each sample's last segment, the open
        (partial) one included. The open segments are written on a copy; the stream itself is unchanged."""
        self._check_usable()
        open_rows = self._rows[self.fill > 0]
        if not open_rows.numel():
            return self.state
        state = self.state
        for width in self.fill[open_rows].unique().tolist():  # one step per distinct fill level
            rows = open_rows[self.fill[open_rows] == width]
            ids = self.buffer[rows, :width]
            _, new_state = self.model.step(ids, torch.ones_like(ids), select_rows(state, rows))
            state = merge_rows(state, rows, new_state)
        return state

    @torch.no_grad()
    def classify(self) -> torch.Tensor:
        """Encoders: class logits [B, C] of each sample's last segment, as `forward` gives them."""
        self._check_usable()
        if self.model.token_logits:
            raise InputError("classify() is for encoders; a decoder stream returns logits from feed()")
        if bool((self.seen == 0).any()):
            raise InputError("every sample needs at least one token before classify()")
        self.model.refuse_special_tokens_around(self.first_token, self.latest_token, self.seen)
        out = self.last_class_logits
        for width in self.fill[self.fill > 0].unique().tolist():
            rows = self._rows[self.fill == width]
            ids = self.buffer[rows, :width]
            logits, _ = self.model.step(ids, torch.ones_like(ids), select_rows(self.state, rows))
            if out is None:
                out = logits.new_zeros(self.batch_size, logits.shape[-1])
            out = out.index_copy(0, rows, logits)
        return out

    # --- internals -------------------------------------------------------------------------------------------
    def _hidden_size(self) -> int:
        return self.model.backbone.get_input_embeddings().weight.shape[1]

    def _close(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Run complete segments ids [r, T] of `rows` through `step`; their memory becomes the state."""
        output, new_state = self.model.step(ids, torch.ones_like(ids), select_rows(self.state, rows))
        self.state = merge_rows(self.state, rows, new_state)
        self.fill[rows] = 0
        self.cached[rows] = 0
        self.stale[rows] = True
        if not self.model.token_logits:
            if self.last_class_logits is None:
                self.last_class_logits = output.new_zeros(self.batch_size, output.shape[-1])
            self.last_class_logits = self.last_class_logits.index_copy(0, rows, output)
        return output

    def _emit(
        self,
        rows: torch.Tensor,
        cursor: torch.Tensor,
        count: torch.Tensor,
        hidden: torch.Tensor,
        hidden_all: torch.Tensor | None,
    ) -> None:
        """Record hidden [r, w, D] of `count` tokens fed at chunk offsets cursor.. of `rows`."""
        if not self.model.token_logits:
            return
        self._remember_last(rows, hidden[torch.arange(rows.numel(), device=rows.device), count - 1])
        if hidden_all is not None:
            offsets = torch.arange(hidden.shape[1], device=rows.device)
            valid = offsets[None, :] < count[:, None]  # [r, w]
            row_index = rows[:, None].expand_as(valid)
            hidden_all[row_index[valid], (cursor[:, None] + offsets)[valid]] = hidden[valid].to(hidden_all.dtype)

    def _remember_last(self, rows: torch.Tensor, hidden: torch.Tensor) -> None:
        """hidden [r, D] at the last token fed to `rows` (decoders: what last_logits() turns into logits)."""
        if not self.model.token_logits:
            return
        if self.last_hidden is None:
            self.last_hidden = hidden.new_zeros(self.batch_size, hidden.shape[-1])
        self.last_hidden = self.last_hidden.index_copy(0, rows, hidden.to(self.last_hidden.dtype))

    def _emit_buffered(
        self,
        rows: torch.Tensor,
        cursor: torch.Tensor,
        take: torch.Tensor,
        starts: torch.Tensor,
        hidden: torch.Tensor,
        hidden_all: torch.Tensor | None,
    ) -> None:
        """hidden [B, W, D] holds the cache extension of every sample's buffer from its `extended` position; pick the
        `take` new tokens of `rows`, which sit at buffer positions starts.. (the end of what was just cached)."""
        first_new = starts - self._extended_from[rows]  # offset of the first new token in the extension
        offsets = torch.arange(int(take.max()), device=rows.device)
        index = (first_new[:, None] + offsets).clamp(max=hidden.shape[1] - 1)
        picked = hidden[rows[:, None], index]  # [r, width, D]
        self._emit(rows, cursor, take, picked, hidden_all)

    def _extend_cache(self) -> torch.Tensor:
        """Bring the open-segment cache up to date with every buffered token; returns hidden states [B, W, D] of the
        tokens added, sample b's from buffer position `_extended_from[b]`."""
        model = self.model
        if self.cache is None or bool(self.stale.any()):
            restart = self._rows if self.cache is None else self._rows[self.stale]
            prefix = model.open_cache(select_rows(self.state, restart))
            if self.cache is None:
                self._cache_places = _check_full_attention(model, prefix.length + model.config.segment_size)
                self.cache = prefix
            else:
                self.cache.restart_rows(restart, prefix)
            self.stale[restart] = False
        start, stop = self.cached.clone(), self.fill.clone()
        width = int((stop - start).max())
        self._extended_from = start
        if width == 0:
            return torch.zeros(self.batch_size, 0, self._hidden_size(), device=model.device)
        offsets = torch.arange(width, device=start.device)
        positions = start[:, None] + offsets  # [B, W] positions within each open segment
        valid = positions < stop[:, None]
        ids = self.buffer.gather(1, positions.clamp(max=self.buffer.shape[1] - 1)).masked_fill(~valid, 0)
        # The filler places after a sample's last token would run past its segment (up to 2 x segment_size - 2),
        # beyond a learned position table; they are never attended to, so any position within the segment does.
        in_segment = positions.clamp(max=model.config.segment_size - 1)
        places = self._cache_places
        if places is not None and self.cache.length + width > places:
            # A sliding window's cache keeps `places`: samples fed at different rates leave gaps in each other's
            # places. Packed, the cache may fit; if not, each sample is extended alone (one sample's open segment
            # always fits, as _check_full_attention made sure).
            self.cache.compact(pack=True)
        if places is not None and self.cache.length + width > places:
            hidden = self._extend_each_sample(ids, valid, in_segment, stop - start)
        else:
            hidden = model.extend_cache(ids, valid, in_segment, self.state, self.cache)
        self.cached = stop
        # Every extended sample's last token is now its last token fed, including samples that got no tokens in the
        # chunk being fed (buffered earlier with logits="none"): without this, their last logits would be stale.
        extended = self._rows[stop > start]
        self._remember_last(extended, hidden[extended, stop[extended] - start[extended] - 1])
        return hidden

    def _extend_each_sample(
        self, ids: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, counts: torch.Tensor
    ) -> torch.Tensor:
        """`model.extend_cache` one sample at a time (`counts` [B]: its new tokens), each with its own entries only;
        returns the hidden states [B, W, D] the batched call would."""
        model = self.model
        hidden = None
        caches = []
        for row in range(self.batch_size):
            rows = self._rows[row : row + 1]
            cache = self.cache.select(rows)
            count = int(counts[row])
            if count:
                cache.compact(pack=True)
                state = select_rows(self.state, rows)
                out = model.extend_cache(ids[rows, :count], valid[rows, :count], positions[rows, :count], state, cache)
                if hidden is None:
                    hidden = out.new_zeros(self.batch_size, ids.shape[1], out.shape[-1])
                hidden[row, :count] = out[0]
            caches.append(cache)
        self.cache = OpenCache.stack(caches)
        return hidden


def _check_full_attention(model: MemoryModel, window: int) -> int | None:
    """Refuse a backbone whose key/value cache keeps fewer than `window` positions (sliding-window attention, as
    Mistral's or Qwen2's may have: such a cache keeps one place fewer than the window): an open segment's tokens and
    what precedes them must all stay in the cache that gives a stream's logits and generate's tokens. One pass over
    the input (`forward`) does not need it. Returns the places the cache keeps (None: all)."""
    from rmt.backbones import sliding_window

    sliding = sliding_window(model.backbone)
    if sliding is None:
        return None
    places = sliding - 1
    if places < window:
        longest = model.config.segment_size - (window - places)  # the segment size that would fit
        advice = f"use segments of at most {longest} tokens, or " if longest >= 1 else "use "
        raise InputError(
            f"token logits and generation read an open segment of up to {window} positions through the key/value "
            f"cache, but this backbone's sliding window ({sliding}) keeps {places}: {advice}a backbone without one"
        )
    return places
