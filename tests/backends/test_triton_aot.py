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

Rows come from the committed ledger docs/triton_compile_ledger.json (``aot_ledger``: each
job's measured row keyed by kernel source + config + Triton version), 8 of them, a
different draw each day, recompiled and compared; jobs the ledger lacks (a kernel edited
since ``make triton-report``) are compiled, using the local cache
(``CONTRASTIVE_KERNELS_TRITON_AOT_CACHE``, ``0`` to recompile everything), and fail
test_ledger_holds_every_job_and_its_sample_still_compiles_to_it. All ~340 jobs compiled
afresh take ~12 CPU-minutes here.
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


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_ptxas() is None, reason="no ptxas (Triton's or CUDA's)")]


LEDGER = ROOT / "docs" / "triton_compile_ledger.json"
VERIFIED = 8  # ledger rows recompiled and compared per run (aot_ledger.sample)


@pytest.fixture(scope="module")
def aot_run(tmp_path_factory):
    """(rows, report text) of one AOT run, both written under a temporary directory: the
    rows the committed ledger holds (VERIFIED of them recompiled and compared), the others
    compiled."""
    where = tmp_path_factory.mktemp("aot")
    out, report = where / "rows.json", where / "triton_compile_report.md"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "contrastive_kernels.backends.triton.aot", "--out", str(report),
         "--json", str(out), "--jobs", str(min(2, os.cpu_count() or 1)),
         "--ledger", str(LEDGER), "--verify", str(VERIFIED)],
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
    # (the sigmoid's d <= 256 backward grids too: 64 rows spill there, configs.SIGMOID_TILES)
    assert {(r["kernel"], r["d_range"]) for r in narrow} <= {
        (prefix + grid, "d <= 512") for prefix in ("", "two_sided_", "sigmoid_")
        for grid in ("bwd_dq", "bwd_dk")} | {
        ("sigmoid_" + grid, "d <= 256") for grid in ("bwd_dq", "bwd_dk")}, narrow
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
                       "two_sided_bwd_dk", "sigmoid_fwd", "sigmoid_bwd_dq", "sigmoid_bwd_dk"):
            for arch in (80, 90):
                assert (kernel, dtype, arch) in got, (kernel, dtype, arch)


def test_no_duplicated_tiles(rows):
    """One exp per logit (two for the two-sided kernels, plus a few per row): a config
    whose warps compute the same logits twice issues twice that many exps. The same for
    every MUFU op against the kernel's MUFU budget per logit (the sigmoid backward's
    reciprocal: two; its forward's log1p is on the FMA units: one) and a few per row
    (fp16's rescale takes a reciprocal per row)."""
    from contrastive_kernels.backends.triton.aot import (ex2_limit, exps_per_logit, mufu_limit,
                                                         mufu_per_logit)

    bad = [f"{_key(r)}: {r['loop_ex2']} MUFU.EX2 per thread per tile, {r['tile_elems']} logits"
           for r in rows
           if r["loop_ex2"] > ex2_limit(r["tile_elems"] * exps_per_logit(r["kernel"]))]
    bad += [f"{_key(r)}: {r['loop_mufu']} MUFU ops per thread per tile, {r['tile_elems']} "
            f"logits, budget {mufu_per_logit(r['kernel'])} per logit" for r in rows
            if r["loop_mufu"] > mufu_limit(r["tile_elems"], mufu_per_logit(r["kernel"]))]
    assert not bad, "\n".join(bad)


def test_main_loop_is_found(rows):
    """The SASS counts exist for every config; tensor-core paths issue MMAs in the loop
    of single-tile configs and in the d loops of chunked ones, whose MMA FLOPs per tile
    are the model's, and the fp32 / fp16 / bf16 exps are single MUFU.EX2. The key
    split's merge / finish kernels (probe "aux") have no streamed-tile loop."""
    from contrastive_kernels.backends.triton.aot import exps_per_logit, mufu_per_logit

    aux = [r for r in rows if r.get("probe") == "aux"]
    assert {r["kernel"] for r in aux} == {"merge", "finish"}
    for r in rows:
        if r.get("probe") == "aux":
            continue
        assert r["loop_instr"] > 0, _key(r)
        if r["dtype"] in ("fp16", "bf16", "tf32", "fp64") and "single" in r["config"]:
            assert r["loop_mma"] > 0, _key(r)
        if "chunk" in r["config"] and r["dtype"] != "fp64":  # the d loops, modelled
            assert r["chunk_instr"] > 0 and r["ceiling"] > 0, _key(r)
            if r["dtype"] != "fp32":
                assert r["chunk_mma"] > 0, _key(r)
        # the counted loops hold each tensor product of the tile exactly once (chunked:
        # ceil(768 / D) passes of the d loops): what the ceiling's tensor time charges
        if r["ceiling"] >= 0 and (r["loop_mma"] > 0 or r["chunk_mma"] > 0):
            assert r["mma_coverage"] == 1.0, (_key(r), r["mma_coverage"])
        if r["dtype"] != "fp64":
            assert r["loop_ex2"] >= r["tile_elems"] * exps_per_logit(r["kernel"]), _key(r)
            # the sigmoid backward's 1 / (1 + e) is one MUFU.RCP (no IEEE division)
            assert r["loop_mufu"] >= r["tile_elems"] * mufu_per_logit(r["kernel"]), _key(r)


