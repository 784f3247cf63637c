"""Memory models: the shared segment recurrence and the RMT (and ARMT) wrappers."""

from rmt.memory.armt import ARMTForCausalLM
from rmt.memory.recurrent import RecurrentMemoryModel, RMTOutput, SegmentOutput, model_class
from rmt.memory.rmt import RMTForCausalLM, RMTForSequenceClassification

__all__ = [
    "ARMTForCausalLM",
    "RMTForCausalLM",
    "RMTForSequenceClassification",
    "RMTOutput",
    "RecurrentMemoryModel",
    "SegmentOutput",
    "model_class",
]
