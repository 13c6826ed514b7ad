"""The nn.Module drop-ins of the loss family: constructors and forwards as published,
stateful parts (PaCo's class prior, lightly's memory bank), errors that name the bad
argument, and the memory invariant (no N x M tensor on the fused path)."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import contrastive_kernels as ck
from contrastive_kernels import functional as fn
from contrastive_kernels.losses import SPECS
from contrastive_kernels.losses.spec import Sizes
from contrastive_kernels.testing import reference_losses as R
from contrastive_kernels.testing.loss_cases import LOSS_BACKENDS
from contrastive_kernels.testing.measure import record_cpu_allocations

MODULE_BACKENDS = [b for b in LOSS_BACKENDS if b != "triton"] or ["torch"]


def _unit(*shape, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, dtype=dtype), dim=-1)


def _close(a, b, rtol=1e-12):
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=rtol)


# --------------------------------------------------------------------------- signatures

def _family(spec):
    return spec.family


@pytest.mark.parametrize("spec", [s for s in SPECS if s.published_signature is not None],
                         ids=_family)
def test_constructor_matches_published(spec):
    params = inspect.signature(spec.module.__init__).parameters
    positional = [p for p in params.values()
                  if p.name != "self" and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    expected = spec.published_signature
    assert [p.name for p in positional] == list(expected)
    for p in positional:
        assert p.default == expected[p.name], (p.name, p.default)
    assert params["backend"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("spec", SPECS, ids=_family)
def test_exported_with_backend_keyword(spec):
    name = spec.module.__name__
    assert name in ck.__all__ and getattr(ck, name) is spec.module
    assert inspect.signature(spec.module.__init__).parameters["backend"].default == "auto"
    for function in spec.functional:
        assert inspect.signature(function).parameters["backend"].default == "auto"


@pytest.mark.parametrize("spec", [s for s in SPECS if s.published_forward is not None],
                         ids=_family)
def test_forward_matches_published(spec):
    """The published forward's parameters, in order (ours may add keyword-only ones)."""
    params = inspect.signature(spec.module.forward).parameters.values()
    positional = tuple(p.name for p in params if p.kind != p.KEYWORD_ONLY)[1:]
    assert positional == spec.published_forward


def test_info_nce_functional_keeps_the_published_order():
    assert list(inspect.signature(fn.info_nce).parameters)[:5] == [
        "query", "positive_key", "negative_keys", "temperature", "symmetric"]


# --------------------------------------------------------------------------- PaCo / GPaCo


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_paco_module(backend):
    b, k, c = 8, 12, 5
    feats = _unit(2 * b + k, 16).requires_grad_()
    labels = torch.randint(0, c, (2 * b + k,))
    sup = torch.randn(b, c, dtype=torch.float64)
    counts = [10, 6, 3, 2, 1]
    loss_fn = ck.PaCoLoss(alpha=0.05, temperature=0.07, K=k, num_classes=c, backend=backend)
    with pytest.raises(RuntimeError, match="cal_weight_for_classes"):
        loss_fn(feats, labels, sup)
    loss_fn.cal_weight_for_classes(counts)
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    _close(loss_fn.weight, prior)
    ours = loss_fn(feats, labels, sup)
    ref = R.paco_loss_reference(feats, labels, sup, prior, alpha=0.05, temperature=0.07, K=k,
                                num_classes=c)
    _close(ours, ref)
    with pytest.raises(ValueError, match="cls_num_list"):
        loss_fn.cal_weight_for_classes([1, 2, 3])


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_gpaco_module_prior_only_after_cal_weight(backend):
    b, k, c = 9, 7, 6
    feats = _unit(b + k, 8)
    labels = torch.randint(0, c, (b + k,))
    sup = torch.randn(b, c, dtype=torch.float64)
    loss_fn = ck.GPaCoLoss(alpha=0.1, temperature=0.2, K=k, num_classes=c, smooth=0.2,
                           backend=backend)
    kw = dict(alpha=0.1, temperature=0.2, K=k, num_classes=c, smooth=0.2)
    _close(loss_fn(feats, labels, sup), R.gpaco_loss_reference(feats, labels, sup, None, **kw))
    loss_fn.cal_weight_for_classes([5, 4, 3, 3, 2, 1])
    prior = torch.tensor([5, 4, 3, 3, 2, 1], dtype=torch.float64) / 18
    _close(loss_fn(feats, labels, sup), R.gpaco_loss_reference(feats, labels, sup, prior, **kw))


