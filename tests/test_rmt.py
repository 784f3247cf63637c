"""RMT wrapper oracles: identity with memory off, memory carries information, BPTT reach,
padding invariance, streaming backward == reference backward, loss aggregation values, and bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB, strengthen_memory, tiny_decoder, tiny_encoder
from torch.utils._pytree import tree_leaves

from rmt import RMTConfig, RMTForCausalLM, RMTForSequenceClassification
from rmt.build import random_backbone
from rmt.errors import InputError
from rmt.memory import ARMTForCausalLM, detach_state
from rmt.memory.state import tree_map


def decoder(family="gpt2", **config) -> RMTForCausalLM:
    torch.manual_seed(0)
    return RMTForCausalLM(tiny_decoder(family), RMTConfig(**{"num_memory_tokens": 4, "segment_size": 6, **config}))


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --- identity ---------------------------------------------------------------------------------------------


def test_memory_off_one_segment_is_the_backbone(decoder_family):
    backbone = tiny_decoder(decoder_family)
    model = RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=0, segment_size=20))
    ids = random_ids(2, 20)
    labels = ids.clone()
    out = model(ids, labels=labels)
    reference = backbone(ids, labels=labels)
    torch.testing.assert_close(out.logits, reference.logits, rtol=0, atol=1e-6)
    # 'tokens' aggregation is the HF causal-LM loss.
    torch.testing.assert_close(out.loss, reference.loss, rtol=1e-6, atol=1e-6)


def test_encoder_memory_off_one_segment_is_the_backbone():
    backbone = tiny_encoder()
    model = RMTForSequenceClassification(backbone, RMTConfig(mode="encoder", num_memory_tokens=0, segment_size=10))
    ids = torch.randint(5, 100, (2, 10))
    full = torch.cat([torch.full((2, 1), 101), ids, torch.full((2, 1), 102)], dim=1)
    torch.testing.assert_close(model(ids).logits, backbone(full).logits, rtol=0, atol=1e-6)


def test_an_encoder_takes_what_a_bert_tokenizer_returns_without_special_tokens(tmp_path):
    """`model(**tokenizer(texts, ...))` failed on token_type_ids; with the tokenizer's default special tokens the
    model read [CLS][memory][SEP][CLS] ... [SEP][SEP] and answered otherwise, silently."""
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(60))]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    config = RMTConfig(mode="encoder", num_memory_tokens=2, segment_size=4, cls_token_id=2, sep_token_id=3)
    model = RMTForSequenceClassification(tiny_encoder(), config)
    texts = ["w1 w2 w3 w4 w5 w6", "w7 w8 w9"]
    plain = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    assert set(plain) == {"input_ids", "token_type_ids", "attention_mask"}
    expected = model(plain["input_ids"], plain["attention_mask"]).logits
    torch.testing.assert_close(model(**plain).logits, expected, rtol=0, atol=0)
    with pytest.raises(InputError, match=r"row 0 starts with the \[CLS\] id \(2\) .* add_special_tokens=False"):
        model(**tokenizer(texts, padding=True, return_tensors="pt"))
    model.forward_backward(**plain, labels=torch.tensor([0, 2]))  # the training path takes them too
    flat, column = model(**plain, labels=torch.tensor([0, 2])), model(**plain, labels=torch.tensor([[0], [2]]))
    torch.testing.assert_close(column.loss, flat.loss, rtol=0, atol=0)  # [batch, 1] labels, as Hugging Face takes
    pair = tokenizer(["w1 w2"], ["w3"], add_special_tokens=False, return_tensors="pt")
    with pytest.raises(InputError, match="token_type_ids marks a second text"):
        model(**pair)
    with pytest.raises(InputError, match="token_type_ids marks a second text"):
        model.forward_backward(**pair, labels=torch.tensor([1]))
    for request in ("none", "bogus", torch.zeros(2, 1, dtype=torch.long)):  # were ignored silently
        with pytest.raises(InputError, match="an encoder gives class logits"):
            model(**plain, logits=request)


# --- memory carries information -------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["after_embeddings", "embedding_layer"])
def test_encoder_memory_enters_where_its_tokens_would(entry):
    """A memory state equal to what tokens X give at the entry point (the embedding layer's output there, or X's word
    embeddings) makes the segment compute what the backbone computes with X at the memory positions."""
    backbone = tiny_encoder()
    config = RMTConfig(mode="encoder", num_memory_tokens=3, segment_size=10, encoder_memory_input=entry)
    model = RMTForSequenceClassification(backbone, config)
    ids, memory_ids = torch.randint(5, 100, (2, 10)), torch.randint(5, 100, (2, 3))
    full = torch.cat([torch.full((2, 1), 101), memory_ids, torch.full((2, 1), 102), ids, torch.full((2, 1), 102)], 1)
    with torch.no_grad():
        if entry == "embedding_layer":
            state = backbone.get_input_embeddings()(memory_ids)
        else:
            state = backbone.bert.embeddings(input_ids=full, token_type_ids=torch.zeros_like(full))[:, 1:4]
        logits = model(ids, memory_state=state).logits
    torch.testing.assert_close(logits, backbone(full).logits, rtol=0, atol=1e-5)


def test_encoder_initial_memory_scale():
    backbone = tiny_encoder()
    with torch.no_grad():  # an embedding output three times as wide as a LayerNorm's unit scale
        backbone.bert.embeddings.LayerNorm.weight.fill_(3.0)
    memories = {}
    for init in ("token_embeddings", "embedding_output"):
        torch.manual_seed(0)
        config = RMTConfig(mode="encoder", num_memory_tokens=10, segment_size=8, encoder_memory_init=init)
        memories[init] = RMTForSequenceClassification(backbone, config).memory.detach()
    with torch.no_grad():
        ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(5))
        output_std = float(backbone.bert.embeddings(input_ids=ids).std())
    word_std = float(backbone.get_input_embeddings().weight.detach().std())
    assert output_std > 2.5 and word_std < 0.1
    assert float(memories["token_embeddings"].std()) == pytest.approx(word_std, rel=0.25)
    assert float(memories["embedding_output"].std()) == pytest.approx(output_std, rel=0.25)
    # the same random draw, scaled: measuring the embedding output leaves the global random state alone
    a, b = memories["token_embeddings"], memories["embedding_output"]
    torch.testing.assert_close(a / a.std(), b / b.std())


def test_decoder_memory_written_at_the_token_embeddings_scale(decoder_family):
    """memory_write_scale='token_embeddings': the written memory is the last hidden states at the write slots,
    RMS-normalised and multiplied by a learned gain that starts at the token embeddings' std; the gain trains."""
    ids = random_ids(2, 6)  # one segment: both models read the same initial memory, so their hidden states agree
    with torch.no_grad():
        hidden = decoder(decoder_family)(ids).memory_state  # 'hidden': the last hidden states as they are
        scaled = decoder(decoder_family, memory_write_scale="token_embeddings")
        written = scaled(ids).memory_state
    std = float(scaled.backbone.get_input_embeddings().weight.detach().std())
    expected = hidden / hidden.pow(2).mean(dim=-1, keepdim=True).sqrt() * std
    torch.testing.assert_close(written, expected, rtol=1e-4, atol=1e-6)
    rms = written.pow(2).mean(dim=-1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, std), rtol=1e-3, atol=0)
    # only the direction of what the backbone writes counts: a final norm 40 times larger writes the same memory
    torch.testing.assert_close(scaled.written_memory(hidden * 40.0), expected, rtol=1e-4, atol=1e-6)
    scaled(random_ids(2, 18), labels=random_ids(2, 18, seed=1)).loss.backward()
    assert float(scaled.memory_write_gain.grad.abs().sum()) > 0
    assert "memory_write_gain" in scaled.memory_state_dict()
    with pytest.warns(UserWarning, match="memory_write_scale='token_embeddings' has no effect"):
        RMTConfig(memory_kind="armt", memory_write_scale="token_embeddings")


