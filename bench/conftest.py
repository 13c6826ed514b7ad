"""Benchmark fixtures: the machine's measured GEMM rate, shared by every case.

Run with ``make bench`` (pytest-benchmark; JSON under bench/results/, then
bench/report.py draws the plot and the markdown table). ``--bench-sizes 512x64,1024x128``
replaces a script's grid of (N, d), e.g. for a quick check that the scripts still run.
"""

import os
import sys

import pytest

# the Triton backend must not run through the CPU interpreter here: minutes per case
os.environ.setdefault("TRITON_INTERPRET", "0")
# with --import-mode=importlib the bench modules do not get their folder on sys.path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--bench-sizes", default=None,
                     help="comma-separated NxD pairs replacing the benchmark grid")


@pytest.fixture(scope="session")
def cpu_gemm_flop_s():
    return harness.gemm_rate("cpu")
