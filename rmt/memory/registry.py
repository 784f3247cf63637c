"""Which memory model class serves which (mode, memory_kind) of an `RMTConfig`.

Model classes register themselves with `@register_model(mode, memory_kind)`; `model_class(config)` finds the class
for a config, which is how `from_pretrained` and `rmt.build.memory_model` build the right wrapper. `model_class`
imports `rmt.memory` (inside the function) so that every class has registered itself: the model modules import this
one, and this one needs them loaded, an import cycle kept on purpose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rmt.config import RMTConfig
from rmt.errors import InputError

if TYPE_CHECKING:
    from rmt.memory.interface import MemoryModel

_MODEL_CLASSES: dict[tuple[str, str], type[MemoryModel]] = {}


def register_model(mode: str, memory_kind: str) -> Callable[[type], type]:
    """Class decorator: the model class used for (config.mode, config.memory_kind)."""

    def register(cls: type) -> type:
        _MODEL_CLASSES[(mode, memory_kind)] = cls
        return cls

    return register


def model_class(config: RMTConfig) -> type[MemoryModel]:
    """The registered class for `config` (importing rmt.memory registers every class)."""
    import rmt.memory  # noqa: F401

    key = (config.mode, config.memory_kind)
    if key not in _MODEL_CLASSES:
        raise InputError(f"no memory model for mode={config.mode!r}, memory_kind={config.memory_kind!r}")
    return _MODEL_CLASSES[key]
