"""The C++ CPU backend's own mechanisms at the edges of the contract, against the float64
oracle (backend="reference"), on every CPU kernel set this machine runs ("avx2+fma",
"baseline"):

- the symmetric kernels (q is k: shared-pivot and per-side updates) with NaN, +inf and
  empty key sets, and with huge rows under normalize (fp32 entries far above 1.8e19,
  fp64 above 1e154);
- the kernel sets (issue 11): each is within the oracle tolerance on the symmetric path
  (tests/core/test_conformance.py runs the general table and its special values on each),
  the run-time choice is reported and can be forced, and outside the AVX2 + FMA kernels
  the extension holds no AVX / VEX instruction (so it loads and runs on any x86-64 CPU).

Sizes span several symmetric blocks, so the online max / sum merges across blocks see the
special values.
"""

import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import _extension, env
from contrastive_kernels.backends import native
from contrastive_kernels.testing.core_cases import make_inputs
from contrastive_kernels.testing.tolerance import assert_close

pytestmark = pytest.mark.skipif(native.BACKEND.available() is not None,
                                reason=f"cpu backend unavailable: {native.BACKEND.available()}")
_C = _extension._C

KERNEL_SETS = ["avx2+fma", "baseline"]
NAN, INF = float("nan"), float("inf")


@pytest.fixture(params=KERNEL_SETS)
def kernel_set(request):
    """Runs the test with the CPU ops on one kernel set, restoring the previous one after."""
    if request.param not in _C.cpu_kernels():
        pytest.skip(f"kernel set {request.param} is not runnable here ({_C.cpu_kernels()})")
    previous = _C.set_cpu_kernel(request.param)
    try:
        yield request.param
    finally:
        _C.set_cpu_kernel(previous)


def _lse_grads(backend, q, k, scale, same_rows=False, **kw):
    """lse and the grads of <g, lse> (g all nonzero, NaN rows included) w.r.t. q, k, scale.

    "reference" is the oracle: float64, on the float64 copies of the same values; "naive"
    is the same code in the inputs' dtype (the tolerance baseline). With same_rows, k is q
    itself (the symmetric kernels) and the q grad is the total one.
    """
    dtype = torch.float64 if backend == "reference" else q.dtype
    if backend == "naive":
        backend = "reference"
    q = q.detach().to(dtype).requires_grad_()
    k = q if same_rows else k.detach().to(dtype).requires_grad_()
    s = torch.tensor(scale, dtype=dtype, requires_grad=True)
    if kw.get("bias") is not None:
        kw["bias"] = kw["bias"].to(dtype)
    lse, _ = ck.ops.lse(q, k, s, backend=backend, **kw)
    g = torch.linspace(0.5, 1.5, lse.shape[0], dtype=lse.dtype)
    grads = torch.autograd.grad(lse, (q, s) if same_rows else (q, k, s), g)
    names = ("lse", "dq", "dscale") if same_rows else ("lse", "dq", "dk", "dscale")
    return dict(zip(names, [lse.detach()] + [t.detach() for t in grads]))


def _assert_matches(ours, oracle, rtol=2e-4):
    """Same NaN and +-inf positions as the oracle, and close finite values."""
    for name, ref in oracle.items():
        got = ours[name].double()
        assert got.shape == ref.shape, name
        assert torch.equal(torch.isnan(got), torch.isnan(ref)), (
            f"{name}: NaN at {torch.isnan(got).nonzero().flatten().tolist()[:12]}, oracle at "
            f"{torch.isnan(ref).nonzero().flatten().tolist()[:12]}")
        for test in (torch.isposinf, torch.isneginf):
            assert torch.equal(test(got), test(ref)), (
                f"{name}: {test.__name__} at {test(got).nonzero().flatten().tolist()[:12]}, "
                f"oracle at {test(ref).nonzero().flatten().tolist()[:12]}")
        finite = torch.isfinite(ref)
        if finite.any():
            scale = float(ref[finite].abs().max())
            err = float((got[finite] - ref[finite]).abs().max())
            assert err <= rtol * max(scale, 1.0), f"{name}: max error {err:.3e} (magnitude {scale:.3e})"


# ------------------------------------------------------------------ NaN in -> NaN out (issue 9)

D = 19
NS = 150  # symmetric kernels: 5 blocks of 32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("where", ["q", "scale"])
@pytest.mark.parametrize("return_o", [False, True], ids=["lse", "lse+o"])
def test_nan_input_symmetric(kernel_set, dtype, where, return_o):
    """q is k (the symmetric kernels, shared-pivot or per-side updates): with labels, rows
    of the NaN row's class exclude it and stay finite; the others are NaN."""
    q, _, gen = make_inputs(NS, NS, D, dtype, seed=1)
    q = q.clone()
    labels = torch.randint(0, 2, (NS,), generator=gen)
    scale = 5.0
    if where == "q":
        q[77, 3] = NAN
    else:
        scale = NAN
    kw = dict(self_offset=0, normalize=True, q_labels=labels, k_labels=labels,
              exclude_positives=True, return_o=return_o)
    ours = _lse_grads("cpu", q, None, scale, same_rows=True, **kw)
    oracle = _lse_grads("reference", q, None, scale, same_rows=True, **kw)
    assert torch.isnan(oracle["lse"]).any()
    _assert_matches(ours, oracle)