def _reachable_modules(fn, seen=None) -> set:
    """The package modules whose functions ``fn`` calls, transitively (the helpers the
    compiler inlines into a kernel), ``fn``'s own included."""
    import inspect
    import types

    seen = set() if seen is None else seen
    fn = getattr(fn, "fn", fn)  # a JITFunction's Python function
    if not inspect.isfunction(fn) or fn in seen:
        return set()
    seen.add(fn)
    out = {fn.__module__}
    codes = [fn.__code__]
    while codes:  # nested code objects (comprehensions) name globals too
        code = codes.pop()
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        for name in code.co_names:
            obj = fn.__globals__.get(name)
            module = getattr(getattr(obj, "fn", obj), "__module__", "") or ""
            if module.startswith("contrastive_kernels.backends.triton"):
                out |= _reachable_modules(obj, seen)
    return out


def test_result_cache_keys_every_kernel_module():
    """A job's cached result is keyed by the source of every module its kernel is built
    from (the kernel's own and, transitively, every module whose helpers it inlines), and
    of the launchers that run the op variants (two_sided.py, sigmoid.py): before, an edit
    to two_sided.py or the sigmoid modules reused stale cached results."""
    from contrastive_kernels.backends.triton import aot, configs
    from contrastive_kernels.backends.triton.aot_compile import hashed_modules
    from contrastive_kernels.backends.triton.aot_signatures import AUX_KERNELS, signature

    for job in aot.jobs() + aot.probe_jobs() + aot.aux_jobs():
        kernel, dtype, _, d_max, cfg = job[:5]
        probe = job[5] if len(job) > 5 else ""
        block_d = configs.next_pow2(d_max) if (cfg.single and d_max) else cfg.block_d
        fn = signature(kernel, dtype, cfg, block_d, int64=probe == "int64",
                       split=probe == "split", simclr=probe == "simclr")[0]
        hashed = {m.__name__ for m in hashed_modules(job)}
        missing = _reachable_modules(fn) - hashed
        assert not missing, (job, missing)
        if kernel not in AUX_KERNELS:
            assert {f"contrastive_kernels.backends.triton.{m}"
                    for m in ("two_sided", "sigmoid", "aot_signatures")} <= hashed, job


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


def test_ledger_holds_every_job_and_its_sample_still_compiles_to_it(rows):
    """Every row came from the committed ledger (so a kernel edit without `make
    triton-report` fails here, not only slowly), and the sampled ledger rows, recompiled,
    measured what the ledger holds (a difference is the row's compile error, failed by
    test_every_shipped_config_compiles). A ledger row edited by hand (or measured by
    another compiler) is caught when the sample recompiles it: registers planted one off
    in a one-job ledger."""
    sources = [r["source"] for r in rows]
    missing = [_key(r) for r in rows if r["source"] not in ("ledger", "verified")]
    assert not missing, (f"{LEDGER.relative_to(ROOT)} does not hold {len(missing)} jobs "
                         f"(e.g. {missing[:3]}): regenerate it with `make triton-report`")
    assert sources.count("verified") == min(VERIFIED, len(rows))
    assert not [r for r in rows if r["source"] == "verified" and r["error"]]

    code = (
        "import dataclasses, json, sys\n"
        "from contrastive_kernels.backends.triton import aot\n"
        "job = [j for j in aot.jobs(['fwd'], [90]) if j[1] == 'bf16'][0]\n"
        "row = aot.compile_one(job)\n"
        "planted = dataclasses.replace(row, registers=row.registers + 1, source='')\n"
        "out = aot.run([job], 1, {aot.job_key(job): planted}, verify=1)[0]\n"
        "print(json.dumps([out.source, out.error]))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    source, error = json.loads(proc.stdout.strip().splitlines()[-1])
    assert source == "verified"
    assert "registers: ledger" in error, error
