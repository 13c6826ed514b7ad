"""``make gpu-check-dry``: the prepared GPU run (bench/gpu_check.py) on the CPU under the
Triton interpreter at tiny sizes, so that the script a GPU machine runs cannot rot."""

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
    for name in ("env", "correctness", "compiled", "timing", "gpu_tests"):
        assert (tmp_path / f"{name}.json").exists(), f"{name} missing:\n{out[-3000:]}"
        assert (tmp_path / f"{name}.md").exists()
        assert f"[{name}]" in index
    assert "ERROR" not in index, out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    cases = json.loads((tmp_path / "correctness.json").read_text())
    assert cases and all(c.get("verdict") == "ok" for c in cases), cases
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert all("fwd_ms" in c for c in timing["cases"]), timing