@pytest.mark.parametrize("memory_tokens", [4, 0])
def test_perturbing_segment_1_reaches_segment_3_only_through_memory(decoder_family, memory_tokens):
    model = decoder(decoder_family, num_memory_tokens=memory_tokens)
    ids = random_ids(1, 18)
    changed = ids.clone()
    changed[0, :6] = (changed[0, :6] + 1) % VOCAB  # segment 1 only
    last = slice(12, 18)
    difference = (model(ids).logits[:, last] - model(changed).logits[:, last]).abs().max()
    if memory_tokens:
        assert difference > 1e-5  # far above fp32 rounding; without memory tokens it is exactly 0
    else:
        assert difference == 0


def test_encoder_memory_carries_information():
    backbone = tiny_encoder()
    ids = torch.randint(5, 100, (1, 24))
    changed = ids.clone()
    changed[0, :8] = (changed[0, :8] + 1) % 100
    for memory_tokens in (3, 0):
        model = RMTForSequenceClassification(
            backbone, RMTConfig(mode="encoder", num_memory_tokens=memory_tokens, segment_size=8)
        )
        out, out_changed = model(ids), model(changed)
        logits_moved = (out.logits - out_changed.logits).abs().max()
        if memory_tokens:  # a random tiny classifier head is nearly flat, so look at the memory itself too
            assert (out.memory_state - out_changed.memory_state).abs().max() > 1e-4
            assert logits_moved > 0
        else:
            assert logits_moved == 0


