"""The prepared GPU run (issue 10): ``make gpu-check RESULTS=dir`` / ``make gpu-check-dry``.

    python bench/gpu_check.py --results DIR [--dry] [--budget SECONDS] [--skip-build]

On a bare GPU machine (torch and triton preinstalled, no network) it runs, each section
written to DIR as JSON and markdown as soon as it finishes (so a run cut off by its
time limit still returns what it did; DIR/index.md lists the sections done):

1. ``env``: versions, device, and the measured bf16 GEMM rate (the roofline the timings
   are read against). The extension build (``setup.py build_ext --inplace``) runs in the
   background from the start; its section, ``build``, is written last.
2. ``correctness``: every GPU backend against the float64 torch backend on the device,
   bf16 / fp16 / fp32 x d in {64, 128, 200, 256, 1024} x {plain, all options}: max errors
   of lse, o, dq, dk, dscale and the tolerance rule of ``testing.tolerance`` (twice the
   naive computation's error in the dtype, with a floor).
3. ``compiled``: registers, spills and shared memory of every Triton kernel compiled
   during the run (read from the kernels' caches, or cuobjdump on Triton's cache dir).
4. ``timing``: ``triton.testing.do_bench`` of forward and forward + backward at
   N = M in {16384, 65536}, d in {128, 256}, bf16 and tf32: TFLOP/s on the 2NMd (forward)
   and 6NMd (backward) floors, against the measured GEMM rate, the naive reference
   loss's time and ``max_memory_allocated``; then an A/B of alternative configs.
5. ``gpu_tests``: the GPU-only tests (``-m gpu``), with pytest-xdist when present.

Correctness and timing each get at most 35 % of the budget (default 470 s, inside the
issue's 8 minutes), so that a slow first compile cannot starve the later sections.

``--dry`` runs the same sections on the CPU under the Triton interpreter at tiny sizes
(under a minute; tests/backends/test_gpu_check_dry.py runs it in CI so the script cannot
rot). It needs nothing beyond torch, triton and this package (pytest for section 5).
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


class Run:
    """Section bookkeeping: a time budget and results written as soon as they exist."""

    def __init__(self, results: str, budget: float, dry: bool):
        self.dir = results
        self.t0 = time.time()
        self.budget = budget
        self.dry = dry
        os.makedirs(results, exist_ok=True)
        self.index = os.path.join(results, "index.md")
        with open(self.index, "w") as f:
            f.write(f"# GPU check{' (dry run, CPU interpreter)' if dry else ''}\n\n"
                    f"Started {time.strftime('%Y-%m-%d %H:%M:%S')}, budget {budget:.0f} s.\n\n")

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def write(self, name: str, data, markdown: str, seconds: float, status: str = "ok"):
        with open(os.path.join(self.dir, f"{name}.json"), "w") as f:
            json.dump(data, f, indent=1, default=str)
        with open(os.path.join(self.dir, f"{name}.md"), "w") as f:
            f.write(markdown + "\n")
        with open(self.index, "a") as f:
            f.write(f"- [{name}]({name}.md): {status}, {seconds:.1f} s "
                    f"(at {time.time() - self.t0:.0f} s)\n")
        print(f"[gpu_check] {name}: {status} ({seconds:.1f} s)", flush=True)

    def section(self, name: str, fn, min_left: float = 5.0):
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
    try:
        rc = proc.wait(timeout=max(1.0, run.left() - 2))
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
        names = ["triton"]
    else:
        n, m, ds = 700, 900, (64, 128, 200, 256, 1024)
        dtypes = (torch.bfloat16, torch.float16, torch.float32)
        names = [name for name in registry.MODULES if name != "cpu"]
    rows, data = [], []
    stop_at = time.time() + 0.35 * run.budget  # leave the timings their share
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
    md = ["# correctness", "",
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
    if run.dry:
        sizes, ds = (64,), (16,)
        precisions = (("fp32", torch.float32, False), ("bf16", torch.bfloat16, False))
    else:
        sizes, ds = (16384, 65536), (128, 256)
        precisions = (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True))
    rows, data = [], []
    stop_at = time.time() + 0.35 * run.budget
    prev = torch.get_float32_matmul_precision()
    try:
        for label, dtype, tf32 in precisions:
            _set_tf32(tf32)
            for n in sizes:
                for d in ds:
                    if run.left() < 45 or time.time() > stop_at:
                        data.append(dict(skipped="time budget", n=n, d=d, dtype=label))
                        continue
                    rec = _time_case(ck, torch, dev, n, d, dtype, run.dry, gemm)
                    rec.update(dtype=label, n=n, d=d)
                    data.append(rec)
                    rows.append(_timing_row(rec))
                    _write_partial(run, "timing", data)
    finally:
        torch.set_float32_matmul_precision(prev)
    ab = _ab_configs(run, ck, torch, dev)
    md = ["# timing", "",
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


def _time_case(ck, torch, dev, n, d, dtype, dry, gemm):
    rec = {}
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(n, d, device=dev, dtype=dtype, generator=gen)
    k = torch.randn(n, d, device=dev, dtype=dtype, generator=gen)
    kw = dict(normalize=True, self_offset=0)
    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
    flops_f, flops_b = 2.0 * n * n * d, 6.0 * n * n * d

    def fwd():
        return ck.ops.lse(q, k, 10.0, backend="triton", **kw)[0]

    def fwdbwd():
        lse = ck.ops.lse(qg, kg, 10.0, backend="triton", **kw)[0]
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


# --------------------------------------------------------------------------- 5. GPU tests


def section_gpu_tests(run: Run):
    import importlib.util
    env = dict(os.environ)
    args = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider",
            "tests/backends/test_triton.py"]
    if run.dry:
        args += ["-k", "gpu"]
    else:
        env.pop("TRITON_INTERPRET", None)
        env["CONTRASTIVE_KERNELS_TRITON_NATIVE"] = "1"
        args += ["-m", "gpu"]
    xdist = importlib.util.find_spec("xdist") is not None
    if xdist and not run.dry:
        args += ["-n", str(min(8, os.cpu_count() or 1))]
    limit = max(10.0, run.left() - (15 if run.build else 5))
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
    parser.add_argument("--sections",
                        default="env,correctness,compiled,timing,gpu_tests,build")
    args = parser.parse_args(argv)
    if args.dry:
        os.environ["TRITON_INTERPRET"] = "1"  # before the backend is imported
    sys.path.insert(0, ROOT)
    run = Run(args.results, args.budget or (240.0 if args.dry else 470.0), args.dry)
    run.skip_build = args.skip_build or args.dry
    run.build = start_build(run)
    wanted = args.sections.split(",")
    sections = [("env", section_env), ("correctness", section_correctness),
                ("compiled", section_compiled), ("timing", section_timing),
                ("gpu_tests", section_gpu_tests), ("build", section_build)]
    failed = False
    for name, fn in sections:
        if name not in wanted:
            continue
        data = run.section(name, fn)
        if name == "env" and isinstance(data, dict):
            run.gemm_tflops = data.get("gemm", {}).get("tflops")
        failed |= data is None
    with open(run.index, "a") as f:
        f.write(f"\nFinished in {time.time() - run.t0:.0f} s.\n")
    print(f"[gpu_check] results in {run.dir} ({time.time() - run.t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
