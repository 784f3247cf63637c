"""ARMT inference speed and memory by sequence length: full attention vs sequential ARMT vs diagonal batching.

Run from the repository root:
    python -m benchmarks.armt_speed --config small --device cpu --lengths 4096 8192 16384 32768
    python -m benchmarks.armt_speed --config llama-1b --device cuda --dtype bfloat16      # 4k .. 128k

For each length N, on one random sequence (batch 1, weights random, seeded identically in every measurement):
- `full`: the backbone alone on all N tokens (HF forward, full causal attention, no cache, logits of the last token
  only via `logits_to_keep=1`); an out-of-memory error is caught and reported as "oom";
- `sequential`: ARMT segment by segment through `ARMTForCausalLM.encode` (the per-segment code of `forward`, without
  the LM head on every token) and the LM head on the last token;
- `diagonal`: the diagonal-batching engine (`rmt.inference.DiagonalARMT`, logits="last"; `--group-size` caps the
  cells per grouped computation; default "auto": 1 on CPU, where one cell at a time keeps its cache locality,
  the whole diagonal elsewhere). `--full-max-length` skips full attention above a length (on CPU, 128k tokens of
  full attention take hours).
All three produce the last token's logits, so each pays for the same work: every hidden state, one LM head.

Each measurement runs in a fresh subprocess (`python -m benchmarks.armt_speed --worker ...`, so no allocator cache or
earlier peak leaks into the next one): build the model, warm up on a short input, then time `--repeats` runs (median
reported) with the device synchronised; the process CPU time is recorded too (on a shared CPU it is less disturbed
by other processes than wall time), and the minor page faults per run (`minor_faults_per_run`). The workers run
with glibc's malloc told to keep freed memory for reuse (`MALLOC_MMAP_THRESHOLD_` 32 MiB, `MALLOC_TRIM_THRESHOLD_`
1 GiB): by default it hands blocks of a segment's size back to the kernel and faults them in again on every run,
page faults whose cost depends on the process's allocation history and has nothing to do with the method.
`--system-malloc` keeps glibc's defaults.
Then a `paired` run times sequential and diagonal alternately in one process, `--repeats` rounds with the order
swapped every round, and reports the median per-round diagonal/sequential ratio: separate subprocesses run minutes
apart, and on a shared machine the load changes in between; alternating cancels that (`--no-paired` skips it).
Peak memory: on CUDA `torch.cuda.max_memory_allocated` over the timed runs (weights included; the diagonal engine's
stacked copy of the layer weights too). On CPU there is no allocator counter: the peak resident set size of the
worker process over the timed runs (VmHWM, reset just before them: `reset_peak_rss`), and the resident size just
before them (model and engine built, warm-up done, its working set still resident), so `peak - before` is what the
timed runs added beyond the warm-up. Entries without "peak_of" hold the process's ru_maxrss instead, which building
the model (in fp32, then cast) set: their CPU peaks are the same for every method and say nothing about the runs.

Output: a table on stdout and a JSON file (`--output`, rewritten after every length with `meta.complete` false until
the last one) with the device name, torch/transformers versions, the model config, every measurement, and the
ratios: diagonal/sequential time, ARMT time per token at each length relative to the first length,
full-attention/diagonal time, and the diagonal-vs-sequential error on the last token's logits
(max abs, max abs relative to the largest logit, and the relative L2 error). On CPU the sequential run also records
every segment's time and its drift (median of the last quarter of the segments over the first quarter): per-token
time compared across lengths mixes in how fast the machine ran in each subprocess, while the drift compares
segments of one run, so a segment that costs more late in a long sequence shows there.

Committed results (the README quotes them): benchmarks/results/armt_speed-small-cpu.json (4k-128k, 3 repeats) and
armt_speed-small-cpu-paired10.json (8k and 16k, sequential and diagonal, 10 paired rounds), both on a shared 2-core
Intel Xeon with 1 thread; armt_speed-llama-1b-cuda.json (4k-131k on one NVIDIA H200, bf16, 3 repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import (
    RESULTS_DIR,
    add_armt_shape_arguments,
    add_device_argument,
    device_name,
    in_turns,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    run_module,
    write_json,
)
from rmt import ARMTForCausalLM, RMTConfig

METHODS = ("full", "sequential", "diagonal")
CONFIGS: dict[str, dict] = {
    "tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=1024,
    ),
    "small": dict(
        hidden_size=256, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, intermediate_size=1024,
        vocab_size=8192,
    ),
    # Llama-3.2-1B's shape (random weights).
    "llama-1b": dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192,
        vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True,
    ),
}  # fmt: skip


def build_model(args: argparse.Namespace, max_length: int) -> ARMTForCausalLM:
    """The random backbone in its ARMT wrapper, on args.device in args.dtype, identical in every worker."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**CONFIGS[args.config], max_position_embeddings=max(max_length, args.segment_size * 2))
    torch.manual_seed(0)
    with torch.device(args.device):
        backbone = LlamaForCausalLM(config).to(getattr(torch, args.dtype)).eval()
    memory = RMTConfig(
        memory_kind="armt",
        segment_size=args.segment_size,
        num_memory_tokens=args.memory_tokens,
        d_mem=args.d_mem,
    )
    model = ARMTForCausalLM(backbone, memory).eval()
    # A non-zero W_v so memory really flows (an untrained ARMT computes what its backbone computes). Its scale keeps
    # the random recurrence well conditioned: with a much larger W_v, rounding-level changes of the memory grow over
    # the segments until the logits error measures the random model's chaos rather than the engine.
    with torch.no_grad():
        generator = torch.Generator(device=args.device).manual_seed(1)
        model.w_v.copy_(torch.randn(model.w_v.shape, generator=generator, device=args.device) * 0.002)
    return model


