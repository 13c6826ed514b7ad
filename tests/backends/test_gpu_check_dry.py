"""``make gpu-check-dry``: the prepared GPU run (bench/gpu_check.py) on the CPU under the
Triton interpreter at tiny sizes (the cuda sections through the CUDA emulation layer), so
that the script a GPU machine runs cannot rot: what comes back is at most 8 files, a
budget too small for every section still returns the finished ones packed, and a run
killed by its ``timeout`` is packed all the same. The benchmark suite itself runs with
``--benchmark-disable`` (pytest-benchmark's smoke run)."""

import json
import os
import pathlib
import subprocess
import sys
import tarfile
import time

import pytest

pytest.importorskip("triton")

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

PACKED = {"summary.md", "summary.json", "results.tar.gz", "console.log"}


def _make_dry(tmp_path, **variables):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"}
    args = ["make", "-s", "gpu-check-dry", f"OUT={out}", f"GPU_CHECK_WORK={work}",
            f"GPU_PY={sys.executable}"] + [f"{k}={v}" for k, v in variables.items()]
    t = time.time()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.time() - t
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    files = {p.name for p in out.iterdir()}
    assert files == PACKED and len(files) <= 8, (files, log[-3000:])
    data = json.loads((out / "summary.json").read_text())
    with tarfile.open(out / "results.tar.gz") as tar:
        packed = {pathlib.PurePath(n).name for n in tar.getnames()}
    return data, packed, seconds, (out / "summary.md").read_text(), log


def _emulation_available() -> bool:
    from contrastive_kernels.backends import cuda
    return cuda.emulated_ops is not None


