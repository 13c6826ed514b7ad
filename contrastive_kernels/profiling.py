"""Allocation records and peak memory of a block of work, on CPU or GPU.

On CPU there is no allocator statistic, so the torch profiler's memory events
(``profile_memory=True``) are replayed in time order: every allocation and free made
while the block ran, including those inside custom ops and C++ kernels. On CUDA,
``torch.cuda.max_memory_allocated`` after a reset of the peak counter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import List

import torch


@dataclasses.dataclass
class AllocationRecord:
    sizes: List[int] = dataclasses.field(default_factory=list)  # bytes of each allocation
    peak_bytes: int = 0  # highest live total above what was live before the block

    @property
    def largest(self) -> int:
        return max(self.sizes, default=0)


@contextlib.contextmanager
def record_cpu_allocations():
    """Yields an AllocationRecord filled in when the block exits (CPU allocations only)."""
    from torch.profiler import ProfilerActivity, profile

    record = AllocationRecord()
    # the profiler logs a harmless error probing for GPUs on CPU-only machines
    logging.getLogger("torch.profiler").setLevel(logging.CRITICAL)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield record
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    live = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        nbytes = event.nbytes()
        if nbytes > 0:
            record.sizes.append(nbytes)
        live += nbytes
        record.peak_bytes = max(record.peak_bytes, live)


def peak_memory_bytes(fn, device: torch.device) -> int:
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
