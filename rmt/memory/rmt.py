"""RMT: memory tokens carried from segment to segment, around an unchanged Hugging Face backbone.

Decoder (causal LM), per segment:  inputs_embeds = [read memory (M) | segment tokens (T) | write slots (M)]
    The read slots hold the current memory; the write slots hold the same memory (RMT paper) or a learned
    write embedding. With the plain causal mask, tokens see the read memory and the write slots see everything.
    The new memory is the backbone's last hidden states at the write positions; logits come from token
    positions only.
Encoder (sequence classification), per segment:  [CLS] [memory (M)] [SEP] segment [SEP] [PAD...]
    Bidirectional; the new memory is the last hidden states at the memory positions; class logits from the
    backbone's own head on each sample's last segment.

Everything goes through `inputs_embeds`, `attention_mask` and `position_ids`: no forked modeling code.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from rmt.backbones import check_family, hidden_size, max_positions
from rmt.config import RMTConfig
from rmt.memory.recurrent import RecurrentMemoryModel, register_model


def _check_fits(backbone: nn.Module, config: RMTConfig, needed: int, layout: str) -> None:
    limit = max_positions(backbone)
    if limit is not None and needed > limit:
        raise ValueError(
            f"segment_size={config.segment_size} with num_memory_tokens={config.num_memory_tokens} needs "
            f"{needed} positions ({layout}) but the backbone embeds at most {limit}: lower segment_size to at most "
            f"{config.segment_size - (needed - limit)}"
        )


def _memory_parameter(backbone: nn.Module, rows: int) -> nn.Parameter:
    """A learned [rows, D] memory, scaled like the backbone's token embeddings."""
    embeddings = backbone.get_input_embeddings().weight
    std = float(embeddings.detach().float().std())
    return nn.Parameter(torch.randn(rows, embeddings.shape[1], dtype=embeddings.dtype) * std)


@register_model("decoder", "rmt")
class RMTForCausalLM(RecurrentMemoryModel):
    """RMT memory around any supported Hugging Face causal LM (GPT-2, Llama, Mistral, Qwen2, GPT-NeoX)."""

    token_logits = True

    def __init__(self, backbone: PreTrainedModel, config: RMTConfig) -> None:
        if config.mode != "decoder" or config.memory_kind != "rmt":
            raise ValueError(
                f"RMTForCausalLM needs mode='decoder' and memory_kind='rmt', got {config.mode!r}, "
                f"{config.memory_kind!r}"
            )
        check_family(backbone, "decoder")
        super().__init__(backbone, config)
        m = config.num_memory_tokens
        writes = 0 if config.read_memory_only else m
        needed = config.segment_size + m + (writes if config.memory_positions == "sequential" else 0)
        _check_fits(backbone, config, needed, "[read memory | segment | write memory]")
        self.memory = _memory_parameter(backbone, m) if m > 0 else None
        self.write_memory = (
            _memory_parameter(backbone, m) if m > 0 and config.write_init == "learned" and writes else None
        )

    def initial_state(self, batch_size: int) -> torch.Tensor:
        if self.memory is None:
            return torch.zeros(batch_size, 0, hidden_size(self.backbone), device=self.device)
        return self.memory.unsqueeze(0).expand(batch_size, -1, -1)  # [B, M, D]

    def step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        b, t = input_ids.shape
        m = config.num_memory_tokens
        writes = 0 if config.read_memory_only else m
        device = input_ids.device
        tokens = self.backbone.get_input_embeddings()(input_ids)  # [b, t, D]
        state = state.to(tokens.dtype)
        if writes:
            write = state if self.write_memory is None else self.write_memory.unsqueeze(0).expand(b, -1, -1)
            embeds = torch.cat([state, tokens, write.to(tokens.dtype)], dim=1)  # [b, M + t + M, D]
        else:
            embeds = torch.cat([state, tokens], dim=1)
        ones = attention_mask.new_ones(b, m)
        mask = torch.cat([ones, attention_mask, ones[:, :writes]], dim=1)

        slots = torch.arange(m, device=device)
        token_positions = (m + torch.arange(t, device=device)).expand(b, t)
        if config.memory_positions == "sequential":
            # Write slots follow each sample's last real token, exactly as if the segment had no padding.
            write_positions = m + attention_mask.sum(dim=1, keepdim=True) + slots[:writes]
        else:
            write_positions = slots[:writes].expand(b, writes)
        positions = torch.cat([slots.expand(b, m), token_positions, write_positions], dim=1)

        hidden = self.backbone.base_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
        ).last_hidden_state  # [b, M + t + writes, D]
        logits = self.backbone.get_output_embeddings()(hidden[:, m : m + t])  # [b, t, V]
        new_state = hidden[:, m + t :] if writes else state
        return logits, new_state


