"""The public entry ``ops.lse`` above the backends: backend selection, availability, the
errors raised before any backend runs, the build check, and torch.func's vmap rule. What
every backend must do with a call (the oracle table, gradcheck, opcheck, special values,
determinism, memory) is tests/core/test_conformance.py."""

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.testing import emulated_backends, fused_backends
from contrastive_kernels.testing.core_cases import make_inputs

# Fused backends of the registry usable on CPU tensors here ("triton" runs under
# TRITON_INTERPRET=1); test_built_backends_are_usable keeps this list from shrinking in CI.
FUSED_BACKENDS = fused_backends()


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
