"""What Triton compiled in this process: registers, spills and shared memory of every
specialization of the core-op kernels in the JIT caches (the run-time counterpart of the
ahead-of-time report in :mod:`.aot`; the GPU check records it)."""

from __future__ import annotations

import contextlib


def _kernel_functions():
    from . import _common, key_split, lse_backward, lse_forward
    return (lse_forward.lse_fwd_kernel, lse_backward.lse_bwd_kernel, _common.inv_norm_kernel,
            key_split.merge_kernel, key_split.finish_kernel)


def _caches(fn) -> list:
    """The dicts of compiled kernels a JIT function holds (their layout differs across
    Triton versions: ``device_caches`` maps a device to a tuple whose first item is the
    cache in 3.x; older versions had ``cache``)."""
    out = []
    for attr in ("device_caches", "cache"):
        holder = getattr(fn, attr, None)
        if isinstance(holder, dict):
            for entry in holder.values():
                items = entry if isinstance(entry, (tuple, list)) else (entry,)
                out += [c for c in items if isinstance(c, dict)]
    return out


def compiled_kernels() -> list:
    """One dict per compiled specialization: kernel, registers, spills, shared (bytes),
    warps, stages and the cache key (truncated). Empty under the interpreter."""
    rows = []
    for fn in _kernel_functions():
        for cache in _caches(fn):
            for key, kern in cache.items():
                meta = getattr(kern, "metadata", None)
                if meta is None:
                    continue
                with contextlib.suppress(Exception):
                    kern._init_handles()  # n_regs / n_spills are read when the module loads
                rows.append(dict(kernel=getattr(fn, "__name__", str(fn)),
                                 registers=getattr(kern, "n_regs", None),
                                 spills=getattr(kern, "n_spills", None),
                                 shared=getattr(meta, "shared", None),
                                 warps=getattr(meta, "num_warps", None),
                                 stages=getattr(meta, "num_stages", None),
                                 key=str(key)[:160]))
    return rows