def test_paco_prior_follows_features_device_and_dtype():
    loss_fn = ck.PaCoLoss(alpha=0.05, K=4, num_classes=3)
    loss_fn.cal_weight_for_classes([3, 2, 1])
    feats = _unit(10, 4, dtype=torch.float32)
    out = loss_fn(feats, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]), torch.randn(3, 3))
    assert out.dtype == torch.float32 and out.device == feats.device


CASTS = {"half": lambda m: m.half(), "bfloat16": lambda m: m.to(torch.bfloat16),
         "double": lambda m: m.double(), "to-dtype-device": lambda m: m.to("cpu", torch.float16)}


@pytest.mark.parametrize("cast", list(CASTS))
def test_module_casts_follow_the_published_modules(cast):
    """What .half() / .double() / .to(dtype) change in each stateful module, as in the
    published one: PaCo's prior is a plain tensor there (casts leave it, so it keeps its
    full precision here), lightly's memory bank a buffer (it follows, its pointer does
    not). The stateless losses (MoCo, CLSA, BINGO take the queue as an argument) have none."""
    from lightly.loss import NTXentLoss as LightlyNTXent
    for cls in (ck.PaCoLoss, ck.GPaCoLoss):
        module = cls(alpha=0.05, K=4, num_classes=3)
        module.cal_weight_for_classes([10 ** 8, 10, 1])
        before = module.weight.clone()
        CASTS[cast](module)
        assert module.weight.dtype == torch.float64 and torch.equal(module.weight, before), cls
    ours, theirs = ck.NTXentLoss(memory_bank_size=(16, 4)), LightlyNTXent(memory_bank_size=(16, 4))
    CASTS[cast](ours)
    CASTS[cast](theirs)
    assert ({n: b.dtype for n, b in ours.named_buffers()}
            == {n: b.dtype for n, b in theirs.named_buffers()})
    for cls in (ck.MoCoLoss, ck.CLSALoss, ck.BingoLoss):
        assert not list(cls().buffers()), cls


def test_prior_moves_with_the_module():
    module = ck.PaCoLoss(alpha=0.05, K=4, num_classes=3)
    module.cal_weight_for_classes([3, 2, 1])
    module.to("meta", torch.float16)
    assert module.weight.device.type == "meta" and module.weight.dtype == torch.float64