def test_read_memory_only_never_updates_memory():
    model = decoder(read_memory_only=True)
    ids = random_ids(1, 18)
    out = model(ids, output_segments=True)
    for segment in out.segment_outputs:
        torch.testing.assert_close(segment.memory_state[0], model.memory)
    changed = ids.clone()
    changed[0, :6] = (changed[0, :6] + 1) % VOCAB
    assert (model(changed).logits[:, 12:] - out.logits[:, 12:]).abs().max() == 0


# --- BPTT -------------------------------------------------------------------------------------------------


def segment_input_gradients(model: RMTForCausalLM, ids, labels, streaming: bool) -> list[bool]:
    """For each segment step, whether the loss sends gradient into that segment's token embeddings."""
    captured = []

    def keep(_module, _inputs, output):
        if output.requires_grad:  # steps run under no_grad (streaming, outside the BPTT window) have none
            output.retain_grad()
        captured.append(output)

    handle = model.backbone.get_input_embeddings().register_forward_hook(keep)
    try:
        model.zero_grad()
        if streaming:
            model.forward_backward(ids, labels=labels)
        else:
            model(ids, labels=labels).loss.backward()
    finally:
        handle.remove()
    return [t.grad is not None and bool(t.grad.abs().sum() > 0) for t in captured]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("depth", [0, 1, 2, -1])
def test_bptt_depth_limits_gradient_reach(depth, streaming):
    segments = 5
    model = decoder(bptt_depth=depth)
    ids = random_ids(2, 6 * segments)
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]  # loss in the last segment only
    reached = segment_input_gradients(model, ids, labels, streaming)
    expected_reach = segments if depth < 0 else depth + 1
    assert reached == [False] * (segments - expected_reach) + [True] * expected_reach
    memory_gets_gradient = model.memory.grad is not None and bool(model.memory.grad.abs().sum() > 0)
    assert memory_gets_gradient == (depth < 0 or depth >= segments - 1)


def carried_state_model(kind: str, depth: int) -> RMTForCausalLM | ARMTForCausalLM:
    if kind == "rmt":
        return decoder(bptt_depth=depth)
    config = RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=6, d_mem=4, bptt_depth=depth)
    return strengthen_memory(ARMTForCausalLM(tiny_decoder("llama"), config))


