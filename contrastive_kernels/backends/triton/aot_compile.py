"""Compiling one ahead-of-time job without a GPU and measuring what ptxas made of it.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` of the job's
specialization (:mod:`.aot_signatures`), then:

- registers and spill stores / loads from ptxas' ``-v`` log (the ptxas run of the
  compile itself, captured with Triton's ``dump_ptxas_log`` knob, set for the compile
  only), cross-checked with ``cuobjdump -res-usage`` on the cubin;
- shared memory: Triton's dynamic allocation (``metadata.shared``) plus ptxas' static one;
- whether the PTX issues wgmma (Hopper warp-group MMA);
- the SASS (``cuobjdump -sass``), kept with the row, from which :func:`analyse` counts the
  main loop and applies the performance model (:mod:`.perf_model`).

Results are cached per job (``CONTRASTIVE_KERNELS_TRITON_AOT_CACHE``: a directory, or ``0``
to recompile; default ``~/.cache/contrastive_kernels/triton_aot``), keyed by the kernels'
source, the job and the Triton version (:func:`job_key`); the committed ledger
(:mod:`.aot_ledger`) holds the same rows without their SASS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import tempfile
import time

from ... import env
from .aot_report import Row
from .aot_signatures import AUX_KERNELS, base_kernel, signature
from .perf_model import chunk_counts, loop_counts, mma_coverage, predict

_PTXAS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM = re.compile(r"(\d+) bytes smem")


CACHE_ENV = env.name("TRITON_AOT_CACHE")  # a directory, or "0" to recompile everything
_CACHE_VERSION = 5  # bump when what _compile_one measures changes


def hashed_modules(job) -> tuple:
    """The modules whose source keys a job's cached result: every module that defines the
    kernels or a helper they inline (lse_backward's epilogue, _common's, sigmoid_math's),
    the launchers of the ops that run them (two_sided, sigmoid: a kernel variant is named
    there) and what builds the job's specialization (aot_signatures). An edit to any of
    them recompiles (once, two_sided.py and the sigmoid modules were missing: editing them
    reused stale results)."""
    from . import (_common, aot_signatures, key_split, lse_backward, lse_forward,
                   score_tile, sigmoid, sigmoid_math, two_sided)

    return (_common, score_tile, sigmoid_math, lse_forward, lse_backward, two_sided, sigmoid,
            aot_signatures) + ((key_split,) if job[0] in AUX_KERNELS else ())


def job_key(job) -> str:
    """The job's identity: the kernels' source, the job and the Triton version (the
    compile is deterministic in those). Keys the local cache and the committed ledger
    (:mod:`.aot_ledger`)."""
    import hashlib
    import inspect

    import triton

    h = hashlib.sha256(f"{_CACHE_VERSION}|{triton.__version__}|{job!r}|".encode())
    for module in hashed_modules(job):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:32]


def _cache_path(job):
    """The local result cache of a job (with its SASS), so reruns of the test are quick."""
    where = env.get("TRITON_AOT_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                     "contrastive_kernels", "triton_aot"))
    if where == "0":
        return None
    return os.path.join(where, job_key(job) + ".json")


def compile_one(job, fresh: bool = False) -> Row:
    """The job's row: from the local cache unless ``fresh``, else compiled (and cached)."""
    cached = None if fresh else _cached(job)
    if cached is not None:
        return cached
    path = _cache_path(job)
    row = _compile_one(job)
    if path and not row.error:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(f"{path}.{os.getpid()}.tmp", "w") as f:
            json.dump(dataclasses.asdict(row), f)
        os.replace(f"{path}.{os.getpid()}.tmp", path)
    return row


def _compile_one(job) -> Row:
    kernel, dtype, arch, d_max, cfg = job[:5]
    probe = job[5] if len(job) > 5 else ""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from . import configs

    block_d = (configs.next_pow2(d_max) if cfg.single else cfg.block_d)
    if kernel in AUX_KERNELS:
        describe = f"R{cfg.block_o} D{block_d}({'single' if cfg.single else 'chunk'}) w{cfg.num_warps}"
    else:
        describe = cfg.describe().replace(f"D{cfg.block_d}(", f"D{block_d}(")
    row = Row(kernel, dtype, arch, f"d <= {d_max}" if d_max else "d chunked", describe,
              probe=probe)
    t0 = time.time()
    try:
        fn, sig, const, attrs = signature(kernel, dtype, cfg, block_d, int64=probe == "int64",
                                          split=probe == "split", simclr=probe == "simclr")
        src = ASTSource(JITFunction(fn), sig, constexprs=const, attrs=attrs)
        log = io.StringIO()
        # Knobs set for this compile only: scope() restores them (and the TRITON_* variables
        # that setting a knob exports) on exit, so importing or calling this module leaves
        # Triton's global configuration as it found it.
        with knobs.nvidia.scope(), knobs.compilation.scope():
            knobs.nvidia.dump_ptxas_log = True  # ptxas -v log printed to stdout
            knobs.compilation.always_compile = True  # a cache hit would skip ptxas
            with contextlib.redirect_stdout(log):
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                          options=dict(num_warps=cfg.num_warps,
                                                       num_stages=cfg.num_stages))
        text = log.getvalue()
        regs = _PTXAS.findall(text)
        spills = _SPILL.findall(text)
        smem = _SMEM.findall(text)
        row.registers = int(regs[-1]) if regs else -1
        row.spill_stores, row.spill_loads = (map(int, spills[-1]) if spills else (-1, -1))
        static_smem = int(smem[-1]) if smem else 0
        row.shared = int(compiled.metadata.shared) + static_smem
        row.wgmma = "wgmma" in compiled.asm["ptx"]
        row.int64_offsets = bool(re.search(r"tt\.addptr .*xi64>", compiled.asm["ttir"]))
        res = _cuobjdump(compiled.asm["cubin"])
        if res:
            if row.registers < 0:
                row.registers = res["REG"]
            row.local = res.get("LOCAL", 0)
        row.sass = _sass(compiled.asm["cubin"]) or ""
        analyse(row, job)
    except Exception as exc:  # reported, and failed by the test
        row.error = f"{type(exc).__name__}: {str(exc)[:400]}"
    row.seconds = time.time() - t0
    return row


