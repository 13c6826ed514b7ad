"""Ahead-of-time compilation of every shipped Triton config for sm_80 and sm_90 (no GPU).

Runs ``python -m contrastive_kernels.backends.triton.aot`` in a subprocess (compiled-mode
kernels: TRITON_INTERPRET unset), which compiles each config of configs.TABLE for its arch
with ``triton.compile(ASTSource, target=GPUTarget("cuda", arch, 32))`` and reads registers,
spills and shared memory from ptxas / cuobjdump. Fails on any spill, on shared memory
over the arch's limit, when an sm_90 fp16 / bf16 kernel does not use wgmma, when a
config computes its logits tile twice (MUFU.EX2 per thread > the tile's logits per
thread, from the SASS of the main loop), and when the performance model's predicted
ceiling of a config falls below its floor (``aot.CEILING_FLOORS``).

The report goes to a temporary file, never into docs/: the test only checks that the
committed docs/triton_compile_report.md matches it (``make triton-report`` regenerates it).

Results are cached by kernel source + config + Triton version
(``CONTRASTIVE_KERNELS_TRITON_AOT_CACHE``, ``0`` to recompile everything); a fresh machine
compiles all of them (7 to 20 minutes on 2 cores).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = pathlib.Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "triton_compile_report.md"  # committed; read, never written here


def _ptxas():
    import triton
    bundled = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    for path in (bundled, pathlib.Path("/usr/local/cuda/bin/ptxas")):
        if path.exists():
            return path
    return None


pytestmark = [pytest.mark.xdist_group("triton_aot"),  # one worker compiles once
              pytest.mark.slow,
              pytest.mark.skipif(_ptxas() is None, reason="no ptxas (Triton's or CUDA's)")]


@pytest.fixture(scope="module")
def aot_run(tmp_path_factory):
    """(rows, report text) of one AOT run, both written under a temporary directory."""
    where = tmp_path_factory.mktemp("aot")
    out, report = where / "rows.json", where / "triton_compile_report.md"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "contrastive_kernels.backends.triton.aot", "--out", str(report),
         "--json", str(out), "--jobs", str(min(2, os.cpu_count() or 1))],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if not out.exists() or not report.exists():
        pytest.fail(f"AOT compile produced no report (rc {proc.returncode}):\n"
                    f"{proc.stderr[-4000:]}")
    return json.loads(out.read_text()), report.read_text()


@pytest.fixture(scope="module")
def rows(aot_run):
    return aot_run[0]


def _key(r):
    return f"{r['kernel']} {r['dtype']} sm_{r['arch']} {r['d_range']} {r['config']}"


def test_every_shipped_config_compiles(rows):
    from contrastive_kernels.backends.triton import aot

    expected = {(j[0], j[1], j[2]) for j in aot.jobs()}
    got = {(r["kernel"], r["dtype"], r["arch"]) for r in rows}
    assert expected <= got
    assert len([r for r in rows if not r.get("probe")]) == len(aot.jobs())
    errors = [f"{_key(r)}: {r['error']}" for r in rows if r["error"]]
    assert not errors, "\n".join(errors)


def test_no_spills(rows):
    bad = [f"{_key(r)}: {r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads, "
           f"{r['local']} B local" for r in rows
           if r["spill_stores"] != 0 or r["spill_loads"] != 0 or r["local"] != 0]
    assert not bad, "\n".join(bad)
    assert all(0 < r["registers"] <= 255 for r in rows)


def test_shared_memory_within_arch_limit(rows):
    from contrastive_kernels.backends.triton.aot import SMEM_LIMIT

    bad = [f"{_key(r)}: {r['shared']} B > {SMEM_LIMIT[r['arch']]} B" for r in rows
           if not 0 <= r["shared"] <= SMEM_LIMIT[r["arch"]]]
    assert not bad, "\n".join(bad)


def test_sm90_half_precision_uses_wgmma(rows):
    # (the key split's merge / finish kernels, probe "aux", have no matrix product; the
    # d <= 512 backward tiles own 16 rows, below wgmma's 64 per warp group: mma.sync, by
    # choice, since 64 rows spill there, see configs.py)
    half90 = [r for r in rows if r["arch"] == 90 and r["dtype"] in ("fp16", "bf16")
              and r.get("probe") != "aux"]
    assert half90
    narrow = [r for r in half90 if r["config"].startswith("O16 ")]
    assert {(r["kernel"], r["d_range"]) for r in narrow} <= {
        (prefix + grid, "d <= 512") for prefix in ("", "two_sided_")
        for grid in ("bwd_dq", "bwd_dk")}, narrow
    missing = [_key(r) for r in half90 if not r["wgmma"] and r not in narrow]
    assert not missing, "no wgmma in:\n" + "\n".join(missing)
    assert not any(r["wgmma"] for r in rows if r["arch"] == 80)


def test_int64_offsets_are_64_bit(rows):
    """The INT64 specialization (N d >= 2^31) computes its offsets in 64 bits."""
    probes = [r for r in rows if r.get("probe") == "int64"]
    assert probes and all(r["int64_offsets"] for r in probes)


def test_every_default_path_is_compiled(rows):
    """fp32 runs as IEEE by default (torch's "highest"): those kernels are in the report,
    as are tf32, fp16 / bf16 and fp64, for every kernel and both arch families."""
    got = {(r["kernel"], r["dtype"], r["arch"]) for r in rows}
    for dtype in ("fp16", "bf16", "tf32", "fp32", "fp64"):
        for kernel in ("fwd", "fwd_o", "bwd_dq", "bwd_dk", "two_sided_fwd", "two_sided_bwd_dq",
                       "two_sided_bwd_dk"):
            for arch in (80, 90):
                assert (kernel, dtype, arch) in got, (kernel, dtype, arch)


def test_no_duplicated_tiles(rows):
    """One exp per logit (two for the two-sided kernels, plus a few per row): a config
    whose warps compute the same logits twice issues twice that many exps."""
    from contrastive_kernels.backends.triton.aot import ex2_limit, exps_per_logit

    bad = [f"{_key(r)}: {r['loop_ex2']} MUFU.EX2 per thread per tile, {r['tile_elems']} logits"
           for r in rows
           if r["loop_ex2"] > ex2_limit(r["tile_elems"] * exps_per_logit(r["kernel"]))]
    assert not bad, "\n".join(bad)


def test_main_loop_is_found(rows):
    """The SASS counts exist for every config; tensor-core paths issue MMAs in the loop
    of single-tile configs, and the fp32 / fp16 / bf16 exps are single MUFU.EX2. The key
    split's merge / finish kernels (probe "aux") have no streamed-tile loop."""
    from contrastive_kernels.backends.triton.aot import exps_per_logit

    aux = [r for r in rows if r.get("probe") == "aux"]
    assert {r["kernel"] for r in aux} == {"merge", "finish"}
    for r in rows:
        if r.get("probe") == "aux":
            continue
        assert r["loop_instr"] > 0, _key(r)
        if r["dtype"] in ("fp16", "bf16", "tf32", "fp64") and "single" in r["config"]:
            assert r["loop_mma"] > 0, _key(r)
        if r["dtype"] != "fp64":
            assert r["loop_ex2"] >= r["tile_elems"] * exps_per_logit(r["kernel"]), _key(r)


@pytest.mark.parametrize("probe", ["", "simclr"], ids=["heaviest", "no_bias_no_labels"])
def test_predicted_ceiling_floors(rows, probe):
    """The model's ceiling (fraction of the dtype's peak) of the configs with a floor: the
    heaviest specialization (CEILING_FLOORS) and the common call (SIMCLR_FLOORS)."""
    from contrastive_kernels.backends.triton.aot import CEILING_FLOORS, SIMCLR_FLOORS

    floors = SIMCLR_FLOORS if probe else CEILING_FLOORS
    assert floors
    seen = set()
    for r in rows:
        key = (r["kernel"], r["dtype"], r["arch"], r["d_range"])
        if key in floors and r.get("probe", "") == probe:
            seen.add(key)
            assert r["ceiling"] >= floors[key], (
                f"{_key(r)}: predicted ceiling {r['ceiling']:.2f} < floor {floors[key]}"
                f" (bound: {r['bound']}, {r['loop_instr']} instructions per tile)")
    assert seen == set(floors), set(floors) - seen


def _table(text: str) -> list:
    """The report's table rows (header included): what the compile determines."""
    return [line.rstrip() for line in text.splitlines() if line.startswith("|")]


def test_committed_report_is_current(aot_run):
    """docs/triton_compile_report.md is what the shipped configs compile to today.

    The report holds no timings or paths, so the whole text must match; the table is
    compared first for a readable failure."""
    import difflib

    _, fresh = aot_run
    assert REPORT.exists(), f"{REPORT} is missing: run `make triton-report`"
    committed = REPORT.read_text()
    diff = "\n".join(difflib.unified_diff(_table(committed), _table(fresh), "committed", "fresh",
                                          lineterm="", n=0))
    assert not diff, (f"{REPORT.relative_to(ROOT)} is stale, regenerate it with "
                      f"`make triton-report`:\n{diff}")
    assert committed == fresh, (f"{REPORT.relative_to(ROOT)}: the text around the table "
                                "changed, regenerate it with `make triton-report`")
