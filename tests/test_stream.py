"""Streaming (`model.stream()`): any chunking of an input gives what one forward pass gives (logits at the asked
positions and the final memory), for RMT (with and without the Transformer-XL cache), ARMT and the encoder; samples
fed different numbers of tokens; forward's logits="last"/positions options; bad chunks."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, strengthen_memory, tiny_decoder, tiny_encoder
from torch.utils._python_dispatch import TorchDispatchMode

from rmt import ARMTForCausalLM, RMTConfig, RMTForCausalLM, RMTForSequenceClassification
from rmt.errors import InputError
from rmt.inference import DiagonalARMT
from rmt.memory.state import tree_map
from rmt.memory.stream import MemoryStream

ATOL = 1e-5


RMT_VARIANTS = {
    "memtrxl": {"xl_cache_tokens": 4},
    "memtrxl-contiguous": {"xl_cache_tokens": 4, "xl_contiguous_positions": True},
    "rmt-rescaled": {"memory_write_scale": "token_embeddings"},
}


def decoder(kind: str, family: str = "llama"):
    torch.manual_seed(0)
    if kind == "armt":
        config = RMTConfig(memory_kind="armt", num_memory_tokens=3, segment_size=5, d_mem=8)
        return strengthen_memory(ARMTForCausalLM(tiny_decoder(family), config)).eval()
    extra = RMT_VARIANTS.get(kind, {})
    return RMTForCausalLM(tiny_decoder(family), RMTConfig(num_memory_tokens=3, segment_size=5, **extra)).eval()


def head_not_zero_at_zero(model):
    """`model` whose head adds 0.5 to every logit (for forward and the stream alike), so that positions where nothing
    was fed are zero only because the stream masks them: an untrained head maps a zero hidden state to zero logits.
    Returns the model."""
    model.head = lambda hidden, head=model.head: head(hidden) + 0.5
    return model


def random_chunks(length: int, seed: int) -> list[int]:
    rng = torch.Generator().manual_seed(seed)
    sizes, left = [], length
    while left:
        size = int(torch.randint(1, 9, (1,), generator=rng))
        sizes.append(min(size, left))
        left -= sizes[-1]
    return sizes


def assert_states_close(a, b) -> None:
    tree_map(lambda x, y: torch.testing.assert_close(x.float(), y.float(), atol=ATOL, rtol=1e-4) or x, a, b)


def assert_states_equal(a, b) -> None:
    """Bit for bit: a stream runs each complete segment through the model's own `step`, as forward does (the same
    batch, so the same products); only logits of the open segment come another way (its key/value cache)."""
    tree_map(lambda x, y: torch.testing.assert_close(x, y, atol=0, rtol=0) or x, a, b)


@pytest.mark.parametrize("kind", ["rmt", "memtrxl", "memtrxl-contiguous", "rmt-rescaled", "armt"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_chunkings_equal_one_pass(kind, seed):
    model = decoder(kind)
    ids = torch.randint(0, VOCAB, (2, 23), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = model(ids)
    stream = model.stream(batch_size=2)
    pieces, position = [], 0
    for size in random_chunks(23, seed):
        pieces.append(stream.feed(ids[:, position : position + size], logits="all"))
        position += size
    torch.testing.assert_close(torch.cat(pieces, dim=1), reference.logits, atol=ATOL, rtol=1e-4)
    assert_states_equal(stream.memory_state, reference.memory_state)


@pytest.mark.parametrize("kind", ["rmt", "memtrxl", "armt"])
@pytest.mark.parametrize("family", ["gpt2", "mistral", "qwen2", "gpt_neox"])
def test_random_chunkings_equal_one_pass_in_every_family(kind, family):
    """The open segment's key/value cache and the Transformer-XL cache's keys are laid out per family (Qwen2's q/k/v
    biases, GPT-NeoX's fused projection, GPT-2's learned positions); Llama runs in the test above."""
    model = decoder(kind, family)
    ids = torch.randint(0, VOCAB, (2, 23), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = model(ids)
    stream = model.stream(batch_size=2)
    pieces, position = [], 0
    for size in random_chunks(23, 3):
        pieces.append(stream.feed(ids[:, position : position + size], logits="all"))
        position += size
    torch.testing.assert_close(torch.cat(pieces, dim=1), reference.logits, atol=ATOL, rtol=1e-4)
    assert_states_equal(stream.memory_state, reference.memory_state)


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_memory_only_stream_keeps_no_logits_and_matches_forward(kind):
    model = decoder(kind, family="gpt2")
    ids = torch.randint(0, VOCAB, (1, 31), generator=torch.Generator().manual_seed(3))
    stream = model.stream()
    position = 0
    for size in (7, 1, 12, 11):  # ends inside a segment: memory_state writes the open segment on a copy
        assert stream.feed(ids[:, position : position + size]) is None
        position += size
    with torch.no_grad():
        reference = model(ids, logits="last")
    assert stream.cache is None  # no logits asked: no key/value cache was built
    assert_states_equal(stream.memory_state, reference.memory_state)
    assert_states_equal(stream.memory_state, reference.memory_state)  # reading it does not change the stream
    # Asking for logits later builds the open segment's cache from the buffered tokens.
    torch.testing.assert_close(stream.last_logits(), reference.logits, atol=ATOL, rtol=1e-4)
    nothing = torch.zeros(1, 1, dtype=torch.long)  # a chunk that feeds nothing changes nothing
    torch.testing.assert_close(stream.feed(nothing, nothing, logits="last"), reference.logits, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("kind", ["rmt", "armt"])
@pytest.mark.parametrize("sizes", [(3, 2), (5,), (2, 3, 5), (7, 3)])
def test_last_logits_after_chunks_that_end_on_a_segment_boundary(kind, sizes):
    """Chunks fed without logits whose last one completes a segment: last_logits() is forward's last logits."""
    model = decoder(kind)
    ids = torch.randint(0, VOCAB, (1, sum(sizes)), generator=torch.Generator().manual_seed(8))
    stream = model.stream()
    position = 0
    for size in sizes:
        stream.feed(ids[:, position : position + size])
        position += size
    with torch.no_grad():
        reference = model(ids, logits="last")
    torch.testing.assert_close(stream.last_logits(), reference.logits, atol=ATOL, rtol=1e-4)
    assert_states_equal(stream.memory_state, reference.memory_state)


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_samples_fed_different_amounts(kind):
    """Row 0 gets 9 + 4 tokens, row 1 gets 3 + 10: each follows its own segment boundaries."""
    model = head_not_zero_at_zero(decoder(kind))
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(4))
    mask1 = torch.tensor([[1] * 9 + [0], [1] * 3 + [0] * 7])
    stream = model.stream(batch_size=2)
    first = stream.feed(ids[:, :10] * mask1, mask1, logits="all")
    row1_rest = ids[1, 3:13]
    chunk2 = torch.stack([torch.cat([ids[0, 9:13], torch.zeros(6, dtype=torch.long)]), row1_rest])
    mask2 = torch.tensor([[1] * 4 + [0] * 6, [1] * 10])
    second = stream.feed(chunk2, mask2, logits="all")
    with torch.no_grad():
        alone = [model(ids[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(torch.cat([first[0, :9], second[0, :4]]), alone[0].logits[0], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(torch.cat([first[1, :3], second[1]]), alone[1].logits[0], atol=ATOL, rtol=1e-4)
    assert bool((first[0, 9] == 0).all())  # nothing fed there
    for i in range(2):
        assert_states_close(tree_map(lambda t, i=i: t[i : i + 1], stream.memory_state), alone[i].memory_state)


@pytest.mark.parametrize("kind", ["rmt", "armt"])
@pytest.mark.parametrize("seed", [0, 1])
def test_padded_chunks_equal_each_sample_alone(kind, seed):
    """Chunks with padding anywhere (left, gaps, rows fed nothing), fed with logits "none", "all" and "last" in turn:
    every sample's logits are those of one pass over the tokens fed to it alone, also for a sample that gets nothing
    in a "last" chunk after tokens fed with "none"."""
    model = head_not_zero_at_zero(decoder(kind))
    rng = torch.Generator().manual_seed(seed)
    batch, width, requests = 3, 6, ["none", "all", "last", "none", "last", "all", "last"]
    chunks = [torch.randint(0, VOCAB, (batch, width), generator=rng) for _ in requests]
    masks = [(torch.rand(batch, width, generator=rng) < 0.6).long() for _ in requests]
    masks[0][:, 0] = 1  # every sample has a token before the first "last"
    # Sample 1 gets two tokens in a "none" chunk, which leave its segment open (12 and 10 tokens before them), and
    # nothing in the "last" chunk after it: its last logits are those of the "none" chunk's tokens.
    masks[3][1] = torch.tensor([1, 1, 0, 0, 0, 0])
    masks[4][1] = 0
    masks[3][2, 1::2] = 0  # gaps
    stream = model.stream(batch_size=batch)
    outputs = [
        stream.feed(ids, mask, logits=request) for ids, mask, request in zip(chunks, masks, requests, strict=True)
    ]
    for b in range(batch):
        fed = torch.cat([ids[b][mask[b] == 1] for ids, mask in zip(chunks, masks, strict=True)])
        with torch.no_grad():
            alone = model(fed[None]).logits[0]  # [n, V]
        seen = 0
        for mask, request, out in zip(masks, requests, outputs, strict=True):
            positions = (mask[b] == 1).nonzero().flatten()
            if request == "all":
                torch.testing.assert_close(out[b, positions], alone[seen : seen + len(positions)], atol=ATOL, rtol=1e-4)
                assert bool((out[b][mask[b] == 0] == 0).all())  # nothing fed there
            seen += len(positions)
            if request == "last":
                torch.testing.assert_close(out[b], alone[seen - 1], atol=ATOL, rtol=1e-4)


def test_an_empty_chunk_feeds_nothing():
    model = decoder("rmt")
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(5))
    stream = model.stream(batch_size=2)
    stream.feed(ids)
    empty = ids[:, :0]
    assert stream.feed(empty) is None
    assert stream.feed(empty, logits="all").shape == (2, 0, VOCAB)
    assert stream.feed(empty, torch.zeros(2, 0, dtype=torch.long)) is None
    with pytest.raises(InputError, match=r"attention_mask has shape \(2, 5\) but input_ids \(2, 0\)"):
        stream.feed(empty, torch.ones(2, 5, dtype=torch.long))  # a mask of another chunk
    with torch.no_grad():
        reference = model(ids, logits="last")
    torch.testing.assert_close(stream.feed(empty, logits="last"), reference.logits, atol=ATOL, rtol=1e-4)
    assert_states_equal(stream.memory_state, reference.memory_state)


def test_encoder_stream_classifies_like_one_pass():
    torch.manual_seed(0)
    model = RMTForSequenceClassification(tiny_encoder(), RMTConfig(mode="encoder", num_memory_tokens=2, segment_size=6))
    model.eval()
    ids = torch.randint(5, 100, (2, 20), generator=torch.Generator().manual_seed(5))
    for sizes in ([20], [3, 3, 14], [6, 6, 6, 2], [1] * 20, [18, 2]):
        stream = model.stream(batch_size=2)
        position = 0
        for size in sizes:
            stream.feed(ids[:, position : position + size])
            position += size
        with torch.no_grad():
            reference = model(ids)
        torch.testing.assert_close(stream.classify(), reference.logits, atol=ATOL, rtol=1e-4)
        assert_states_equal(stream.memory_state, reference.memory_state)
    with pytest.raises(InputError, match="no token logits"):
        model.stream().feed(ids[:1], logits="last")
    # Text wrapped in [CLS] ... [SEP] by its tokenizer: refused by classify() as by forward (the stream took it).
    wrapped = torch.cat([torch.full((2, 1), 101), ids, torch.full((2, 1), 102)], dim=1)
    wrapped[0, -1] = 7  # row 0 ends otherwise: row 1 is the one named
    for sizes in ([22], [1, 20, 1], [5, 17, 0]):
        stream = model.stream(batch_size=2)
        for chunk in torch.split(wrapped, sizes, dim=1):
            stream.feed(chunk)
        with pytest.raises(InputError, match=r"row 1 starts with the \[CLS\] id \(101\) and ends with"):
            stream.classify()
    with pytest.raises(InputError, match=r"row 1 starts with the \[CLS\] id \(101\) and ends with"):
        model(wrapped)


class _LogitsSizedStorages(TorchDispatchMode):
    """Records the storages of the tensors ops make that have the last dimension `vocab` and at least `numel`
    elements. They are kept alive, so no storage is reused and the distinct ones count the [B, N, V] tensors made;
    a view or an in-place op shares its input's storage and adds none."""

    def __init__(self, vocab: int, numel: int) -> None:
        super().__init__()
        self.vocab, self.numel, self.storages = vocab, numel, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.dim() and tensor.shape[-1] == self.vocab:
                if tensor.numel() >= self.numel:
                    storage = tensor.untyped_storage()
                    self.storages[storage.data_ptr()] = storage
        return out


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_all_logits_are_built_once(kind):
    # Logits for every position are the largest tensors a long input makes ([B, N, V]: 200 GB at 1M tokens and a 49k
    # vocabulary): forward and the stream build them once, with the padding zeroed in place and left padding put
    # back where the caller had it (they were built four times: placed, masked, zeroed and scattered).
    vocab = 97  # no other tensor of the model ends in this size
    torch.manual_seed(0)
    if kind == "armt":
        config = RMTConfig(memory_kind="armt", num_memory_tokens=3, segment_size=5, d_mem=8)
        model = ARMTForCausalLM(tiny_decoder("llama", vocab_size=vocab), config).eval()
    else:
        model = RMTForCausalLM(tiny_decoder("llama", vocab_size=vocab), RMTConfig(num_memory_tokens=3, segment_size=5))
        model.eval()
    ids = torch.randint(0, vocab, (2, 23), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding: packed order differs from the caller's
    with torch.no_grad(), _LogitsSizedStorages(vocab, ids.numel() * vocab) as made:
        logits = model(ids, attention_mask=mask, logits="all").logits
    assert logits.shape == (2, 23, vocab) and len(made.storages) == 1
    with torch.no_grad(), _LogitsSizedStorages(vocab, ids.numel() * vocab) as made:
        streamed = model.stream(batch_size=2).feed(ids, attention_mask=mask, logits="all")
    assert streamed.shape == (2, 23, vocab) and len(made.storages) == 1
    torch.testing.assert_close(streamed, logits, atol=ATOL, rtol=1e-4)
    if kind == "armt":  # the diagonal engine assembles its logits the same way
        with _LogitsSizedStorages(vocab, ids.numel() * vocab) as made:
            diagonal = DiagonalARMT(model)(ids, attention_mask=mask, logits="all").logits
        assert diagonal.shape == (2, 23, vocab) and len(made.storages) == 1
        torch.testing.assert_close(diagonal, logits, atol=ATOL, rtol=1e-4)


def test_gradients_through_padded_logits_equal_each_sample_alone():
    # The logits are written into one tensor in place (placed, then the padding zeroed): gradients still flow to
    # every weight as they do for each sample read alone, without its padding.
    torch.manual_seed(0)
    model = RMTForCausalLM(tiny_decoder("llama"), RMTConfig(num_memory_tokens=3, segment_size=5))
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    weights = torch.randn(2, 13, VOCAB, generator=torch.Generator().manual_seed(2))
    (model(ids, attention_mask=mask).logits * weights).sum().backward()
    batched = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for row in range(2):
        keep = mask[row].bool()
        (model(ids[row : row + 1, keep]).logits * weights[row : row + 1, keep]).sum().backward()
    alone = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert batched.keys() == alone.keys() and batched
    for name, grad in batched.items():
        torch.testing.assert_close(grad, alone[name], atol=1e-5, rtol=1e-4, msg=name)


def test_forward_logits_options_match_all():
    model = decoder("rmt")
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(6))
    mask = torch.tensor([[0, 0] + [1] * 10, [1] * 12])  # left padding
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        last = model(ids, attention_mask=mask, logits="last").logits
        picked = model(ids, attention_mask=mask, logits=torch.tensor([[2, 11], [0, 5]])).logits
        none = model(ids, attention_mask=mask, logits="none").logits
    torch.testing.assert_close(last, full[:, -1])
    torch.testing.assert_close(picked, torch.stack([full[0, [2, 11]], full[1, [0, 5]]]))
    assert none is None
    with pytest.raises(InputError, match="padding"):
        model(ids, attention_mask=mask, logits=torch.tensor([[0, 1], [0, 1]]))
    # Right padding too: it returned a padding place's hidden state, or zeros, without a word.
    right = torch.tensor([[1] * 9 + [0] * 3, [1] * 12])
    for place in (9, 11):
        with pytest.raises(InputError, match="must be real tokens"):
            model(ids, attention_mask=right, logits=torch.tensor([[place], [0]]))
    with pytest.raises(InputError, match="an integer .* tensor of positions"):  # an answer mask passed by mistake
        model(ids, attention_mask=mask, logits=mask.bool())
    int32 = model(ids, attention_mask=mask, logits=torch.tensor([[2, 11], [0, 5]], dtype=torch.int32)).logits
    torch.testing.assert_close(int32, picked)


def test_bad_chunks_are_refused():
    model = decoder("rmt")
    stream = model.stream(batch_size=2)
    with pytest.raises(InputError, match="reads 2 samples"):
        stream.feed(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(InputError, match="integer token ids"):
        stream.feed(torch.zeros(2, 4))
    with pytest.raises(InputError, match="vocabulary"):
        stream.feed(torch.full((2, 4), VOCAB))


@pytest.mark.parametrize("kind", ["rmt", "armt"])
def test_rows_out_of_phase_fit_a_position_table_of_one_window(kind):
    """GPT-2 with learned positions for exactly one window ([read | segment | write] for RMT, [segment | memory] for
    ARMT): a chunk that extends one row's open segment while the other's is further along pads the call past the
    segment; those places must not be numbered beyond the table (a ValueError and an IndexError before)."""
    torch.manual_seed(0)
    segment, memory = 5, 3
    if kind == "armt":
        config = RMTConfig(memory_kind="armt", num_memory_tokens=memory, segment_size=segment, d_mem=8)
        model = strengthen_memory(ARMTForCausalLM(tiny_decoder("gpt2", positions=segment + memory), config)).eval()
    else:
        backbone = tiny_decoder("gpt2", positions=segment + 2 * memory)
        model = RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=memory, segment_size=segment)).eval()
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    stream = model.stream(batch_size=2)
    stream.feed(ids[:, :4], torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]), logits="all")  # row 0: 4 tokens cached
    stream.feed(ids[:, :4], torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))  # row 1: 4 tokens, not yet cached
    last = stream.feed(ids[:, 4:], logits="all")  # both rows' fifth token, row 1's first four cached with it
    with torch.no_grad():
        reference = model(ids).logits
    torch.testing.assert_close(last[:, 0], reference[:, 4], atol=ATOL, rtol=1e-4)