# ------------------------------------------------------------------ +inf stays +inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_inf_scale_gives_inf_symmetric(kernel_set, dtype):
    q, _, _ = make_inputs(NS, NS, D, dtype, seed=2)
    kw = dict(self_offset=0, normalize=True)
    ours = _lse_grads("cpu", q, None, INF, same_rows=True, **kw)
    oracle = _lse_grads("reference", q, None, INF, same_rows=True, **kw)
    assert torch.isposinf(oracle["lse"]).all()
    assert torch.isposinf(ours["lse"]).all()
    _assert_matches({"lse": ours["lse"]}, {"lse": oracle["lse"]})


def test_inf_entry_of_q_gives_inf_symmetric(kernel_set):
    """An +inf entry in a row of q (no normalize) makes its logits +-inf, so its lse is +inf,
    and (q is k) so is the lse of every row meeting it with a positive logit; neither the
    padding keys of the last key panel (0 * inf) nor a row max that drops the +inf along
    with a NaN may turn those into NaN."""
    q, _, _ = make_inputs(NS, NS, D, torch.float32, seed=2)
    q = q.clone()
    q[5, 2] = INF
    ours = _lse_grads("cpu", q, None, 3.0, same_rows=True, self_offset=0)["lse"]
    oracle = _lse_grads("reference", q, None, 3.0, same_rows=True, self_offset=0)["lse"]
    assert torch.isposinf(oracle[5]) and torch.isposinf(ours[5])
    _assert_matches({"lse": ours}, {"lse": oracle})


# ------------------------------------------------------------------ empty key sets: -inf


@pytest.mark.parametrize("return_o", [False, True], ids=["lse", "lse+o"])
def test_empty_key_set_symmetric(kernel_set, return_o):
    q, _, _ = make_inputs(NS, NS, D, torch.float32, seed=3)
    labels = torch.zeros(NS, dtype=torch.long)  # one class: every key is a positive
    kw = dict(self_offset=0, normalize=True, q_labels=labels, k_labels=labels,
              exclude_positives=True, return_o=return_o)
    ours = _lse_grads("cpu", q, None, 4.0, same_rows=True, **kw)
    assert torch.isneginf(ours["lse"]).all()
    assert torch.count_nonzero(ours["dq"]) == 0 and torch.count_nonzero(ours["dscale"]) == 0
    single = _lse_grads("cpu", q[:1], None, 4.0, same_rows=True, self_offset=0)
    assert torch.isneginf(single["lse"]).all() and torch.count_nonzero(single["dq"]) == 0


# ------------------------------------------------------------------ huge rows under normalize


@pytest.mark.parametrize("dtype,factor", [(torch.float32, 1e19), (torch.float32, 1e24),
                                          (torch.float32, 1e36), (torch.float64, 1e200)], ids=str)
def test_huge_rows_normalize_symmetric(kernel_set, dtype, factor):
    """Every third shared row scaled by a huge factor: lse as for the unscaled rows,
    gradients as the oracle's (huge rows have tiny gradients)."""
    q0, _, _ = make_inputs(NS, NS, D, dtype, seed=4)
    q = torch.where((torch.arange(NS) % 3 == 0)[:, None], q0 * factor, q0)
    kw = dict(self_offset=0, normalize=True)
    ours = _lse_grads("cpu", q, None, 7.0, same_rows=True, **kw)
    oracle = _lse_grads("reference", q, None, 7.0, same_rows=True, **kw)
    plain = _lse_grads("cpu", q0, None, 7.0, same_rows=True, **kw)
    assert torch.isfinite(oracle["lse"]).all()
    for name in oracle:  # each gradient row on its own scale: huge rows have tiny grads
        got, ref = ours[name].double(), oracle[name]
        assert torch.isfinite(got).all(), name
        if got.dim() == 2:
            tol = 2e-4 * ref.abs().amax(1, keepdim=True).clamp_min(1e-300)
            assert ((got - ref).abs() <= tol).all(), f"{name}: {float(((got - ref).abs() / tol).max()):.3g}x tol"
        else:
            assert float((got - ref).abs().max()) <= 2e-4 * max(1.0, float(ref.abs().max())), name
    # the unscaled rows give the same lse (up to the rounding of row * factor)
    assert float((ours["lse"] - plain["lse"]).abs().max()) <= 1e-5 * float(plain["lse"].abs().max())


