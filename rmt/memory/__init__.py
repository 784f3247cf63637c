"""Memory models: the shared segment recurrence and the RMT (and ARMT) wrappers."""

from rmt.memory.armt import ARMTForCausalLM
from rmt.memory.outputs import GenerateOutput, RMTOutput, SegmentOutput
from rmt.memory.recurrent import RecurrentMemoryModel
from rmt.memory.registry import model_class
from rmt.memory.rmt import RMTForCausalLM, RMTForSequenceClassification
from rmt.memory.state import detach as detach_state

__all__ = [
    "ARMTForCausalLM",
    "GenerateOutput",
    "RMTForCausalLM",
    "RMTForSequenceClassification",
    "RMTOutput",
    "RecurrentMemoryModel",
    "SegmentOutput",
    "detach_state",
    "model_class",
]