def test_a_float_or_bool_attention_mask_reads_as_the_integer_one():
    """forward accepts a mask of 0./1. or False/True; the stream and generate read it the same (they indexed with
    its float sums before)."""
    model = decoder("rmt")
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0
    expected = model.stream(batch_size=2).feed(ids, mask, logits="last")
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=3)
    for other in (mask.float(), mask.bool()):
        torch.testing.assert_close(model.stream(batch_size=2).feed(ids, other, logits="last"), expected)
        assert torch.equal(model.generate(ids, attention_mask=other, max_new_tokens=3), generated)


def test_a_refused_request_for_last_logits_leaves_the_stream_as_it_was():
    """Last logits for a sample that has no token yet are refused before the chunk is read, so the caller can feed
    the same chunk again (it was read, then refused, and read twice on the retry)."""
    model = decoder("rmt")
    ids = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    stream = model.stream(batch_size=2)
    with pytest.raises(InputError, match="at least one token"):
        stream.feed(ids, mask, logits="last")
    stream.feed(ids, mask)
    with torch.no_grad():
        reference = model(ids[:1], logits="last").logits
    stream.feed(ids[1:].expand(2, -1), torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))
    torch.testing.assert_close(stream.last_logits()[:1], reference, atol=ATOL, rtol=1e-4)
    assert stream.seen.tolist() == [4, 4]


