"""The op vocabulary is data: every spec's schemas are what the C++ table compiles in, and
every kernel set that implements an op declares it with the spec's schemas."""

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import _extension
from contrastive_kernels.backends import registry
from contrastive_kernels.core.ops import SPECS

SPEC_NAMES = sorted(SPECS)


@pytest.mark.skipif(_extension._C is None, reason="compiled extension not built")
@pytest.mark.parametrize("name", SPEC_NAMES)
def test_cpp_table_matches_spec(name):
    spec = SPECS[name]
    assert _extension._C.op_table()[name] == (spec.forward_schema(), spec.backward_schema())


@pytest.mark.skipif(_extension._C is None, reason="compiled extension not built")
def test_cpp_table_has_no_other_op():
    assert sorted(_extension._C.op_table()) == SPEC_NAMES


def _declared_ops():
    """(spec, kernel set, forward OpOverload, backward OpOverload) of every declared pair."""
    out = []
    for name, spec in SPECS.items():
        for kernel_set in ("torch", "triton", "native", "cuda_emulated"):
            fwd, bwd = spec.op_names(kernel_set)
            ns = torch.ops.contrastive_kernels
            if hasattr(ns, fwd):
                out.append(pytest.param(spec, getattr(ns, fwd).default, getattr(ns, bwd).default,
                                        id=f"{name}-{kernel_set}"))
    return out


@pytest.mark.parametrize("spec, fwd, bwd", _declared_ops())
def test_declared_schema_is_the_spec(spec, fwd, bwd):
    parse = torch._C.parse_schema
    assert str(fwd._schema) == str(parse(fwd._schema.name + spec.forward_schema()))
    assert str(bwd._schema) == str(parse(bwd._schema.name + spec.backward_schema()))


def test_every_op_has_an_oracle_and_a_tiled_backend():
    for name in SPECS:
        assert name in registry.get_backend("reference").ops
        assert name in registry.get_backend("torch").ops


def test_an_op_a_backend_lacks_is_a_reason():
    from contrastive_kernels.core.contract import CoreOptions
    from contrastive_kernels.backends.registry import Backend, OpPair
    only_lse = Backend(name="x", ops={"lse": OpPair(None)}, description="", devices=("cpu",))
    reasons = only_lse.not_supported_reasons(torch.device("cpu"), torch.float32, 4, CoreOptions(),
                                             "two_sided_lse")
    assert reasons == ["does not implement op two_sided_lse (it has lse)"]


def test_public_entries_exist_per_spec():
    for name in SPECS:
        assert callable(getattr(ck.ops, name))


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_func_grad_of_every_op_is_the_oracle(name):
    """torch.func.grad runs each op through the spec-derived CoreOpFunction: the gradients
    must land on q (not on the spec / pair arguments in front of it)."""
    torch.manual_seed(0)
    q, k = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    entry = getattr(ck.ops, name)

    def loss(backend):
        return lambda x: sum(o.sum() for o in entry(x, k, 2.0, backend=backend) if o is not None)

    torch.testing.assert_close(torch.func.grad(loss("torch"))(q), torch.func.grad(loss("reference"))(q))
