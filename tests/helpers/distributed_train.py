"""A tiny training run for the multi-process tests: `torchrun --nproc_per_node 2 tests/helpers/distributed_train.py
OUT [--steps N] [--batch-size B] [--resume] [--slow-after K] [--fsdp] [--trainable all|memory|lora]
[--memory rmt|armt] [--first-segments N] [--ragged] [--untargeted-half] [--dropout P]` (--first-segments: copy 2
symbols per segment, N segments for the first 3 steps and 2 after; --ragged: the second half of each global batch
loses its first segment to left padding; --untargeted-half: the second half has no targets; --dropout: attention
dropout, so that every step draws random numbers and a resume must restore them). Every process writes its final
weights to OUT/rank{R}.pt so that the test can compare the processes with each other and with a one-process run.
`--slow-after K` sleeps after each step from step K on, so that a test can kill the job mid-run. A crash in native
code (an abort in the communication library) prints every thread's Python stack (faulthandler), so that a failing
test says where it happened."""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from rmt.build import memory_model, random_backbone
from rmt.config import RMTConfig
from rmt.data.sources import TaskSource
from rmt.data.tasks import CopyTask
from rmt.train.config import TrainConfig
from rmt.train.loop import train


class SlowSource(TaskSource):
    """A TaskSource that sleeps before each batch from step `after` on (so a test has time to kill the job), and
    can change the second half of each training batch: `ragged_segment` (a segment size) turns its first segment into
    left padding, `untargeted_half` drops its targets."""

    def __init__(self, task, seed: int, after: int | None, ragged_segment: int = 0, untargeted_half: bool = False):
        super().__init__(task, seed)
        self.after = after
        self.ragged_segment, self.untargeted_half = ragged_segment, untargeted_half

    def train_batch(self, step, batch_size, num_segments=None):
        if self.after is not None and step >= self.after:
            time.sleep(0.5)
        batch = super().train_batch(step, batch_size, num_segments)
        half = batch.input_ids.shape[0] // 2
        if self.ragged_segment:
            batch.attention_mask[half:, : self.ragged_segment] = 0
            batch.labels[half:, : self.ragged_segment] = -100
        if self.untargeted_half:
            batch.labels[half:] = -100
        return batch


def main() -> None:
    faulthandler.enable()
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--slow-after", type=int, default=None)
    parser.add_argument("--mixed-precision", default="no")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--trainable", default="all")
    parser.add_argument("--memory", default="rmt")
    parser.add_argument("--first-segments", type=int, default=None)
    parser.add_argument("--ragged", action="store_true")
    parser.add_argument("--untargeted-half", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument(
        "--record-rng", action="store_true", help="save each process's CPU generator state as it starts"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    task, segment_size, curriculum = CopyTask(length=4), CopyTask(length=4).segment_size_for(3), None
    if args.first_segments:  # a task per number of segments, as the curriculum asks for it
        task, segment_size = (lambda n: CopyTask(length=2 * n)), CopyTask(length=2).segment_size_for(1)
        curriculum = [(0, args.first_segments), (3, 2)]
    vocab_size = CopyTask(length=4).vocab_size
    backbone = random_backbone("llama", vocab_size, num_layers=1, hidden_size=32, max_positions=64, seed=0)
    for layer in backbone.model.layers:
        layer.self_attn.attention_dropout = args.dropout
    memory = {"memory_kind": "armt", "d_mem": 8} if args.memory == "armt" else {}
    model = memory_model(backbone, RMTConfig(num_memory_tokens=2, segment_size=segment_size, **memory))
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=1e-2,
        warmup_steps=1,
        eval_every=3,
        eval_batches=3,  # shared out over the processes: each scores a share
        eval_batch_size=8,
        log_every=1,
        checkpoint_every=2,
        mixed_precision=args.mixed_precision,
        fsdp=args.fsdp,
        trainable=args.trainable,
        lora_rank=2,
        curriculum=curriculum,
        progress=False,
    )
    accelerator = Accelerator(cpu=True, mixed_precision=args.mixed_precision)
    if args.record_rng:  # the generator state that the first micro-batch's dropout draws from
        first_call = model.forward_backward

        def recording(*inputs, **options):
            path = Path(args.output) / f"rng{accelerator.process_index}.pt"
            if not path.exists():
                torch.save(torch.get_rng_state(), path)
            return first_call(*inputs, **options)

        model.forward_backward = recording
    source = SlowSource(task, 0, args.slow_after, segment_size if args.ragged else 0, args.untargeted_half)
    train(model, source, config, args.output, resume=args.resume, accelerator=accelerator)
    weights = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    torch.save(weights, f"{args.output}/rank{accelerator.process_index}.pt")
    if accelerator.is_main_process and not args.fsdp:
        model.save_pretrained(f"{args.output}/model")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # tear the process group down before the interpreter exits, not during its teardown
    # Every result is written. Leave without running C++ static destructors: once in a full suite on a busy 2-core
    # machine a worker died here with "terminate called without an active exception" (a communication thread
    # destroyed while still joinable), failing a run whose files were complete.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
