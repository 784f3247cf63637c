"""`OpenCache`: the keys/values of the open (not yet complete) segments of a batch, for a stream's token logits.

Samples fill their segments at different rates, so each sample's entries may have gaps; `valid` marks the real ones
and the attention mask built from it hides the rest. See rmt.memory.stream for how a stream uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class OpenCache:
    """Keys/values of the open segments of a batch, one [B, H, L, d] pair per layer, with the entries that are real
    (`valid` [B, L]). Samples fill their segments at different rates, so a sample's entries may have gaps (masked)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor  # [B, L] bool

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def append(self, keys: list[torch.Tensor], values: list[torch.Tensor], valid: torch.Tensor) -> None:
        """Add entries [B, H, n, d] per layer after the existing ones."""
        self.keys = [torch.cat([a, b], dim=2) for a, b in zip(self.keys, keys, strict=True)]
        self.values = [torch.cat([a, b], dim=2) for a, b in zip(self.values, values, strict=True)]
        self.valid = torch.cat([self.valid, valid], dim=1)

    def restart_rows(self, rows: torch.Tensor, prefix: OpenCache) -> None:
        """Drop the entries of `rows` and give them `prefix` (the start of their next open segment)."""
        self.valid = self.valid.clone()
        self.valid[rows] = False
        width = prefix.length
        if width:
            batch = self.valid.shape[0]
            keys, values = [], []
            for k, v in zip(prefix.keys, prefix.values, strict=True):
                new_k = k.new_zeros(batch, *k.shape[1:])
                new_v = v.new_zeros(batch, *v.shape[1:])
                new_k[rows], new_v[rows] = k, v
                keys.append(new_k)
                values.append(new_v)
            valid = self.valid.new_zeros(batch, width)
            valid[rows] = prefix.valid
            self.append(keys, values, valid)
        self.compact()

    def compact(self, pack: bool = False) -> None:
        """Drop the entries no sample uses any more, keeping each sample's own order (valid entries moved right).
        Without `pack` nothing moves unless a place can be dropped; with it, each sample's gaps go too (its entries
        end up side by side at the right), so that the cache has as few places as its fullest sample needs."""
        keep = int(self.valid.sum(dim=1).max()) if self.valid.numel() else 0
        if keep >= self.length and not (pack and bool((self.valid.to(torch.int8).diff(dim=1) < 0).any())):
            return  # nothing to drop, and (when packing) no valid entry before an invalid one
        index = torch.sort(self.valid.to(torch.int8), dim=1, stable=True).indices[:, self.length - keep :]  # [B, keep]
        self.valid = self.valid.gather(1, index)
        gather = index[:, None, :, None]
        self.keys = [k.gather(2, gather.expand(-1, k.shape[1], -1, k.shape[3])) for k in self.keys]
        self.values = [v.gather(2, gather.expand(-1, v.shape[1], -1, v.shape[3])) for v in self.values]

    def select(self, rows: torch.Tensor) -> OpenCache:
        return OpenCache([k[rows] for k in self.keys], [v[rows] for v in self.values], self.valid[rows])

    @staticmethod
    def stack(rows: list[OpenCache]) -> OpenCache:
        """One cache of the samples of `rows` (caches of one sample each, lengths may differ): each sample's entries
        packed to the right, invalid places before them."""
        for row in rows:
            row.compact(pack=True)
        length = max(row.length for row in rows)

        def padded(t: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = length - t.shape[dim]
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        layers = range(len(rows[0].keys))
        keys = [torch.cat([padded(row.keys[i], 2) for row in rows]) for i in layers]
        values = [torch.cat([padded(row.values[i], 2) for row in rows]) for i in layers]
        return OpenCache(keys, values, torch.cat([padded(row.valid, 1) for row in rows]))

    def as_hf_cache(self, config: object) -> DynamicCache:
        """The entries as a Hugging Face cache to pass to the backbone (which extends it)."""
        return DynamicCache(ddp_cache_data=list(zip(self.keys, self.values, strict=True)), config=config)

    def append_new(self, hf_cache: DynamicCache, valid: torch.Tensor) -> None:
        """Take the entries `hf_cache` gained beyond this cache's (one backbone call later); `valid` [B, n]."""
        length = self.length
        layers = hf_cache.layers
        self.append([la.keys[:, :, length:] for la in layers], [la.values[:, :, length:] for la in layers], valid)

    @staticmethod
    def empty(
        batch: int, layers: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> OpenCache:
        shape = (batch, heads, 0, head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        return OpenCache(keys, values, torch.zeros(batch, 0, dtype=torch.bool, device=device))