def sequential_last_logits(
    model: ARMTForCausalLM, input_ids: torch.Tensor, segment_times: list[float] | None = None
) -> torch.Tensor:
    """ARMT segment by segment; segment_times (CPU only: no device sync) collects each segment's wall time."""
    seg = model.config.segment_size
    state = model.initial_state(input_ids.shape[0])
    mask = torch.ones_like(input_ids)
    for start in range(0, input_ids.shape[1], seg):
        began = time.perf_counter()
        hidden, state = model.encode(input_ids[:, start : start + seg], mask[:, start : start + seg], state)
        if segment_times is not None:
            segment_times.append(time.perf_counter() - began)
    return model.adapter.head(hidden[:, -1])  # [B, V]


def runner(method: str, model: ARMTForCausalLM, args: argparse.Namespace) -> Callable[[torch.Tensor], torch.Tensor]:
    """The timed function of a method: input_ids [B, N] -> the last token's logits [B, V]."""
    if method == "full":

        def run(ids: torch.Tensor) -> torch.Tensor:
            return model.backbone(ids, use_cache=False, logits_to_keep=1).logits[:, -1]

    elif method == "sequential":

        def run(ids: torch.Tensor) -> torch.Tensor:
            # On CPU, keep the last run's per-segment times: they show whether a segment costs more late in a long
            # sequence (it should not: each segment's work is the same) or the whole machine ran slower.
            run.segment_times = [] if args.device == "cpu" else None
            return sequential_last_logits(model, ids, run.segment_times)

    else:
        from rmt.inference import DiagonalARMT

        engine = DiagonalARMT(model, group_size=args.group_size)

        def run(ids: torch.Tensor) -> torch.Tensor:
            return engine(ids, logits="last").logits

        run.group_size = engine.group_size
    return run


def paired_timing(
    model: ARMTForCausalLM, input_ids: torch.Tensor, warm_ids: torch.Tensor, args: argparse.Namespace
) -> dict:
    """Sequential and diagonal timed alternately in one process (the order swapped every round): a slow drift of
    the machine (another process, frequency, cache) hits both alike, so the median per-round ratio is the
    trustworthy diagonal/sequential figure on a shared machine (`in_turns`)."""
    cuda = args.device.startswith("cuda")
    runs = {method: runner(method, model, args) for method in ("sequential", "diagonal")}
    times: dict[str, list[float]] = {"sequential": [], "diagonal": []}
    faults: dict[str, list[int]] = {"sequential": [], "diagonal": []}
    with torch.inference_mode():
        for run in runs.values():
            run(warm_ids)
        for _, method in in_turns(list(runs), args.repeats):
            if cuda:
                torch.cuda.synchronize()
            start, faults_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            runs[method](input_ids)
            if cuda:
                torch.cuda.synchronize()
            times[method].append(time.perf_counter() - start)
            faults[method].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
    ratios = [d / q for d, q in zip(times["diagonal"], times["sequential"], strict=True)]
    median = statistics.median(ratios)
    return {"method": "paired", "length": input_ids.shape[1], "status": "ok", "times_s": times,
            "minor_faults": faults, "diagonal_over_sequential": median, "ratios": ratios}  # fmt: skip


