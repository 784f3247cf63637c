"""Associative memory operators of ARMT: `naive` is the loop-by-loop reference, `associative` the vectorised path."""

from rmt.ops.associative import EPS, associative_read, associative_write, dpfp

__all__ = ["EPS", "associative_read", "associative_write", "dpfp"]