@register_model("encoder", "rmt")
class RMTForSequenceClassification(RecurrentMemoryModel):
    """RMT memory around a Hugging Face encoder for sequence classification (BERT, RoBERTa)."""

    token_logits = False

    def __init__(self, backbone: PreTrainedModel, config: RMTConfig) -> None:
        if config.mode != "encoder" or config.memory_kind != "rmt":
            raise ValueError(
                f"RMTForSequenceClassification needs mode='encoder' and memory_kind='rmt', got "
                f"{config.mode!r}, {config.memory_kind!r}"
            )
        kind = check_family(backbone, "encoder")
        super().__init__(backbone, config)
        m = config.num_memory_tokens
        self.prefix_length = 1 + m + 1 if m > 0 else 1  # [CLS] [memory] [SEP]  or just [CLS]
        _check_fits(backbone, config, self.prefix_length + config.segment_size + 1, "[CLS][memory][SEP] segment [SEP]")
        hf = backbone.config
        family_cls, family_sep = (hf.bos_token_id, hf.eos_token_id) if kind == "roberta" else (101, 102)
        self.cls_token_id = _first_set(config.cls_token_id, getattr(hf, "cls_token_id", None), family_cls)
        self.sep_token_id = _first_set(config.sep_token_id, getattr(hf, "sep_token_id", None), family_sep)
        self.pad_token_id = hf.pad_token_id if hf.pad_token_id is not None else 0
        self.memory = _memory_parameter(backbone, m) if m > 0 else None

    def initial_state(self, batch_size: int) -> torch.Tensor:
        if self.memory is None:
            return torch.zeros(batch_size, 0, hidden_size(self.backbone), device=self.device)
        return self.memory.unsqueeze(0).expand(batch_size, -1, -1)  # [B, M, D]

    def step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = input_ids.shape
        m = self.config.num_memory_tokens
        p = self.prefix_length
        device = input_ids.device
        lengths = attention_mask.sum(dim=1)  # [b]
        ids = torch.full((b, p + t + 1), self.pad_token_id, dtype=input_ids.dtype, device=device)
        ids[:, 0] = self.cls_token_id
        if m > 0:
            ids[:, p - 1] = self.sep_token_id
        ids[:, p : p + t] = input_ids.masked_fill(attention_mask == 0, self.pad_token_id)
        ids.scatter_(1, (p + lengths)[:, None], self.sep_token_id)  # [SEP] right after each row's last token
        mask = (torch.arange(p + t + 1, device=device)[None, :] <= (p + lengths)[:, None]).long()

        embeds = self.backbone.get_input_embeddings()(ids)  # [b, p + t + 1, D]
        if m > 0:
            embeds = torch.cat([embeds[:, :1], state.to(embeds.dtype), embeds[:, 1 + m :]], dim=1)
        out = self.backbone(
            inputs_embeds=embeds,
            attention_mask=mask,
            token_type_ids=torch.zeros_like(ids),
            output_hidden_states=True,
        )
        new_state = out.hidden_states[-1][:, 1 : 1 + m]  # [b, M, D]
        return out.logits, new_state


def _first_set(*values: int | None) -> int:
    return next(v for v in values if v is not None)
