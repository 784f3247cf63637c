"""Training: `train` (one Accelerate loop), `TrainConfig`, `evaluate`, checkpoints and schedules."""

from rmt.train.config import TrainConfig
from rmt.train.evaluate import evaluate
from rmt.train.loop import train

__all__ = ["TrainConfig", "evaluate", "train"]
