"""``make gpu-check-dry``: the prepared GPU run (bench/gpu_check.py) on the CPU under the
Triton interpreter at tiny sizes (the cuda sections through the CUDA emulation layer), so
that the script a GPU machine runs cannot rot."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry", "--results",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    index = (tmp_path / "index.md").read_text()
    for name in ("env", "correctness", "compiled", "timing", "build", "correctness_cuda",
                 "timing_cuda", "compare", "gpu_tests"):
        assert (tmp_path / f"{name}.json").exists(), f"{name} missing:\n{out[-3000:]}"
        assert (tmp_path / f"{name}.md").exists()
        assert f"[{name}]" in index
    assert "ERROR" not in index, out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    backends = [("", "triton"), ("_cuda", "cuda")]
    if not _cuda_emulation_available():
        # e.g. `make test-compat` (torch 2.11 cannot load this build's _C): the cuda rows
        # must say why they did not run
        cases = json.loads((tmp_path / "correctness_cuda.json").read_text())
        assert cases and all("unsupported" in c or "error" in c for c in cases), cases
        backends = backends[:1]
    for suffix, backend in backends:
        cases = json.loads((tmp_path / f"correctness{suffix}.json").read_text())
        assert cases and all(c.get("verdict") == "ok" for c in cases), cases
        assert {c["backend"] for c in cases} == {backend}
        timing = json.loads((tmp_path / f"timing{suffix}.json").read_text())
        assert timing["cases"] and all("fwd_ms" in c and c["backend"] == backend
                                       for c in timing["cases"]), timing
    compare = json.loads((tmp_path / "compare.json").read_text())
    # each row has both backends' times and their ratio
    assert compare["rows"], compare
    if len(backends) == 2:
        assert all(row[-1] != "-" for row in compare["rows"]), compare


def _cuda_emulation_available() -> bool:
    from contrastive_kernels.backends import cuda
    return cuda.emulated_ops is not None
