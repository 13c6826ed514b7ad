"""The GPU config tables (sm_80 / sm_90 families) run under the Triton interpreter.

The interpreter normally uses its own small tiles (``configs.INTERPRET``); here the
launcher is told it runs on an sm_80 / sm_90 device, so the shipped tiles themselves —
among them the d <= 512 single-tile entries with 16 owned rows — go through the oracle
table. Their compiled form is checked by ``test_triton_aot.py`` (spills, duplicated tiles,
ceilings); this checks that each tile shape computes the right numbers, tails included.
"""

import pytest
import torch

from contrastive_kernels.testing.core_cases import OPTIONS
from contrastive_kernels.testing.core_check import check_against_oracle

pytest.importorskip("triton")
from contrastive_kernels.backends.triton import configs, launch  # noqa: E402

OPT = {o.id: o for o in OPTIONS}


@pytest.fixture(params=configs.ARCHS, ids=lambda a: f"sm{a}")
def gpu_tables(request, monkeypatch):
    monkeypatch.setattr(launch, "arch_for", lambda device: request.param)
    return request.param


@pytest.mark.parametrize("d", [300, 512], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_large_d_single_tile(gpu_tables, d, dtype):
    """d in (256, 512]: one [rows, 512] tile, the o / dq / dk accumulators in registers."""
    for kernel in configs.KERNELS:
        cfg = configs.select(kernel, d, dtype, gpu_tables)
        assert configs.block_d_for(cfg, d, dtype) == (512, True), (kernel, cfg)
    check_against_oracle("triton", 37, 70, d, dtype, OPT["all"])


@pytest.mark.parametrize("d", [64, 200], ids=lambda d: f"d{d}")
def test_smaller_single_tiles(gpu_tables, d):
    check_against_oracle("triton", 37, 70, d, torch.bfloat16, OPT["all"])
    check_against_oracle("triton", 37, 70, d, torch.float32, OPT["plain"])


def test_large_d_key_split(gpu_tables, monkeypatch):
    """The split path with the d <= 512 tiles (the finish kernel's narrowest row block)."""
    monkeypatch.setenv("CONTRASTIVE_KERNELS_TRITON_KEY_SPLITS", "2")
    check_against_oracle("triton", 37, 150, 300, torch.bfloat16, OPT["all"])
