"""Shared pytest setup: fixed seeds, the Triton interpreter on CPU-only machines.

TRITON_INTERPRET must be set before any Triton kernel module is imported, so it is set
here, at collection time. Set CONTRASTIVE_KERNELS_TRITON_NATIVE=1 on a GPU machine to test compiled Triton.
No CUDA query happens at import: GPU tests ask torch.cuda.is_available() in a fixture.
"""

import os

if os.environ.get("CONTRASTIVE_KERNELS_TRITON_NATIVE") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one xdist worker per core: a worker using every core for torch's
    # intra-op pool would oversubscribe them (tests that need two threads set them).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cuda_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


@pytest.fixture
def set_matmul_precision():
    """torch.set_float32_matmul_precision, restored after the test (the tf32 tests)."""
    prev = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(prev)


@pytest.fixture(autouse=True)
def _emulate_cuda_for_cuda_cases(request, monkeypatch):
    """A case parametrized with backend="cuda" on CPU tensors runs the CUDA kernel source
    through the emulation layer (what TRITON_INTERPRET=1 is for the Triton backend)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("backend") == "cuda":
        monkeypatch.setenv("CONTRASTIVE_KERNELS_CUDA_EMULATE", "1")
    yield
