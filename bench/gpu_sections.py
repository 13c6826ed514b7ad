"""The sections of the GPU check, one per child process (bench/gpu_check.py runs them).

    python bench/gpu_sections.py SECTION --work DIR --deadline EPOCH [--dry]

Each section appends one JSON line per finished row to DIR/SECTION.jsonl as it goes and
never starts a case it cannot finish before the deadline (the estimate is the slowest
case so far); the rows it did not reach are written as skipped, with the reason. The
grids are ordered by value: what has never run on a device (the cuda kernels), the
configs the headline timings use, then breadth.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gpu_check  # noqa: E402  (the orchestrator's row format)

# correctness cases (dtype, d, option id of testing.core_cases, variant of core_check), by
# value: first the option set the timings use (normalize + self-exclusion), then every
# feature, the other dtypes, fp32 under tf32, the large-d configs (tightest shared memory),
# strided (non-vectorizable) inputs and forced split grids
TRITON_CASES = (("bf16", 128, "self_shifted", ""), ("bf16", 128, "all", ""),
                ("fp32", 128, "all", ""), ("fp32", 128, "all", "tf32"),
                ("fp16", 128, "all", ""), ("bf16", 256, "all", ""), ("bf16", 512, "all", ""),
                ("bf16", 130, "all", "strided"), ("bf16", 1024, "all", ""),
                ("bf16", 128, "all", "split3"), ("fp32", 256, "plain", "tf32"))
CUDA_CASES = tuple((dt, d, opt, "") for dt in ("bf16", "fp16", "fp32", "fp64")
                   for d in (64, 130, 256) for opt in ("plain", "all")) + (
    ("fp32", 128, "plain", "tf32"), ("fp32", 128, "all", "tf32"), ("bf16", 128, "all", "split3"),
    ("fp32", 128, "all", "split3"), ("bf16", 130, "all", "strided"),
    ("fp32", 130, "all", "strided"))
DRY_CASES = (("bf16", 16, "all", ""), ("fp32", 40, "all", "strided"), ("fp32", 16, "all", "tf32"))
# timing cases (precision, N = M, d), headline first; the contenders the device has
TIMING_CASES = (("bf16", 65536, 128), ("bf16", 16384, 128), ("tf32", 65536, 128),
                ("bf16", 65536, 256), ("fp32", 16384, 128))
REFERENCE_MAX_N = 16384  # the naive reference keeps several fp32 N x N matrices
# the GPU tests that run (about 60 s; -m gpu over everything would take many minutes)
GPU_TESTS = ("tests/backends/test_cuda_emulated.py::test_oracle_on_device",
             "tests/backends/test_cuda_emulated.py::test_subnormal_rows_on_device",
             "tests/backends/test_triton.py::test_gpu_no_host_sync",
             "tests/backends/test_triton.py::test_gpu_tf32_is_used_when_allowed",
             "tests/backends/test_triton.py::test_gpu_huge_bias_on_device",
             "tests/backends/test_triton.py::test_gpu_torch_compile_fullgraph")
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")


class Section:
    def __init__(self, name, work, deadline, dry):
        self.name, self.work, self.deadline, self.dry = name, work, deadline, dry
        self.slowest = 0.0  # seconds of the slowest case so far: the estimate of the next
        self.skipped = 0

    def left(self) -> float:
        return self.deadline - time.time()

    def emit(self, row: dict, file: str | None = None) -> None:
        gpu_check.append_row(self.work, file or self.name, row)

    def cases(self, items):
        """Yield the cases that fit before the deadline; the others become skipped rows."""
        for item in items:
            if self.left() < self.slowest:
                self.skipped += 1
                self.emit(dict(case=item, skipped="time budget"))
                continue
            t = time.time()
            yield item
            self.slowest = max(self.slowest, time.time() - t)


def _device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tool_path(name: str):
    for where in (shutil.which(name), f"/usr/local/cuda/bin/{name}",
                  f"/usr/local/cuda/compute-sanitizer/{name}"):
        if where and os.path.exists(where):
            return where
    return None


def _first_line(cmd, last=False):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({type(exc).__name__})"
    lines = out.splitlines() or ["?"]
    return lines[-1 if last else 0]


def plan(s: Section):
    """Versions, the device, the extension's state: the parent decides the build from it."""
    import torch
    import triton

    from contrastive_kernels import _extension
    from contrastive_kernels.backends import cuda
    info = dict(python=platform.python_version(), torch=torch.__version__,
                triton=triton.__version__, torch_cuda=torch.version.cuda, cpus=os.cpu_count(),
                nvcc=_first_line([_tool_path("nvcc") or "nvcc", "--version"], last=True),
                gxx=_first_line(["g++", "--version"]),
                setuptools=_version("setuptools"), ninja=_version("ninja"),
                xdist=_version("xdist"), pytest_timeout=_version("pytest_timeout"),
                sanitizer=_tool_path("compute-sanitizer"), host=platform.node())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2 ** 30, 1))
    built = _extension.build_info()
    info["extension"] = dict(loads=_extension.native_ops is not None, error=_extension.LOAD_ERROR,
                             torch_version=built.get("torch_version"),
                             cuda_arches=built.get("cuda_arches", ""),
                             cuda_kernels=_extension.kernels_for("cuda"),
                             emulated_kernels=cuda.emulated_ops is not None)
    info["cuda_rows"] = torch.cuda.is_available() or cuda.emulated_ops is not None
    s.emit(info)


