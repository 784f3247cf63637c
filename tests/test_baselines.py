"""Transformer-XL cache baselines of `RMTForCausalLM` (config.xl_cache_tokens): Tr-XL (no memory tokens) and MemTrXL
(memory tokens + cache). Oracles: a segment with its cache equals one long attention window over the same tokens;
the cache is detached; mem_len trims what a layer sees; padding invariance; streaming backward; save/load. The
original Transformer-XL's gradients (xl_cache_recompute) against one window whose first segment's layer inputs are
detached."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_decoder

from rmt import RecurrentMemoryModel, RMTConfig, RMTForCausalLM
from rmt.memory.state import State

FAMILIES = ["gpt2", "llama", "gpt_neox"]


def model_for(family: str = "llama", layers: int = 2, **config) -> RMTForCausalLM:
    torch.manual_seed(0)
    settings = {"num_memory_tokens": 0, "segment_size": 6, "xl_cache_tokens": 6, **config}
    return RMTForCausalLM(tiny_decoder(family, layers=layers), RMTConfig(**settings)).eval()


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def leaves(state: State) -> list[torch.Tensor]:
    return [state] if isinstance(state, torch.Tensor) else [t for s in state for t in leaves(s)]


# --- the cache equals one long attention window ------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_covering_the_input_equals_one_long_window(family):
    # 3 segments of 6 with a 12-token cache: every token sees every earlier token, at its own position.
    model = model_for(family, xl_cache_tokens=12)
    ids = random_ids(2, 17)
    torch.testing.assert_close(model(ids).logits, model.backbone(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cache_shorter_than_a_segment_sees_exactly_the_last_mem_len_tokens(family):
    # One layer: cached keys/values are functions of their own token only, so segment 2 with a 4-token cache must
    # equal the backbone on [last 4 tokens of segment 1 | segment 2] at their original positions.
    model = model_for(family, layers=1, xl_cache_tokens=4)
    ids = random_ids(2, 12)
    window = model.backbone(ids[:, 2:], position_ids=torch.arange(2, 12).expand(2, -1)).logits
    torch.testing.assert_close(model(ids).logits[:, 6:], window[:, 4:], rtol=1e-5, atol=1e-5)


def second_segment_in_one_window(model: RMTForCausalLM, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """MemTrXL's logits for segment 2 of `ids` (two segments, the cache holding segment 1), computed in one pass over
    [memory 0 | segment 1 | memory 1 | segment 2] at `positions`, causal except that segment 2's side does not see
    memory 0 (it is not in the cache). Memory 1 is the memory segment 1 writes."""
    m, t = model.config.num_memory_tokens, model.config.segment_size
    memory_1 = model(ids[:, :t]).memory_state[0]  # [1, M, D]
    embed = model.backbone.get_input_embeddings()
    memory_0 = model.initial_state(1)[0]
    embeds = torch.cat([memory_0, embed(ids[:, :t]), memory_1, embed(ids[:, t:])], dim=1)
    n = embeds.shape[1]
    allowed = torch.ones(n, n).tril().bool()
    allowed[m + t :, :m] = False
    mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    hidden = model.backbone.base_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions[None]
    ).last_hidden_state
    return model.backbone.get_output_embeddings()(hidden[:, 2 * m + t :])


def test_memtrxl_segment_equals_a_long_window_without_the_old_read_slots():
    # MemTrXL, segment 2: cached tokens of segment 1 (computed with memory 0 in view), then read memory 1, tokens,
    # at positions 0.. running on.
    m, t = 3, 5
    model = model_for("llama", num_memory_tokens=m, segment_size=t, xl_cache_tokens=t)
    ids = random_ids(1, 2 * t, seed=3)
    expected = second_segment_in_one_window(model, ids, torch.arange(2 * (m + t)))
    torch.testing.assert_close(model(ids).logits[:, t:], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_with_padding", [False, True])
def test_memtrxl_with_contiguous_positions_numbers_the_tokens_on(batch_with_padding):
    # With xl_contiguous_positions: segment 2's read memory takes the positions of segment 1's last M
    # tokens and its tokens follow segment 1's last one, [memory 0 | segment 1 | memory 1 | segment 2] at
    # 0..m-1, m..m+t-1, t..t+m-1, m+t..m+2t-1. A right-padded row beside a longer one must give the same logits.
    m, t = 3, 5
    model = model_for("llama", num_memory_tokens=m, segment_size=t, xl_cache_tokens=t, xl_contiguous_positions=True)
    ids = random_ids(1, 2 * t, seed=3)
    positions = torch.cat([torch.arange(m), m + torch.arange(t), t + torch.arange(m), m + t + torch.arange(t)])
    expected = second_segment_in_one_window(model, ids, positions)
    if batch_with_padding:  # this sample, right-padded, beside one 3 tokens longer
        batch = torch.cat([torch.cat([ids, ids[:, :3]], dim=1), random_ids(1, 2 * t + 3, seed=4)])
        attention_mask = torch.ones_like(batch)
        attention_mask[0, 2 * t :] = 0
        logits = model(batch, attention_mask=attention_mask).logits[:1, t : 2 * t]
        # Positions advance by each row's own tokens, also in a segment the row only partly fills (3 of 5 here)
        attention_mask[0, 2 * t - 2 :] = 0
        assert model(batch, attention_mask=attention_mask).memory_state[4].tolist() == [2 * t - 2, 2 * t + 3]
    else:
        logits = model(ids).logits[:, t:]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    default = model_for("llama", num_memory_tokens=m, segment_size=t, xl_cache_tokens=t)
    assert (default(ids).logits[:, t:] - expected).abs().max() > 1e-3  # the default numbers them otherwise


# --- detached, bounded --------------------------------------------------------------------------------------


def segment_embedding_gradients(model: RMTForCausalLM, ids: torch.Tensor, labels: torch.Tensor) -> list[bool]:
    """For each segment step, whether the loss sends gradient into that segment's token embeddings."""
    captured = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured.append(output)

    handle = model.backbone.get_input_embeddings().register_forward_hook(keep)
    try:
        out = model(ids, labels=labels)
        out.loss.backward()
    finally:
        handle.remove()
    assert not any(leaf.requires_grad for leaf in leaves(out.memory_state)[1:])  # K, V, mask, position
    return [t.grad is not None and bool(t.grad.abs().sum() > 0) for t in captured]


