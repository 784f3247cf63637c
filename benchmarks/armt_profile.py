"""Where sequential ARMT and the diagonal engine spend their time: busy device time and kernel count, one profiled run.

    python -m benchmarks.armt_profile --config llama-1b --device cuda --length 32768 --threads 0 \\
        --output benchmarks/results/armt_profile-llama-1b-cuda-32768.json

The model and input of benchmarks/armt_speed.py (random weights in bf16, the same seeds). Each path runs once to
warm up, once timed (wall clock, device synchronised) and once under torch's profiler, which sums the time the device
spent in kernels (`device_busy_s`) and counts the kernels (`kernel_launches`), with the six kernels that took the
most time. Busy time well under the wall time means the device waits for the host to launch the next small kernel;
the diagonal engine's grouped calls launch fewer, larger kernels. On CPU the same fields count the CPU operators.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.armt_speed import CONFIGS, build_model, sequential_last_logits
from benchmarks.common import (
    RESULTS_DIR,
    add_armt_shape_arguments,
    add_device_argument,
    device_name,
    torch_threads,
    write_json,
)
from rmt.inference import DiagonalARMT


def profiled(run: Callable[[], torch.Tensor], cuda: bool) -> dict:
    """Wall time of one run, then busy time, kernel count and the top kernels of another under the profiler."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    run()
    sync()
    started = time.perf_counter()
    run()
    sync()
    wall = time.perf_counter() - started
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as profiler:
        run()
        sync()
    events = profiler.key_averages()

    def busy(event) -> float:
        return (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e6

    top = sorted(events, key=busy, reverse=True)[:6]
    return {
        "wall_s": wall,
        "device_busy_s": sum(busy(event) for event in events),
        "kernel_launches": sum(event.count for event in events),
        "top": [(event.key[:60], event.count, busy(event)) for event in top],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        default="small",
        choices=sorted(CONFIGS),
        help="random Llama shape of benchmarks/armt_speed.py; llama-1b is Llama-3.2-1B's (default: %(default)s)",
    )
    add_device_argument(parser)
    parser.add_argument("--length", type=int, default=32768, help="tokens (default: %(default)s)")
    add_armt_shape_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: results/armt_profile-...)")
    args = parser.parse_args(argv)
    args.dtype, args.group_size = "bfloat16", None
    cuda = args.device.startswith("cuda")
    with torch_threads(args.threads):
        # Built outside inference mode: the engine watches the parameters' version counters.
        model = build_model(args, args.length)
        generator = torch.Generator().manual_seed(2)
        ids = torch.randint(0, model.backbone.config.vocab_size, (1, args.length), generator=generator)
        ids = ids.to(args.device)
        engine = DiagonalARMT(model, group_size=None)
        with torch.inference_mode():
            results = {
                "sequential": profiled(lambda: sequential_last_logits(model, ids), cuda),
                "diagonal": profiled(lambda: engine(ids, logits="last").logits, cuda),
            }
    for name, record in results.items():
        print(f"{name:<10} wall {record['wall_s']:.3f} s, busy {record['device_busy_s']:.3f} s, "
              f"{record['kernel_launches']} kernels")  # fmt: skip
    output = args.output or RESULTS_DIR / f"armt_profile-{args.config}-{args.device.split(':')[0]}-{args.length}.json"
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    write_json(output, {"device": device_name(args.device), "torch": torch.__version__, "args": settings, **results})


if __name__ == "__main__":
    main()