def test_dry_run_returns_every_section_packed(tmp_path):
    data, packed, _, summary, log = _make_dry(tmp_path)
    for name, _ in gpu_check.SECTIONS:
        assert data[name].get("state") in ("ok", "skipped"), (name, data[name], log[-2000:])
        assert f"{name}.status.json" in packed
    # the build is skipped by its rule (the extension is built), with the reason
    assert data["build"]["state"] == "skipped" and "already built" in data["build"]["reason"]
    # the sanitizer is skipped with the reason; its workload still ran (emulated)
    san = data["sanitizer"]["rows"]
    assert san and san[0]["skipped"] == "dry run (no GPU)" and san[0]["workload_rc"] == 0, san
    backends = ["triton"] + (["cuda"] if _emulation_available() else [])
    for backend in backends:
        cases = data[f"correctness_{backend}"]["rows"]
        assert cases and all(c.get("ok") and c["backend"] == backend for c in cases), cases
        assert {c["variant"] for c in cases} == {"", "strided", "tf32"}
    timed = {r["contender"] for r in data["timing"]["rows"] if r.get("median_s")}
    assert set(backends) <= timed and "reference" in timed
    assert "timing.json" in packed and "timing.md" in packed  # bench/report.py's table
    tests = data["gpu_tests"]["rows"][-1]
    assert tests["rc"] == 0 and tests["counts"].get("skipped"), tests  # GPU-only: all skip
    assert "correctness_triton: 3 ok (" in summary
    assert "FAIL" not in summary.split("## Sections")[0]
    # and the benchmark suite's usual smoke run: every case once, timing disabled
    env = {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"}
    smoke = subprocess.run([sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider",
                            "-o", "python_files=bench_*.py", "--benchmark-disable",
                            "--bench-sizes=64x16"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert smoke.returncode == 0 and " passed" in smoke.stdout, smoke.stdout[-3000:]


def test_small_budget_cuts_sections_and_packs_the_rest(tmp_path):
    budget = 28
    data, packed, seconds, _, log = _make_dry(tmp_path, GPU_CHECK_BUDGET=budget)
    assert seconds < budget + gpu_check.GRACE + 15, (seconds, log[-2000:])
    assert data["plan"]["state"] == "ok" and data["plan"]["rows"]
    cut = [name for name, _ in gpu_check.SECTIONS
           if data[name].get("state", "").startswith(("skipped", "killed"))
           or any("skipped" in r for r in data[name].get("rows", []) if name != "sanitizer")]
    assert cut, {name: data[name].get("state") for name, _ in gpu_check.SECTIONS}
    finished = [name for name, _ in gpu_check.SECTIONS if data[name].get("state") == "ok"]
    assert "env" in finished and all(f"{name}.jsonl" in packed for name in finished
                                     if name != "build")


def test_timeout_kill_still_packs(tmp_path):
    """`timeout` ends the run mid-section: the parent packs on SIGTERM, then the Makefile's
    --pack-only step packs again; the sections finished before the kill are there."""
    data, _, seconds, summary, log = _make_dry(tmp_path, GPU_CHECK_LIMIT=14)
    assert seconds < 40, seconds
    states = {name: data[name].get("state") for name, _ in gpu_check.SECTIONS}
    assert states["plan"] == "ok", states
    assert any(str(s).startswith("interrupted") for s in states.values()), states
    assert "# GPU check" in summary


BUILD_PLANS = [
    # a GPU machine with no extension: build for its arch only, with a job per core
    (dict(capability="9.0", cpus=16, extension=dict(loads=False, error="no _C")),
     dict(TORCH_CUDA_ARCH_LIST="9.0", MAX_JOBS="16")),
    # built before, but for sm_80 only: sm_80 SASS does not run on sm_90
    (dict(capability="9.0", cpus=16, extension=dict(loads=True, cuda_kernels=True,
                                                    cuda_arches="8.0")),
     dict(TORCH_CUDA_ARCH_LIST="9.0", MAX_JOBS="16")),
    # built for this arch (or with PTX it can JIT): skip
    (dict(capability="9.0", cpus=16, extension=dict(loads=True, cuda_kernels=True,
                                                    cuda_arches="8.0;9.0+PTX")), None),
    (dict(capability="9.0", cpus=16, extension=dict(loads=True, cuda_kernels=True,
                                                    cuda_arches="8.0+PTX")), None),
    # loads, but without CUDA kernels (a CPU-only build): build
    (dict(capability="8.6", cpus=4, extension=dict(loads=True, cuda_kernels=False,
                                                   cuda_arches="")),
     dict(TORCH_CUDA_ARCH_LIST="8.6", MAX_JOBS="4")),
    # no GPU (dry): never build
    (dict(cpus=2, extension=dict(loads=True, emulated_kernels=True)), None),
]


def test_build_plan():
    for plan, build in BUILD_PLANS:
        env, reason = gpu_check.build_plan(plan)
        assert env == build, (plan, reason)
        assert reason, plan


def test_background_build_is_timed_and_polled(tmp_path, monkeypatch):
    """The build path a GPU machine takes (here with a stand-in setup.py): started in the
    background with the plan's environment, polled without blocking, timed by itself."""
    root, work = tmp_path / "root", tmp_path / "work"
    root.mkdir()
    work.mkdir()
    (root / "setup.py").write_text("import os, time\ntime.sleep(1.0)\n"
                                   "print('arch', os.environ['TORCH_CUDA_ARCH_LIST'])\n")
    monkeypatch.setattr(gpu_check, "ROOT", str(root))
    build = gpu_check.Build(str(work), dict(capability="9.0", cpus=16,
                                            extension=dict(loads=False, error="no _C")))
    assert build.poll(until=time.time()) == "running"
    assert build.poll(until=time.time() + 30) == "ok"
    rows = [json.loads(line) for line in (work / "build.jsonl").read_text().splitlines()]
    assert rows[0]["env"] == dict(TORCH_CUDA_ARCH_LIST="9.0", MAX_JOBS="16")
    assert rows[-1]["state"] == "ok" and 0.9 <= rows[-1]["seconds"] < 20
    assert "arch 9.0" in (work / "build.log").read_text()
