"""Core ops of every fused backend against the float64 oracle (reference backend)."""

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.testing import emulated_backends, fused_backends
from contrastive_kernels.testing.core_cases import DTYPES, OPTIONS, SHAPES, make_inputs
from contrastive_kernels.testing.core_check import check_against_oracle, gradcheck_float64

# Fused backends of the registry checked here on CPU tensors ("triton" runs under
# TRITON_INTERPRET=1); test_built_backends_are_usable keeps this list from shrinking in CI.
FUSED_BACKENDS = fused_backends()


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.id)
def test_lse_matches_oracle(backend, dtype, shape, opt):
    check_against_oracle(backend, *shape, dtype, opt)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.id)
def test_gradcheck_float64(backend, opt):
    assert gradcheck_float64(backend, opt)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_noncontiguous_inputs(backend):
    q, k, _ = make_inputs(40, 30, 16, torch.float32)
    q_t = q.t().contiguous().t()  # column-major
    k_s = torch.cat([k, k], dim=1)[:, ::2]  # strided columns
    expected, _ = ck.ops.lse(q, k_s.contiguous(), 3.0, backend=backend, normalize=True)
    got, _ = ck.ops.lse(q_t, k_s, 3.0, backend=backend, normalize=True)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_float_and_tensor_scale_agree(backend):
    q, k, _ = make_inputs(20, 25, 8, torch.float32)
    a, _ = ck.ops.lse(q, k, 3.0, backend=backend)
    b, _ = ck.ops.lse(q, k, torch.tensor(3.0), backend=backend)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_no_keys(backend):
    q, _, _ = make_inputs(4, 1, 8, torch.float32)
    k = torch.empty(0, 8)
    lse, o = ck.ops.lse(q, k, 1.0, backend=backend, return_o=True)
    assert torch.isneginf(lse).all() and (o == 0).all()


def _opcheck_args(opt, n=6, m=9, d=5, dtype=torch.float32):
    q, k, gen = make_inputs(n, m, d, dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    kw = opt.kwargs(n, m, "cpu", acc, gen)
    fwd = (q.requires_grad_(), k.requires_grad_(), torch.tensor(opt.scale, dtype=acc, requires_grad=True),
           kw.get("bias"), kw.get("q_labels"), kw.get("k_labels"), kw.get("self_offset"),
           kw.get("normalize", False), 1e-12, kw.get("exclude_positives", False),
           kw.get("return_o", False))
    return fwd


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.id)
def test_opcheck_torch_ops(opt):
    from contrastive_kernels.backends import torch_tiled as _torch_tiled

    args = _opcheck_args(opt)
    torch.library.opcheck(_torch_tiled.lse_op, args)
    lse, _ = _torch_tiled.lse_op(*args)
    bwd = (torch.randn_like(lse),) + tuple(a.detach() if isinstance(a, torch.Tensor) else a
                                           for a in args[:-1]) + (lse.detach(), True, True, True)
    torch.library.opcheck(_torch_tiled.lse_backward_op, bwd)


def test_auto_picks_a_fused_backend_and_env_override(monkeypatch):
    q, k, _ = make_inputs(5, 6, 4, torch.float32)
    from contrastive_kernels.backends import registry
    from contrastive_kernels.core.contract import CoreOptions

    chosen = registry.select("auto", q, CoreOptions())
    assert chosen.name in ("cpu", "torch")
    monkeypatch.setenv(registry.ENV_VAR, "reference")
    assert registry.select(None, q, CoreOptions()).name == "reference"
    monkeypatch.setenv(registry.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="CONTRASTIVE_KERNELS_BACKEND"):
        ck.ops.lse(q, k)


def test_available_backends_reports_reasons():
    avail = ck.available_backends()
    assert set(avail) == set(ck.backends.names()) == {"triton", "cpu", "cuda", "torch", "reference"}
    assert avail["torch"] is None and avail["reference"] is None
    for name, reason in avail.items():
        assert reason is None or (isinstance(reason, str) and reason)


