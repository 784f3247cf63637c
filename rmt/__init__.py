"""rmt: recurrent memory (RMT, ARMT) for any Hugging Face transformer.

The classes below load on first use (`rmt.lazy`), so that importing the package, and the `rmt` command's start,
does not wait for torch and transformers."""

from typing import TYPE_CHECKING

from rmt.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ARMTForCausalLM": "rmt.memory",
    "RMTConfig": "rmt.config",
    "RMTForCausalLM": "rmt.memory",
    "RMTForSequenceClassification": "rmt.memory",
    "RMTOutput": "rmt.memory",
    "RecurrentMemoryModel": "rmt.memory",
}
__all__ = [
    "ARMTForCausalLM",
    "RMTConfig",
    "RMTForCausalLM",
    "RMTForSequenceClassification",
    "RMTOutput",
    "RecurrentMemoryModel",
    "__version__",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from rmt.config import RMTConfig
    from rmt.memory import (
        ARMTForCausalLM,
        RecurrentMemoryModel,
        RMTForCausalLM,
        RMTForSequenceClassification,
        RMTOutput,
    )