def _version(module: str):
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return getattr(importlib.import_module(module), "__version__", "present")
    except Exception as exc:  # present but broken
        return f"import error: {exc}"


def env(s: Section):
    """GEMM rates (the floors), copy bandwidth L2-resident and from HBM (the ridges)."""
    import torch

    import harness
    dev, n = _device(), (256 if s.dry else 8192)
    info = {}
    for label, dtype, precision in (("bf16", torch.bfloat16, "highest"),
                                    ("tf32", torch.float32, "high"),
                                    ("fp32", torch.float32, "highest")):
        torch.set_float32_matmul_precision(precision)
        info[f"gemm_{label}_tflops"] = round(harness.gemm_rate(dev, dtype, n) / 1e12, 2)
    torch.set_float32_matmul_precision("highest")
    for label, mib, repeats in (("l2", 8, 200), ("hbm", 1024, 20)):
        gbs = harness.copy_bandwidth((1 if s.dry else mib) * 2 ** 20, dev, repeats) / 1e9
        info[f"{label}_copy_gbs"] = round(gbs, 1)
        info[f"{label}_ridge_flop_per_byte"] = round(info["gemm_bf16_tflops"] * 1e3 / gbs, 1)
    s.emit(info)


def _correctness(s: Section, backend: str, cases):
    import torch

    from contrastive_kernels.testing import core_cases, core_check
    dtypes = dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32, fp64=torch.float64)
    opts = {o.id: o for o in core_cases.OPTIONS}
    n, m = (37, 45) if s.dry else (700, 900)
    for dtype, d, opt, variant in s.cases(DRY_CASES if s.dry else cases):
        row, t = dict(backend=backend, dtype=dtype, d=d, opt=opt, variant=variant, n=n, m=m), time.time()
        try:
            row.update(core_check.case_verdicts(backend, n, m, d, dtypes[dtype], opts[opt],
                                                _device(), variant=variant))
        except Exception as exc:
            row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
        s.emit(dict(row, seconds=round(time.time() - t, 2)))


def correctness_triton(s: Section):
    _correctness(s, "triton", TRITON_CASES)
    _record_compiled(s)


def correctness_cuda(s: Section):
    if not s.dry:
        import torch
        os.environ.pop("CONTRASTIVE_KERNELS_CUDA_EMULATE", None)
        assert torch.cuda.is_available()
    else:
        os.environ["CONTRASTIVE_KERNELS_CUDA_EMULATE"] = "1"
    _correctness(s, "cuda", CUDA_CASES)


def _record_compiled(s: Section):
    from contrastive_kernels.backends.triton import introspect
    for row in introspect.compiled_kernels():
        s.emit(dict(row, section=s.name), file="compiled")


