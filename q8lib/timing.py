"""Timers: CUDA events on GPUs (no host sync inside the timed loop), the wall clock on CPUs.

:class:`Spans` records start/stop pairs (the pipeline's per-forward times, the CLI's memory run);
:func:`time_ms` times repeated calls of one function (the benchmarks); :func:`host_probe` says how busy and
how fast the host was (host-bound timings, e.g. a compiled model without a CUDA graph, depend on it).
"""
from __future__ import annotations

import os
import statistics
import time

import torch

__all__ = ["Spans", "time_ms", "host_probe"]


class Spans:
    """Start/stop spans, read back in milliseconds with :meth:`ms` (which synchronizes once)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.spans: list = []
        self._start = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self, sync: bool = False) -> None:
        """End the span; ``sync=True`` waits for the GPU to reach it (so the next span starts idle)."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            if sync:
                end.synchronize()
            self.spans.append((self._start, end))
        else:
            self.spans.append((self._start, time.perf_counter()))

    def ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) for s, e in self.spans]
        return [(e - s) * 1e3 for s, e in self.spans]


def time_ms(fn, iters: int, warmup: int = 0) -> list[float]:
    """Run ``fn`` ``warmup`` times, then time ``iters`` calls: a list of milliseconds (CUDA events, one
    synchronization per call, when a GPU is visible; the wall clock on CPU-only machines)."""
    for _ in range(warmup):
        fn()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    spans = Spans(cuda)
    for _ in range(iters):
        spans.start()
        fn()
        spans.stop(sync=True)
    return spans.ms()


def host_probe(loops: int = 200_000) -> dict:
    """The host's state when a timing is taken: 1-minute load average, CPU count, and the median time (us, of 5)
    of a fixed pure-Python loop. Launch-bound timings (no CUDA graph) move with the last figure; the H200 run of
    session 6 lost 15-25 ms a forward to a slow host with nothing in the JSON to show it."""
    def one():
        t = time.perf_counter()
        acc = 0
        for i in range(loops):
            acc += i & 7
        return (time.perf_counter() - t) * 1e6

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"loadavg_1m": load, "cpu_count": os.cpu_count(), "python_loop_us": statistics.median(one() for _ in range(5)),
            "python_loop_iters": loops}
