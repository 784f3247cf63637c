"""What loading a backbone or a saved memory model needs, shared by `rmt.build` (backbones) and
`rmt.memory.pretrained` (memory-model checkpoints): dtypes by name, one-line errors, the hub-id test, transformers'
loading report as one phrase, whether the Hugging Face Hub can be reached, and the layout of a checkpoint folder.

A checkpoint folder holds MEMORY_CONFIG (the RMTConfig), MEMORY_WEIGHTS (the wrapper's own parameters) and the
backbone in BACKBONE_DIR, a plain Hugging Face folder.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rmt.errors import InputError

MEMORY_WEIGHTS = "memory.safetensors"
MEMORY_CONFIG = "rmt_config.json"
BACKBONE_DIR = "backbone"

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype given by name ("fp32", "bf16", "fp16", as the command line takes it) or as a torch dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise InputError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    return dtype


def dtype_keywords(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with a dtype given by name as the command line names it ("bf16"), under `dtype` or its older name
    `torch_dtype`, as `dtype` and a torch dtype; "auto" (the checkpoint's own dtype, transformers' default) is kept."""
    converted = dict(kwargs)
    if "torch_dtype" in converted:
        if "dtype" in converted:
            raise InputError("give dtype or torch_dtype, not both")
        converted["dtype"] = converted.pop("torch_dtype")
    if converted.get("dtype", "auto") != "auto":
        converted["dtype"] = torch_dtype(converted["dtype"])
    return converted


def one_line(err: Exception) -> str:
    """An error's message on one line (transformers' messages span several)."""
    return " ".join(str(err).split())


def looks_like_hub_id(name: str) -> bool:
    """Whether `name` has the form of a Hugging Face Hub id ("owner/name"; not a relative or absolute path)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


# How long a failed connection to the Hub is believed (a long-running process may see the network come back)
_UNREACHABLE_FOR_S = 60.0
_connection_tried: dict[str, tuple[float, str | None]] = {}
# How long the name lookup, and then each address's connection, may take before the Hub counts as unreachable
_PROBE_TIMEOUT_S = 3.0


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached from here, or None when it may be: HF_HUB_OFFLINE is set, or its
    endpoint's name is not looked up within 3 seconds, or none of its addresses takes a direct connection within 3
    seconds each (not tried where a proxy serves it). A loader that finds it unreachable reads hub ids from the
    local cache alone (`local_files_only`), so a mistyped name is refused at once instead of after the hub library's
    retries (about half a minute). A success is remembered for the process, a failure for a minute."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlparse(constants.ENDPOINT)
    host = url.hostname or constants.ENDPOINT
    proxies = urllib.request.getproxies()
    if (proxies.get(url.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host):
        return None  # a direct connection says nothing about the proxy's
    tried = _connection_tried.get(constants.ENDPOINT)
    if tried is not None and (tried[1] is None or time.monotonic() - tried[0] < _UNREACHABLE_FOR_S):
        return tried[1]
    reason = _connection_problem(host, url.port or (80 if url.scheme == "http" else 443))
    _connection_tried[constants.ENDPOINT] = (time.monotonic(), reason)
    return reason


def _connection_problem(host: str, port: int) -> str | None:
    """Why no direct TCP connection to host:port opens, or None when one does: the name lookup may take
    _PROBE_TIMEOUT_S, then each address found as long (an address that drops packets, as unrouted IPv6 often does,
    does not use up the next one's time). The lookup runs in a daemon thread because getaddrinfo takes no timeout: a
    name server that does not answer would hold the caller for the resolver's own retries (5 s per try and server by
    default), which is what this probe is there to avoid."""
    found: list = []

    def look_up() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as err:
            found.append(err)

    lookup = threading.Thread(target=look_up, name="rmt-hub-lookup", daemon=True)
    lookup.start()
    lookup.join(_PROBE_TIMEOUT_S)
    if not found:
        return f"no answer from the name service for {host} within {_PROBE_TIMEOUT_S:g} s"
    if isinstance(found[0], OSError):
        return f"no connection to {host}: {found[0].strerror or found[0]}"
    error: OSError = OSError(f"{host} has no address")
    for family, kind, protocol, _, address in found[0]:
        with socket.socket(family, kind, protocol) as connection:
            connection.settimeout(_PROBE_TIMEOUT_S)
            try:
                connection.connect(address)
                return None
            except OSError as err:
                error = err
    return f"no connection to {host}: {error.strerror or error}"


def model_inside(folder: Path) -> str:
    """' (its model is FOLDER/model)' when `folder` is a training run or checkpoint folder holding a saved memory model,
    else '': the hint for a path one level too high."""
    inner = folder / "model"
    return f" (its model is {inner})" if (inner / MEMORY_CONFIG).is_file() else ""


def loading_problems(info: dict, kinds: list[str], allowed: Callable[[str], bool] = lambda name: False) -> str:
    """The weights that transformers' loading info (`from_pretrained(..., output_loading_info=True)`) lists under
    `kinds` ("missing_keys", "unexpected_keys", "mismatched_keys") and `allowed` does not accept, as one phrase
    ("missing keys: a, b; mismatched keys: c [2, 4] in the files, [3, 4] by the config"); "" when there are none."""
    problems = {}
    for kind in kinds:
        keys = [key for key in info.get(kind) or () if not allowed(key[0] if isinstance(key, tuple) else str(key))]
        if keys:
            problems[kind] = sorted(map(describe_key, keys))
    return "; ".join(f"{kind.replace('_', ' ')}: {', '.join(keys[:5])}" for kind, keys in problems.items())


def describe_key(key: object) -> str:
    """A weight's name from transformers' loading info; a mismatched one comes as (name, shape in the files, shape
    the config gives)."""
    if isinstance(key, tuple) and len(key) == 3:
        name, found, expected = key
        return f"{name} {list(found)} in the files, {list(expected)} by the config"
    return str(key)
