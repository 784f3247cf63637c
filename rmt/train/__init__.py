"""Training: `train` (one Accelerate loop), `TrainConfig`, `evaluate`, checkpoints and schedules.

`train` and `evaluate` load on first use (`rmt.lazy`): the `rmt` command reads `TrainConfig` for its flags without
importing torch."""

from typing import TYPE_CHECKING

from rmt.lazy import lazy_exports
from rmt.train.config import TrainConfig

_EXPORTS = {"evaluate": "rmt.train.evaluation", "train": "rmt.train.loop"}
__all__ = ["TrainConfig", "evaluate", "train"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from rmt.train.evaluation import evaluate
    from rmt.train.loop import train