# ------------------------------------------------------------------ the kernel sets (issue 11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("labels,return_o", [(False, False), (True, False), (True, True)],
                         ids=["plain", "labels", "labels+o"])
def test_kernel_set_matches_oracle_symmetric(kernel_set, dtype, labels, return_o):
    q, _, gen = make_inputs(NS, NS, 33, dtype, seed=5)
    kw = dict(self_offset=0, normalize=True, return_o=return_o)
    if labels:
        lab = torch.randint(0, 4, (NS,), generator=gen)
        kw.update(q_labels=lab, k_labels=lab, exclude_positives=True)
    ours = _lse_grads("cpu", q, None, 9.0, same_rows=True, **kw)
    oracle = _lse_grads("reference", q, None, 9.0, same_rows=True, **kw)
    naive = _lse_grads("naive", q, None, 9.0, same_rows=True, **kw)
    for name in oracle:
        assert_close(name, ours[name], oracle[name], naive[name], dtype)


def test_kernel_sets_agree_closely():
    """Both sets on one input: the baseline differs from AVX2 + FMA only by rounding."""
    if len(_C.cpu_kernels()) < 2:
        pytest.skip("one kernel set runs here")
    q, k, gen = make_inputs(200, 300, 64, torch.float32, seed=6)
    results = {}
    for name in _C.cpu_kernels():
        previous = _C.set_cpu_kernel(name)
        try:
            results[name] = _lse_grads("cpu", q, k, 10.0, normalize=True, self_offset=0)
        finally:
            _C.set_cpu_kernel(previous)
    a, b = results.values()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_build_info_reports_the_kernel_set_in_use():
    runnable = _C.cpu_kernels()
    assert runnable[-1] == "baseline"
    info = _C.build_info()
    assert info["cpu_kernel"] in runnable
    assert "-march" not in info["cxx_flags"]  # the extension itself targets any CPU
    flags = _cpu_flags()  # Linux only; elsewhere, trust cpuid
    if platform.machine() in ("x86_64", "AMD64") and flags is not None:
        assert ("avx2+fma" in runnable) == ({"avx2", "fma"} <= flags)
        if "CPU_KERNEL" not in env.VARIABLES or not env.get("CPU_KERNEL"):
            assert info["cpu_kernel"] == runnable[0]  # the fastest, unless forced


def test_set_cpu_kernel_round_trip_and_errors():
    before = _C.build_info()["cpu_kernel"]
    previous = _C.set_cpu_kernel("baseline")
    try:
        assert previous == before
        assert _C.build_info()["cpu_kernel"] == "baseline"
        with pytest.raises(RuntimeError, match="unknown"):
            _C.set_cpu_kernel("avx512")
        assert _C.build_info()["cpu_kernel"] == "baseline"  # a failed set changes nothing
    finally:
        _C.set_cpu_kernel(previous)
    assert _C.build_info()["cpu_kernel"] == before


def test_environment_variable_forces_the_baseline():
    if "CPU_KERNEL" not in env.VARIABLES:
        pytest.skip("CPU_KERNEL is not declared in contrastive_kernels/env.py VARIABLES yet")
    code = "from contrastive_kernels import _extension; print(_extension._C.build_info()['cpu_kernel'])"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for value, expected in (("baseline", "baseline"), ("auto", _C.cpu_kernels()[0])):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                             env={**os.environ, env.name("CPU_KERNEL"): value}, check=True)
        assert out.stdout.strip().splitlines()[-1] == expected


def test_no_avx_instruction_outside_the_avx2_kernels():
    """Every AVX / VEX / BMI instruction of _C is in a function of ck::cpu::avx2, which only
    runs after cpuid said yes: the module loads and runs on an x86-64 CPU without AVX2."""
    if platform.machine() not in ("x86_64", "AMD64") or shutil.which("objdump") is None:
        pytest.skip("needs x86-64 and objdump")
    dis = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", _C.__file__],
                         capture_output=True, text=True, check=True).stdout
    v3_only = {"andn", "bextr", "blsi", "blsr", "blsmsk", "bzhi", "lzcnt", "tzcnt", "mulx", "pdep",
               "pext", "rorx", "sarx", "shlx", "shrx", "movbe"}
    func, inside, outside = None, 0, {}
    for line in dis.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            func = head.group(1)
            continue
        parts = line.split("\t")
        if func is None or len(parts) < 2 or not parts[1].strip():
            continue
        ins = parts[1].strip()
        mnemonic = ins.split()[0]
        if mnemonic.startswith("v") or mnemonic in v3_only or "%ymm" in ins or "%zmm" in ins:
            if "ck::cpu::avx2::" in func:
                inside += 1
            else:
                outside.setdefault(func, ins)
    assert not outside, f"AVX-class instructions outside ck::cpu::avx2: {list(outside.items())[:5]}"
    if "avx2+fma" in _C.cpu_kernels():
        assert inside > 0
