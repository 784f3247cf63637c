"""`Batch`: what every data source hands the trainer and the evaluation, in Hugging Face's names."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """input_ids [B, N] and attention_mask [B, N] (1 = real token; padding on either side); labels: causal LMs
    [B, N] token ids on the tokens to learn and -100 elsewhere, unshifted (the model shifts them); classifiers [B]
    class indices."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on `device`."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return type(self)(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()})

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of a memory model's forward."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels}

    def rows(self, index: slice) -> Batch:
        """The samples `index` of this batch (e.g. one process's share)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return type(self)(**{k: v[index] if isinstance(v, torch.Tensor) else v for k, v in values.items()})
