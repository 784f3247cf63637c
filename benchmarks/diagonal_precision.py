"""Where the diagonal engine's bf16 error comes from: sequential and diagonal ARMT in bf16, each against fp32.

    python -m benchmarks.diagonal_precision --config llama-1b --length 4096 \\
        --output benchmarks/results/diagonal_precision-llama-1b-cpu.json
    python -m benchmarks.diagonal_precision --config llama-1b --device cuda --length 131072 \\
        --output benchmarks/results/diagonal_precision-llama-1b-cuda-131072.json

The same model (a random Llama of a benchmarks/armt_speed.py shape, or the trained SmolLM2-135M with `--config
smollm2`; ARMT's W_v small and non-zero) reads the same input four ways: sequential ARMT in fp32 (the reference),
sequential in bf16, and the diagonal engine in bf16 with every cell of a step in one grouped computation ("all") and
one cell at a time (group_size=1). It reports each bf16 path's relative L2 error of the last token's logits against
fp32 and against sequential bf16. On a CPU the grouped engine is the sequential computation bit for bit (error 0.0);
before that was made so, it was 0.023 (Llama-3.2-1B shape) and 0.047 (SmolLM2) from sequential bf16, from the
places where a group rounded differently from one layer: the MLP run in row chunks, matrix-vector products in the
associative memory, beta's fp32 sigmoid (computed differently on a tail of elements), per-layer attention scales
folded into the queries and, at some shapes, batched products (bf16, 18 to 32 rows here). A last-bit difference in
one cell grows through the layers and segments of a recurrence.
It also runs the grouped engine in fp32 against sequential fp32 (`diagonal_all_fp32_vs_sequential_fp32`): the
engine's own exactness, free of bf16 rounding. On long inputs that number grows with the length on a random model,
whose recurrence amplifies any rounding-level difference from segment to segment; it then measures the model, not
the engine. On CUDA the fp32 paths run without TF32, so fp32 means fp32.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.armt_speed import CONFIGS
from benchmarks.common import RESULTS_DIR, add_armt_shape_arguments, device_name, torch_threads, write_json
from rmt import ARMTForCausalLM, RMTConfig
from rmt.inference import DiagonalARMT


def build(config: str, segment: int, memory: int, d_mem: int, length: int, device: str = "cpu") -> ARMTForCausalLM:
    """A random Llama of a benchmarks/armt_speed.py shape, or the real SmolLM2-135M ("smollm2"), in ARMT, in fp32 on
    `device` (a random backbone is initialised there: its weights differ between devices, not between runs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if config == "smollm2":
        from rmt.build import pretrained_backbone

        backbone = pretrained_backbone("smollm2").to(device)
    else:
        with torch.device(device):
            config_ = LlamaConfig(**CONFIGS[config], max_position_embeddings=max(length, 2 * segment))
            backbone = LlamaForCausalLM(config_)
    model = ARMTForCausalLM(
        backbone.eval(), RMTConfig(memory_kind="armt", segment_size=segment, num_memory_tokens=memory, d_mem=d_mem)
    ).eval()
    with torch.no_grad():
        w_v = torch.randn(model.w_v.shape, generator=torch.Generator().manual_seed(1)) * 0.002
        model.w_v.copy_(w_v.to(model.w_v.device))
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def measure(args: argparse.Namespace) -> dict:
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
    model = build(args.config, args.segment_size, args.memory_tokens, args.d_mem, args.length, args.device)
    vocab = model.vocab_size
    ids = torch.randint(0, vocab, (1, args.length), generator=torch.Generator().manual_seed(2)).to(args.device)
    timings = {}

    def timed(name: str, run) -> torch.Tensor:
        started = time.perf_counter()
        out = run()
        if cuda:
            torch.cuda.synchronize()
        timings[name] = time.perf_counter() - started
        return out

    reference = timed("sequential_fp32", lambda: model(ids, logits="last").logits)
    grouped_fp32 = timed("diagonal_all_fp32", lambda: DiagonalARMT(model, group_size=None)(ids, logits="last").logits)
    model = model.to(torch.bfloat16)
    sequential = timed("sequential_bf16", lambda: model(ids, logits="last").logits)
    grouped = timed("diagonal_all_bf16", lambda: DiagonalARMT(model, group_size=None)(ids, logits="last").logits)
    one = timed("diagonal_1_bf16", lambda: DiagonalARMT(model, group_size=1)(ids, logits="last").logits)
    paths = {"sequential_bf16": sequential, "diagonal_all_bf16": grouped, "diagonal_1_bf16": one}
    return {
        "config": args.config,
        "length": args.length,
        "segment_size": args.segment_size,
        "memory_tokens": args.memory_tokens,
        "device": device_name(args.device),
        "threads": args.threads,
        "diagonal_all_fp32_vs_sequential_fp32": relative_error(grouped_fp32, reference),
        "error_vs_fp32": {name: relative_error(out, reference) for name, out in paths.items()},
        "error_vs_sequential_bf16": {name: relative_error(out, sequential) for name, out in paths.items()},
        "max_abs_vs_sequential_bf16": {
            name: float((out.float() - sequential.float()).abs().max()) for name, out in paths.items()
        },
        "seconds": timings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        default="small",
        choices=[*sorted(CONFIGS), "smollm2"],
        help="a random Llama of a benchmarks/armt_speed.py shape, or smollm2: the trained SmolLM2-135M "
        "(default: %(default)s)",
    )
    parser.add_argument("--length", type=int, default=4096, help="input length in tokens (default: %(default)s)")
    add_armt_shape_arguments(parser)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--output", default=None, help="result file (default: results/diagonal_precision-CONFIG-DEVICE.json)"
    )
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        record = measure(args)
    device = args.device.split(":")[0]
    output = Path(args.output or RESULTS_DIR / f"diagonal_precision-{args.config}-{device}.json")
    write_json(output, record)
    print(f"{args.config}, {args.length} tokens, {record['device']}")
    for key in ("error_vs_fp32", "error_vs_sequential_bf16"):
        print(key, {k: round(v, 5) for k, v in record[key].items()})
    print("diagonal_all_fp32_vs_sequential_fp32", f"{record['diagonal_all_fp32_vs_sequential_fp32']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
