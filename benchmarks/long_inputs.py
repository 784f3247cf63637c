"""Long inputs on SmolLM2-135M with recurrent memory, on the CPU: time per token and peak memory by input length,
generation with the open segment's cache, the diagonal engine, and bf16 against fp32 inference.

    python -m benchmarks.long_inputs reading --kinds rmt armt full --lengths 4096 16384 65536 262144 1048576
    python -m benchmarks.long_inputs reading --kinds full --lengths 8192  # its window (longer lengths are skipped)
    python -m benchmarks.long_inputs generation
    python -m benchmarks.long_inputs diagonal --length 16384
    python -m benchmarks.long_inputs precision --model runs/smollm2-armt-qa1/checkpoint/model --length 4k --samples 10
    python -m benchmarks.long_inputs bf16-speed --kinds rmt armt full --segment-sizes 128 256 1024 --length 4096
    python -m benchmarks.long_inputs bf16-gemm --segment-sizes 128 256 1024
    python -m benchmarks.long_inputs save-untrained --model runs/smollm2-armt-untrained
    python -m benchmarks.long_inputs save-untrained --model runs/smollm2-armt-untrained-128 --segment-size 128
    python -m benchmarks.long_inputs precision --model runs/smollm2-armt-untrained --length 4k --samples 10
    python -m benchmarks.long_inputs precision --model runs/smollm2-rmt-facts1/model --facts 1 --length 4k --samples 10
    python -m benchmarks.long_inputs precision --model runs/smollm2-armt-lora-writenorm-4seg/model --facts 1 \
        --length 1k --samples 10 --label "smollm2-armt-lora-writenorm-4seg @ 1k"   (and the same with 4k)

Every part adds its measurements to one JSON file (--output, default benchmarks/results/long_inputs-cpu.json); parts
may run at the same time in separate processes (one per core) and add to the same file. Each entry records the CPU
and the torch threads it was measured with; entries are keyed by what was measured (kind and length, kind and new
tokens, ...), so a run with other settings adds an entry instead of replacing one, and a run on another CPU adds its
entry beside the first one's as "KEY @ CPU".

- reading: a document of random tokens read through `model.stream()` in chunks of 8192 with logits="none" (only
  the last token's logits at the end), in a fresh process per (kind, length). The peak RSS is that of the reading:
  the high-water mark is reset once the model is loaded (`reset_peak_rss`). Entries without "peak_rss_of" hold the
  process's ru_maxrss, which loading SmolLM2 set (about 1135 MiB against about 905 MiB loaded): those peaks cannot
  show what reading added. Kinds: rmt (16 memory tokens), armt (16 memory tokens, d_mem 64), both with segments of
  1024; full = SmolLM2 alone with full attention (up to its 8192-token window), the last token's logits only.
  Per-token time and peak RSS are compared with the 4096-token run of the same kind (targets: within 1.1x and 5%).
- generation: 128 new tokens after a 1536-token prompt (one complete segment, 512 in the open one), with rmt's
  generate (the open segment's keys/values cached) against re-running the open segment for every token; same tokens.
  Both are warmed up on 2 new tokens first.
- diagonal: ARMT read sequentially (the stream) and by the diagonal engine on the same input: time and logits (both
  warmed up on the first two segments first).
- precision: a saved memory model's answers to BABILong samples in fp32 and with bf16 weights: tokens/s, whether
  the greedy answers agree, fp32's margin between its top two tokens where they first differ, and a teacher-forced
  comparison on fp32's answer tokens (top-token agreement, logit differences); one entry per --model (or
  --label). The two precisions take turns prompt by prompt, so their tokens/s ratio is measured under the same load;
  both are warmed up on the first prompt's first two segments first (entries with "warmed_up": false were measured
  before this warm-up, with the first-call costs in the first prompt's time).
  `save-untrained --model FOLDER` saves the untrained ARMT wrapper of the timing parts, whose answers are SmolLM2's own
  reading of the input, for a comparison on answers in plain words (`--segment-size`, default 1024: the
  wrapper's segments, e.g. 128 to match a model fine-tuned on segments of 128).
- bf16-speed: tokens/s with bf16 weights against fp32 by segment size, the two taking turns on one random document,
  with the time split by kind of operation (matmul, batched matmul, attention, other) from profiled passes;
  kind full = SmolLM2 alone on independent windows of a memory model's segment with its memory tokens.
- bf16-gemm: the ceiling of bf16 for the projections: SmolLM2's seven projection shapes on the rows of one segment
  with its memory tokens, fp32 against bf16 (as the model runs them, and with weights prepacked for oneDNN as
  TorchInductor's freezing does), and square products of 1024; no model runs, so this is the kernels alone.
Memory wrappers are untrained for the timing parts (W_v small and non-zero for ARMT, so the memory does work); time
does not depend on what the weights are.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    RESULTS_DIR,
    device_name,
    in_turns,
    peak_rss_bytes,
    reset_peak_rss,
    results_lock,
    rss_bytes,
    run_module,
    time_in_turns,
    torch_threads,
    write_json,
)

KINDS = ("rmt", "armt", "full")
SEGMENT, MEMORY, D_MEM, CHUNK = 1024, 16, 64, 8192
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(kind: str, dtype: torch.dtype = torch.float32, segment_size: int = SEGMENT) -> Any:
    """SmolLM2 alone ("full") or in an untrained memory wrapper with segments of `segment_size`, in eval mode."""
    from rmt import RMTConfig
    from rmt.build import memory_model, pretrained_backbone

    backbone = pretrained_backbone("smollm2", dtype=dtype).eval()
    if kind == "full":
        return backbone
    if kind == "rmt":
        config = RMTConfig(num_memory_tokens=MEMORY, segment_size=segment_size)
    else:
        config = RMTConfig(memory_kind="armt", num_memory_tokens=MEMORY, segment_size=segment_size, d_mem=D_MEM)
    model = memory_model(backbone, config).eval()
    if kind == "armt":
        with torch.no_grad():
            model.w_v.normal_(0.0, 0.002, generator=torch.Generator().manual_seed(1))
    return model


def random_chunks(length: int, vocab: int, seed: int = 0):
    """The document's tokens, chunk by chunk, from a seeded generator (never all in memory)."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, length, CHUNK):
        yield torch.randint(0, vocab, (1, min(CHUNK, length - start)), generator=generator)


