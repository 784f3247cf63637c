"""A tiny MemoryTrainer run for the multi-process test: `torchrun --nproc_per_node 2 tests/helpers/hf_trainer_run.py
OUT BATCH [CHECKPOINT]` trains an RMT over a tied-embedding GPT-2 for 4 steps of BATCH samples per process (saving at
steps 2 and 4), resuming from CHECKPOINT when one is given, and writes each process's final weights to
OUT/rank{R}.pt. The test runs the same in one process (`build`, `records`, `arguments`) to compare. It fails where
a DDP wrapper outlives training."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments

from rmt import RMTConfig, RMTForCausalLM
from rmt.build import random_backbone
from rmt.train import MemoryTrainer


def build() -> RMTForCausalLM:
    backbone = random_backbone("gpt2", 64, 2, 32, 4, 256)
    torch.manual_seed(0)
    return RMTForCausalLM(backbone, RMTConfig(num_memory_tokens=2, segment_size=16, bptt_depth=2))


def records(samples: int = 16, length: int = 40) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, 60, (length,), generator=generator) for _ in range(samples)]
    return [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()} for x in ids]


def arguments(output: Path, batch_size: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output),
        per_device_train_batch_size=batch_size,
        max_steps=4,
        save_steps=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,  # under torchrun alone
        disable_tqdm=True,
        seed=0,
    )


def main() -> None:
    output, batch_size = Path(sys.argv[1]), int(sys.argv[2])
    checkpoint = sys.argv[3] if len(sys.argv) > 3 else None
    trainer = MemoryTrainer(model=build(), args=arguments(output, batch_size), train_dataset=records())
    trainer.train(resume_from_checkpoint=checkpoint)
    # MemoryTrainer lets the DDP wrapper go after training (left alive, its reducer could hang the exit)
    wrappers = [o for o in gc.get_objects() if isinstance(o, torch.nn.parallel.DistributedDataParallel)]
    assert not wrappers, f"{len(wrappers)} DDP wrapper(s) still alive after train()"
    torch.save(trainer.model.state_dict(), output / f"rank{os.environ.get('RANK', '0')}.pt")
    trainer.accelerator.end_training()  # tear the process group down before the interpreter exits, not during it


if __name__ == "__main__":
    main()
