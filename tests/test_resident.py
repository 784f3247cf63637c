"""Tests of rmt.resident: the resident size of this process and its peak, with and without Linux's /proc."""

import resource
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rmt import resident


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resetting the peak needs Linux's clear_refs")
def test_the_peak_is_the_work_after_the_reset():
    held = torch.ones(50_000_000)  # 200 MB, written so that its pages are resident
    del held
    assert resident.peak_rss_bytes() - resident.rss_bytes() > 150 * 2**20
    assert resident.reset_peak_rss()
    assert resident.peak_rss_bytes() - resident.rss_bytes() < 50 * 2**20


def test_without_proc_the_peak_is_getrusage_in_bytes_and_none_where_there_is_no_resource_module(monkeypatch):
    """Where /proc is missing the resident size now is unknown, the peak cannot be reset and comes from getrusage,
    which counts KiB on Linux and bytes on macOS; on Windows (no resource module) importing it failed after a whole
    cell of evaluation by length had run."""
    read_text, write_text = Path.read_text, Path.write_text

    def no_proc(original):
        def method(self, *args, **kwargs):
            if str(self).startswith("/proc/"):
                raise FileNotFoundError(self)
            return original(self, *args, **kwargs)

        return method

    monkeypatch.setattr(Path, "read_text", no_proc(read_text))
    monkeypatch.setattr(Path, "write_text", no_proc(write_text))
    assert resident.rss_bytes() is None and resident.reset_peak_rss() is False
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=3 * 2**20))
    assert resident.peak_rss_bytes() == 3 * 2**30  # KiB on Linux
    monkeypatch.setattr(sys, "platform", "darwin")
    assert resident.peak_rss_bytes() == 3 * 2**20  # bytes on macOS
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: import fails
    assert resident.peak_rss_bytes() is None
