"""Ahead-of-time compilation of every shipped Triton config for sm_80 and sm_90 (no GPU).

Runs ``python -m contrastive_kernels.triton.aot`` in a subprocess (compiled-mode kernels:
TRITON_INTERPRET unset), which compiles each config of configs.TABLE for its arch with
``triton.compile(ASTSource, target=GPUTarget("cuda", arch, 32))`` and reads registers,
spills and shared memory from ptxas / cuobjdump. Fails on any spill, on shared memory
over the arch's limit, and when an sm_90 fp16 / bf16 kernel does not use wgmma. Writes
the table to docs/triton_compile_report.md.

Results are cached by kernel source + config + Triton version (``CK_TRITON_AOT_CACHE``,
``0`` to recompile everything); a fresh machine compiles all of them (about 3 minutes
on 2 cores).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "triton_compile_report.md"


def _ptxas():
    import triton
    bundled = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    for path in (bundled, pathlib.Path("/usr/local/cuda/bin/ptxas")):
        if path.exists():
            return path
    return None


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_ptxas() is None, reason="no ptxas (Triton's or CUDA's)")]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "contrastive_kernels.triton.aot", "--out", str(REPORT),
         "--json", str(out), "--jobs", str(min(2, os.cpu_count() or 1))],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if not out.exists():
        pytest.fail(f"AOT compile produced no report (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def _key(r):
    return f"{r['kernel']} {r['dtype']} sm_{r['arch']} {r['d_range']} {r['config']}"


def test_every_shipped_config_compiles(rows):
    from contrastive_kernels.triton import aot

    expected = {(j[0], j[1], j[2]) for j in aot.jobs()}
    got = {(r["kernel"], r["dtype"], r["arch"]) for r in rows}
    assert expected <= got
    assert len([r for r in rows if not r.get("probe")]) == len(aot.jobs())
    errors = [f"{_key(r)}: {r['error']}" for r in rows if r["error"]]
    assert not errors, "\n".join(errors)
    assert REPORT.exists() and "| kernel |" in REPORT.read_text()


def test_no_spills(rows):
    bad = [f"{_key(r)}: {r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads, "
           f"{r['local']} B local" for r in rows
           if r["spill_stores"] != 0 or r["spill_loads"] != 0 or r["local"] != 0]
    assert not bad, "\n".join(bad)
    assert all(0 < r["registers"] <= 255 for r in rows)


def test_shared_memory_within_arch_limit(rows):
    from contrastive_kernels.triton.aot import SMEM_LIMIT

    bad = [f"{_key(r)}: {r['shared']} B > {SMEM_LIMIT[r['arch']]} B" for r in rows
           if not 0 <= r["shared"] <= SMEM_LIMIT[r["arch"]]]
    assert not bad, "\n".join(bad)


def test_sm90_half_precision_uses_wgmma(rows):
    half90 = [r for r in rows if r["arch"] == 90 and r["dtype"] in ("fp16", "bf16")]
    assert half90
    missing = [_key(r) for r in half90 if not r["wgmma"]]
    assert not missing, "no wgmma in:\n" + "\n".join(missing)
    assert not any(r["wgmma"] for r in rows if r["arch"] == 80)


def test_int64_offsets_are_64_bit(rows):
    """The INT64 specialization (N d >= 2^31) computes its offsets in 64 bits."""
    probes = [r for r in rows if r.get("probe") == "int64"]
    assert probes and all(r["int64_offsets"] for r in probes)