def worker(spec: dict) -> dict:
    """One measurement (method, length) in this process; writes the last-token logits to spec['logits_path']."""
    args = argparse.Namespace(**spec["args"])
    method, length = spec["method"], spec["length"]
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    model = build_model(args, length)
    vocab = model.backbone.config.vocab_size
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(0, vocab, (args.batch_size, length), generator=generator).to(args.device)
    warm_ids = input_ids[:, : min(length, args.segment_size * (model.adapter.num_layers + 1))]

    if method == "paired":
        return paired_timing(model, input_ids, warm_ids, args) | {"malloc_env": _malloc_env()}
    run = runner(method, model, args)
    if method == "full":
        warm_ids = input_ids[:, : args.segment_size]

    result = {"method": method, "length": length, "malloc_env": _malloc_env()}
    if method == "diagonal":
        result["group_size"] = run.group_size  # "auto" resolved: None = the whole diagonal
    try:
        with torch.inference_mode():
            run(warm_ids)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                result["before_mb"] = torch.cuda.memory_allocated() / 2**20
            else:
                result["before_mb"] = rss_bytes() / 2**20
                reset_peak_rss()  # building the model in fp32 before a cast to bf16 peaked above any run
            times, cpu_times = [], []
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(args.repeats):
                start, cpu_start = time.perf_counter(), time.process_time()
                logits = run(input_ids)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
        if cuda:
            result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            result["peak_mb"] = peak_rss_bytes() / 2**20
            result["peak_of"] = "timed runs"  # entries without it hold ru_maxrss: the model's construction peak
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
        result.update(
            status="ok",
            time_s=statistics.median(times),
            times_s=times,
            cpu_time_s=statistics.median(cpu_times),
            minor_faults_per_run=faults / args.repeats,
        )
        if getattr(run, "segment_times", None):
            result["segment_times_s"] = run.segment_times
            result["segment_drift"] = segment_drift(run.segment_times)
        torch.save(logits.float().cpu(), spec["logits_path"])
    except torch.OutOfMemoryError:
        result["status"] = "oom"
    return result


def segment_drift(times: list[float]) -> float | None:
    """Median time of the last quarter of the segments over the first quarter's (segment 0 excluded: it is the one
    that pays for lazy initialisation): ~1 when a segment costs the same wherever it sits in the sequence."""
    quarter = (len(times) - 1) // 4
    if quarter < 2:
        return None
    return statistics.median(times[-quarter:]) / statistics.median(times[1 : 1 + quarter])


# glibc malloc settings for the workers (see the module docstring): blocks under 32 MiB come from the heap, and the
# heap is given back to the kernel only when more than 1 GiB of it is free.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30)}


def _malloc_env() -> dict[str, str | None]:
    """The malloc settings this process was started with (recorded with each measurement)."""
    return {name: os.environ.get(name) for name in STEADY_MALLOC}


def measure(args: argparse.Namespace, method: str, length: int, logits_path: str) -> dict:
    """One measurement in a fresh worker process (`python -m benchmarks.armt_speed --worker SPEC`)."""
    spec = {"method": method, "length": length, "logits_path": logits_path, "args": _settings(args)}
    env = os.environ if args.system_malloc else os.environ | STEADY_MALLOC
    try:
        done = run_module("benchmarks.armt_speed", ["--worker", json.dumps(spec)], env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "length": length, "status": f"timeout after {args.timeout} s"}
    if done.returncode != 0:
        # A CPU run that exhausts memory is killed by the kernel (returncode -9) rather than raising.
        status = "killed (out of memory?)" if done.returncode == -9 else f"error: {done.stderr.strip()[-500:]}"
        return {"method": method, "length": length, "status": status}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _group_size(text: str) -> int | str | None:
    """--group-size: 'auto', 'all' (None: the whole diagonal) or an integer >= 1."""
    if text == "auto":
        return text
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, 'all' or 'auto', got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, 'all' or 'auto', got {text!r}")
    return value