@pytest.mark.parametrize("memory_tokens", [0, 2])
def test_no_gradient_flows_into_earlier_segments_through_the_cache(memory_tokens):
    model = model_for("gpt2", num_memory_tokens=memory_tokens).train()
    ids = random_ids(2, 12)
    labels = torch.full_like(ids, -100)
    labels[:, 8:] = ids[:, 8:]  # loss in segment 2 only
    reached = segment_embedding_gradients(model, ids, labels)
    # Through the cache alone nothing reaches segment 1; with memory tokens BPTT reaches it through the memory.
    assert reached == [memory_tokens > 0, True]


def test_influence_reaches_back_layers_times_mem_len():
    # Tr-XL's receptive field: layer l of a cached token already saw the cache before it, so with mem_len = T and
    # 2 layers a change in segment 1 reaches segment 3 but not segment 4; without the cache it reaches neither.
    ids = random_ids(1, 24)
    changed = ids.clone()
    changed[0, :6] = (changed[0, :6] + 1) % VOCAB
    for cache, reach in ((6, [True, True, False]), (0, [False, False, False])):
        model = model_for("llama", xl_cache_tokens=cache)
        difference = (model(ids).logits - model(changed).logits).abs()
        assert [bool(difference[0, s * 6 : (s + 1) * 6].max() > 1e-6) for s in (1, 2, 3)] == reach


def test_a_token_older_than_mem_len_no_longer_influences_the_output():
    model = model_for("llama", layers=1, xl_cache_tokens=4)
    ids = random_ids(1, 12)
    for position, influences in ((1, False), (2, True)):  # the cache keeps positions 2..5 of segment 1
        changed = ids.clone()
        changed[0, position] = (changed[0, position] + 1) % VOCAB
        difference = (model(ids).logits[:, 6:] - model(changed).logits[:, 6:]).abs().max()
        assert bool(difference > 1e-6) == influences