def sanitizer(s: Section):
    """compute-sanitizer's four tools on bench/gpu_sanitize.py, in parallel, our kernels
    only; the verdict of each. Without a GPU the workload runs unsanitized (emulated)."""
    workload = [sys.executable, os.path.join(HERE, "gpu_sanitize.py")]
    tool = _tool_path("compute-sanitizer")
    if s.dry or tool is None:
        why = "dry run (no GPU)" if s.dry else "compute-sanitizer not found"
        env = dict(os.environ, CONTRASTIVE_KERNELS_CUDA_EMULATE="1")
        proc = subprocess.run(workload + ["--dry"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=max(5.0, s.left()))
        s.emit(dict(tool="all", skipped=why, workload_rc=proc.returncode,
                    workload_tail=(proc.stdout + proc.stderr)[-1500:]))
        return
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")  # one cudaMalloc per tensor
    procs = {name: _start_sanitizer(s, tool, name, workload, env, kernel_filter=True)
             for name in SANITIZER_TOOLS}
    for name, (proc, log, t, filtered) in procs.items():
        rc, text = _wait_sanitizer(s, proc, log)
        if filtered and rc != 0 and "option" in text.lower() and "workload" not in text:
            # this sanitizer refused the kernel filter: once more, every kernel instrumented
            rc, text = _wait_sanitizer(s, *_start_sanitizer(s, tool, name, workload, env,
                                                            kernel_filter=False)[:2])
        found = re.findall(r"(?:ERROR SUMMARY|RACECHECK SUMMARY): (\d+)", text)
        errors = int(found[-1]) if found else None
        if rc == 0 and "workload ok" in text and not errors:
            verdict = "clean"
        elif rc == 86 or errors:
            verdict = "FAIL"
        else:
            verdict = f"did not finish (rc {rc}; see sanitizer_{name}.log)"
        s.emit(dict(tool=name, rc=rc, verdict=verdict, errors=errors,
                    seconds=round(time.time() - t, 1), tail=text[-2500:]))


def _start_sanitizer(s, tool, name, workload, env, kernel_filter):
    log = open(os.path.join(s.work, f"sanitizer_{name}.log"), "w")
    cmd = [tool, "--tool", name, "--error-exitcode", "86", "--print-limit", "30"]
    if kernel_filter:  # only the package's kernels: torch's own are not instrumented
        cmd += ["--kernel-name", "kns=cuda_kernels"]
    if name == "memcheck":  # catch accesses a few bytes past an allocation too
        cmd += ["--padding", "64"]
    proc = subprocess.Popen(cmd + workload, cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, log, time.time(), kernel_filter


def _wait_sanitizer(s, proc, log):
    try:
        rc = proc.wait(timeout=max(1.0, s.left()))
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "timeout"
    log.close()
    with open(log.name) as f:
        return rc, f.read()


def timing(s: Section):
    """The core op's forward and backward (harness.lse_rows) per case and contender."""
    import torch

    import harness
    from contrastive_kernels.backends import registry
    from contrastive_kernels.core.contract import CoreOptions
    dev = _device()
    if s.dry:
        os.environ["CONTRASTIVE_KERNELS_CUDA_EMULATE"] = "1"
    cases = (("fp32", 64, 16), ("bf16", 48, 16)) if s.dry else TIMING_CASES
    dtypes = dict(bf16=torch.bfloat16, fp32=torch.float32, tf32=torch.float32)
    rates, done = {}, []
    for precision, n, d in s.cases(cases):
        torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
        dtype = dtypes[precision]
        if precision not in rates:
            rates[precision] = harness.gemm_rate(dev, dtype, 256 if s.dry else 8192)
        for contender in ("triton", "cuda", "reference"):
            backend = registry.loaded(contender)
            why = (backend.not_supported_reasons(dev, dtype, d, CoreOptions(normalize=True, has_self=True))
                   if backend is not None else ["not loaded"])
            if contender == "reference" and n > REFERENCE_MAX_N:
                why = [f"N > {REFERENCE_MAX_N}: its N x N matrices"]
            if why:
                s.emit(dict(contender=contender, precision=precision, N=n, d=d,
                            skipped="; ".join(why)))
                continue
            try:
                for row in harness.lse_rows(contender, n, d, dtype, rates[precision], dev,
                                            precision=precision):
                    s.emit(row.as_dict())
                    done.append(row)
            except Exception as exc:
                s.emit(dict(contender=contender, precision=precision, N=n, d=d,
                            error=f"{type(exc).__name__}: {str(exc)[:300]}"))
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    torch.set_float32_matmul_precision("highest")
    path = harness.write_rows(os.path.join(s.work, "timing.json"), done, script="gpu_check")
    subprocess.run([sys.executable, os.path.join(HERE, "report.py"), str(path)], cwd=ROOT,
                   capture_output=True, timeout=max(5.0, s.left()))
    _record_compiled(s)


def gpu_tests(s: Section):
    """The fixed GPU test subset (GPU_TESTS), in parallel workers where xdist is present."""
    args = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider",
            "--junitxml", os.path.join(s.work, "gpu_tests.xml"), *GPU_TESTS]
    env = dict(os.environ)
    if not s.dry:
        env.pop("TRITON_INTERPRET", None)
        env["CONTRASTIVE_KERNELS_TRITON_NATIVE"] = "1"
        if importlib.util.find_spec("xdist"):
            args += ["-n", "4"]
        if importlib.util.find_spec("pytest_timeout"):
            args += ["--timeout", "45"]
    t = time.time()
    try:
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=max(5.0, s.left()))
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", str(exc.stdout or "")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", out)}
    s.emit(dict(rc=rc, counts=counts, seconds=round(time.time() - t, 1),
                command=" ".join(args[2:]), tail=out[-4000:]))


SECTIONS = dict(plan=plan, env=env, correctness_triton=correctness_triton,
                correctness_cuda=correctness_cuda, sanitizer=sanitizer, timing=timing,
                gpu_tests=gpu_tests)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=sorted(SECTIONS))
    parser.add_argument("--work", required=True)
    parser.add_argument("--deadline", type=float, required=True)
    parser.add_argument("--dry", action="store_true")
    args = parser.parse_args(argv)
    if args.dry:
        os.environ["TRITON_INTERPRET"] = "1"  # before any Triton kernel module is imported
    sys.path.insert(0, ROOT)
    # a hang leaves the stacks in the section's log before the parent kills it
    faulthandler.dump_traceback_later(max(1.0, args.deadline - time.time() + 2), exit=False)
    s = Section(args.section, args.work, args.deadline, args.dry)
    SECTIONS[args.section](s)
    if s.skipped:
        print(f"{s.skipped} cases not run: time budget", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
