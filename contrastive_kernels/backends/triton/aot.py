"""Ahead-of-time compilation of every shipped config, without a GPU.

    python -m contrastive_kernels.backends.triton.aot [--out REPORT.md] [--jobs 2]

(``make triton-report`` writes the committed docs/triton_compile_report.md this way.)
This module is the driver: the job lists (:func:`jobs`, :func:`probe_jobs`,
:func:`aux_jobs`), running them in parallel (:func:`run`) and the command line. What each
job compiles is :mod:`.aot_signatures`, compiling and measuring one job
:mod:`.aot_compile`, the instruction counts and the ceiling model :mod:`.perf_model`, the
rows, their limits and the markdown :mod:`.aot_report`.

fp16 / bf16 share a config but are compiled separately; fp32 is compiled both as tf32
and as IEEE fp32 (torch's default), each with its own configs. The main kernels are
compiled unsplit (SPLIT = False: one range of key tiles, what the counts and the model
measure; the split only adds per-program bookkeeping outside the tile loop). The
two-sided lse's and pairwise_sigmoid's kernels are compiled on every config they run
with. The small kernels of
the key split (``key_split.merge_kernel``, ``key_split.finish_kernel``) are compiled too
(:func:`aux_jobs`, rows marked ``aux``: registers, spills, shared memory; no main-loop
counts or model).

The Triton kernels must be importable in compiled mode: run this with TRITON_INTERPRET
unset (the tests start it in a subprocess).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import sys

from . import aot_ledger
from .aot_compile import CACHE_ENV, _cached, analyse, compile_one, job_key, tool  # noqa: F401
from .aot_report import REG_LIMIT, SMEM_LIMIT, Row, report  # noqa: F401
from .aot_signatures import (AUX_KERNELS, DTYPES, SIGMOID, TWO_SIDED, exps_per_logit,  # noqa: F401
                             mufu_per_logit)
from .perf_model import (CEILING_FLOORS, RATES, SIMCLR_FLOORS, ex2_limit, loop_counts,  # noqa: F401
                         mufu_limit, predict)


def jobs(kernels=None, archs=None):
    """Every shipped config for every dtype of its class: the core op's kernels, then the
    two-sided lse's (configs.shipped(two_sided=True)), then pairwise_sigmoid's."""
    from . import configs
    out = []
    for variant in ({}, dict(two_sided=True), dict(sigmoid=True)):
        for kernel, dclass, arch, d_max, cfg in configs.shipped(**variant):
            if (kernels and kernel not in kernels) or (archs and arch not in archs):
                continue
            for dtype in DTYPES[dclass]:
                out.append((kernel, dtype, arch, d_max, cfg))
    return out


def probe_jobs():
    """64-bit-offset specializations (taken when N d >= 2^31, i.e. large d) of the chunked
    bf16 configs on sm_90, and the key-split specializations of the sm_90 bf16 d <= 128
    configs: they must compile without spills too."""
    from . import configs
    out = []
    for kernel, dclass, arch, d_max, cfg in configs.shipped():
        if dclass == "16" and arch == 90 and d_max is None and kernel in ("fwd", "bwd_dq"):
            out.append((kernel, "bf16", arch, d_max, cfg, "int64"))
    # the key-split specialization (SPLIT: grid axis 1 over ranges of key tiles) of the
    # sm_90 bf16 d <= 128 configs: the split's bookkeeping is per program, so the main
    # loop must count as the unsplit one does
    for kernel, dclass, arch, d_max, cfg in configs.shipped():
        if dclass == "16" and arch == 90 and d_max == 128:
            out.append((kernel, "bf16", arch, d_max, cfg, "split"))
    # the common call (normalization and self-exclusion, no bias or labels: SimCLR, and
    # CLIP without the self mask) of the bf16 d <= 128 configs: its own ceiling
    for kernel, dclass, arch, d_max, cfg in configs.shipped():
        if dclass == "16" and d_max == 128:
            out.append((kernel, "bf16", arch, d_max, cfg, "simclr"))
    # the same for the two-sided lse (CLIP's symmetric loss: normalization, no bias or
    # labels) and pairwise_sigmoid (SigLIP without its bias and labels); the sigmoid's key
    # split on sm_90 too
    for variant in ("two_sided", "sigmoid"):
        for kernel, dclass, arch, d_max, cfg in configs.shipped(**{variant: True}):
            if dclass == "16" and d_max == 128:
                out.append((kernel, "bf16", arch, d_max, cfg, "simclr"))
                if variant == "sigmoid" and arch == 90:
                    out.append((kernel, "bf16", arch, d_max, cfg, "split"))
    return out


def aux_jobs():
    """The key-split kernels next to the configs they serve: the forward merge (fp32
    partials, o merged in 64-column chunks) and the backward finish (bf16, every single
    tile up to d <= 512 and the chunked d), for both archs, with the rows and warps _ops
    launches them with."""
    from . import configs, key_split
    warps = key_split.AUX_WARPS
    out = []
    for arch in configs.ARCHS:
        out.append(("merge", "fp32", arch, None,
                    configs.Config(key_split.MERGE_ROWS, 0, 64, warps, 3, False), "aux"))
        for d_max in (128, 256, 512):
            out.append(("finish", "bf16", arch, d_max,
                        configs.Config(key_split.finish_rows(d_max), 0, d_max, warps, 3, True),
                        "aux"))
        out.append(("finish", "bf16", arch, None,
                    configs.Config(key_split.finish_rows(64), 0, 64, warps, 3, False), "aux"))
    return out


def _compile_all(todo, n_jobs, fresh=False) -> list:
    if n_jobs <= 1 or len(todo) <= 1:
        return [compile_one(j, fresh) for j in todo]
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(n_jobs, mp_context=ctx) as pool:
        return list(pool.map(compile_one, todo, [fresh] * len(todo)))


def run(job_list, n_jobs: int = 2, ledger: dict | None = None, verify: int = 0) -> list:
    """One row per job: from the ledger ({job key: Row}, :mod:`.aot_ledger`) when it holds
    the job, else from the local cache, else compiled; ``verify`` of the ledger's rows
    are compiled afresh and compared (a difference becomes the row's error)."""
    ledger = ledger or {}
    keys = [job_key(j) for j in job_list]
    rows = [ledger.get(k) for k in keys]
    for r in rows:
        if r is not None:
            r.source = "ledger"
    for i, j in enumerate(job_list):
        if rows[i] is None:
            rows[i] = _cached(j)
            if rows[i] is not None:
                rows[i].source = "cache"
    todo = [i for i, r in enumerate(rows) if r is None]
    for i, row in zip(todo, _compile_all([job_list[i] for i in todo], n_jobs)):
        row.source = "compiled"
        rows[i] = row
    checks = aot_ledger.sample([i for i, r in enumerate(rows) if r.source == "ledger"], verify)
    for i, fresh in zip(checks, _compile_all([job_list[i] for i in checks], n_jobs, True)):
        diff = fresh.error or aot_ledger.mismatch(rows[i], fresh)
        rows[i].source = "verified"
        if diff:
            rows[i].error = f"the ledger's row is not what the compile measures now: {diff}"
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the markdown report here")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--kernel", action="append", help="only these kernels")
    parser.add_argument("--arch", action="append", type=int, help="only these archs")
    parser.add_argument("--json", default=None, help="also dump the rows as JSON")
    parser.add_argument("--ledger", default=None,
                        help="take the rows this committed ledger holds (aot_ledger)")
    parser.add_argument("--verify", type=int, default=0,
                        help="recompile this many of the ledger's rows and compare")
    parser.add_argument("--write-ledger", default=None,
                        help="write the rows of this run as the ledger")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: AOT compilation needs the compiled-mode kernels",
              file=sys.stderr)
        return 2
    job_list = (jobs(args.kernel, args.arch)
                + ([] if args.kernel or args.arch else probe_jobs() + aux_jobs()))
    rows = run(job_list, args.jobs, aot_ledger.load(args.ledger) if args.ledger else None,
               args.verify)
    if args.write_ledger:
        aot_ledger.write([job_key(j) for j in job_list], rows, args.write_ledger)
    text = report(rows, args.out)
    print(text)
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump([dict({k: v for k, v in dataclasses.asdict(r).items() if k != "sass"},
                            spills=r.spills, problems=r.problems()) for r in rows], f, indent=1)
    bad = [(r, p) for r in rows for p in r.problems()]
    for r, p in bad:
        print(f"FAIL {r.kernel} {r.dtype} sm_{r.arch} {r.config}: {p}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
