"""Training: `train` (one Accelerate loop), `TrainConfig`, `evaluate`, checkpoints and schedules, and
`MemoryTrainer`, Hugging Face's Trainer for memory models.

`train`, `evaluate` and `MemoryTrainer` load on first use (`rmt.lazy`): the `rmt` command reads `TrainConfig` for
its flags without importing torch."""

from typing import TYPE_CHECKING

from rmt.lazy import lazy_exports
from rmt.train.config import TrainConfig

_EXPORTS = {"MemoryTrainer": "rmt.train.hf_trainer", "evaluate": "rmt.train.evaluation", "train": "rmt.train.loop"}
__all__ = ["MemoryTrainer", "TrainConfig", "evaluate", "train"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from rmt.train.evaluation import evaluate
    from rmt.train.hf_trainer import MemoryTrainer
    from rmt.train.loop import train