def read_worker(kind: str, length: int) -> dict[str, Any]:
    """One reading run (in its own process): seconds, tokens/s and peak RSS."""
    model = build(kind)
    loaded = rss_bytes()
    vocab = model.config.vocab_size if kind == "full" else model.vocab_size
    reset_peak_rss()  # the peak of the reading alone: loading the GGUF weights peaks higher
    started = time.perf_counter()
    with torch.no_grad():
        if kind == "full":
            ids = torch.cat(list(random_chunks(length, vocab)), dim=1)
            model(ids, use_cache=False, logits_to_keep=1)
        else:
            stream = model.stream()
            for index, chunk in enumerate(random_chunks(length, vocab)):
                last = index == (length - 1) // CHUNK
                stream.feed(chunk, logits="last" if last else "none")
    seconds = time.perf_counter() - started
    return {
        "kind": kind,
        "length": length,
        "seconds": seconds,
        "tokens_per_second": length / seconds,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "peak_rss_of": "reading",  # entries without it hold ru_maxrss, the loading peak (see the module docstring)
        "rss_after_loading_mib": loaded / 2**20,
    }


def reading(args: argparse.Namespace, record: dict[str, Any]) -> None:
    runs = record.setdefault("reading", {})
    for kind in args.kinds:
        for length in args.lengths:
            if kind == "full" and length > 8192:
                continue  # beyond SmolLM2's window
            worker = ["--worker", kind, str(length), "--threads", str(args.threads)]
            done = run_module("benchmarks.long_inputs", worker)
            if done.returncode != 0:
                raise SystemExit(f"worker {kind} {length} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            runs[f"{kind}/{length}"] = result
            print(f"{kind:>5} {length:>8}: {result['tokens_per_second']:8.1f} tokens/s, "
                  f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
            save(args, record)


def generation(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """rmt's generate against re-running the open segment for every new token."""
    from rmt.memory.segments import closed_length

    out = record.setdefault("generation", {})
    for kind in ("rmt", "armt"):
        model = build(kind)
        prompt = next(random_chunks(SEGMENT + SEGMENT // 2, model.vocab_size, seed=3))
        # Warm-up: first-call allocations and kernel choices would otherwise land on whichever runs first.
        model.generate(prompt, max_new_tokens=2)
        recompute_generate(model, prompt, 2, closed_length)
        started = time.perf_counter()
        cached = model.generate(prompt, max_new_tokens=args.new_tokens, return_dict_in_generate=False)
        cached_seconds = time.perf_counter() - started
        started = time.perf_counter()
        recomputed = recompute_generate(model, prompt, args.new_tokens, closed_length)
        recompute_seconds = time.perf_counter() - started
        key = f"{kind}/{args.new_tokens}"  # another --new-tokens adds an entry, not replaces this one
        out[key] = {
            "prompt": prompt.shape[1],
            "new_tokens": args.new_tokens,
            "segment": SEGMENT,
            "cached_tokens_per_second": args.new_tokens / cached_seconds,
            "recompute_tokens_per_second": args.new_tokens / recompute_seconds,
            "speedup": recompute_seconds / cached_seconds,
            "same_tokens": bool(torch.equal(cached, recomputed)),
        }
        print(key, out[key], flush=True)
        save(args, record)


@torch.no_grad()
def recompute_generate(model: Any, prompt: torch.Tensor, new_tokens: int, closed_length: Any) -> torch.Tensor:
    """Greedy decoding that runs the whole open segment through `step` for every new token (no key/value cache)."""
    seg = model.config.segment_size
    closed = closed_length(prompt.shape[1], seg)
    state = model(prompt[:, :closed], logits="none").memory_state if closed else model.initial_state(1)
    current, tokens = prompt[:, closed:], [prompt]
    for _ in range(new_tokens):
        hidden, new_state = model.step(current, torch.ones_like(current), state)
        token = model.head(hidden[:, -1]).argmax(-1, keepdim=True)
        tokens.append(token)
        if current.shape[1] == seg:
            state, current = new_state, token
        else:
            current = torch.cat([current, token], dim=1)
    return torch.cat(tokens, dim=1)


def diagonal(args: argparse.Namespace, record: dict[str, Any]) -> None:
    from rmt.inference import DiagonalARMT

    model = build("armt")
    ids = torch.cat(list(random_chunks(args.length, model.vocab_size, seed=4)), dim=1)
    engine = DiagonalARMT(model)
    with torch.no_grad():
        warm = ids[:, : 2 * model.config.segment_size]  # first-call costs land on neither timed pass
        model.stream().feed(warm, logits="last")
        engine(warm, logits="last")
        started = time.perf_counter()
        stream = model.stream()
        sequential = stream.feed(ids, logits="last")
        sequential_seconds = time.perf_counter() - started
        started = time.perf_counter()
        diagonal_logits = engine(ids, logits="last").logits
        diagonal_seconds = time.perf_counter() - started
    error = float((diagonal_logits - sequential).norm() / sequential.norm())
    entry = {
        "length": args.length,
        "group_size": engine.group_size,
        "sequential_seconds": sequential_seconds,
        "diagonal_seconds": diagonal_seconds,
        "diagonal_over_sequential": diagonal_seconds / sequential_seconds,
        "relative_logits_error": error,
    }
    record["diagonal"] = {str(args.length): entry}  # one entry per length
    print(entry, flush=True)
    save(args, record)


def precision(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """A trained model's greedy answers to BABILong samples with fp32 and with bf16 weights, and why they differ:
    where a greedy answer flips, fp32's own margin between its top two tokens there; and, teacher-forced on fp32's
    answers (both precisions given the same tokens, so one flip does not change every later step), how often the top
    token agrees and how far bf16's logits are from fp32's."""
    from rmt.build import pretrained_tokenizer
    from rmt.data.babilong import answer_is_correct, answer_labels, build_dataset, parse_num_facts
    from rmt.data.collate import QACollator
    from rmt.data.haystack import default_haystack
    from rmt.memory.recurrent import RecurrentMemoryModel

    tokenizer = pretrained_tokenizer(args.model)
    num_facts = None if args.facts is None else parse_num_facts(args.facts, [args.task])
    samples = build_dataset(
        args.task, args.length, args.samples, tokenizer, default_haystack(), seed=11, num_facts=num_facts
    )
    prompts = [torch.tensor([p]) for p in QACollator(tokenizer, "decoder").prompt_ids([s.to_dict() for s in samples])]
    models = {
        name: RecurrentMemoryModel.from_pretrained(args.model, dtype=dtype).eval() for name, dtype in PRECISIONS.items()
    }
    # The two precisions take turns prompt by prompt, so a change in the machine's load (another job on the other
    # core) falls on both alike and their tokens/s ratio stays fair.
    for model in models.values():  # first-call allocations and kernel selection land on neither timed pass
        model.generate(prompts[0][:, : 2 * model.config.segment_size], max_new_tokens=2, do_sample=False)
    answer_ids = {name: [] for name in models}
    margins = {name: [] for name in models}
    seconds = dict.fromkeys(models, 0.0)
    tokens = 0
    for ids in prompts:
        tokens += ids.shape[1]
        for name, model in models.items():
            started = time.perf_counter()
            out = model.generate(
                ids,
                max_new_tokens=8,
                eos_token_id=tokenizer.eos_token_id,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
            seconds[name] += time.perf_counter() - started
            answer_ids[name].append(out.sequences[0, ids.shape[1] :].tolist())
            top_two = torch.stack(out.scores, dim=1)[0].float().topk(2, dim=-1).values  # [N, 2]
            margins[name].append((top_two[:, 0] - top_two[:, 1]).tolist())
    results = {}
    for name in models:
        answers = [tokenizer.decode(a, skip_special_tokens=True) for a in answer_ids[name]]
        labels = answer_labels(args.task)
        correct = sum(answer_is_correct(a, s.target, s.question, labels) for a, s in zip(answers, samples, strict=True))
        results[name] = {"tokens_per_second": tokens / seconds[name], "correct": correct, "answers": answers}
    same = sum(a == b for a, b in zip(answer_ids["fp32"], answer_ids["bf16"], strict=True))
    entry = args.label or str(args.model)
    record.setdefault("precision", {})[entry] = {
        "task": args.task,
        "facts": args.facts,
        "length": args.length,
        "samples": args.samples,
        **results,
        "same_answers": same,
        "bf16_speedup": results["bf16"]["tokens_per_second"] / results["fp32"]["tokens_per_second"],
        "warmed_up": True,
        "flips": greedy_flips(answer_ids["fp32"], answer_ids["bf16"], margins["fp32"]),
        "fp32_margins": quantiles([m for row in margins["fp32"] for m in row]),
        "teacher_forced": teacher_forced(models, prompts, answer_ids["fp32"]),
    }
    print({k: v for k, v in record["precision"][entry].items() if k not in ("fp32", "bf16")}, flush=True)
    save(args, record)


def bf16_speed(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """Reading speed with bf16 weights against fp32, by segment size: one random document of --length tokens read by
    each untrained wrapper (the last token's logits only), fp32 and bf16 taking turns, the best of --repeats
    passes each. Kind "full" is SmolLM2 alone reading the same document in independent windows as long as a memory
    model's segment with its memory tokens: the backbone's own bf16 gain on the rows it is given in a memory model.
    Profiled passes, again taking turns, split the time by kind of operation (`op_seconds`; of --repeats profiled
    passes per precision the one with the least total time counts), which shows where bf16 gains and where not."""
    results = record.setdefault("bf16_speed", {})
    for kind in args.kinds:
        for segment_size in args.segment_sizes:
            models = {name: build(kind, dtype, segment_size) for name, dtype in PRECISIONS.items()}
            vocab = models["fp32"].config.vocab_size if kind == "full" else models["fp32"].vocab_size
            ids = torch.cat(list(random_chunks(args.length, vocab)), dim=1)
            runs = {name: functools.partial(read_once, kind, m, ids, segment_size) for name, m in models.items()}
            with torch.no_grad():
                for model in models.values():  # warm-up: first-call allocations and kernel selection
                    read_once(kind, model, ids[:, : segment_size + 1], segment_size)
                best = {name: min(seconds) for name, seconds in time_in_turns(runs, args.repeats).items()}
                profile = least_busy_profiles(runs, args.repeats)
            entry = {f"{name}_tokens_per_second": ids.shape[1] / seconds for name, seconds in best.items()}
            entry.update(length=ids.shape[1], repeats=args.repeats, bf16_speedup=best["fp32"] / best["bf16"])
            entry["profile_seconds"] = profile
            entry["profile_speedup"] = {  # only the kinds of operation this model runs
                op: seconds / profile["bf16"][op] for op, seconds in profile["fp32"].items() if profile["bf16"][op] > 0
            }
            results[f"{kind}/segment {segment_size}"] = entry
            fp32, bf16 = entry["fp32_tokens_per_second"], entry["bf16_tokens_per_second"]
            by_op = ", ".join(f"{op} {ratio:.2f}x" for op, ratio in entry["profile_speedup"].items())
            print(
                f"{kind} segment {segment_size}: fp32 {fp32:.1f}, bf16 {bf16:.1f} tokens/s "
                f"({entry['bf16_speedup']:.2f}x; by operation: {by_op})",
                flush=True,
            )
            save(args, record)


def bf16_gemm(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """fp32 against bf16 matrix products at SmolLM2's projection shapes, the three variants taking turns, the best
    of --repeats rounds of GEMM_CALLS calls each. "bf16" is `F.linear` on bf16 tensors, what the model runs;
    "bf16 prepacked" holds the weight in oneDNN's blocked layout (where this torch build has those operators and
    this CPU runs them: AVX-512 or AVX-NE-CONVERT). One decoder layer's seven projections together give the gain the
    model's matmul time can have at best."""
    from rmt.build import pretrained_backbone

    layer = pretrained_backbone("smollm2").model.layers[0]
    projections = {  # name: (weight, how many of that shape one layer has)
        "q, o": (layer.self_attn.q_proj.weight, 2),
        "k, v": (layer.self_attn.k_proj.weight, 2),
        "gate, up": (layer.mlp.gate_proj.weight, 2),
        "down": (layer.mlp.down_proj.weight, 1),
    }
    results = record.setdefault("bf16_gemm", {})
    for rows in [size + MEMORY for size in args.segment_sizes]:
        layer_seconds: dict[str, float] = {}
        entry: dict[str, Any] = {}
        for name, (weight, count) in projections.items():
            seconds = time_gemm(torch.randn(rows, weight.shape[1]), weight.detach(), args.repeats)
            entry[name] = {"rows, in, out": [rows, weight.shape[1], weight.shape[0]], **gemm_speedups(seconds)}
            for variant, value in seconds.items():
                layer_seconds[variant] = layer_seconds.get(variant, 0.0) + count * value
        entry["layer"] = gemm_speedups(layer_seconds)
        results[f"rows {rows}"] = entry
        print(f"{rows} rows, one layer's seven projections: {format_speedups(entry['layer'])}", flush=True)
    square = torch.randn(1024, 1024)
    results["square 1024"] = gemm_speedups(time_gemm(square, square, args.repeats))
    print(f"square 1024: {format_speedups(results['square 1024'])}")
    save(args, record)


GEMM_CALLS = 20


def time_gemm(inputs: torch.Tensor, weight: torch.Tensor, rounds: int) -> dict[str, float]:
    """Seconds per `inputs @ weight.T` for each variant (fp32, bf16, bf16 prepacked) this torch build and CPU can
    run, the best of `rounds` rounds taken in turns."""
    inputs_bf16, weight_bf16 = inputs.bfloat16(), weight.bfloat16()
    products = {
        "fp32": functools.partial(torch.nn.functional.linear, inputs, weight),
        "bf16": functools.partial(torch.nn.functional.linear, inputs_bf16, weight_bf16),
    }
    mkldnn = torch.ops.mkldnn
    if torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight"):
        try:
            packed = mkldnn._reorder_linear_weight(weight_bf16, inputs.shape[0])
        except RuntimeError:  # the operator exists, but this CPU lacks the instructions its bf16 path needs
            pass
        else:
            products["bf16 prepacked"] = functools.partial(
                mkldnn._linear_pointwise, inputs_bf16, packed, None, "none", [], ""
            )

    def repeated(product: Callable[[], object]) -> None:
        for _ in range(GEMM_CALLS):
            product()

    with torch.no_grad():
        times = time_in_turns({name: functools.partial(repeated, p) for name, p in products.items()}, rounds, 1)
    return {name: min(seconds) / GEMM_CALLS for name, seconds in times.items()}


def gemm_speedups(seconds: dict[str, float]) -> dict[str, float]:
    """The variants' seconds and each bf16 variant's gain over fp32."""
    entry = {f"{variant} seconds": value for variant, value in seconds.items()}
    fp32 = seconds["fp32"]
    entry.update({f"{variant} speedup": fp32 / value for variant, value in seconds.items() if variant != "fp32"})
    return entry


def format_speedups(entry: dict[str, float]) -> str:
    return ", ".join(f"{key.removesuffix(' speedup')} {value:.2f}x" for key, value in entry.items() if "speedup" in key)


def read_once(kind: str, model: Any, ids: torch.Tensor, segment_size: int) -> None:
    """One pass over `ids` keeping only the last token's logits: a memory model reads it segment by segment; the
    backbone alone ("full") reads independent windows of `segment_size` + MEMORY tokens, a memory model's rows."""
    if kind != "full":
        model(ids, logits="last")
        return
    window = segment_size + MEMORY
    for start in range(0, ids.shape[1], window):
        model(ids[:, start : start + window], use_cache=False, logits_to_keep=1)


OPERATION_KINDS = {
    "matmul": lambda name: name in ("aten::mm", "aten::addmm"),
    "batched matmul": lambda name: name in ("aten::bmm", "aten::baddbmm"),
    "attention": lambda name: "scaled_dot_product" in name,
}


def least_busy_profiles(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict[str, float]]:
    """`op_seconds` of each run, `rounds` times in turns (`in_turns`); for each run the profile with the least total
    time, the one least disturbed by whatever else the machine did."""
    profiles: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    for _, name in in_turns(list(runs), rounds):
        profiles[name].append(op_seconds(runs[name]))
    return {name: min(found, key=lambda seconds: sum(seconds.values())) for name, found in profiles.items()}


def op_seconds(run: Callable[[], object]) -> dict[str, float]:
    """Self CPU seconds of one profiled call of `run` by kind of operation: matmul (the backbone's projections),
    batched matmul (ARMT's associative memory, kept in fp32), attention (the SDPA kernel) and everything else."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run()
    seconds = dict.fromkeys([*OPERATION_KINDS, "other"], 0.0)
    for event in profiler.key_averages():
        op = next((op for op, matches in OPERATION_KINDS.items() if matches(event.key)), "other")
        seconds[op] += event.self_cpu_time_total / 1e6
    return seconds


def greedy_flips(reference: list[list[int]], other: list[list[int]], margins: list[list[float]]) -> list[dict]:
    """Each answer that differs: the first generated token where it does and fp32's top-1/top-2 margin there."""
    flips = []
    for sample, (a, b) in enumerate(zip(reference, other, strict=True)):
        if a == b:
            continue
        token = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        margin = margins[sample][token] if token < len(margins[sample]) else None
        flips.append({"sample": sample, "token": token, "fp32_margin": margin})
    return flips


def quantiles(values: list[float]) -> dict[str, float]:
    """min, 10%, median, 90% and max of `values`."""
    ordered = torch.tensor(values, dtype=torch.float64)
    levels = {"min": 0.0, "p10": 0.1, "median": 0.5, "p90": 0.9, "max": 1.0}
    return {name: float(ordered.quantile(q)) for name, q in levels.items()}


@torch.no_grad()
def teacher_forced(models: dict[str, Any], prompts: list[torch.Tensor], answers: list[list[int]]) -> dict[str, Any]:
    """Both precisions read each prompt followed by fp32's answer; at every answer position compare the logits:
    top-token agreement, |bf16 - fp32| (largest over the vocabulary, and on fp32's top token) and the relative L2
    error, next to fp32's top-1/top-2 margin, for the positions where the top token differs."""
    agree, max_abs, top_abs, relative, disagreements = 0, [], [], [], []
    for ids, answer in zip(prompts, answers, strict=True):
        full = torch.cat([ids, torch.tensor([answer])], dim=1)
        positions = torch.arange(ids.shape[1] - 1, full.shape[1] - 1).unsqueeze(0)
        fp32 = models["fp32"](full, logits=positions).logits[0].float()
        bf16 = models["bf16"](full, logits=positions).logits[0].float()
        top = fp32.argmax(-1)
        difference = (bf16 - fp32).abs()
        for k in range(fp32.shape[0]):
            max_abs.append(float(difference[k].max()))
            top_abs.append(float(difference[k, top[k]]))
            relative.append(float((bf16[k] - fp32[k]).norm() / fp32[k].norm()))
            if int(bf16[k].argmax()) == int(top[k]):
                agree += 1
            else:
                two = fp32[k].topk(2).values
                disagreements.append({"fp32_margin": float(two[0] - two[1]), "fp32_top_logit": float(two[0])})
    return {
        "tokens": len(max_abs),
        "top_token_agrees": agree,
        "disagreements": disagreements,
        "max_abs_logit_difference": quantiles(max_abs),
        "top_logit_abs_difference": quantiles(top_abs),
        "relative_l2_error": quantiles(relative),
    }


def save_untrained(args: argparse.Namespace) -> None:
    """Save the timing parts' untrained ARMT wrapper of SmolLM2 to --model with its tokenizer (where `rmt train`
    puts it), for `precision`."""
    from rmt.build import pretrained_tokenizer

    build("armt", segment_size=args.segment_size).save_pretrained(args.model)
    pretrained_tokenizer("smollm2").save_pretrained(Path(args.model) / "backbone")
    print(f"saved the untrained ARMT to {args.model}")


def save(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """Add this run's measurements to the result file. Parts may run at the same time in several processes (one per
    core): under the results lock the file is read again and only this run's entries are replaced. Each entry names
    the CPU it was measured on and its torch threads, since the parts of one file may come from different machines
    and runs; an entry measured on another CPU is kept, and this run's goes beside it as "KEY @ CPU"."""
    device = device_name("cpu")
    for part in (value for value in record.values() if isinstance(value, dict)):
        for entry in part.values():
            entry.update(device=device, threads=args.threads)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with results_lock(path.parent):
        merged = json.loads(path.read_text()) if path.exists() else {}
        for key, value in record.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                for name, entry in value.items():
                    earlier = merged[key].get(name)
                    elsewhere = isinstance(earlier, dict) and earlier.get("device", device) != device
                    merged[key][f"{name} @ {device}" if elsewhere else name] = entry
            else:
                merged[key] = value
        write_json(path, merged)


def summary(record: dict[str, Any]) -> str:
    """Markdown table of the reading runs: tokens/s, per-token time and peak RSS against the 4096-token run of the
    same kind on the same CPU ("KEY @ CPU" entries apart); a peak is compared only with a peak of the same kind (the
    reading's, or the older entries' process peak, which loading set)."""
    runs = record.get("reading", {})
    lines = [
        "| kind | tokens | CPU | tokens/s | s/token vs 4k | peak RSS MiB (of) | RSS vs 4k |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        for key in sorted((k for k in runs if k.startswith(kind + "/")), key=lambda k: (_place(k), runs[k]["length"])):
            run, base = runs[key], runs.get(f"{kind}/4096{_place(key)}")
            per_token = (base["tokens_per_second"] / run["tokens_per_second"]) if base else float("nan")
            same_peak = base is not None and base.get("peak_rss_of") == run.get("peak_rss_of")
            rss = (run["peak_rss_mib"] / base["peak_rss_mib"]) if same_peak else float("nan")
            lines.append(
                f"| {kind} | {run['length']} | {run.get('device', '')} | {run['tokens_per_second']:.1f} | "
                f"{per_token:.3f} | {run['peak_rss_mib']:.0f} ({run.get('peak_rss_of', 'process')}) | {rss:.3f} |"
            )
    return "\n".join(lines)


def _place(key: str) -> str:
    """The " @ CPU" part of an entry's key ("" for the first CPU's entries)."""
    return key[key.index(" @ ") :] if " @ " in key else ""


PARTS = {
    "reading": reading,
    "generation": generation,
    "diagonal": diagonal,
    "precision": precision,
    "bf16-speed": bf16_speed,
    "bf16-gemm": bf16_gemm,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "part",
        nargs="?",
        choices=(*PARTS, "save-untrained", "summary"),
        help="part to measure into --output; save-untrained: save the untrained ARMT to --model; "
        "summary/none: only print the reading table",
    )
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=list(KINDS),
        choices=KINDS,
        help="reading, bf16-speed: rmt, armt (16 memory tokens), full (SmolLM2 alone) (default: %(default)s)",
    )
    parser.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=[4096, 16384, 65536, 262144],
        help="reading: document lengths in tokens (full skips those above 8192) (default: %(default)s)",
    )
    parser.add_argument("--length", default="16384", help="diagonal: tokens; precision: a BABILong length (4k)")
    parser.add_argument("--new-tokens", type=int, default=128, help="generation: tokens to generate")
    parser.add_argument(
        "--segment-sizes",
        nargs="+",
        type=int,
        default=[128, 1024],
        help="bf16-speed, bf16-gemm: segment sizes to compare",
    )
    parser.add_argument(
        "--segment-size",
        type=int,
        default=SEGMENT,
        help="save-untrained: the wrapper's segment size (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="bf16-speed, bf16-gemm: rounds per precision (the best counts)"
    )
    parser.add_argument("--model", default=None, help="precision: a saved memory model; save-untrained: where to")
    parser.add_argument("--task", default="qa1", help="precision: BABILong task")
    parser.add_argument("--facts", default=None, help="precision: facts per story, N or MIN-MAX (default: the task's)")
    parser.add_argument("--samples", type=int, default=10, help="precision: samples")
    parser.add_argument("--label", default=None, help="precision: entry name (default: --model)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--output", default=str(RESULTS_DIR / "long_inputs-cpu.json"), help="result file")
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        if args.worker:
            print(json.dumps(read_worker(args.worker[0], int(args.worker[1]))))
            return 0
        if args.part in ("diagonal", "bf16-speed"):
            args.length = int(args.length)
        if args.part in ("precision", "save-untrained") and args.model is None:
            raise SystemExit(f"{args.part} needs --model")
        if args.part == "save-untrained":
            save_untrained(args)
            return 0
        if args.part in PARTS:
            PARTS[args.part](args, {})  # only this run's measurements: `save` merges them into the file
        path = Path(args.output)
        print(summary(json.loads(path.read_text()) if path.exists() else {}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
