"""ARMT inference: the diagonal schedule and the diagonal-batching engine."""

from rmt.inference.diagonal import DiagonalARMT
from rmt.inference.schedule import diagonal_schedule

__all__ = ["DiagonalARMT", "diagonal_schedule"]