def test_paco_errors_name_the_argument():
    loss_fn = ck.PaCoLoss(alpha=0.05, K=4, num_classes=3)
    loss_fn.cal_weight_for_classes([3, 2, 1])
    feats = _unit(10, 4)
    labels = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="labels"):
        loss_fn(feats, labels[:9], torch.randn(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="sup_logits"):
        loss_fn(feats, labels, torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="sup_logits"):
        loss_fn(feats, labels, torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="K"):
        fn.paco_loss(feats, labels, torch.randn(3, 3), loss_fn.weight, alpha=1.0, K=20)
    with pytest.raises(ValueError, match="features"):
        loss_fn(feats[None], labels, torch.randn(3, 3, dtype=torch.float64))


# --------------------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_ntxent_module_without_bank(backend):
    out0, out1 = torch.randn(10, 7, dtype=torch.float64), torch.randn(10, 7, dtype=torch.float64)
    _close(ck.NTXentLoss(0.3, backend=backend)(out0, out1), R.ntxent_loss_reference(out0, out1, 0.3))


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_ntxent_memory_bank_follows_lightly(backend):
    size, b, d = 12, 5, 6
    loss_fn = ck.NTXentLoss(0.2, memory_bank_size=size, backend=backend)
    batches = [(torch.randn(b, d, dtype=torch.float64, requires_grad=True),
                torch.randn(b, d, dtype=torch.float64)) for _ in range(4)]
    # lightly: the bank starts as randn(d, size) normalized per column, drawn on first use
    torch.manual_seed(123)
    bank = F.normalize(torch.randn(d, size, dtype=torch.float64), dim=0).T.clone()
    ptr = 0
    torch.manual_seed(123)
    for out0, out1 in batches:
        ours = loss_fn(out0, out1)
        _close(ours, R.ntxent_loss_reference(out0, out1, 0.2, bank))
        # lightly's FIFO: the bank wraps to 0 once ptr + batch reaches its size
        unit1 = F.normalize(out1, dim=1)
        if ptr + b >= size:
            bank[ptr:] = unit1[: size - ptr]
            ptr = 0
        else:
            bank[ptr:ptr + b] = unit1
            ptr += b
    _close(loss_fn.memory_bank.bank, bank)
    # no update without a gradient (lightly keeps the bank constant at evaluation)
    before = loss_fn.memory_bank.bank.clone()
    loss_fn(batches[0][0].detach(), batches[0][1])
    _close(loss_fn.memory_bank.bank, before)


def test_ntxent_errors():
    with pytest.raises(ValueError, match="temperature"):
        ck.NTXentLoss(temperature=0.0)
    with pytest.raises(ValueError, match="out0 and out1"):
        ck.NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(TypeError, match="out1"):
        ck.NTXentLoss()(torch.randn(4, 3), torch.randn(4, 3).long())
    with pytest.raises(ValueError, match="negatives"):
        fn.ntxent_loss(torch.randn(4, 3), torch.randn(4, 3), 0.5, torch.randn(6, 4))


# --------------------------------------------------------------------------- CLIP / InfoNCE


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_clip_module(backend):
    img, txt = _unit(11, 8).requires_grad_(), _unit(11, 8).requires_grad_()
    scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    loss_fn = ck.ClipLoss(cache_labels=True, backend=backend)
    out = loss_fn(img, txt, scale.exp(), output_dict=True)
    assert set(out) == {"contrastive_loss"}
    ref = R.clip_loss_reference(img, txt, scale.exp())
    _close(out["contrastive_loss"], ref)
    g_ours = torch.autograd.grad(out["contrastive_loss"], (img, txt, scale))
    g_ref = torch.autograd.grad(ref, (img, txt, scale))
    for a, b in zip(g_ours, g_ref):
        _close(a, b)
    assert float(g_ours[2].abs()) > 0  # the learnable temperature gets its gradient
    with pytest.raises(NotImplementedError, match="horovod"):
        ck.ClipLoss(use_horovod=True)
    with pytest.raises(ValueError, match="logit_bias"):
        loss_fn(img, txt, 10.0, torch.zeros(11, 11, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch size"):
        loss_fn(img, txt[:5], 10.0)


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_info_nce_module(backend):
    q, p, n = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64), \
        torch.randn(9, 5, dtype=torch.float64)
    for reduction in ("mean", "sum", "none"):
        loss_fn = ck.InfoNCE(temperature=0.3, reduction=reduction, backend=backend)
        _close(loss_fn(q, p), R.info_nce_reference(q, p, None, 0.3, reduction))
        _close(loss_fn(q, p, n), R.info_nce_reference(q, p, n, 0.3, reduction))
    with pytest.raises(ValueError, match="negative_mode"):
        ck.InfoNCE(negative_mode="paired")
    with pytest.raises(ValueError, match="negative_keys"):
        fn.info_nce(q, p, torch.randn(6, 3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="symmetric"):
        fn.info_nce(q, p, n, symmetric=True)
    with pytest.raises(ValueError, match="positive_key"):
        fn.info_nce(q, p[:4])


# --------------------------------------------------------------------------- queue-based


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_queue_modules(backend):
    b, k, d = 7, 13, 6
    q, key, queue = _unit(b, d), _unit(b, d), _unit(k, d)
    strong = [_unit(b, d), _unit(b, d)]
    _close(ck.MoCoLoss(0.07, backend=backend)(q, key, queue), R.moco_loss_reference(q, key, queue, 0.07))
    _close(ck.MoCoLoss(0.1, in_batch_negatives=True, backend=backend)(q, key, queue),
           R.moco_loss_reference(q, key, queue, 0.1, in_batch_negatives=True))
    _close(ck.CLSALoss(T=0.2, clsa_t=0.3, alpha=0.5, backend=backend)(q, strong, key, queue),
           R.clsa_loss_reference(q, strong, key, queue, 0.2, 0.3, 0.5))
    pos = _unit(b, 2, d)
    bingo = ck.BingoLoss(0.2, lam=(0.7, 0.3), backend=backend)
    _close(bingo(q, pos, queue), R.bingo_loss_reference(q, pos, queue, (0.7, 0.3), 0.2))
    _close(bingo(q, pos, queue, lam=[1.0, 0.0]), R.bingo_loss_reference(q, pos, queue, [1.0, 0.0], 0.2))
    with pytest.raises(ValueError, match="lam"):
        bingo(q, pos, queue, lam=[1.0])
    with pytest.raises(ValueError, match="queue"):
        ck.MoCoLoss()(q, key, _unit(k, d + 1))


def test_clsa_teacher_and_keys_get_no_gradient_from_ddm():
    b, k, d = 5, 9, 4
    q, qs = _unit(b, d).requires_grad_(), _unit(b, d).requires_grad_()
    key, queue = _unit(b, d).requires_grad_(), _unit(k, d).requires_grad_()
    loss = fn.clsa_ddm_loss(q, qs, key, queue, 0.2, backend="torch")
    gq, gqs, gk, gqueue = torch.autograd.grad(loss, (q, qs, key, queue), allow_unused=True)
    assert gq is None and gk is None and gqueue is None and gqs is not None


# --------------------------------------------------------------------------- DCL / HCL


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_dcl_modules(backend):
    out0, out1 = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    _close(ck.DCLLoss(0.2, backend=backend)(out0, out1), R.dcl_loss_reference(out0, out1, 0.2))
    _close(ck.DCLWLoss(0.2, sigma=0.3, backend=backend)(out0, out1),
           R.dclw_loss_reference(out0, out1, 0.2, 0.3))

    def weight_fn(a, b):  # lightly's docstring example, with a gradient
        return torch.sum((a - b) ** 2, dim=1)

    _close(ck.DCLLoss(0.2, weight_fn=weight_fn, backend=backend)(out0, out1),
           R.dcl_loss_reference(out0, out1, 0.2, weight_fn))


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_hcl_module(backend):
    a, b = _unit(8, 6), _unit(8, 6)
    for est in ("hard", "easy"):
        _close(ck.HCLLoss(0.5, 0.1, 1.0, est, backend=backend)(a, b),
               R.hcl_loss_reference(a, b, 0.5, 0.1, 1.0, est))
    raw_a, raw_b = 3 * a, 2 * b
    _close(ck.HCLLoss(normalize=True, backend=backend)(raw_a, raw_b), R.hcl_loss_reference(a, b))
    with pytest.raises(ValueError, match="estimator"):
        ck.HCLLoss(estimator="medium")
    with pytest.raises(ValueError, match="tau_plus"):
        fn.hcl_loss(a, b, tau_plus=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        fn.hcl_loss(a[:1], b[:1])


def test_hcl_clamp_is_active_in_the_clamped_case():
    # the table's hcl_hard_beta3_clamped case must exercise the clamp for some rows, and
    # leave it inactive for others
    from contrastive_kernels.testing.loss_cases import CASES

    case = {c.id: c for c in CASES}["hcl_hard_beta3_clamped"]
    x, _ = case.inputs(torch.float64)
    a, b = x["out0"].detach(), x["out1"].detach()
    batch, temperature, tau_plus, beta = a.shape[0], 0.3, 0.5, 3.0
    out = torch.cat([a, b])
    keep = torch.ones(2 * batch, 2 * batch, dtype=torch.bool)
    idx = torch.arange(2 * batch)
    keep[idx, idx] = False
    keep[idx, (idx + batch) % (2 * batch)] = False
    neg = torch.exp(out @ out.T / temperature)[keep].view(2 * batch, -1)
    n = 2 * batch - 2
    pos = torch.exp((a * b).sum(1) / temperature).repeat(2)
    ng = (-tau_plus * n * pos + (neg ** (1 + beta)).sum(1) / (neg ** beta).mean(1)) / (1 - tau_plus)
    clamped = ng < n * math.exp(-1 / temperature)
    assert bool(clamped.any()) and not bool(clamped.all())


# --------------------------------------------------------------------------- memory invariant


def _largest_allocation_elements(fn_):
    """The most fp32 elements of any allocation made while fn_ ran (the shared probe)."""
    with record_cpu_allocations() as record:
        fn_()
    return record.largest // 4


# Sizes at which every core-op call of every measured configuration (LossSpec.accuracy) has
# at least B queries and B keys, and B x B > 2 x the torch backend's tile (2^20 elements):
# a full N x M tensor would stand out against the B x B / 2 bar.
MEMORY_SIZES = Sizes(b=1600, k=2000, d=8, c=10)
MEMORY_ROWS = [(spec, row) for spec in SPECS for row in spec.accuracy]


def _float32_inputs(row):
    x = row.make(torch.Generator().manual_seed(0), MEMORY_SIZES)
    return {k: v.float().requires_grad_(k in row.grads)
            if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in x.items()}


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
@pytest.mark.parametrize("spec,row", MEMORY_ROWS,
                         ids=[row.label or spec.name for spec, row in MEMORY_ROWS])
def test_no_n_by_m_tensor_on_the_fused_path(spec, row, backend):
    x = _float32_inputs(row)
    bar = MEMORY_SIZES.b ** 2 // 2
    largest = _largest_allocation_elements(lambda: row.fused(x, backend).backward())
    assert largest <= bar, f"an allocation of {largest} elements (B x B / 2 = {bar})"


def test_memory_probe_sees_the_reference():
    spec, row = next((s, r) for s, r in MEMORY_ROWS if s.family == "NT-Xent")
    x = _float32_inputs(row)
    largest = _largest_allocation_elements(lambda: row.naive(x).backward())
    assert largest > MEMORY_SIZES.b ** 2 // 2, "the probe missed the reference's N x M matrix"


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("spec", SPECS, ids=_family)
def test_losses_compile_fullgraph(spec):
    """dynamo traces every loss (its first configuration) without a graph break (the core
    op's fake implementation and autograd registration included); aot_eager keeps CI fast
    (inductor compiles too, at ~15 s per loss)."""
    torch._dynamo.reset()
    case = spec.cases[0]
    x, _ = case.inputs(torch.float32, small=True)
    compiled = torch.compile(lambda: case.fused(x, "torch"), fullgraph=True, backend="aot_eager")
    got = compiled()
    got.backward()
    torch.testing.assert_close(got, case.fused(x, "torch"))


def test_module_and_functional_form_validate_alike():
    """A module stores its arguments and its forward is the functional form, so both reject
    the same bad argument the same way (DCLWLoss(sigma=0) used to return NaN)."""
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        fn.dclw_loss(a, b, sigma=0.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        ck.DCLWLoss(sigma=0.0)(a, b)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        fn.info_nce(a, b, temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ck.InfoNCE(temperature=0.0)(a, b)