# --- the original Transformer-XL: keys/values recomputed from cached layer inputs (xl_cache_recompute) --------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("memory_tokens", [0, 3])
def test_recomputed_cache_gives_the_same_forward_pass(family, memory_tokens):
    """Same weights, same outputs: the recomputed keys/values equal the stored ones, padding and memory slots
    included (a wrong cached position would change the rotary keys and the logits), and so does generation. Equal up
    to fp32 rounding, not bit for bit: the recomputed keys/values come from products over other rows, which some
    CPUs' kernels round otherwise (with AVX2 up to 6e-8 here; bit-equal with AVX-512)."""
    stored = model_for(family, num_memory_tokens=memory_tokens, xl_cache_tokens=8)
    recomputed = model_for(family, num_memory_tokens=memory_tokens, xl_cache_tokens=8, xl_cache_recompute=True)
    recomputed.load_state_dict(stored.state_dict())
    ids = random_ids(3, 23, seed=2)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    mask[2, :10] = 0
    expected, out = stored(ids, attention_mask=mask), recomputed(ids, attention_mask=mask)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-6)
    for a, b in zip(leaves(out.memory_state)[:5], leaves(expected.memory_state), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    prompt = random_ids(2, 15, seed=3)
    assert torch.equal(recomputed.generate(prompt, max_new_tokens=5), stored.generate(prompt, max_new_tokens=5))


def one_window_with_detached_cache(backbone, ids: torch.Tensor, segment: int) -> torch.Tensor:
    """The original Transformer-XL's computation of two segments with a one-segment cache, from the backbone alone:
    segment 1 on its own, then one window over both segments in which every layer's input at segment 1's positions
    is detached (SG(h) in the Transformer-XL paper). Logits [B, 2 * segment, V]."""

    def detach_first_segment(module, args, kwargs):
        if args:
            hidden = args[0]
            return (torch.cat([hidden[:, :segment].detach(), hidden[:, segment:]], dim=1), *args[1:]), kwargs
        hidden = kwargs["hidden_states"]
        kwargs["hidden_states"] = torch.cat([hidden[:, :segment].detach(), hidden[:, segment:]], dim=1)
        return args, kwargs

    first = backbone(ids[:, :segment]).logits
    layers = backbone.base_model.h if hasattr(backbone.base_model, "h") else backbone.base_model.layers
    handles = [layer.register_forward_pre_hook(detach_first_segment, with_kwargs=True) for layer in layers]
    try:
        second = backbone(ids).logits[:, segment:]
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat([first, second], dim=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_recomputed_cache_has_the_original_transformer_xl_gradients(family):
    """Gradients of every weight equal the reference's (an independent computation through HF's own one-window
    forward); the default cache of detached keys/values gives other ones (no gradient to the key/value
    projections from the cached positions). The two sum in different orders: with AVX2 kernels an entry near zero
    differs by 1.4e-6, so the absolute tolerance is 1e-5 (the detached cache's differences are far larger)."""
    ids = random_ids(2, 12, seed=5)
    weights = torch.randn(2, 12, VOCAB, generator=torch.Generator().manual_seed(6))

    def gradients(logits_of, model) -> dict[str, torch.Tensor]:
        model.zero_grad()
        (logits_of(model) * weights).sum().backward()
        return {n.removeprefix("backbone."): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    recomputed = model_for(family, xl_cache_recompute=True)
    reference = gradients(lambda m: one_window_with_detached_cache(m.backbone, ids, 6), recomputed)
    got = gradients(lambda m: m(ids).logits, recomputed)
    assert got.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], rtol=1e-4, atol=1e-5)
    stored = gradients(lambda m: m(ids).logits, model_for(family))
    differing = [n for n in reference if not torch.allclose(stored[n], reference[n], rtol=1e-4, atol=1e-5)]
    # Only what computes a layer's keys/values from its input: the input norm and the key/value projections.
    key_value_parts = ("ln_1", "c_attn", "input_layernorm", "k_proj", "v_proj", "query_key_value")
    assert differing and all(any(part in n for part in key_value_parts) for n in differing)


def test_recompute_needs_the_cache():
    with pytest.raises(ValueError, match="xl_cache_recompute needs a Transformer-XL cache"):
        RMTConfig(xl_cache_recompute=True)


# --- the shared loop still holds --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("memory_tokens", [0, 3])
def test_padded_sample_equals_sample_alone(family, memory_tokens):
    model = model_for(family, num_memory_tokens=memory_tokens, xl_cache_tokens=8)
    ids = random_ids(3, 23, seed=2)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # right padding, 3 segments instead of 4
    mask[2, :10] = 0  # left padding, a short last segment
    out = model(ids, attention_mask=mask)
    for row in range(3):
        keep = mask[row].bool()
        alone = model(ids[row : row + 1, keep])
        torch.testing.assert_close(out.logits[row, keep], alone.logits[0], rtol=1e-5, atol=1e-5)
        for batched, single in zip(leaves(out.memory_state), leaves(alone.memory_state), strict=True):
            torch.testing.assert_close(batched[row], single[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xl_cache_recompute", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
def test_streaming_backward_equals_reference_with_the_cache(recompute, xl_cache_recompute):
    model = model_for(
        "llama", num_memory_tokens=2, xl_cache_tokens=8, bptt_depth=1, xl_cache_recompute=xl_cache_recompute
    ).train()
    ids = random_ids(2, 22, seed=4)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.forward_backward(ids, attention_mask=mask, labels=labels, recompute=recompute)
    streamed = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert reference.keys() == streamed.keys()
    for name in reference:
        torch.testing.assert_close(streamed[name], reference[name], rtol=1e-4, atol=1e-6)


def test_memory_state_continues_across_calls():
    model = model_for("llama", num_memory_tokens=2, xl_cache_tokens=8)
    ids = random_ids(1, 18)
    whole = model(ids).logits
    first = model(ids[:, :12])
    second = model(ids[:, 12:], memory_state=first.memory_state)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], dim=1), whole, rtol=1e-5, atol=1e-5)