@pytest.mark.parametrize("bad,match", [
    (dict(q=torch.randn(3)), "q must be 2-D"),
    (dict(k=torch.randn(4, 6)), "same feature size"),
    (dict(k=torch.randn(4, 5, dtype=torch.float64)), "share a dtype"),
    (dict(bias=torch.randn(3)), "bias must have shape"),
    (dict(q_labels=torch.zeros(3, dtype=torch.long), exclude_positives=True), "needs both"),
    (dict(q_labels=torch.zeros(3), k_labels=torch.zeros(4), exclude_positives=True), "integer"),
    (dict(scale=torch.ones(2)), "scale must be"),
    (dict(eps=0.0), "eps must be"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    args = dict(q=torch.randn(3, 5), k=torch.randn(4, 5))
    args.update(bad)
    q, k = args.pop("q"), args.pop("k")
    with pytest.raises((ValueError, TypeError), match=match):
        ck.ops.lse(q, k, **args)


def test_built_backends_are_usable():
    """CI builds the C++ extension and runs Triton under the interpreter; a broken build
    must fail here rather than leave the backend-filtered tables silently shorter.
    CONTRASTIVE_KERNELS_ALLOW_MISSING_EXT=1 lifts this for installs without a compiler."""
    from contrastive_kernels import env

    if env.flag("ALLOW_MISSING_EXT"):
        pytest.skip("CONTRASTIVE_KERNELS_ALLOW_MISSING_EXT=1")
    avail = ck.available_backends()
    assert avail["cpu"] is None, avail["cpu"]
    assert avail["triton"] is None, avail["triton"]


@pytest.mark.parametrize("backend", FUSED_BACKENDS + emulated_backends())
def test_gradients_come_back_in_the_inputs_layout(backend):
    """dq / dk in q's / k's layout: contiguous for contiguous inputs (a strided gradient
    handed to torch.distributed.nn.all_gather's backward gave wrong gradients over gloo),
    the input's own strides for a dense strided view (column-major), contiguous for a
    non-dense one (every other column)."""
    q, k, _ = make_inputs(40, 30, 16, torch.float32)
    layouts = {"contiguous": (q, k), "column_major": (q.t().contiguous().t(), k.t().contiguous().t()),
               "sparse_columns": (torch.stack([q, q], 2).flatten(1)[:, ::2],
                                  torch.stack([k, k], 2).flatten(1)[:, ::2])}
    expected = None
    for name, (qq, kk) in layouts.items():
        qq, kk = qq.detach().requires_grad_(), kk.detach().requires_grad_()
        lse, _ = ck.ops.lse(qq, kk, 3.0, normalize=True, backend=backend)
        dq, dk = torch.autograd.grad(lse.sum(), (qq, kk))
        for x, dx in ((qq, dq), (kk, dk)):
            want = torch.empty_like(x).stride() if name != "sparse_columns" else None
            assert dx.is_contiguous() if want is None else dx.stride() == want, (name, dx.stride())
        expected = expected or (dq, dk)
        torch.testing.assert_close(dq, expected[0])
        torch.testing.assert_close(dk, expected[1])


@pytest.mark.parametrize("backend", FUSED_BACKENDS + emulated_backends())
def test_vmap_over_queries_has_a_batching_rule(backend, monkeypatch):
    """torch.func.vmap over the queries (shared keys) is one call of the backend over the
    stacked rows (core/transforms.py), not torch's per-sample fallback, which hands the
    backend a batched tensor and loops; the values are the per-sample calls'."""
    import dataclasses

    from contrastive_kernels.backends import registry
    q, k, _ = make_inputs(3 * 7, 9, 5, torch.float32)
    qb = q.reshape(3, 7, 5)
    want = torch.stack([ck.ops.lse(x, k, 2.0, backend=backend)[0] for x in qb])
    original = registry.get_backend(backend)
    seen = []

    pair = original.ops["lse"]

    def spy(q_, *args):
        seen.append((tuple(q_.shape), torch._C._functorch.is_batchedtensor(q_)))
        return pair.forward(q_, *args)
    spied = dict(original.ops, lse=dataclasses.replace(pair, forward=spy))
    monkeypatch.setitem(registry._loaded, backend, (dataclasses.replace(original, ops=spied), None))
    got = torch.func.vmap(lambda x: ck.ops.lse(x, k, 2.0, backend=backend)[0])(qb)
    assert seen == [((21, 5), False)], seen
    torch.testing.assert_close(got, want)
