"""The resident memory (RSS) of this process: now, and its peak since a point the caller chooses.

Evaluation by length records each cell's peak (`rmt eval --lengths`), and the benchmark scripts record each run's
(`benchmarks.common` wraps these functions to fail loudly where a peak cannot be the measured work's own).

- `rss_bytes()`: the resident size now (Linux: /proc/self/statm); None where /proc is missing.
- `reset_peak_rss()`: start the peak over from the current size (Linux 4.0 on: writing 5 to /proc/self/clear_refs
  resets VmHWM), so that a later peak is that of the work after the call. A process's getrusage peak never goes
  down, and loading a model (SmolLM2's GGUF de-quantized, a model built in fp32 then cast) can peak above anything
  the measured work reaches. False where it cannot be done: the peak is then the process's so far.
- `peak_rss_bytes()`: Linux's VmHWM (since the last reset, else since the process started), or getrusage's peak
  where /proc is missing (macOS); None where neither is (Windows).
"""

from __future__ import annotations

import sys
from pathlib import Path


def rss_bytes() -> int | None:
    """The resident size of this process now, in bytes (Linux: /proc/self/statm); None where /proc is missing."""
    try:
        statm = Path("/proc/self/statm").read_text()
    except OSError:
        return None
    import resource  # POSIX only; /proc exists only where it does

    return int(statm.split()[1]) * resource.getpagesize()


def reset_peak_rss() -> bool:
    """Start the peak resident size over from the current size; False where that cannot be done (see the module)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int | None:
    """The peak resident size of this process in bytes, since the last `reset_peak_rss` where that worked (VmHWM),
    else since the process started; None where it cannot be read (Windows)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    try:
        import resource  # POSIX only: imported where /proc is missing (macOS)
    except ImportError:  # Windows: not measured (None), rather than an error after the work was done
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
