"""rmt: recurrent memory (RMT, ARMT) for any Hugging Face transformer."""

from rmt.config import RMTConfig
from rmt.memory import (
    ARMTForCausalLM,
    RecurrentMemoryModel,
    RMTForCausalLM,
    RMTForSequenceClassification,
    RMTOutput,
)

__version__ = "0.1.0"

__all__ = [
    "ARMTForCausalLM",
    "RMTConfig",
    "RMTForCausalLM",
    "RMTForSequenceClassification",
    "RMTOutput",
    "RecurrentMemoryModel",
    "__version__",
]
