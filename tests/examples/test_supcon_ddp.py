"""examples/supcon_ddp.py under torchrun, 2 gloo ranks with uneven batches (629 / 628
images) and the ring: the DDP-trained loss curve equals one process's over the whole batch
in float64 (the example's --check asserts 1e-9)."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest
import torch.distributed as dist

pytest.importorskip("sklearn")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_ddp_training_curve_is_the_single_process_one():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # its own session, so that a timeout kills the ranks too, not only torchrun
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", str(ROOT / "examples" / "supcon_ddp.py"), "--steps", "3",
         "--mode", "ring", "--check"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in 120 s:\n{out[-2000:]}{err[-3000:]}")
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert "largest difference" in out, out
