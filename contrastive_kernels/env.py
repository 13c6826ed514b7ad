"""Every environment variable the package reads, in one place, all with one prefix.

``python -m contrastive_kernels.info`` and the README list them from :data:`VARIABLES`.
Build-time variables (read by ``setup.py``, which cannot import the package) are listed
here too, so that this table is complete.
"""

from __future__ import annotations

import os
from typing import Optional

PREFIX = "CONTRASTIVE_KERNELS_"

# name (without the prefix) -> what it does
VARIABLES = {
    "BACKEND": "force a backend for every call made with backend='auto' (e.g. 'torch')",
    "TRITON_AUTOTUNE": "1: autotune the Triton kernels around their fixed configs (compiled mode)",
    "TRITON_ARCH": "80 or 90: pick the Triton config family without asking the device",
    "TRITON_NATIVE": "1: tests run compiled Triton on a GPU instead of the CPU interpreter",
    "TRITON_AOT_CACHE": "directory of the ahead-of-time compile cache, or 0 to recompile",
    "TRITON_KEY_SPLITS": "Triton: force S key (streamed-side) ranges per row block (0 / unset: automatic, 1 under the interpreter)",
    "CPU_KERNEL": "auto (default), baseline or avx2+fma: which CPU kernel set runs (baseline: the portable one)",
    "CUDA_EMULATE": "1: backend 'cuda' takes CPU tensors and runs its kernels through the emulation layer",
    "CUDA_SPLITS": "tests: force this many ranges on the cuda backend's split grids (forward keys, backward), else the shape rule",
    "ALLOW_MISSING_EXT": "1: tests tolerate a missing compiled extension (installs without a compiler)",
    "BENCH_MAX_TFLOP": "GPU benchmark: skip cases above this many TFLOP of floor work (default 60)",
    "NO_EXT": "build: 1 skips the compiled extension",
    "NO_CUDA": "build: 1 builds the CPU kernels only",
}


def name(key: str) -> str:
    if key not in VARIABLES:
        raise KeyError(f"{PREFIX}{key} is not a variable of this package (see env.VARIABLES)")
    return PREFIX + key


def get(key: str, default: Optional[str] = None) -> Optional[str]:
    """The value of ``CONTRASTIVE_KERNELS_<key>``, or ``default`` when unset or empty."""
    return os.environ.get(name(key)) or default


def flag(key: str) -> bool:
    return get(key) == "1"
