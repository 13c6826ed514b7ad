"""The compiled extension against the Python contract: the C++ copy of the op schemas
(csrc/common/contract.h) equals contrastive_kernels.core.contract, the declared ops carry
it, the CPU kernel is registered, and build_info() keeps its keys and types.

A missing extension fails this module unless CONTRASTIVE_KERNELS_ALLOW_MISSING_EXT=1
(an install without a compiler), where it is skipped.
"""

import os

import pytest
import torch

from contrastive_kernels import _extension
from contrastive_kernels.core.contract import BACKWARD_SCHEMA, FORWARD_SCHEMA, NAMESPACE, op_names

if _extension._C is None:
    if os.environ.get("CONTRASTIVE_KERNELS_ALLOW_MISSING_EXT") == "1":
        pytest.skip(f"compiled extension not loaded: {_extension.LOAD_ERROR}",
                    allow_module_level=True)
    pytest.fail(f"compiled extension not loaded: {_extension.LOAD_ERROR}; build it with "
                "`python setup.py build_ext --inplace`, or set "
                "CONTRASTIVE_KERNELS_ALLOW_MISSING_EXT=1 to skip", pytrace=False)

_C = _extension._C
KERNEL_SET = "native"
OPS = list(zip(op_names(KERNEL_SET), (FORWARD_SCHEMA, BACKWARD_SCHEMA)))


def _op(name):
    return getattr(getattr(torch.ops, NAMESPACE), name).default


def test_compiled_schema_strings_are_the_python_ones():
    assert _C.op_table()["lse"] == (FORWARD_SCHEMA, BACKWARD_SCHEMA)


@pytest.mark.parametrize("name,schema", OPS, ids=[n for n, _ in OPS])
def test_declared_op_has_the_python_schema(name, schema):
    expected = torch._C.parse_schema(f"{NAMESPACE}::{name}{schema}")
    assert str(_op(name)._schema) == str(expected)


@pytest.mark.parametrize("name", [n for n, _ in OPS])
def test_op_has_a_cpu_kernel(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", "CPU")


@pytest.mark.parametrize("op", sorted(_C.op_table()))
def test_every_core_op_of_the_table_has_cpu_kernels(op):
    """kOps (common/contract.h) declares <op>_native / _backward; ops_cpu.cpp implements
    each of them, the two-sided lse included."""
    for name in (f"{op}_native", f"{op}_native_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", "CPU"), name


def test_extension_module_loads_the_ops():
    assert _extension.native_ops is not None, _extension.LOAD_ERROR
    assert [op.name() for op in _extension.native_ops] == [f"{NAMESPACE}::{n}" for n, _ in OPS]


BUILD_INFO_TYPES = {
    "torch_version": str,
    "torch_cuda": str,
    "with_cuda": bool,
    "cuda_arches": str,
    "no_cuda_reason": str,
    "cxx_flags": str,
    "openmp": bool,
    "compiler": str,
    "cpu_kernel": str,
}


def test_build_info_keys_and_types():
    info = _C.build_info()
    assert set(info) == set(BUILD_INFO_TYPES)
    for key, kind in BUILD_INFO_TYPES.items():
        assert type(info[key]) is kind, f"{key}: {type(info[key]).__name__}, expected {kind.__name__}"


def test_build_info_is_consistent():
    info = _C.build_info()
    # The C++ ABI of torch is not stable across versions: a stale build must be rebuilt.
    assert info["torch_version"] == torch.__version__
    if info["with_cuda"]:
        assert info["cuda_arches"] and not info["no_cuda_reason"]
    else:
        assert info["no_cuda_reason"] and not info["cuda_arches"]
    assert "-std=c++20" in info["cxx_flags"]
    # the version reads as pip reports it: with the build's torch / CUDA label
    from importlib import metadata

    import contrastive_kernels as ck
    assert ck.__version__ == metadata.version("contrastive_kernels"), ck.__version__


def test_fake_and_autograd_exist_right_after_import():
    """Registration does not wait for a backend module: in a fresh interpreter, right after
    `import contrastive_kernels`, the compiled ops run under FakeTensorMode and have autograd."""
    import subprocess
    import sys

    code = (
        "import torch, contrastive_kernels\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "import sys\n"
        "assert 'contrastive_kernels.backends.native' not in sys.modules\n"
        "for name in ('lse_native', 'lse_cuda_emulated'):\n"
        "    op = getattr(torch.ops.contrastive_kernels, name).default\n"
        "    with FakeTensorMode():\n"
        "        q = torch.empty(5, 3)\n"
        "        s = torch.empty(())\n"
        "        lse, o = op(q, q, s, None, None, None, 0, True, 1e-12, False, True)\n"
        "        assert lse.shape == (5,) and o.shape == (5, 3)\n"
        "    q = torch.randn(5, 3, requires_grad=True)\n"
        "    lse, _ = op(q, q, torch.tensor(2.0), None, None, None, 0, True, 1e-12, False, False)\n"
        "    lse.sum().backward()\n"
        "    assert q.grad is not None\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_a_build_for_another_torch_is_refused_with_a_reason():
    from contrastive_kernels._extension import _torch_mismatch

    assert _torch_mismatch("2.14.1+cu130", "2.14.0") is None
    reason = _torch_mismatch("2.14.1+cu130", "2.11.0+cu128")
    assert "built against torch 2.14.1+cu130" in reason and "2.11.0+cu128 is running" in reason
