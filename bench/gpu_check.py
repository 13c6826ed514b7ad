"""The prepared GPU run (issue 10): ``make gpu-check RESULTS=dir`` / ``make gpu-check-dry``.

    python bench/gpu_check.py --results DIR [--dry] [--budget SECONDS] [--skip-build]
                              [--backends triton,cuda]

On a bare GPU machine (torch and triton preinstalled, no network) it runs, each section
written to DIR as JSON and markdown as soon as it finishes (so a run cut off by its
time limit still returns what it did; DIR/index.md lists the sections done):

1. ``env``: versions, device, and the measured bf16 GEMM rate (the roofline the timings
   are read against). The extension build (``setup.py build_ext --inplace``, against the
   machine's own torch) runs in the background from the start.
2. ``correctness``: the GPU backends that need no build (triton, torch) against the
   float64 torch backend on the device, bf16 / fp16 / fp32 x d in {64, 128, 200, 256,
   1024} x {plain, all options}: max errors of lse, o, dq, dk, dscale and the tolerance
   rule of ``testing.tolerance`` (twice the naive computation's error in the dtype, with
   a floor).
3. ``compiled``: registers, spills and shared memory of every Triton kernel compiled
   during the run (read from the kernels' caches, or cuobjdump on Triton's cache dir).
4. ``timing``: ``triton.testing.do_bench`` of the triton backend's forward and forward +
   backward at N = M in {16384, 65536}, d in {128, 256}, bf16 and tf32: TFLOP/s on the
   2NMd (forward) and 6NMd (backward) floors, against the measured GEMM rate, the naive
   reference loss's time and ``max_memory_allocated``; then an A/B of alternative configs.
5. ``build``: waits for the extension build.
6. ``correctness_cuda`` and ``timing_cuda``: sections 2 and 4 for the CUDA C++ backend
   (plus IEEE fp32 timings), in a child process (``--backends cuda``), which imports the
   extension the build just produced.
7. ``compare``: triton and cuda timings side by side.
8. ``gpu_tests``: the GPU-only tests (``-m gpu``), with pytest-xdist when present.

Each section gets a share of the budget (default 470 s, inside the issue's 8 minutes;
``SHARES``), so that a slow first compile cannot starve the later sections.

``--dry`` runs the same sections on the CPU under the Triton interpreter at tiny sizes,
the cuda ones through the emulation layer (CONTRASTIVE_KERNELS_CUDA_EMULATE=1) with the
extension already built (about a minute; tests/backends/test_gpu_check_dry.py runs it in
CI so the script cannot rot). It needs nothing beyond torch, triton and this package (pytest for section 5).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Fraction of the budget each section may take at most (the child process running the
# cuda sections gets ``cuda`` of the parent's budget and splits it in halves).
SHARES = dict(correctness=0.25, timing=0.2, cuda=0.3)
CHILD_SHARES = dict(correctness=0.5, timing=0.5)
EMULATE_VAR = "CONTRASTIVE_KERNELS_CUDA_EMULATE"


class Run:
    """Section bookkeeping: a time budget and results written as soon as they exist."""

    def __init__(self, results: str, budget: float, dry: bool, backends=("triton",),
                 suffix: str = "", shares=None, fresh_index: bool = True):
        self.dir = results
        self.t0 = time.time()
        self.budget = budget
        self.dry = dry
        self.backends = tuple(backends)
        self.suffix = suffix  # "_cuda" in the child: section files do not collide
        self.shares = shares or SHARES
        self.build = None
        self.t0_index = self.t0
        os.makedirs(results, exist_ok=True)
        self.index = os.path.join(results, "index.md")
        if not fresh_index:
            return
        with open(self.index, "w") as f:
            f.write(f"# GPU check{' (dry run, CPU interpreter)' if dry else ''}\n\n"
                    f"Started {time.strftime('%Y-%m-%d %H:%M:%S')}, budget {budget:.0f} s.\n\n")

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def deadline(self, section: str) -> float:
        """When ``section``, starting now, must stop so that the later ones keep their share."""
        return time.time() + self.shares.get(section, 1.0) * self.budget

    def write(self, name: str, data, markdown: str, seconds: float, status: str = "ok"):
        with open(os.path.join(self.dir, f"{name}.json"), "w") as f:
            json.dump(data, f, indent=1, default=str)
        with open(os.path.join(self.dir, f"{name}.md"), "w") as f:
            f.write(markdown + "\n")
        with open(self.index, "a") as f:
            f.write(f"- [{name}]({name}.md): {status}, {seconds:.1f} s "
                    f"(at {time.time() - self.t0_index:.0f} s)\n")
        print(f"[gpu_check] {name}: {status} ({seconds:.1f} s)", flush=True)

    def section(self, name: str, fn, min_left: float = 5.0):
        name = name + self.suffix
        if self.left() < min_left:
            self.write(name, {"skipped": "time budget"}, f"# {name}\n\nskipped: time budget",
                       0.0, "skipped (budget)")
            return None
        t = time.time()
        try:
            data, md = fn(self)
            self.write(name, data, md, time.time() - t)
            return data
        except Exception as exc:  # a failed section must not cost the others
            tb = traceback.format_exc()
            self.write(name, {"error": repr(exc), "traceback": tb},
                       f"# {name}\n\nERROR `{exc!r}`\n\n```\n{tb[-3000:]}\n```",
                       time.time() - t, "ERROR")
            return None


def _table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _device():
    import torch
    return torch.device("cpu") if not torch.cuda.is_available() else torch.device("cuda")


def _sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _bench(fn, dry: bool) -> float:
    """Milliseconds per call: do_bench on the GPU, a few wall-clock runs in the dry mode."""
    if dry:
        fn()
        t = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t)
    from triton.testing import do_bench
    return float(do_bench(fn, warmup=25, rep=100))


# --------------------------------------------------------------------------- 1. env


def section_env(run: Run):
    import torch
    import triton
    info = dict(python=platform.python_version(), torch=torch.__version__,
                triton=triton.__version__, cuda=torch.version.cuda,
                interpret=os.environ.get("TRITON_INTERPRET", "0"), host=platform.node(),
                cpus=os.cpu_count())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}",
                    sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2 ** 30, 1))
    dev = _device()
    n = 256 if run.dry else 8192
    dtype = torch.float32 if run.dry else torch.bfloat16
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    ms = _bench(lambda: a @ b, run.dry)
    info["gemm"] = dict(n=n, dtype=str(dtype), ms=ms, tflops=2 * n ** 3 / ms / 1e9)
    # copy bandwidth with both buffers in L2 (2 x 8 MiB) and far beyond it (2 x 1 GiB): the
    # ridge points (FLOP per byte) that the Triton report's per-tile intensities compare with
    for label, mib in (("l2", 8), ("hbm", 1024)):
        gbs = _copy_gbs((1 if run.dry else mib) * 2 ** 20, dev, run.dry)
        info[f"{label}_copy_gbs"] = round(gbs, 1)
        info[f"{label}_ridge_flop_per_byte"] = round(info["gemm"]["tflops"] * 1e3 / gbs, 1)
    try:
        from contrastive_kernels.backends.triton import configs
        if torch.cuda.is_available():
            cap = torch.cuda.get_device_capability()
            info["triton_config_family"] = (configs.unsupported_arch(cap)
                                            or configs.arch_of(cap))
    except Exception as exc:
        info["triton_config_family"] = repr(exc)
    md = ["# env", "", _table(["key", "value"], [(k, v) for k, v in info.items()
                                                  if k != "gemm"]), "",
          f"GEMM {info['gemm']['dtype']} {n}^3: {info['gemm']['ms']:.3f} ms, "
          f"**{info['gemm']['tflops']:.3g} TFLOP/s**"]
    return info, "\n".join(md)


def _copy_gbs(nbytes: int, dev, dry: bool) -> float:
    """GB/s of a device copy between two buffers of ``nbytes`` (read + write counted)."""
    import torch
    x = torch.empty(nbytes // 4, device=dev)
    y = torch.empty_like(x)
    return 2 * nbytes / _bench(lambda: y.copy_(x), dry) / 1e6


def start_build(run: Run):
    """The extension build runs in the background while the GPU sections run (the GPU
    machines have 16 cores); its section is written at the end."""
    if run.skip_build:
        return None
    log = open(os.path.join(run.dir, "build.log"), "w")
    return subprocess.Popen([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log, time.time()


def section_build(run: Run):
    if run.build is None:
        return dict(status="skipped"), "# build\n\nskipped (--skip-build or --dry)"
    proc, log, t0 = run.build
    try:  # the cuda sections need the build; keep a little for the GPU tests anyway
        rc = proc.wait(timeout=max(1.0, run.left() - 0.1 * run.budget))
        status = "ok" if rc == 0 else f"failed (rc {rc})"
    except subprocess.TimeoutExpired:
        proc.kill()
        status = "killed at the time budget"
    log.close()
    with open(os.path.join(run.dir, "build.log")) as f:
        tail = f.read()[-3000:]
    data = dict(status=status, seconds=time.time() - t0, tail=tail)
    return data, f"# build\n\n`setup.py build_ext --inplace`: {status} " \
                 f"({data['seconds']:.0f} s)\n\n```\n{tail}\n```"


# --------------------------------------------------------------------------- 2. correctness


def section_correctness(run: Run):
    import torch

    from contrastive_kernels.backends import registry
    from contrastive_kernels.core.contract import CoreOptions
    from contrastive_kernels.testing.core_cases import OPTIONS, make_inputs
    from contrastive_kernels.testing.core_check import acc_dtype, fused, lse_and_grads, naive
    from contrastive_kernels.testing.tolerance import ACC_EPS, FLOOR_ULPS, max_err

    dev = _device()
    opts = {o.id: o for o in OPTIONS}
    if run.dry:
        n, m, ds, dtypes = 37, 45, (16, 40), (torch.float32, torch.bfloat16)
    else:
        n, m, ds = 700, 900, (64, 128, 200, 256, 1024)
        dtypes = (torch.bfloat16, torch.float16, torch.float32)
    # the parent runs triton (and torch on a GPU); the child runs cuda
    names = [name for name in run.backends if name in registry.MODULES]
    if not run.dry and "triton" in names:
        names.append("torch")
    rows, data = [], []
    stop_at = run.deadline("correctness")
    for name in names:
        try:
            backend = registry.get_backend(name)
        except Exception as exc:
            data.append(dict(backend=name, error=repr(exc)))
            continue
        for dtype in dtypes:
            for d in ds:
                for opt_id in ("plain", "all"):
                    if run.left() < 60 or time.time() > stop_at:
                        data.append(dict(backend=name, dtype=str(dtype), d=d,
                                         skipped="time budget"))
                        break
                    opt = opts[opt_id]
                    feats = CoreOptions(normalize=opt.normalize, has_bias=opt.bias,
                                        has_labels=opt.labels,
                                        has_self=opt.self_offset is not None,
                                        return_o=opt.return_o)
                    why = backend.not_supported_reasons(dev, dtype, d, feats)
                    rec = dict(backend=name, dtype=str(dtype), d=d, opt=opt_id)
                    if why:
                        rec["unsupported"] = "; ".join(why)
                        data.append(rec)
                        continue
                    try:
                        rec.update(_compare(name, n, m, d, dtype, opt, dev, make_inputs,
                                            acc_dtype, fused, naive, lse_and_grads, max_err,
                                            ACC_EPS, FLOOR_ULPS))
                    except Exception as exc:
                        rec["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    data.append(rec)
                    rows.append((name, str(dtype).replace("torch.", ""), d, opt_id,
                                 rec.get("verdict", "ERROR"),
                                 *(f"{rec.get(k, {}).get('err', float('nan')):.2e}"
                                   f" / {rec.get(k, {}).get('tol', float('nan')):.1e}"
                                   if isinstance(rec.get(k), dict) else "-"
                                   for k in ("lse", "o", "dq", "dk", "dscale")),
                                 rec.get("error", "")))
    bad = sum(1 for r in data if r.get("verdict") == "FAIL" or r.get("error"))
    md = [f"# correctness{run.suffix}", "",
          f"N = {n}, M = {m}; oracle: the torch backend in float64 on {dev}; tolerance: "
          "twice the naive computation's error in the dtype (floor "
          f"{FLOOR_ULPS} ulps). Cells: max error / tolerance. {bad} failing.", "",
          _table(["backend", "dtype", "d", "options", "verdict", "lse", "o", "dq", "dk",
                  "dscale", "error"], rows)]
    return data, "\n".join(md)


def _compare(name, n, m, d, dtype, opt, dev, make_inputs, acc_dtype, fused, naive,
             lse_and_grads, max_err, ACC_EPS, FLOOR_ULPS):
    import torch
    q, k, gen = make_inputs(n, m, d, dtype, device=dev)
    acc = acc_dtype(dtype)
    kw = opt.kwargs(n, m, dev, acc, gen)
    w = torch.randn(n, generator=gen, dtype=torch.float64).to(dev)
    scale = torch.tensor(opt.scale, device=dev)
    kw64 = {key: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for key, v in kw.items()}
    oracle = lse_and_grads(fused("torch"), q.double(), k.double(), scale.double(), kw64, w)
    # the naive formulation in the dtype sets the tolerance (testing.tolerance's rule)
    baseline = lse_and_grads(naive(dtype), q, k, scale.to(dtype), kw, w)
    ours = lse_and_grads(fused(name), q, k, scale.to(acc), kw, w)
    out, verdict = {}, "ok"
    for key, i in (("lse", 0), ("o", 1), ("dq", 2), ("dk", 3), ("dscale", 4)):
        if ours[i] is None or oracle[i] is None:
            continue
        finite = oracle[i][torch.isfinite(oracle[i])].double()
        mag = float(finite.abs().max()) if finite.numel() else 1.0
        floor = FLOOR_ULPS * ACC_EPS[dtype] * max(1.0, mag)
        tol = max(2.0 * max_err(baseline[i], oracle[i]), floor)
        err = max_err(ours[i], oracle[i])
        nan = bool(torch.isnan(ours[i]).any())
        ok = err <= tol and not nan
        verdict = verdict if ok else "FAIL"
        out[key] = dict(err=err, tol=tol, nan=nan, ok=ok)
    out["verdict"] = verdict
    return out


# --------------------------------------------------------------------------- 3. compiled


def compiled_kernels() -> list:
    """(name, registers, spills, shared, warps, stages) of the Triton kernels compiled in
    this process, from the JIT functions' caches (layouts differ across triton versions:
    any dict of compiled kernels in ``device_caches`` / ``cache`` is read)."""
    from contrastive_kernels.backends.triton import _common, lse_backward, lse_forward

    out = []
    for fn in (lse_forward.lse_fwd_kernel, lse_backward.lse_bwd_kernel, _common.inv_norm_kernel):
        caches = []
        for attr in ("device_caches", "cache"):
            holder = getattr(fn, attr, None)
            if isinstance(holder, dict):
                for entry in holder.values():
                    items = entry if isinstance(entry, (tuple, list)) else (entry,)
                    caches += [c for c in items if isinstance(c, dict)]
        for cache in caches:
            for key, kern in cache.items():
                meta = getattr(kern, "metadata", None)
                if meta is None:
                    continue
                with contextlib.suppress(Exception):
                    kern._init_handles()  # n_regs / n_spills are read at load time
                out.append(dict(kernel=getattr(fn, "__name__", str(fn)),
                                registers=getattr(kern, "n_regs", None),
                                spills=getattr(kern, "n_spills", None),
                                shared=getattr(meta, "shared", None),
                                warps=getattr(meta, "num_warps", None),
                                stages=getattr(meta, "num_stages", None),
                                key=str(key)[:160]))
    return out


def section_compiled(run: Run):
    from contrastive_kernels.backends.triton import _ops
    if _ops._kernels_interpreted():
        return ({"interpreted": True},
                "# compiled\n\nTriton interpreter: no kernel is compiled (dry run).")
    rows = compiled_kernels()
    if not rows:  # fall back on the cubins of Triton's cache directory
        rows = _cache_dir_cubins()
    spilling = [r for r in rows if r.get("spills")]
    md = ["# compiled", "", f"{len(rows)} kernels, {len(spilling)} with spills.", "",
          _table(["kernel", "registers", "spills", "shared", "warps", "stages", "key"],
                 [(r.get("kernel"), r.get("registers"), r.get("spills"), r.get("shared"),
                   r.get("warps"), r.get("stages"), f"`{r.get('key', '')[:80]}`")
                  for r in rows])]
    return rows, "\n".join(md)


def _cache_dir_cubins() -> list:
    import re

    from contrastive_kernels.backends.triton import aot
    where = os.environ.get("TRITON_CACHE_DIR", os.path.expanduser("~/.triton/cache"))
    tool = aot._tool("cuobjdump")
    rows = []
    for path in glob.glob(os.path.join(where, "*", "*.cubin")):
        if "lse_" not in os.path.basename(path) and "inv_norm" not in os.path.basename(path):
            continue
        res = ""
        if tool:
            res = subprocess.run([tool, "-res-usage", path], capture_output=True,
                                 text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
        rows.append(dict(kernel=os.path.basename(path), registers=int(m[1]) if m else None,
                         spills=int(m[4]) if m else None, shared=int(m[3]) if m else None,
                         key=path))
    return rows


# --------------------------------------------------------------------------- 4. timing


def _set_tf32(on: bool):
    import torch
    torch.set_float32_matmul_precision("high" if on else "highest")


def section_timing(run: Run):
    import torch

    import contrastive_kernels as ck

    dev = _device()
    gemm = getattr(run, "gemm_tflops", None)
    backend = run.backends[0]
    if run.dry:
        sizes, ds = (64,), (16,)
        precisions = (("fp32", torch.float32, False), ("bf16", torch.bfloat16, False))
    else:
        sizes, ds = (16384, 65536), (128, 256)
        precisions = (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True))
        if backend == "cuda":  # its exact fp32 path (torch's default precision) too
            precisions += (("fp32", torch.float32, False),)
    rows, data = [], []
    stop_at = run.deadline("timing")
    prev = torch.get_float32_matmul_precision()
    try:
        for label, dtype, tf32 in precisions:
            _set_tf32(tf32)
            for n in sizes:
                for d in ds:
                    if run.left() < 45 or time.time() > stop_at:
                        data.append(dict(skipped="time budget", n=n, d=d, dtype=label))
                        continue
                    rec = _time_case(ck, torch, dev, n, d, dtype, run.dry, gemm, backend,
                                     reference=backend == "triton")
                    rec.update(backend=backend, dtype=label, n=n, d=d)
                    data.append(rec)
                    rows.append(_timing_row(rec))
                    _write_partial(run, "timing" + run.suffix, data)
    finally:
        torch.set_float32_matmul_precision(prev)
    ab = _ab_configs(run, ck, torch, dev) if backend == "triton" else []
    md = [f"# timing{run.suffix}", "",
          f"Backend `{backend}`. "
          "N = M, normalize + self-exclusion (SimCLR-like), `triton.testing.do_bench` "
          "(ms). Floors: forward 2NMd, backward 6NMd (recompute + dq + dk) FLOPs; "
          f"% of the measured GEMM rate ({gemm and f'{gemm:.3g}'} TFLOP/s, bf16; tf32 "
          "rows are read against it too). Reference: the naive loss in the dtype "
          "(N x M logits), fwd + bwd; its peak memory.", "",
          _table(["dtype", "N", "d", "fwd ms", "fwd TFLOP/s", "fwd % GEMM", "fwd+bwd ms",
                  "bwd TFLOP/s", "bwd % GEMM", "peak MiB", "ref fwd+bwd ms", "ref peak MiB"],
                 rows)]
    if ab:
        md += ["", "## A/B of configs (bf16, forward + backward)", "",
               _table(["config", "N", "d", "fwd ms", "fwd+bwd ms"],
                      [(r["config"], r["n"], r["d"], f"{r.get('fwd_ms', float('nan')):.3f}",
                        f"{r.get('fwdbwd_ms', float('nan')):.3f}") for r in ab])]
    return dict(cases=data, ab=ab), "\n".join(md)


def _write_partial(run: Run, name: str, data):
    with open(os.path.join(run.dir, f"{name}.partial.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)


def _time_case(ck, torch, dev, n, d, dtype, dry, gemm, backend="triton", reference=True):
    rec = {}
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(n, d, device=dev, dtype=dtype, generator=gen)
    k = torch.randn(n, d, device=dev, dtype=dtype, generator=gen)
    kw = dict(normalize=True, self_offset=0)
    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
    flops_f, flops_b = 2.0 * n * n * d, 6.0 * n * n * d

    def fwd():
        return ck.ops.lse(q, k, 10.0, backend=backend, **kw)[0]

    def fwdbwd():
        lse = ck.ops.lse(qg, kg, 10.0, backend=backend, **kw)[0]
        torch.autograd.grad(lse.sum(), (qg, kg))

    try:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        rec["fwd_ms"] = _bench(fwd, dry)
        rec["fwdbwd_ms"] = _bench(fwdbwd, dry)
        _sync()
        if torch.cuda.is_available():
            rec["peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        bwd_ms = max(rec["fwdbwd_ms"] - rec["fwd_ms"], 1e-9)
        rec["fwd_tflops"] = flops_f / rec["fwd_ms"] / 1e9
        rec["bwd_tflops"] = flops_b / bwd_ms / 1e9
        if gemm:
            rec["fwd_pct_gemm"] = 100 * rec["fwd_tflops"] / gemm
            rec["bwd_pct_gemm"] = 100 * rec["bwd_tflops"] / gemm
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if not reference:
        return rec
    # the naive reference loss: N x M logits in the dtype (skipped where they cannot fit)
    logits_bytes = n * n * 4 * 3
    free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 2 ** 31
    if logits_bytes < 0.6 * free:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()

            def ref():
                lse = ck.ops.lse(qg, kg, 10.0, backend="reference", **kw)[0]
                torch.autograd.grad(lse.sum(), (qg, kg))

            rec["ref_fwdbwd_ms"] = _bench(ref, dry)
            if torch.cuda.is_available():
                rec["ref_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        except Exception as exc:
            rec["ref_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    else:
        rec["ref_error"] = "skipped: the N x M logits would not fit"
    return rec


def _timing_row(r):
    def f(key, fmt="{:.3f}"):
        v = r.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else "-"
    return (r["dtype"], r["n"], r["d"], f("fwd_ms"), f("fwd_tflops", "{:.3g}"),
            f("fwd_pct_gemm", "{:.0f}%"), f("fwdbwd_ms"), f("bwd_tflops", "{:.3g}"),
            f("bwd_pct_gemm", "{:.0f}%"), f("peak_mib", "{:.0f}"), f("ref_fwdbwd_ms"),
            f("ref_peak_mib", "{:.0f}") if "ref_peak_mib" in r else r.get("ref_error", "-"))


def _ab_configs(run: Run, ck, torch, dev):
    """A few neighbours of the shipped config at N = 16384, d = 128 (bf16)."""
    from contrastive_kernels.backends.triton import _ops, configs
    if run.dry:
        n, d, dtype = 64, 16, torch.float32
        cands = [configs.select("fwd", d, dtype, None)]
    else:
        n, d, dtype = 16384, 128, torch.bfloat16
        arch = _ops._arch(dev)
        base = configs.select("fwd", d, dtype, arch)
        cands = [base] + [c for c in configs.autotune_space(base)
                          if c != base and c.block_o * c.block_i <= 128 * 128
                          and not (c.block_o == 64 and c.num_warps == 8)][:5]
    q = torch.randn(n, d, device=dev, dtype=dtype)
    k = torch.randn(n, d, device=dev, dtype=dtype)
    out = []
    for cfg in cands:
        if run.left() < 40:
            break
        rec = dict(config=cfg.describe(), n=n, d=d)
        try:
            qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
            with configs.forced(cfg):
                rec["fwd_ms"] = _bench(lambda: ck.ops.lse(q, k, 10.0, backend="triton",
                                                          normalize=True)[0], run.dry)

                def fb():
                    lse = ck.ops.lse(qg, kg, 10.0, backend="triton", normalize=True)[0]
                    torch.autograd.grad(lse.sum(), (qg, kg))
                rec["fwdbwd_ms"] = _bench(fb, run.dry)
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        out.append(rec)
    return out


# --------------------------------------------------------------------------- 6. cuda


def run_cuda_child(run: Run):
    """The cuda sections in a child process: this one imported the package before the
    extension was built, so its backend ``cuda`` would stay unavailable. The child writes
    correctness_cuda / timing_cuda into the same folder (and index) as it goes."""
    budget = min(SHARES["cuda"] * run.budget, run.left() - 0.1 * run.budget)
    if budget < 20:
        run.write("correctness_cuda", {"skipped": "time budget"},
                  "# correctness_cuda\n\nskipped: time budget", 0.0, "skipped (budget)")
        return None
    args = [sys.executable, os.path.abspath(__file__), "--results", run.dir, "--child",
            "--backends", "cuda", "--budget", f"{budget:.0f}",
            "--sections", "correctness,timing", "--t0", repr(run.t0)]
    env = dict(os.environ)
    if run.dry:
        args.append("--dry")
        env[EMULATE_VAR] = "1"  # the kernel source through the emulation layer, on CPU
    if getattr(run, "gemm_tflops", None):
        args += ["--gemm-tflops", str(run.gemm_tflops)]
    try:
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=budget + 30)
        print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n", flush=True)
        return proc.returncode
    except subprocess.TimeoutExpired:
        return "timeout"


def section_compare(run: Run):
    """triton and cuda timings side by side (from timing.json / timing_cuda.json)."""
    def load(name):
        path = os.path.join(run.dir, f"{name}.json")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            data = json.load(f)
        return data.get("cases", []) if isinstance(data, dict) else []

    by_key = {}
    for case in load("timing") + load("timing_cuda"):
        if "backend" in case and "fwd_ms" in case:
            key = (case["dtype"], case["n"], case["d"])
            by_key.setdefault(key, {})[case["backend"]] = case

    def cell(case, key, fmt):
        v = (case or {}).get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    rows = []
    for (dtype, n, d), cases in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        tr, cu = cases.get("triton"), cases.get("cuda")
        ratio = "-"
        if tr and cu and tr.get("fwdbwd_ms") and cu.get("fwdbwd_ms"):
            ratio = f"{cu['fwdbwd_ms'] / tr['fwdbwd_ms']:.2f}"
        rows.append((dtype, n, d, cell(tr, "fwd_ms", "{:.3f}"), cell(cu, "fwd_ms", "{:.3f}"),
                     cell(tr, "fwd_pct_gemm", "{:.0f}%"), cell(cu, "fwd_pct_gemm", "{:.0f}%"),
                     cell(tr, "fwdbwd_ms", "{:.3f}"), cell(cu, "fwdbwd_ms", "{:.3f}"),
                     cell(tr, "bwd_pct_gemm", "{:.0f}%"), cell(cu, "bwd_pct_gemm", "{:.0f}%"),
                     ratio))
    md = ["# compare", "",
          "triton vs cuda, same cases as `timing` (N = M, normalize + self-exclusion). "
          "% GEMM: forward on the 2NMd floor, backward on 6NMd, against the measured bf16 "
          "GEMM rate. Last column: cuda fwd+bwd time / triton's (< 1: cuda faster; the "
          "`auto` rule in backends/cuda.py PRIORITY follows it).", "",
          _table(["dtype", "N", "d", "fwd ms triton", "fwd ms cuda", "fwd % triton",
                  "fwd % cuda", "fwd+bwd ms triton", "fwd+bwd ms cuda", "bwd % triton",
                  "bwd % cuda", "cuda / triton"], rows)]
    return dict(rows=rows), "\n".join(md)


# --------------------------------------------------------------------------- 7. GPU tests


def section_gpu_tests(run: Run):
    import importlib.util
    env = dict(os.environ)
    args = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-m", "gpu",
            "tests/backends/test_triton.py", "tests/backends/test_cuda_emulated.py"]
    if not run.dry:
        env.pop("TRITON_INTERPRET", None)
        env["CONTRASTIVE_KERNELS_TRITON_NATIVE"] = "1"
    xdist = importlib.util.find_spec("xdist") is not None
    if xdist and not run.dry:
        args += ["-n", str(min(8, os.cpu_count() or 1))]
    limit = max(10.0, run.left() - 5)
    t = time.time()
    try:
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=limit)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", (exc.stdout or b"").decode(errors="replace") \
            if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    tail = out[-6000:]
    data = dict(rc=rc, xdist=xdist, seconds=time.time() - t, command=" ".join(args), tail=tail)
    md = f"# gpu_tests\n\n`{' '.join(args[2:])}` -> rc {rc} (xdist: {xdist})\n\n```\n{tail}\n```"
    return data, md


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.environ.get("RESULTS", "bench/results/gpu"))
    parser.add_argument("--dry", action="store_true",
                        help="CPU, Triton interpreter, tiny sizes (CI)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default 470, dry 240)")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--backends", default="triton,cuda",
                        help="triton runs in this process, cuda in a child after the build")
    parser.add_argument("--sections",
                        default="env,correctness,compiled,timing,build,cuda,compare,gpu_tests")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gemm-tflops", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dry:
        os.environ["TRITON_INTERPRET"] = "1"  # before the backend is imported
    sys.path.insert(0, ROOT)
    budget = args.budget or (240.0 if args.dry else 470.0)
    backends = [b for b in args.backends.split(",") if b]
    wanted = args.sections.split(",")
    if args.child:  # the cuda sections, with the extension built by the parent
        run = Run(args.results, budget, args.dry, backends, suffix="_" + backends[0],
                  shares=CHILD_SHARES, fresh_index=False)
        run.gemm_tflops = args.gemm_tflops
        run.t0_index = args.t0 or run.t0  # the index's "at" column counts from the parent's start
        failed = False
        for name, fn in (("correctness", section_correctness), ("timing", section_timing)):
            if name in wanted:
                failed |= run.section(name, fn) is None
        return 1 if failed else 0
    run = Run(args.results, budget, args.dry, [b for b in backends if b != "cuda"] or ["triton"])
    run.skip_build = args.skip_build or args.dry
    run.build = start_build(run)
    sections = [("env", section_env), ("correctness", section_correctness),
                ("compiled", section_compiled), ("timing", section_timing),
                ("build", section_build)]
    failed = False
    for name, fn in sections:
        if name not in wanted:
            continue
        data = run.section(name, fn)
        if name == "env" and isinstance(data, dict):
            run.gemm_tflops = data.get("gemm", {}).get("tflops")
        failed |= data is None
    if "cuda" in backends and "cuda" in wanted:
        failed |= run_cuda_child(run) != 0
    if "compare" in wanted:
        failed |= run.section("compare", section_compare) is None
    if "gpu_tests" in wanted:
        failed |= run.section("gpu_tests", section_gpu_tests) is None
    with open(run.index, "a") as f:
        f.write(f"\nFinished in {time.time() - run.t0:.0f} s.\n")
    print(f"[gpu_check] results in {run.dir} ({time.time() - run.t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