@pytest.mark.parametrize("kind", ["rmt", "armt"])
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("depth", [0, 1, 2, -1])
def test_a_carried_memory_state_is_the_first_transition_of_truncated_bptt(kind, depth, streaming):
    """The state an earlier call returned enters segment 0 as transition 0, which a sample of 2 segments keeps only
    at depth >= 2 (or -1), whichever segment's loss would reach it. It was reached at every depth."""
    model = carried_state_model(kind, depth)
    ids = labels = random_ids(2, 12)
    earlier = model(random_ids(2, 6, seed=1), logits="none").memory_state
    carried = tree_map(lambda t: t.detach().requires_grad_(t.is_floating_point()), earlier)
    if streaming:
        model.forward_backward(ids, labels=labels, memory_state=carried)
    else:
        model(ids, labels=labels, memory_state=carried).loss.backward()
    leaves = [t for t in tree_leaves(carried) if t.requires_grad]
    reached = any(t.grad is not None and bool(t.grad.abs().sum() > 0) for t in leaves)
    assert reached == (depth < 0 or depth >= 2)


@pytest.mark.parametrize("depth", [0, 1])
def test_the_initial_memory_passed_explicitly_trains_as_when_none_is_passed(depth):
    """`memory_state=model.initial_state(B)` is the model's own memory (a view of its parameter), not a transition
    from an earlier call: cut as one, the memory parameter got no gradient at a finite depth."""
    model = decoder(bptt_depth=depth)
    ids = random_ids(2, 24)
    model(ids, labels=ids).loss.backward()
    expected = model.memory.grad.clone()
    model.zero_grad()
    model(ids, labels=ids, memory_state=model.initial_state(2)).loss.backward()
    assert bool(expected.abs().sum() > 0)
    torch.testing.assert_close(model.memory.grad, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_a_training_loop_carrying_memory_between_optimizer_steps(kind):
    """Memory passed from call to call with an optimizer step between them: a finite depth cuts the graph into the
    earlier call (it raised "backward through the graph a second time" / "modified by an inplace operation"), and
    at depth -1 detach_state does."""
    for depth, prepare in ((1, lambda state: state), (-1, detach_state)):
        model = carried_state_model(kind, depth).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        state = None
        for seed in range(3):
            ids = random_ids(2, 12, seed)
            out = model(ids, labels=ids, memory_state=state)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            state = prepare(out.memory_state)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("aggregation", ["tokens", "segments", "last_segment"])
@pytest.mark.parametrize("depth", [0, 1, -1])
@pytest.mark.parametrize("first_target", [0, 8])  # 0: segment 0 has a loss, so it runs as two groups with autograd
def test_streaming_backward_equals_reference(aggregation, depth, recompute, first_target):
    model = decoder("llama", bptt_depth=depth, loss_aggregation=aggregation, write_init="learned")
    ids = random_ids(4, 23, seed=1)
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0  # fewer segments than the others
    mask[2, :4] = 0  # left padding
    mask[3, 6:] = 0  # one segment: inside the BPTT window from segment 0 on, while the others are not
    labels = ids.clone()
    labels[:, :first_target] = -100
    model.zero_grad()
    reference = model(ids, attention_mask=mask, labels=labels)
    reference.loss.backward()
    expected = grads(model)
    model.zero_grad()
    streamed = model.forward_backward(ids, attention_mask=mask, labels=labels, recompute=recompute)
    actual = grads(model)
    torch.testing.assert_close(streamed.loss, reference.loss.detach())
    assert set(actual) == set(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(streamed.memory_state, reference.memory_state.detach())


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("depth", [0, 1])
def test_streaming_backward_with_the_backbone_frozen_equals_reference(depth, recompute):
    """Training the memory alone (trainable='memory'): a segment before the BPTT window that reads detached memory
    reaches no trainable parameter (with the default write_init='memory'), and backpropagating its loss raised
    "element 0 of tensors does not require grad"."""
    model = decoder("llama", bptt_depth=depth)
    model.backbone.requires_grad_(False)
    ids = random_ids(2, 23, seed=4)
    model.zero_grad()
    reference = model(ids, labels=ids)
    reference.loss.backward()
    expected = grads(model)
    model.zero_grad()
    streamed = model.forward_backward(ids, labels=ids, recompute=recompute)
    actual = grads(model)
    torch.testing.assert_close(streamed.loss, reference.loss.detach())
    assert set(actual) == set(expected) == {"memory"}
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("depth", [0, 1, -1])
@pytest.mark.parametrize("memory_input", ["after_embeddings", "embedding_layer"])
def test_encoder_streaming_backward_equals_reference(depth, recompute, memory_input):
    config = RMTConfig(
        mode="encoder", num_memory_tokens=3, segment_size=8, bptt_depth=depth, encoder_memory_input=memory_input
    )
    model = RMTForSequenceClassification(tiny_encoder(), config)
    ids = torch.randint(5, 100, (3, 30))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    labels = torch.tensor([0, 1, 2])
    model.zero_grad()
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    expected = grads(model)
    model.zero_grad()
    model.forward_backward(ids, attention_mask=mask, labels=labels, recompute=recompute)
    actual = grads(model)
    assert set(actual) == set(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-7, msg=name)


# --- padding --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("memory_positions", ["sequential", "shared"])
def test_padded_sample_equals_sample_alone(decoder_family, memory_positions):
    model = decoder(decoder_family, memory_positions=memory_positions)
    ids = random_ids(3, 23, seed=2)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # right padding, 3 segments instead of 4
    mask[2, :5] = 0  # left padding
    _assert_padded_rows_equal_each_alone(model, ids, mask)


def _assert_padded_rows_equal_each_alone(model: RMTForCausalLM, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """Every row of the padded batch gives the logits and memory of its real tokens read alone."""
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        for row in range(ids.shape[0]):
            keep = mask[row].bool()
            alone = model(ids[row : row + 1, keep])
            torch.testing.assert_close(out.logits[row, keep], alone.logits[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.memory_state[row], alone.memory_state[0], rtol=1e-5, atol=1e-5)
            assert out.logits[row, ~keep].abs().sum() == 0


@pytest.mark.parametrize("memory_positions", ["sequential", "shared"])
def test_padded_sample_equals_sample_alone_under_a_sliding_window(memory_positions):
    """A sliding window (Mistral, 4 places) shorter than [read memory | segment | write memory] counts sequence
    places: write slots after a short segment's padding saw fewer of its tokens than the sample alone (its memory off
    by 2e-2), so they go right after each row's real tokens. Four layers reach the 12 places' first from their last."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4}
    backbone = MistralForCausalLM(MistralConfig(vocab_size=VOCAB, num_key_value_heads=2, sliding_window=4, **sizes))
    config = RMTConfig(num_memory_tokens=2, segment_size=8, memory_positions=memory_positions)
    model = RMTForCausalLM(backbone, config).eval()
    ids = random_ids(2, 21, seed=3)
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0  # its last segment holds 5 of 8 tokens
    _assert_padded_rows_equal_each_alone(model, ids, mask)


@pytest.mark.parametrize(("layers", "window", "refused"), [(2, 4, True), (4, 4, False), (1, 10, True), (1, 11, False)])
def test_sliding_windows_that_cut_the_write_memory_off_the_read_memory_are_refused(layers, window, refused):
    """[read memory (2) | segment (8) | write memory (2)] spans 12 places; the first write slot, 10 places after the
    first read slot, draws on it only through the layers' windows, each reaching window - 1 places further back. Out
    of reach (2 layers of window 4 reach 6 places), a change in a segment's first token left the next segment's
    logits equal to the bit: the recurrence carried nothing, with no error. Refused when built; in reach (one layer
    of window 11 reaches 10), the first token counts."""
    from transformers import MistralConfig, MistralForCausalLM

    from rmt.errors import InputError

    torch.manual_seed(0)
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": layers, "num_attention_heads": 4}
    backbone = MistralForCausalLM(
        MistralConfig(vocab_size=VOCAB, num_key_value_heads=2, sliding_window=window, **sizes)
    )
    config = RMTConfig(num_memory_tokens=2, segment_size=8)
    if refused:
        reach = layers * (window - 1)
        with pytest.raises(
            InputError, match=rf"spans 12 places, .* reach {reach} places back .* at most {reach - 2} tokens"
        ):
            RMTForCausalLM(backbone, config)
        return
    model = RMTForCausalLM(backbone, config).eval()
    ids = random_ids(1, 16)
    changed = ids.clone()
    changed[0, 0] = (changed[0, 0] + 1) % VOCAB
    with torch.no_grad():
        assert (model(ids).logits[0, 8:] - model(changed).logits[0, 8:]).abs().max() > 1e-4


def test_a_transformer_xl_cache_under_a_sliding_window_too_short_to_hold_its_call_is_refused_when_built():
    """The cache takes every layer's keys of [cache | read memory | segment | write memory] from one call; a sliding
    window keeps only its last places, so the first forward raised a NotImplementedError (a traceback in the CLI)."""
    from transformers import MistralConfig, MistralForCausalLM

    from rmt.errors import InputError

    def mistral(window: int) -> MistralForCausalLM:
        sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
        return MistralForCausalLM(
            MistralConfig(vocab_size=VOCAB, num_key_value_heads=2, sliding_window=window, **sizes)
        )

    config = RMTConfig(num_memory_tokens=2, segment_size=8, xl_cache_tokens=8)
    with pytest.raises(InputError, match=r"= 20 places from one call, but this backbone's sliding window keeps 19"):
        RMTForCausalLM(mistral(20), config)
    model = RMTForCausalLM(mistral(21), config)
    assert model(random_ids(2, 30)).logits.shape == (2, 30, VOCAB)  # the window holds the call: runs


def test_encoder_padded_sample_equals_sample_alone():
    model = RMTForSequenceClassification(tiny_encoder(), RMTConfig(mode="encoder", num_memory_tokens=3, segment_size=8))
    ids = torch.randint(5, 100, (2, 30))
    mask = torch.ones_like(ids)
    mask[1, :11] = 0
    out = model(ids, attention_mask=mask)
    alone = model(ids[1:, 11:])
    torch.testing.assert_close(out.logits[1], alone.logits[0], rtol=1e-5, atol=1e-5)


def test_memory_state_continues_across_calls():
    model = decoder()
    ids = random_ids(2, 24)
    whole = model(ids)
    first = model(ids[:, :12])
    second = model(ids[:, 12:], memory_state=first.memory_state)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), whole.logits)
    torch.testing.assert_close(second.memory_state, whole.memory_state)


def test_segment_outputs():
    model = decoder()
    ids = random_ids(2, 15)
    out = model(ids, output_segments=True)
    assert [s.logits.shape[1] for s in out.segment_outputs] == [6, 6, 3]
    torch.testing.assert_close(torch.cat([s.logits for s in out.segment_outputs], 1), out.logits)


# --- loss aggregation -----------------------------------------------------------------------------------------


def test_loss_aggregations_match_hand_computation():
    ids = random_ids(2, 15, seed=3)
    labels = ids.clone()
    labels[0, :4] = -100
    per_config = {a: decoder(loss_aggregation=a) for a in ("tokens", "segments", "last_segment")}
    logits = per_config["tokens"](ids).logits
    token_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none").view(2, 14)
    valid = labels[:, 1:] != -100
    segment_of_target = torch.arange(14) // 6  # the target at t+1 is predicted at position t
    tokens = token_loss[valid].mean()
    per_segment = [token_loss[b][valid[b] & (segment_of_target == s)].mean() for b in range(2) for s in range(3)]
    segments = torch.stack(per_segment).mean()
    last = token_loss[valid & (segment_of_target == 2)].mean()
    for aggregation, expected in (("tokens", tokens), ("segments", segments), ("last_segment", last)):
        actual = per_config[aggregation](ids, labels=labels).loss
        torch.testing.assert_close(actual, expected, msg=aggregation)


# --- bad input ------------------------------------------------------------------------------------------------


def test_empty_input_is_refused():
    with pytest.raises(ValueError, match="empty"):
        decoder()(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\] have no tokens"):
        decoder()(random_ids(2, 5), attention_mask=torch.tensor([[1] * 5, [0] * 5]))
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        decoder()(torch.zeros(5, dtype=torch.long))


def test_last_segment_loss_says_where_a_boundary_label_is_predicted():
    """With last_segment aggregation, a label at the last segment's first position is predicted in the segment
    before: alone, it leaves nothing to train on, and the message says why."""
    model = decoder(loss_aggregation="last_segment")  # segments of 6
    ids = random_ids(1, 13)
    labels = torch.full_like(ids, -100)
    labels[0, 12] = ids[0, 12]  # the first token of the third segment
    with pytest.raises(ValueError, match="first position is predicted by the segment before"):
        model(ids, labels=labels)
    labels = torch.full_like(ids[:, :12], -100)
    labels[0, 8] = ids[0, 8]  # 2 segments: predicted at position 7, inside the last segment
    assert model(ids[:, :12], labels=labels).loss is not None


def test_shape_mismatches_are_refused():
    model = decoder()
    ids = random_ids(2, 10)
    with pytest.raises(ValueError, match="labels shape"):
        model(ids, labels=ids[:, :9])
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(ids, attention_mask=torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="no target token"):
        model(ids, labels=torch.full_like(ids, -100))
    first_only = torch.full_like(ids, -100)
    first_only[:, 0] = ids[:, 0]
    with pytest.raises(ValueError, match="the label at a sample's first token is predicted by nothing"):
        model(ids, labels=first_only)
    with pytest.raises(ValueError, match="memory_state holds 3 samples but the batch has 2"):
        model(ids, memory_state=model.initial_state(3))


def test_segment_that_does_not_fit_the_backbone_is_refused():
    with pytest.raises(ValueError, match=r"embeds at most 256.*lower segment_size to at most 248"):
        RMTForCausalLM(tiny_decoder("gpt2"), RMTConfig(num_memory_tokens=4, segment_size=250))


def test_unknown_model_family_is_refused():
    with pytest.raises(ValueError, match="unknown model family 'bert' for mode='decoder'"):
        RMTForCausalLM(tiny_encoder(), RMTConfig())
    with pytest.raises(ValueError, match="unknown model family 'gpt2' for mode='encoder'"):
        RMTForSequenceClassification(tiny_decoder("gpt2"), RMTConfig(mode="encoder"))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "bert"])
def test_random_backbone_trains_every_token_embedding(family):
    """HF freezes the embedding row of config.pad_token_id; token 0 is a digit in every task, so it must learn."""
    backbone = random_backbone(family, vocab_size=16, num_layers=1, hidden_size=32)
    ids = torch.tensor([[0, 1, 2, 0]])
    out = backbone(input_ids=ids)
    out.logits.square().sum().backward()
    embedding = backbone.get_input_embeddings().weight
    assert embedding[0].abs().sum() > 0 and embedding.grad[0].abs().sum() > 0


def test_encoder_learns_to_carry_a_fact_through_memory():
    """A fact token in segment 1, asked for at the end of segment 2: only the memory can carry it. This seed of a
    2-layer BERT leaves its plateau after 300-500 steps, depending on the CPU's kernels (0.98 at step 400 with
    AVX-512, 0.83 with AVX2; 1.00 at 500 on both), so it trains 600 (whether such a run leaves its plateau depends
    on the seed and the learning rate: benchmarks/encoder_memory.py)."""
    torch.manual_seed(0)
    segment, cls, sep = 16, 40, 41
    backbone = random_backbone("bert", 50, 2, 64, 4, 64, num_labels=6)
    config = RMTConfig(mode="encoder", num_memory_tokens=4, segment_size=segment, cls_token_id=cls, sep_token_id=sep)
    model = RMTForSequenceClassification(backbone, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def batch(size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, 30, (size, 2 * segment), generator=generator)  # noise tokens
        where = torch.randint(0, segment - 1, (size,), generator=generator)  # marker + fact inside segment 1
        fact = torch.randint(0, 6, (size,), generator=generator)
        ids[torch.arange(size), where] = 36
        ids[torch.arange(size), where + 1] = 30 + fact
        return ids, fact

    generator = torch.Generator().manual_seed(1)
    for _ in range(600):
        ids, fact = batch(32, generator)
        model.forward_backward(ids, labels=fact)
        optimizer.step()
        optimizer.zero_grad()
    ids, fact = batch(256, torch.Generator().manual_seed(99))
    with torch.no_grad():
        accuracy = float((model(ids).logits.argmax(-1) == fact).float().mean())
    assert accuracy > 0.9, accuracy


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_streaming_backward_under_dropout_draws_the_forward_masks(kind, recompute):
    """With dropout active, the streaming backward (and recompute=True, which runs each segment again in the backward
    pass) gives the gradients of one graph over the input from the same random state: a recomputed segment must draw
    the dropout masks its forward drew, or its gradients belong to another network."""
    from rmt.memory.armt import ARMTForCausalLM

    torch.manual_seed(0)
    backbone = tiny_decoder("gpt2")
    for module in backbone.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.2
    if kind == "armt":
        model = ARMTForCausalLM(backbone, RMTConfig(memory_kind="armt", num_memory_tokens=2, segment_size=6, d_mem=8))
    else:
        model = RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=4, segment_size=6))
    model.train()
    ids = random_ids(2, 4 * 6, seed=3)
    torch.manual_seed(5)
    reference = model(ids, labels=ids)
    reference.loss.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    streamed = model.forward_backward(ids, labels=ids, recompute=recompute)
    actual = grads(model)
    torch.testing.assert_close(streamed.loss, reference.loss.detach())
    assert set(actual) == set(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(6)  # other masks, other gradients: the dropout is drawn
    model(ids, labels=ids).loss.backward()
    assert any(not torch.allclose(p.grad, expected[n], atol=1e-4) for n, p in model.named_parameters() if n in expected)


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_hugging_face_model_conveniences(kind):
    """dtype, num_parameters, get_input_embeddings and gradient checkpointing as on a Hugging Face model: the
    backbone's layers run again in the backward pass and the gradients stay the same."""
    model = (decoder("llama") if kind == "rmt" else carried_state_model(kind, -1)).train()
    assert model.dtype == torch.float32 and model.get_input_embeddings() is model.backbone.get_input_embeddings()
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    model.backbone.requires_grad_(False)
    memory = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("backbone."))
    assert model.num_parameters(only_trainable=True) == memory > 0
    model.backbone.requires_grad_(True)
    ids = random_ids(2, 14)

    def layer_calls_and_grads() -> tuple[int, dict[str, torch.Tensor]]:
        calls = []
        # On the layer's first module: transformers checkpoints a layer's forward (its own hooks stay outside), and
        # the recomputation stops once it has what the backward pass needs.
        first = model.backbone.base_model.layers[0].input_layernorm
        handle = first.register_forward_pre_hook(lambda *args: calls.append(1))
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        handle.remove()
        return len(calls), grads(model)

    plain_calls, plain = layer_calls_and_grads()
    model.gradient_checkpointing_enable()
    calls, checkpointed = layer_calls_and_grads()
    assert calls == 2 * plain_calls  # each layer call ran again in the backward pass
    for name, grad in checkpointed.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-5, atol=1e-6)
    model.gradient_checkpointing_disable()
    assert layer_calls_and_grads()[0] == plain_calls
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - sum(
        p.numel() for module in model.modules() if isinstance(module, torch.nn.Embedding) for p in module.parameters()
    )


def test_activation_checkpointing_options_need_a_backbone_that_takes_them(monkeypatch):
    """every_n_layers and offload (what transformers' Trainer passes) are refused where the backbone has only the older
    gradient_checkpointing_enable, which cannot take them."""
    from transformers import PreTrainedModel

    model = decoder("llama").train()
    monkeypatch.delattr(PreTrainedModel, "activation_checkpointing_enable")
    with pytest.raises(InputError, match="every_n_layers and offload cannot be set"):
        model.activation_checkpointing_enable(every_n_layers=2)


def test_activation_checkpointing_with_a_transformer_xl_cache_is_refused():
    """transformers' checkpointed layers drop the key/value cache that the Transformer-XL cache feeds them: the
    forward failed with a shape mismatch."""
    model = decoder("llama", xl_cache_tokens=4).train()
    with pytest.raises(InputError, match="activation checkpointing drops the key/value cache"):
        model.gradient_checkpointing_enable()