def tool(name: str):
    """The path of a CUDA binary tool (cuobjdump, ptxas): Triton's bundled copy, else the
    toolkit's, else None."""
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if os.path.exists(path):
        return path
    path = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", name)
    return path if os.path.exists(path) else None


def _run_cuobjdump(cubin: bytes, flag: str):
    """cuobjdump's output for ``flag`` on a cubin, or None without the tool."""
    exe = tool("cuobjdump")
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([exe, flag, f.name], capture_output=True, text=True,
                              check=False).stdout
    finally:
        os.unlink(f.name)


def _cuobjdump(cubin: bytes):
    out = _run_cuobjdump(cubin, "-res-usage")
    if out is None:
        return None
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        return None
    return dict(REG=int(m[1]), STACK=int(m[2]), SHARED=int(m[3]), LOCAL=int(m[4]))


def analyse(row: Row, job) -> Row:
    """The SASS counts and the model of a compiled row (from its SASS, kept in the cache
    so that a change of the counting needs no recompile)."""
    kernel, dtype, arch, d_max, cfg = job[:5]
    if kernel in AUX_KERNELS:  # no streamed-tile loop: resources only
        row.loop_instr = row.loop_ex2 = row.loop_mma = row.loop_mufu = -1
        row.tile_elems, row.ceiling, row.bound = 0, -1.0, ""
        return row
    chunk = None
    if row.sass:
        counts = loop_counts(row.sass)
        if counts:
            row.loop_instr, row.loop_ex2, row.loop_mma, row.loop_mufu = counts
        # the chunked model needs the main loop found by its exps: fp64's are software
        # (no MUFU.EX2), so its main loop is not told apart from the d loops
        if not cfg.single and row.loop_ex2 > 0:
            chunk = chunk_counts(row.sass)
            row.chunk_once, row.chunk_instr = chunk.once, chunk.instr
            row.chunk_mufu, row.chunk_mma = chunk.mufu, chunk.mma
        row.mma_coverage = mma_coverage(row.sass, base_kernel(kernel), cfg, chunk)
    model = predict(base_kernel(kernel), dtype, arch, cfg, row.loop_instr, row.loop_mufu,
                    row.loop_mma, chunk)
    row.tile_elems, row.ceiling, row.bound = model
    return row


def _sass(cubin: bytes):
    return _run_cuobjdump(cubin, "-sass")


def _cached(job):
    path = _cache_path(job)
    if path and os.path.exists(path):
        with open(path) as f:
            return analyse(Row(**json.load(f)), job)
    return None
