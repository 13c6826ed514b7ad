"""How long a piece of work takes and how much memory it needs, on CPU or GPU.

- :func:`time_fn` returns a :class:`Timing` (min / median / max seconds), never one number:
  a shared machine shows in the spread. CPU work is synchronous, so ``time.perf_counter``
  around each call is exact. CUDA work is asynchronous, so it is timed with CUDA events:
  ``triton.testing.do_bench`` (events, L2 flush) when Triton is installed and a call is
  short, else events around each of a few calls.
- :func:`record_cpu_allocations` / :func:`peak_memory_bytes`: the CPU has no allocator
  statistic, so the torch profiler's memory events (``profile_memory=True``) are replayed
  in time order: every allocation and free made while the block ran, including those
  inside custom ops and C++ kernels. On CUDA, ``torch.cuda.max_memory_allocated`` after a
  reset of the peak counter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import statistics
import sys
import time
from typing import Callable, List

import torch

# a CUDA call longer than this is timed by a few event pairs: do_bench would first run it
# five times just to estimate how many repetitions fit in its time budget
LONG_CUDA_CALL_S = 0.2


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call over ``samples`` timed calls."""

    min: float
    median: float
    max: float
    samples: int
    method: str  # "perf_counter", "do_bench" or "cuda_events"

    @classmethod
    def of(cls, seconds: List[float], method: str) -> "Timing":
        return cls(min(seconds), statistics.median(seconds), max(seconds), len(seconds), method)

    def format(self, digits: int = 3) -> str:
        return f"{self.min:.{digits}f} / {self.median:.{digits}f} / {self.max:.{digits}f}"

    def __str__(self) -> str:
        return self.format() + " s"

    def as_dict(self) -> dict:
        return {"min_s": self.min, "median_s": self.median, "max_s": self.max,
                "samples": self.samples, "timer": self.method}


def time_fn(fn: Callable[[], object], device="cpu", repeats: int = 3, warmup: int = 1) -> Timing:
    """Time ``fn()`` on ``device``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    On CUDA with Triton installed, a short call is handed to ``do_bench``, which picks its
    own number of repetitions (about 100 ms of them); ``repeats`` applies otherwise.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _time_cuda(fn, device, repeats, warmup)
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return Timing.of(seconds, "perf_counter")


def _event_seconds(fn, device) -> float:
    with torch.cuda.device(device):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def _time_cuda(fn, device, repeats, warmup) -> Timing:
    for _ in range(max(warmup, 1)):  # at least one: compilation and autotuning are not timed
        fn()
    torch.cuda.synchronize(device)
    probe = _event_seconds(fn, device)
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None and probe < LONG_CUDA_CALL_S:
        with torch.cuda.device(device):
            ms = do_bench(fn, warmup=25, rep=100, return_mode="all")
        return Timing.of([t / 1e3 for t in ms], "do_bench")
    seconds = [probe] + [_event_seconds(fn, device) for _ in range(max(repeats, 1) - 1)]
    return Timing.of(seconds, "cuda_events")


@dataclasses.dataclass
class AllocationRecord:
    sizes: List[int] = dataclasses.field(default_factory=list)  # bytes of each allocation
    peak_bytes: int = 0  # highest live total above what was live before the block

    @property
    def largest(self) -> int:
        return max(self.sizes, default=0)


@contextlib.contextmanager
def _profiler_noise_muted():
    """Mute what the profiler prints while it starts and stops, and nothing else.

    Kineto (C++) writes ``USDT ... profiler_start/stop`` and, on a machine without a GPU,
    ``ERROR ... gpuGetDeviceCount failed`` straight to file descriptor 2; its only switch,
    KINETO_LOG_LEVEL, is read once per process, so it cannot be scoped. Descriptor 2 is
    pointed at /dev/null for the duration of the start or the stop only, and restored, so
    errors of the measured work itself still show. Another thread's stderr output in that
    window (milliseconds) is lost too.
    """
    logger = logging.getLogger("torch.profiler")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    _flush_stderr()  # what was written before the window belongs outside it
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all: nothing to mute
        saved = None
    try:
        if saved is not None:
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            if saved is not None:
                os.dup2(saved, 2)
    finally:
        if saved is not None:
            os.close(saved)
        logger.setLevel(level)


def _flush_stderr():
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass


@contextlib.contextmanager
def record_cpu_allocations():
    """Yields an AllocationRecord filled in when the block exits (CPU allocations only)."""
    from torch.profiler import ProfilerActivity, profile

    record = AllocationRecord()
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _profiler_noise_muted():
        prof.__enter__()
    try:
        yield record
    finally:
        with _profiler_noise_muted():
            prof.__exit__(None, None, None)
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    live = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        nbytes = event.nbytes()
        if nbytes > 0:
            record.sizes.append(nbytes)
        live += nbytes
        record.peak_bytes = max(record.peak_bytes, live)


def peak_memory_bytes(fn: Callable[[], object], device) -> int:
    """Peak memory allocated while ``fn()`` runs, above what was allocated before."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with record_cpu_allocations() as record:
        fn()
    return record.peak_bytes