# --- config, positions, checkpoints ---------------------------------------------------------------------------


def test_config_validates_the_cache_size():
    with pytest.raises(ValueError, match="xl_cache_tokens must be >= 0"):
        RMTConfig(xl_cache_tokens=-1)
    with pytest.raises(ValueError, match="xl_cache_tokens > 0 needs mode='decoder'"):
        RMTConfig(mode="encoder", xl_cache_tokens=4)


def test_learned_positions_must_cover_the_input():
    model = model_for("gpt2")  # tiny GPT-2 embeds 256 positions; positions run on across segments
    model(random_ids(1, 256))
    with pytest.raises(ValueError, match="this input of 257 tokens needs 257 positions.*embeds at most 256"):
        model(random_ids(1, 257))
    model_for("llama")(random_ids(1, 300))  # rotary: no bound


@pytest.mark.parametrize(
    "settings",
    [
        {"num_memory_tokens": 4, "segment_size": 16, "xl_cache_tokens": 8},
        {"num_memory_tokens": 4, "segment_size": 16, "xl_cache_tokens": 8, "xl_contiguous_positions": True},
        {"num_memory_tokens": 3, "segment_size": 10, "xl_cache_tokens": 5, "read_memory_only": True},
        {"num_memory_tokens": 3, "segment_size": 10, "xl_cache_tokens": 5, "memory_positions": "shared"},
        {"num_memory_tokens": 0, "segment_size": 7, "xl_cache_tokens": 5},
    ],
)
def test_the_positions_an_input_needs_are_those_its_segments_use(settings, monkeypatch):
    """The refusal before the first segment names the positions the whole input needs (it named where the first
    segment that did not fit ended, and a backbone built that large failed again): they are the positions the
    segments then use, and an input needing exactly the table's size is read."""
    used = []
    check_positions = RMTForCausalLM.check_positions
    monkeypatch.setattr(
        RMTForCausalLM, "check_positions", lambda self, p: used.append(int(p.max())) or check_positions(self, p)
    )
    ids, mask = random_ids(3, 75), torch.ones(3, 75, dtype=torch.long)
    mask[1, :30], mask[2, : 75 - 16] = 0, 0  # left padding: rows of 75, 45 and 16 real tokens
    model = model_for("llama", **settings)  # rotary: no bound, so every segment runs
    plan = model.plan(ids, mask, None, require_targets=False)
    needed = model._positions_needed(plan.lengths, plan.num_segments)
    assert needed.shape == (3,)
    for row, length in enumerate((75, 45, 16)):
        used.clear()
        model(ids[row : row + 1, -length:])
        assert max(used) + 1 == int(needed[row]), (row, used)
    bounded = model_for("gpt2", **settings)
    bounded._position_limit = int(needed[0])
    bounded(ids[:1])
    bounded._position_limit = int(needed[0]) - 1
    with pytest.raises(ValueError, match=f"this input of 75 tokens needs {int(needed[0])} positions"):
        bounded(ids[:1])


def test_save_load_round_trip(tmp_path):
    model = model_for("llama", num_memory_tokens=2, xl_cache_tokens=5)
    ids = random_ids(2, 20)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = RecurrentMemoryModel.from_pretrained(tmp_path / "ckpt").eval()
    assert isinstance(loaded, RMTForCausalLM) and loaded.config.xl_cache_tokens == 5
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