def mistral_rmt(window: int) -> RMTForCausalLM:
    """Mistral with a sliding window of `window` (RMT; ARMT refuses windows shorter than its segments), 2 memory tokens,
    segments of 8: the open segment spans 10 places, and the window's cache keeps `window` - 1."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = MistralConfig(vocab_size=VOCAB, num_key_value_heads=2, sliding_window=window, **sizes)
    return RMTForCausalLM(MistralForCausalLM(config), RMTConfig(num_memory_tokens=2, segment_size=8)).eval()


@pytest.mark.parametrize("window", [7, 10])
def test_a_sliding_window_shorter_than_the_open_segment_is_refused_for_token_logits(window):
    """A sliding window's cache keeps one place fewer than the window: at 7, or at 10 (the open segment's 10 places;
    an IndexError inside the cache before), the cache that gives a stream's logits and generate's tokens would drop
    places. One pass and a stream without logits still read; a window of 11 holds the open segment and is not
    refused."""
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(0))
    model = mistral_rmt(window)
    with torch.no_grad():
        model(ids)
    model.stream().feed(ids)
    kept = f"sliding window \\({window}\\) keeps {window - 1}"
    with pytest.raises(InputError, match=kept + ": use "):
        model.stream().feed(ids, logits="last")
    with pytest.raises(InputError, match=kept):
        model.generate(ids, max_new_tokens=2)
    wide = mistral_rmt(11)
    with torch.no_grad():
        reference = wide(ids, logits="last").logits
    torch.testing.assert_close(wide.stream().feed(ids, logits="last"), reference, atol=ATOL, rtol=1e-4)
    generated = wide.generate(ids, max_new_tokens=12, do_sample=False)
    with torch.no_grad():
        for end in range(20, 32):  # greedy: each token is the argmax of one pass over what precedes it
            assert generated[0, end] == wide(generated[:, :end], logits="last").logits.argmax(-1)


def test_samples_fed_at_different_rates_under_a_sliding_window_get_their_one_pass_logits(monkeypatch):
    """Under the tightest sliding window (11: its cache keeps the open segment's 10 places and no more), samples fed
    different numbers of tokens per call would need more places than the cache keeps (gaps where one sample got
    fewer tokens than another; a sliding cache then dropped entries, logits off by 0.06). Packed, or extended one
    sample at a time when packing is not enough, each sample gets its one-pass logits."""
    model = mistral_rmt(11)
    apart = []
    extend_each_sample = MemoryStream._extend_each_sample
    monkeypatch.setattr(
        MemoryStream, "_extend_each_sample", lambda self, *a: apart.append(1) or extend_each_sample(self, *a)
    )
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 30), generator=g)
    with torch.no_grad():
        reference = model(ids).logits
    stream = model.stream(batch_size=2)
    fed = [0, 0]
    for counts in [(7, 1), (0, 6), (3, 5), (9, 2), (1, 8), (10, 8)]:  # tokens per sample and call
        width = max(counts)
        chunk = torch.zeros(2, width, dtype=torch.long)
        mask = torch.zeros(2, width, dtype=torch.long)
        for row, count in enumerate(counts):
            chunk[row, :count] = ids[row, fed[row] : fed[row] + count]
            mask[row, :count] = 1
        out = stream.feed(chunk, mask, logits="all")
        for row, count in enumerate(counts):
            expected = reference[row, fed[row] : fed[row] + count]
            torch.testing.assert_close(out[row, :count], expected, atol=ATOL, rtol=1e-4)
            fed[row] += count
    assert fed == [30, 30] and apart, "the sample-by-sample extension was not reached"


def test_a_stream_stopped_half_way_through_a_chunk_refuses_to_go_on(monkeypatch):
    """An error inside a feed (here the second segment's step) leaves part of the chunk in the memory: the stream
    says so at its next use instead of reading on from an incomplete state. Bad input refused before anything is
    read leaves it usable."""
    model = decoder("rmt")

    def ids(batch: int, length: int) -> torch.Tensor:
        return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(length))

    stream = model.stream()
    with pytest.raises(InputError, match="reads 1 samples"):
        stream.feed(ids(2, 4))
    stream.feed(ids(1, 4))  # still usable
    step, calls = model.step, []

    def failing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return step(*args, **kwargs)

    monkeypatch.setattr(model, "step", failing_step)
    with pytest.raises(RuntimeError, match="out of memory"):
        stream.feed(ids(1, 20))
    monkeypatch.setattr(model, "step", step)
    for use in (lambda: stream.feed(ids(1, 2)), stream.last_logits, lambda: stream.memory_state):
        with pytest.raises(
            InputError, match="stopped half-way through a chunk .RuntimeError: out of memory.*new stream"
        ):
            use()


@pytest.mark.parametrize("batch_size", [1.5, 2.0, True, "2"])
def test_a_stream_of_a_batch_size_that_is_no_whole_number_is_refused(batch_size):
    """1.5 failed inside torch (expand() takes 1 positional argument ...); "2" in a comparison."""
    with pytest.raises(InputError, match="batch_size must be a whole number of samples"):
        decoder("armt").stream(batch_size=batch_size)
