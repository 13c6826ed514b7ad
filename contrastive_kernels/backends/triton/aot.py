"""Ahead-of-time compilation of every shipped config, without a GPU.

    python -m contrastive_kernels.backends.triton.aot [--out REPORT.md] [--jobs 2]

(``make triton-report`` writes the committed docs/triton_compile_report.md this way)
compiles each entry of :data:`configs.TABLE` for its arch (sm_80 / sm_90a) with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` and reads:

- registers and spill stores / loads from ptxas' ``-v`` log (the ptxas run of the
  compile itself, captured with Triton's ``dump_ptxas_log`` knob, set for the compile
  only), cross-checked with ``cuobjdump -res-usage`` on the cubin;
- shared memory: Triton's dynamic allocation (``metadata.shared``) plus ptxas' static one;
- whether the PTX issues wgmma (Hopper warp-group MMA);
- from the SASS (``cuobjdump -sass``) of the main loop: instructions, MUFU.EX2 and
  tensor-core instructions per thread per streamed tile, and from them and the per-SM
  rates of :data:`RATES` a predicted ceiling (fraction of the dtype's peak, :func:`predict`).

Each config is compiled in its heaviest specialization: every feature on (bias, labels,
self-exclusion, normalization; o for ``fwd_o``; dx and dscale for the backward), no
EVEN_* shortcut (masked tails), 32-bit offsets, 16-byte aligned pointers and row strides,
unit column strides, int32 labels (the launcher's), and the largest d tile of its range.
fp16 / bf16 share a config but are compiled separately; fp32 is compiled both as tf32
and as IEEE fp32 (torch's default), each with its own configs. The main kernels are
compiled unsplit (SPLIT = False: one range of key tiles, what the counts and the model
measure; the split only adds per-program bookkeeping outside the tile loop). The small
kernels of the key split (``key_split.merge_kernel``, ``key_split.finish_kernel``) are
compiled too (:func:`aux_jobs`, rows marked ``aux``: registers, spills, shared memory; no
main-loop counts or model).

The Triton kernels must be importable in compiled mode: run this with TRITON_INTERPRET
unset (the tests start it in a subprocess).

Results are cached per job (``CONTRASTIVE_KERNELS_TRITON_AOT_CACHE``: a directory, or ``0``
to recompile; default ``~/.cache/contrastive_kernels/triton_aot``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import io
import os
import re
import subprocess
import sys
import tempfile
import time

from ... import env
from .perf_model import (CEILING_FLOORS, RATES, SIMCLR_FLOORS, ex2_limit, loop_counts,  # noqa: F401
                         predict)

# Max shared memory per block (bytes). The "80" family also runs on sm_86 / sm_89 (the
# configs are picked by capability < 9.0), whose limit (99 KiB) is below A100's 163 KiB:
# check against the smaller one. sm_90: 227 KiB.
SMEM_LIMIT = {80: 101376, 90: 232448}
REG_LIMIT = 255
# dtype class of configs.TABLE -> the dtypes compiled for it. "tf32": fp32 operands on
# tf32 tensor cores (torch's matmul precision "high" / "medium"); "fp32": IEEE fp32
# (precision "highest", torch's default), FMA on the CUDA cores.
DTYPES = {"16": ("fp16", "bf16"), "tf32": ("tf32",), "fp32": ("fp32",), "64": ("fp64",)}
_ACC = {"fp16": "fp32", "bf16": "fp32", "tf32": "fp32", "fp32": "fp32", "fp64": "fp64"}
_OPERAND = {"tf32": "fp32"}


@dataclasses.dataclass
class Row:
    kernel: str
    dtype: str
    arch: int
    d_range: str
    config: str
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    shared: int = -1
    local: int = -1
    wgmma: bool = False
    seconds: float = 0.0
    error: str = ""
    probe: str = ""  # "int64": the 64-bit-offset specialization of a shipped config;
    # "split": its key-split specialization (SPLIT); "aux": a key-split kernel (merge /
    # finish), no main loop
    int64_offsets: bool = False  # TTIR adds 64-bit offsets to the row pointers
    # SASS of the main loop (one streamed tile, common path), per thread
    loop_instr: int = -1
    loop_ex2: int = -1
    loop_mma: int = -1
    tile_elems: int = -1  # logits of one tile per thread (BLOCK_O BLOCK_I / threads)
    ceiling: float = -1.0  # predicted fraction of the arch's peak for the dtype
    bound: str = ""  # the resource that sets the ceiling
    sass: str = dataclasses.field(default="", repr=False)  # cached, not reported

    @property
    def spills(self) -> int:
        return max(self.spill_stores, 0) + max(self.spill_loads, 0) + max(self.local, 0)

    def problems(self) -> list:
        out = []
        if self.error:
            out.append(f"compile error: {self.error}")
            return out
        if self.spill_stores or self.spill_loads or self.local:
            out.append(f"spills ({self.spill_stores} B stores, {self.spill_loads} B loads, "
                       f"{self.local} B local)")
        if self.shared > SMEM_LIMIT[self.arch]:
            out.append(f"shared memory {self.shared} B > sm_{self.arch} limit {SMEM_LIMIT[self.arch]} B")
        if self.registers > REG_LIMIT:
            out.append(f"{self.registers} registers > {REG_LIMIT}")
        if self.loop_ex2 > ex2_limit(self.tile_elems):
            out.append(f"{self.loop_ex2} exp per thread per tile > {self.tile_elems} logits "
                       "per thread: the tile is computed more than once")
        return out


AUX_KERNELS = ("merge", "finish")


def _aux_signature(kernel: str, dtype: str, cfg, block_d: int):
    """The key-split kernels, heaviest specialization: o merged / normalization on."""
    from . import key_split

    acc = _ACC[dtype]
    dtype = _OPERAND.get(dtype, dtype)
    if kernel == "merge":
        fn = key_split.merge_kernel.fn
        ptrs = dict(PART_M=acc, PART_L=acc, PART_O=acc, LSE=acc, O=acc)
        ints = dict(N="i32", D="i32", S="i32")
        const = dict(BLOCK_R=cfg.block_o, BLOCK_D=block_d, RETURN_O=True, INT64=False)
        aligned = ("D",)
    else:
        fn = key_split.finish_kernel.fn
        ptrs = dict(PART=acc, X=dtype, DX=dtype, SCALE=acc)
        ints = dict(NX="i32", D="i32", S="i32", EPS="fp32", stride_xn="i32")
        const = dict(stride_xd=1, BLOCK_R=cfg.block_o, BLOCK_D=block_d, HAS_NORM=True,
                     EVEN_O=False, EVEN_D=False, SINGLE_D=cfg.single, UPCAST=False,
                     INT64=False)
        aligned = ("D", "stride_xn")
    return fn, ptrs, ints, const, aligned


def _signature(kernel: str, dtype: str, cfg, block_d: int, int64: bool = False,
               split: bool = False, simclr: bool = False):
    """(python fn, signature, constexprs, attrs) for one compile; ``simclr``: without bias
    and labels (normalization and self-exclusion only, the SimCLR / CLIP-like calls)."""
    from . import lse_backward, lse_forward

    if kernel in AUX_KERNELS:
        fn, ptrs, ints, const, aligned = _aux_signature(kernel, dtype, cfg, block_d)
        return _finish_signature(fn, ptrs, ints, const, aligned)
    acc = _ACC[dtype]
    tf32 = dtype == "tf32"
    dtype = _OPERAND.get(dtype, dtype)
    common = dict(TF32=tf32, UPCAST=False, RESCALE=dtype == "fp16",
                  BLOCK_O=cfg.block_o, BLOCK_I=cfg.block_i, BLOCK_D=block_d,
                  HAS_SELF=True, HAS_BIAS=not simclr, HAS_LABELS=not simclr, HAS_NORM=True,
                  EVEN_D=False, SINGLE_D=cfg.single, INT64=int64, SPLIT=split)
    if kernel in ("fwd", "fwd_o"):
        fn = lse_forward.lse_fwd_kernel_py
        ptrs = dict(Q=dtype, K=dtype, SCALE=acc, BIAS=acc, QLAB="i32", KLAB="i32", INVQ=acc,
                    INVK=acc, LSE=acc, O=acc)
        ints = dict(N="i32", M="i32", D="i32", SELF_OFFSET="i32", stride_qn="i32",
                    stride_kn="i32")
        const = dict(common, stride_qd=1, stride_kd=1, RETURN_O=kernel == "fwd_o",
                     EVEN_N=False, EVEN_M=False)
        if split:
            ptrs["PART_M"] = acc
            ints["SPLIT_KEYS"] = "i32"
        else:
            const.update(PART_M=None, SPLIT_KEYS=0)
        if kernel == "fwd":
            const["O"] = None
            del ptrs["O"]
        aligned = ("D", "stride_qn", "stride_kn", "SPLIT_KEYS")
    else:
        fn = lse_backward.lse_bwd_kernel_py
        ptrs = dict(X=dtype, Y=dtype, SCALE=acc, BIAS=acc, XLAB="i32", YLAB="i32", INVX=acc,
                    INVY=acc, LSE=acc, G=acc, DX=dtype, ACC_BUF=acc, DS_PART=acc)
        ints = dict(NX="i32", NY="i32", D="i32", SELF_OFFSET="i32", EPS="fp32",
                    stride_xn="i32", stride_yn="i32")
        const = dict(common, stride_xd=1, stride_yd=1, DK=kernel == "bwd_dk", NEED_DX=True,
                     NEED_DS=True, EVEN_O=False, EVEN_I=False)
        if split:
            ints["SPLIT_KEYS"] = "i32"
        else:
            const["SPLIT_KEYS"] = 0
        if cfg.single and not split:  # the split writes its partial to ACC_BUF
            const["ACC_BUF"] = None
            del ptrs["ACC_BUF"]
        aligned = ("D", "stride_xn", "stride_yn", "SPLIT_KEYS")
    return _finish_signature(fn, ptrs, ints, const, aligned)


def _finish_signature(fn, ptrs, ints, const, aligned):
    import inspect
    names = list(inspect.signature(fn).parameters)
    signature = {}
    for name in names:
        if name in ptrs:
            signature[name] = "*" + ptrs[name]
        elif name in ints:
            signature[name] = ints[name]
        else:
            signature[name] = "constexpr"
    missing = [n for n in names if signature[n] == "constexpr" and n not in const]
    assert not missing, f"no value for constexprs {missing}"
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if (n in ptrs or n in aligned) and signature[n] != "constexpr"}
    return fn, signature, const, attrs


_PTXAS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM = re.compile(r"(\d+) bytes smem")


CACHE_ENV = env.name("TRITON_AOT_CACHE")  # a directory, or "0" to recompile everything
_CACHE_VERSION = 4  # bump when what _compile_one measures changes


def _cache_path(job):
    """Result cache keyed by the kernels' source, the job and the Triton version (the
    compile is deterministic in those), so reruns of the test are quick."""
    import hashlib

    import triton

    where = env.get("TRITON_AOT_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                     "contrastive_kernels", "triton_aot"))
    if where == "0":
        return None
    import inspect

    from . import _common, key_split, lse_backward, lse_forward

    h = hashlib.sha256(f"{_CACHE_VERSION}|{triton.__version__}|{job!r}|".encode())
    # whole modules: the kernels inline their helpers (lse_backward's epilogue, _common's)
    modules = (_common, lse_forward, lse_backward) + ((key_split,) if job[0] in AUX_KERNELS
                                                      else ())
    for module in modules:
        h.update(inspect.getsource(module).encode())
    return os.path.join(where, h.hexdigest()[:32] + ".json")


def compile_one(job) -> Row:
    import json

    cached = _cached(job)
    if cached is not None:
        return cached
    path = _cache_path(job)
    row = _compile_one(job)
    if path and not row.error:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(dataclasses.asdict(row), f)
        os.replace(path + ".tmp", path)
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
        fn, signature, const, attrs = _signature(kernel, dtype, cfg, block_d,
                                                 int64=probe == "int64",
                                                 split=probe == "split",
                                                 simclr=probe == "simclr")
        src = ASTSource(JITFunction(fn), signature, constexprs=const, attrs=attrs)
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
        row.loop_instr = row.loop_ex2 = row.loop_mma = -1
        row.tile_elems, row.ceiling, row.bound = 0, -1.0, ""
        return row
    if row.sass:
        counts = loop_counts(row.sass)
        if counts:
            row.loop_instr, row.loop_ex2, row.loop_mma = counts
    model = predict(kernel, dtype, arch, cfg, row.loop_instr, row.loop_ex2, row.loop_mma)
    row.tile_elems, row.ceiling, row.bound = model
    return row


def _sass(cubin: bytes):
    return _run_cuobjdump(cubin, "-sass")


def jobs(kernels=None, archs=None):
    from . import configs
    out = []
    for kernel, dclass, arch, d_max, cfg in configs.shipped():
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


def _cached(job):
    import json

    path = _cache_path(job)
    if path and os.path.exists(path):
        with open(path) as f:
            return analyse(Row(**json.load(f)), job)
    return None


def run(job_list, n_jobs: int = 2) -> list:
    rows = [_cached(j) for j in job_list]
    todo = [j for j, r in zip(job_list, rows) if r is None]
    if n_jobs <= 1 or len(todo) <= 1:
        done = [compile_one(j) for j in todo]
    else:
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(n_jobs, mp_context=ctx) as pool:
            done = list(pool.map(compile_one, todo))
    fresh = iter(done)
    return [r if r is not None else next(fresh) for r in rows]


_PROBES = {"int64": " (64-bit offsets)", "split": " (key split)",
           "simclr": " (no bias, no labels)"}


def report(rows, path=None) -> str:
    import triton
    lines = [
        "# Triton kernels: ahead-of-time compile report",
        "",
        "Generated by `make triton-report` (`python -m contrastive_kernels.backends.triton.aot "
        "--out docs/triton_compile_report.md`; `tests/backends/test_triton_aot.py` checks "
        "that it is current), no GPU needed: every shipped config of "
        "`contrastive_kernels/backends/triton/configs.py` compiled with "
        f"triton {triton.__version__} for its arch, registers and spills from ptxas `-v` "
        "(cross-checked with `cuobjdump -res-usage`), shared memory = Triton's dynamic "
        "allocation + ptxas' static one. Every path that runs by default is compiled: "
        "fp16 / bf16, fp32 as IEEE (`fp32`, torch's default matmul precision \"highest\") "
        "and as `tf32` (precision \"high\" / \"medium\"), fp64. Limits: 255 registers, "
        "no spills, shared memory "
        f"<= {SMEM_LIMIT[80]} B (sm_80 configs, so that they also fit sm_86 / sm_89) / "
        f"{SMEM_LIMIT[90]} B (sm_90).",
        "",
        "Rows `merge` / `finish` (marked aux in the JSON): the small kernels of the key "
        "split (`key_split.py`: the forward's merge of the per-range partials, the "
        "backward's sum of the partials and epilogue), compiled for resources only; the "
        "main kernels are compiled unsplit (one key range, the path the counts measure); "
        "rows marked (key split) are the split specialization of the sm_90 bf16 d <= 128 "
        "configs (grid axis 1 over ranges of key tiles, partials written to workspaces).",
        "",
        "Heaviest specialization per config: bias, labels (int32, as the launcher passes "
        "them), self-exclusion and normalization on, masked tails everywhere, largest d "
        "tile of the range; rows marked (no bias, no labels) are the common call "
        "(normalization and self-exclusion only: SimCLR / NT-Xent, CLIP) of the bf16 "
        "d <= 128 configs. Config: `O` rows owned "
        "per program, `I` streamed tile, `D` d tile (single = whole d in one tile, chunk = "
        "loop over d), `w` warps, `s` pipeline stages.",
        "",
        "Main loop (SASS, `cuobjdump -sass`, per thread per streamed tile): `instr` all "
        "instructions, `ex2` MUFU.EX2 (the exps), `mma` tensor-core instructions "
        "(HMMA / HGMMA / DMMA), `logits` the tile's logits per thread (BLOCK_O BLOCK_I / "
        "threads: more exps than that, beyond a few per row, means the tile is computed "
        "twice). Chunked configs: the counts of the tile loop without its d loops, which "
        "ptxas places elsewhere; no ceiling.",
        "",
        "**Performance model.** One streamed tile of one program uses its SM's shared "
        "resources for: tensor time = the tile's MMA FLOPs (2 BLOCK_O BLOCK_I d per product: "
        "one for `fwd`, two for `fwd_o` and the backward grids) / the SM's tensor FLOP/clk; "
        "MUFU time = ex2 x threads / 16 per clk; issue time = instr x warps / 4 per clk. "
        "With perfect overlap the tile takes the largest of the three, so "
        "`ceiling` = tensor time / max(tensor, MUFU, issue) is the best fraction of the "
        "dtype's peak the kernel can reach, and `bound` names the limiting resource. "
        "Per-SM rates (FLOP/clk): sm_80 (A100) fp16/bf16 2048, tf32 1024, fp64 (DMMA) 128, "
        "IEEE fp32 (FFMA) 128; sm_90 (H100) 4096, 2048, 256, 256 — NVIDIA's A100 and H100 "
        "architecture whitepapers (peak = rate x SMs x boost clock: 312 / 989 TFLOPS bf16). "
        "MUFU.EX2 16/clk/SM (CUDA C Programming Guide, throughput of arithmetic "
        "instructions, cc 8.0 and 9.0); issue 4 warp-instructions/clk/SM (4 schedulers). "
        "Not modelled: memory and shared-memory bandwidth, latency, pipeline bubbles, "
        "occupancy (a ceiling, not a prediction of the measured rate). For IEEE fp32 the "
        "peak is the FFMA rate, whose FFMAs also take issue slots. Floors enforced by "
        "`tests/backends/test_triton_aot.py`: "
        + ", ".join(f"{k} {dt} sm_{a} {dr} >= {100 * v:.0f}%"
                    for (k, dt, a, dr), v in CEILING_FLOORS.items())
        + "; without bias and labels: "
        + ", ".join(f"{k} {dt} sm_{a} {dr} >= {100 * v:.0f}%"
                    for (k, dt, a, dr), v in SIMCLR_FLOORS.items()) + ".",
        "",
        "| kernel | dtype | arch | d range | config | registers | spill st/ld (B) | "
        "shared (B) | wgmma | instr | ex2 | mma | logits | ceiling | bound |",
        "|---|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        spill = f"{r.spill_stores}/{r.spill_loads}" + (f" +{r.local} local" if r.local else "")
        ceiling = f"{100 * r.ceiling:.0f}%" if r.ceiling >= 0 else "-"
        lines.append(f"| {r.kernel} | {r.dtype} | sm_{r.arch} | {r.d_range}"
                     f"{_PROBES.get(r.probe, '')} | {r.config} | "
                     f"{r.registers} | {spill} | {r.shared} | {'yes' if r.wgmma else 'no'} | "
                     f"{r.loop_instr} | {r.loop_ex2} | {r.loop_mma} | {r.tile_elems} | "
                     f"{ceiling} | {r.bound} |"
                     + (f" ERROR {r.error}" if r.error else ""))
    text = "\n".join(lines) + "\n"
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the markdown report here")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--kernel", action="append", help="only these kernels")
    parser.add_argument("--arch", action="append", type=int, help="only these archs")
    parser.add_argument("--json", default=None, help="also dump the rows as JSON")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: AOT compilation needs the compiled-mode kernels",
              file=sys.stderr)
        return 2
    rows = run(jobs(args.kernel, args.arch)
               + ([] if args.kernel or args.arch else probe_jobs() + aux_jobs()), args.jobs)
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