def _settings(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("worker", "output")}


def logits_error(diagonal: torch.Tensor, sequential: torch.Tensor) -> dict:
    """How far the diagonal engine's last-token logits are from sequential ARMT's."""
    diff = (diagonal - sequential).abs()
    return {
        "max_abs": float(diff.max()),
        "max_abs_relative": float(diff.max() / sequential.abs().max()),
        "relative_l2": float((diagonal - sequential).norm() / sequential.norm()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.armt_speed", description=__doc__.split("\n")[0])
    add_device_argument(parser)
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument(
        "--config",
        default="small",
        choices=sorted(CONFIGS),
        help="shape of the random Llama backbone; llama-1b is Llama-3.2-1B's (default: %(default)s)",
    )
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=None,
        help="sequence lengths (default: 4096, 8192, ... up to 131072 on CUDA, 32768 on CPU)",
    )
    add_armt_shape_arguments(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="random sequences per input, each of the measured length (default: %(default)s)",
    )
    parser.add_argument(
        "--group-size",
        type=_group_size,
        default="auto",
        help="diagonal engine: at most this many cells per grouped layer call, 'all' for the whole diagonal, or "
        "'auto' (default: 1 on CPU, all elsewhere)",
    )
    parser.add_argument(
        "--full-max-length",
        type=int,
        default=None,
        help="skip full attention above this length (its time grows quadratically; default: no limit)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default: 3 CUDA, 1 CPU)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help="full (the backbone alone, full attention), sequential or diagonal ARMT (default: all three)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per measurement")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON file (default: benchmarks/results/armt_speed-<config>-<device>.json)",
    )
    parser.add_argument(
        "--no-paired",
        dest="paired",
        action="store_false",
        help="skip the paired timing (sequential and diagonal alternately in one process, the ratio to trust on "
        "a shared machine)",
    )
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="run the workers with glibc's default malloc settings instead of keeping freed memory for reuse "
        "(more page faults and noisier times on CPU)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.repeats = args.repeats or (3 if cuda else 1)
    top = 131072 if cuda else 32768
    args.lengths = args.lengths or [4096 * 2**i for i in range(6) if 4096 * 2**i <= top]
    output = args.output or RESULTS_DIR / f"armt_speed-{args.config}-{args.device.split(':')[0]}.json"

    import transformers

    meta = {
        "device": device_name(args.device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "malloc": "glibc defaults" if args.system_malloc else STEADY_MALLOC,
        "model_config": CONFIGS[args.config],
        "args": _settings(args),
    }
    settings = f"{args.config} config, {args.dtype}, segment {args.segment_size}, {args.memory_tokens} memory tokens"
    print(f"# {meta['device']}, torch {meta['torch']}, {settings}")
    rows = []
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            row: dict = {"length": length}
            for method in args.methods:
                if method == "full" and args.full_max_length and length > args.full_max_length:
                    row[method] = {"method": method, "length": length, "status": "skipped"}
                    print(f"  {length:>7} {method:<10} skipped (--full-max-length {args.full_max_length})")
                    continue
                path = os.path.join(tmp, f"{method}-{length}.pt")
                row[method] = measure(args, method, length, path)
                status = row[method]["status"]
                shown = f"{row[method]['time_s']:.2f} s" if status == "ok" else status
                print(f"  {length:>7} {method:<10} {shown}", flush=True)
            if args.paired and {"sequential", "diagonal"} <= set(args.methods):
                row["paired"] = measure(args, "paired", length, os.path.join(tmp, f"paired-{length}.pt"))
                shown = row["paired"].get("diagonal_over_sequential")
                print(f"  {length:>7} paired     diag/seq {shown:.3f}" if shown else f"  {length:>7} paired     "
                      f"{row['paired']['status']}", flush=True)  # fmt: skip
            if all(row.get(m, {}).get("status") == "ok" for m in ("sequential", "diagonal")):
                row["logits_error"] = logits_error(
                    torch.load(os.path.join(tmp, f"diagonal-{length}.pt")),
                    torch.load(os.path.join(tmp, f"sequential-{length}.pt")),
                )
            rows.append(row)
            # Saved after every length: a run stopped part-way (a time limit, a crash) keeps what it measured.
            partial = meta | {"complete": False, "lengths_done": [r["length"] for r in rows]}
            write_json(output, {"meta": partial, "results": rows, "ratios": compute_ratios(rows)})
    ratios = compute_ratios(rows)
    meta |= {"complete": True, "load_average_at_end": os.getloadavg()}
    print_table(rows, ratios, cuda)
    write_json(output, {"meta": meta, "results": rows, "ratios": ratios})
    print(f"wrote {output}")


def _time(row: dict, method: str) -> float | None:
    entry = row.get(method, {})
    return entry.get("time_s") if entry.get("status") == "ok" else None


def compute_ratios(rows: list[dict]) -> list[dict]:
    """Per length: diagonal/sequential time (wall, process CPU time, paired), full/diagonal, the sequential
    segment drift, and each ARMT method's time per token relative to the first length's."""
    base = rows[0]
    out = []
    for row in rows:
        ratio: dict = {"length": row["length"]}
        full, seq, diag = (_time(row, m) for m in METHODS)
        if row.get("paired", {}).get("status") == "ok":
            ratio["diagonal_over_sequential_paired"] = row["paired"]["diagonal_over_sequential"]
        if seq and diag:
            ratio["diagonal_over_sequential"] = diag / seq
            # Process CPU time too: on a shared machine it is less disturbed by other processes than wall time.
            ratio["diagonal_over_sequential_cpu_time"] = row["diagonal"]["cpu_time_s"] / row["sequential"]["cpu_time_s"]
        if full and diag:
            ratio["full_over_diagonal"] = full / diag
        if row.get("sequential", {}).get("segment_drift") is not None:
            ratio["sequential_segment_drift"] = row["sequential"]["segment_drift"]
        for method in ("sequential", "diagonal"):
            now, first = _time(row, method), _time(base, method)
            if now and first:  # time per token relative to the first length: flat = linear scaling
                ratio[f"{method}_per_token_vs_first"] = (now / row["length"]) / (first / base["length"])
        out.append(ratio)
    return out


def print_table(rows: list[dict], ratios: list[dict], cuda: bool) -> None:
    """The measurements and ratios, one line per length, on stdout."""
    memory = "peak MiB (allocated)" if cuda else "peak RSS MiB (+ added by the run)"
    header = [
        *("length", "full s", "seq s", "diag s", "diag/seq", "(cpu t)", "(paired)", "full/diag", "seq/tok", "diag/tok"),
        *("seg drift", "logit err"),
    ]
    print("\n" + " | ".join(f"{h:>9}" for h in header) + f" | {memory}: full / seq / diag")

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for row, ratio in zip(rows, ratios, strict=True):
        cells = [str(row["length"])]
        mems = []
        for method in METHODS:
            entry = row.get(method, {})
            ok = entry.get("status") == "ok"
            cells.append(fmt(entry["time_s"], ".2f") if ok else entry.get("status", "-"))
            if not ok:
                mems.append("-")
            elif cuda:
                mems.append(f"{entry['peak_mb']:.0f}")
            else:
                mems.append(f"{entry['peak_mb']:.0f} (+{max(0.0, entry['peak_mb'] - entry['before_mb']):.0f})")
        cells += [
            fmt(ratio.get("diagonal_over_sequential"), ".3f"),
            fmt(ratio.get("diagonal_over_sequential_cpu_time"), ".3f"),
            fmt(ratio.get("diagonal_over_sequential_paired"), ".3f"),
            fmt(ratio.get("full_over_diagonal"), ".2f"),
            fmt(ratio.get("sequential_per_token_vs_first"), ".2f"),
            fmt(ratio.get("diagonal_per_token_vs_first"), ".2f"),
            fmt(ratio.get("sequential_segment_drift"), ".2f"),
            fmt(row.get("logits_error", {}).get("max_abs_relative"), ".1e"),
        ]
        print(" | ".join(f"{c:>9}" for c in cells) + " | " + " / ".join(mems))


if __name__ == "__main__":
    main()
