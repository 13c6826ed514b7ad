"""Backend ``triton``: what the shared oracle table (test_ops.py) does not cover.

On CPU-only machines the kernels run under TRITON_INTERPRET=1 (set by conftest before any
import) on CPU tensors. The tests marked ``gpu`` need a CUDA device and compiled Triton
(``CONTRASTIVE_KERNELS_TRITON_NATIVE=1``), and skip cleanly otherwise.
"""

import math
import os

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import ops, reference
from contrastive_kernels.backends import registry
from contrastive_kernels.core.contract import CoreOptions
from contrastive_kernels.testing.core_cases import DTYPES, OPTIONS, SHAPES, make_inputs
from contrastive_kernels.testing.core_check import acc_dtype, check_against_oracle, fused, lse_and_grads, naive

pytest.importorskip("triton")
from contrastive_kernels.backends import triton as ck_triton  # noqa: E402
from contrastive_kernels.backends.triton import _ops, configs, key_split, launch  # noqa: E402

pytestmark = pytest.mark.skipif(ck_triton.unavailable_reason() is not None,
                                reason=f"triton backend unavailable: {ck_triton.unavailable_reason()}")

INTERPRETED = _ops.kernels_interpreted()
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="checks the interpreter path")


_triton = fused("triton")


OPT = {o.id: o for o in OPTIONS}


# --------------------------------------------------------------------------- op contract


def _triton_op_ignores_schema() -> bool:
    """torch < 2.12's triton_op drops its ``schema`` argument and infers ``SymInt?`` for
    ``Optional[int]`` (the GPU machines' torch 2.11): the op works, its text differs."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) < (2, 12)


def _op_args(n=9, m=11, d=5, dtype=torch.float32, **over):
    q, k, gen = make_inputs(n, m, d, dtype)
    acc = acc_dtype(dtype)
    args = dict(q=q, k=k, scale=torch.tensor(2.0, dtype=acc), bias=torch.randn(m, dtype=acc),
                q_labels=torch.randint(0, 3, (n,)), k_labels=torch.randint(0, 3, (m,)),
                self_offset=1, normalize=True, eps=1e-12, exclude_positives=True, return_o=True)
    args.update(over)
    return args


def test_backend_registry():
    b = registry.get_backend("triton")
    assert b is ck_triton.BACKEND and b.auto_devices == ("cuda",)
    q, k, _ = make_inputs(4, 4, 4, torch.float32)
    opts = CoreOptions()
    if INTERPRETED:
        assert b.not_supported_reasons(q.device, q.dtype, 4, opts) == []
    # "auto" never picks it for CPU tensors
    lse_auto, _ = ck.ops.lse(q, k, 1.0)
    assert torch.isfinite(lse_auto).all()


def test_rejects_names_the_reason(monkeypatch):
    opts = CoreOptions()
    cpu = torch.device("cpu")

    def reasons(dtype=torch.float32):
        return " ".join(ck_triton.BACKEND.not_supported_reasons(cpu, dtype, 2, opts))

    assert "dtype" in reasons(torch.int32)
    monkeypatch.setattr(_ops, "kernels_interpreted", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "TRITON_INTERPRET" in reasons()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in ck_triton.unavailable_reason()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "set after" in reasons()
    assert ck_triton.unavailable_reason() is None


def test_float_scale_and_grad_only_paths():
    """need_dq / need_dk / need_dscale in every combination agree with the torch backend."""
    q, k, gen = make_inputs(37, 29, 20, torch.float32)
    kw = dict(normalize=True, self_offset=0, bias=torch.randn(29, generator=gen))
    for req in [(True, False, False), (False, True, False), (False, False, True),
                (False, True, True), (True, True, True)]:
        results = {}
        for be in ("triton", "torch"):
            qq = q.clone().requires_grad_(req[0])
            kk = k.clone().requires_grad_(req[1])
            sc = torch.tensor(5.0, requires_grad=req[2])
            lse, _ = ck.ops.lse(qq, kk, sc, backend=be, **kw)
            ins = [t for t, r in zip((qq, kk, sc), req) if r]
            results[be] = torch.autograd.grad(lse, ins, torch.linspace(-1, 1, 37))
        for a, b in zip(results["triton"], results["torch"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


_TRACE_SCRIPT = r"""
import os, sys, warnings
import torch
import contrastive_kernels.backends.triton as ckt
from contrastive_kernels.backends.triton import _ops
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._functorch.aot_autograd import aot_function

assert not _ops.kernels_interpreted()
graphs = []

def capture(gm, example_inputs):
    graphs.append(gm)
    return gm

def f(q, k, scale, labels):
    lse, o = torch.ops.contrastive_kernels.lse_triton(
        q, k, scale, None, labels, labels[:200], 0, True, 1e-12, True, True)
    dq, dk, ds = torch.ops.contrastive_kernels.lse_triton_backward(
        torch.ones_like(lse), q, k, scale, None, labels, labels[:200], 0, True, 1e-12, True,
        lse, True, True, True)
    return lse, o, dq, dk, ds

for d in (64, 1024):
    with FakeTensorMode():
        q = torch.empty(300, d, device="cuda", dtype=torch.bfloat16)
        k = torch.empty(200, d, device="cuda", dtype=torch.bfloat16)
        scale = torch.empty((), device="cuda")
        labels = torch.empty(300, device="cuda", dtype=torch.int64)
        out = aot_function(f, fw_compiler=capture)(q, k, scale, labels)
        assert out[2].shape == q.shape and out[3].shape == k.shape and out[4].shape == ()
for gm in graphs:
    names = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    kernels = [n for n in names if "triton_kernel_wrapper" in n]
    opaque = [n for n in names if "contrastive_kernels" in n]
    print(len(kernels), len(opaque))
"""


def test_torch_compile_sees_the_kernels():
    """AOTAutograd (what torch.compile runs) decomposes both ops into their Triton kernel
    launches. Fake CUDA tensors, compiled-mode kernels, no GPU: run in a subprocess."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env[_ops.ARCH_ENV] = "90"
    # unsplit (on a GPU machine the small grid would add the key split's merge / finish)
    env[key_split.SPLITS_ENV] = "1"
    proc = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = [tuple(map(int, line.split())) for line in proc.stdout.split("\n") if line.strip()]
    # per graph: 2 norms + forward, 2 norms + dq grid + dk grid = 7 launches, no opaque op
    assert counts == [(7, 0), (7, 0)], (counts, proc.stderr[-2000:])


# --------------------------------------------------------------------------- code paths


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_d4096_chunked(dtype):
    """d = 4096: the d loop (and the global-memory accumulators of o, dq, dk)."""
    check_against_oracle("triton", 19, 23, 4096, dtype, OPT["all"])


@pytest.mark.parametrize("single", [True, False], ids=["single_d", "chunked_d"])
@pytest.mark.parametrize("shape", [(64, 96, 32), (50, 70, 48)], ids=["even", "tails"])
def test_forced_paths(single, shape):
    """Both d strategies, with EVEN_* shortcuts (tile multiples) and with masked tails."""
    cfg = configs.Config(32, 32, 64 if single else 16, 4, 1, single)
    with configs.forced(cfg):
        for opt in ("all", "plain"):
            check_against_oracle("triton", *shape, torch.float16, OPT[opt])
            check_against_oracle("triton", *shape, torch.float32, OPT[opt])


def test_zero_norm_rows():
    """normalize with rows of norm < eps: x^ = x / eps, Jacobian without the radial term."""
    q, k, _ = make_inputs(9, 7, 6, torch.float64)
    q[2] = 0.0
    k[3] = 1e-14
    check = {}
    for be in ("triton", "torch"):
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        lse, _ = ck.ops.lse(qq, kk, 4.0, normalize=True, eps=1e-9, backend=be)
        check[be] = (lse,) + torch.autograd.grad(lse, (qq, kk), torch.ones(9, dtype=torch.float64))
    for a, b in zip(check["triton"], check["torch"]):
        torch.testing.assert_close(a, b)


def test_fp16_tiny_grad_scale():
    """fp16 operands with g = 1e-6 (a mean over a million rows) and small row norms: the
    weights g P / ||q|| fed to the fp16 MMA would be fp16 subnormals; the online row
    rescaling keeps them normal, so dq / dk are as accurate as fp16 outputs can be."""
    n, m, d = 40, 33, 24
    q, k, _ = make_inputs(n, m, d, torch.float64)
    q, k = (q * 1e-2).half(), (k * 1e-2).half()  # norms ~ 0.01: dq, dk ~ 1e-3 (normal)
    weights = torch.full((n,), 1e-6, dtype=torch.float64)
    oracle = lse_and_grads(naive(torch.float64), q.double(), k.double(),
                    torch.tensor(9.0, dtype=torch.float64), dict(normalize=True), weights)
    ours = lse_and_grads(_triton, q, k, torch.tensor(9.0), dict(normalize=True), weights)
    for i in (2, 3):
        best = (oracle[i].half().double() - oracle[i]).abs().max()  # rounding to fp16 alone
        err = (ours[i].double() - oracle[i]).abs().max()
        assert oracle[i].abs().max() > 2 ** -14  # normal fp16 range
        assert err <= 4 * best, (i, err, best)


# --------------------------------------------------------------------------- silent wrong results (issue 9)


def _grads_of(backend, q, k, scale, kw, grad=None):
    qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
    sc = torch.tensor(scale, dtype=acc_dtype(q.dtype), requires_grad=True)
    lse, o = ck.ops.lse(qq, kk, sc, backend=backend, **kw)
    g = torch.ones_like(lse) if grad is None else grad
    gq, gk, gs = torch.autograd.grad(lse, (qq, kk, sc), g)
    return lse.detach(), o, gq, gk, gs


def _op_direct(q, k, scale, kw):
    """The Triton core ops called directly (as torch.compile or another caller may), not
    through ops.lse, which already canonicalizes its arguments: the launcher must cope."""
    args = (q, k, torch.tensor(scale, dtype=acc_dtype(q.dtype)), kw.get("bias"),
            kw.get("q_labels"), kw.get("k_labels"), kw.get("self_offset"),
            kw.get("normalize", False), 1e-12, kw.get("exclude_positives", False))
    lse, o = torch.ops.contrastive_kernels.lse_triton.default(*args, kw.get("return_o", False))
    bwd = torch.ops.contrastive_kernels.lse_triton_backward.default
    live = torch.isfinite(lse).to(lse.dtype)
    dq, dk, ds = bwd(live, *args, lse, True, True, True)
    return lse, (o if kw.get("return_o") else None), dq, dk, ds


def test_label_dtype_choice_reads_no_values():
    """Labels reach the kernels as int32, decided by dtype alone (no host sync): small
    dtypes are cast, wider ones replaced by an equality-preserving code (the rank in the
    sorted concatenation, computed on the device)."""
    i8, u8 = torch.tensor([-1, 5], dtype=torch.int8), torch.tensor([255, 5], dtype=torch.uint8)
    _, a, b = launch.per_key_inputs(None, i8, u8)
    assert a.dtype == b.dtype == torch.int32 and a.tolist() == [-1, 5] and b.tolist() == [255, 5]
    wide = torch.tensor([2 ** 40 + 1, 7, -2 ** 50, 7])
    keys = torch.tensor([1, 7, 3], dtype=torch.int32)
    _, a, b = launch.per_key_inputs(None, wide, keys)
    assert a.dtype == b.dtype == torch.int32
    same = wide[:, None] == keys.long()[None, :]
    assert torch.equal(a[:, None] == b[None, :], same)


# --------------------------------------------------------------------------- flags, 64-bit


def test_flags_interpreter_and_precision(monkeypatch):
    if INTERPRETED:
        assert launch.flags(torch.bfloat16)["UPCAST"]
        assert not launch.flags(torch.float16)["UPCAST"]
        assert not launch.flags(torch.float32)["TF32"]  # the interpreter's dot is IEEE anyway
    monkeypatch.setattr(launch, "kernels_interpreted", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not launch.flags(torch.bfloat16)["UPCAST"]  # compiled: bf16 goes to tl.dot as is
    assert launch.flags(torch.float16)["RESCALE"]
    prev = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert launch.flags(torch.float32)["TF32"]
        torch.set_float32_matmul_precision("highest")
        assert not launch.flags(torch.float32)["TF32"]
        assert not launch.flags(torch.float64)["TF32"]
    finally:
        torch.set_float32_matmul_precision(prev)


def test_int64_heuristic():
    base = dict(N=1000, M=1000, D=128, stride_qn=128, stride_qd=1, stride_kn=128, stride_kd=1,
                BIAS=None, QLAB=None, INVQ=None, O=None, BLOCK_O=64, BLOCK_I=64, BLOCK_D=64)
    assert not _ops.heuristic_flags("fwd", base)["INT64"]
    assert _ops.heuristic_flags("fwd", dict(base, N=2 ** 24))["INT64"]  # N d = 2^31
    assert _ops.heuristic_flags("fwd", dict(base, M=2 ** 18, stride_kn=2 ** 14))["INT64"]
    flags = _ops.heuristic_flags("fwd", dict(base, N=1024, M=1000))
    assert flags["EVEN_N"] and not flags["EVEN_M"] and not flags["SINGLE_D"]


@needs_interpreter
def test_int64_offsets_beyond_2_31():
    """Rows 2^27 elements apart: element offsets pass 2^31, so the kernels must switch
    to 64-bit offsets (with 32-bit ones the interpreter reads a wrapped address and
    crashes). The storage is virtual: only the pages of the rows used are touched."""
    d, n, m, stride = 16, 20, 12, 2 ** 27
    if torch.empty(0).element_size() != 4:
        pytest.skip("unexpected default dtype")
    try:
        store = torch.empty(stride * (n - 1) + d, dtype=torch.float16)
    except RuntimeError as exc:  # pragma: no cover
        pytest.skip(f"cannot reserve {2 * stride * n / 2**30:.0f} GiB of virtual memory: {exc}")
    q = store.as_strided((n, d), (stride, 1))
    q_small, k, _ = make_inputs(n, m, d, torch.float16)
    q.copy_(q_small)
    assert (n - 1) * stride >= 2 ** 31
    qq = q.detach().requires_grad_()
    lse, o = ck.ops.lse(qq, k, 3.0, normalize=True, return_o=True, backend="triton")
    ref_lse, ref_o = ck.ops.lse(q_small, k, 3.0, normalize=True, return_o=True, backend="torch")
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o, ref_o, rtol=1e-2, atol=1e-3)  # P rounded to fp16 for o
    (gq,) = torch.autograd.grad(lse, (qq,), torch.ones(n))
    (ref_gq,) = torch.autograd.grad(
        ck.ops.lse(q_small.requires_grad_(), k, 3.0, normalize=True, backend="torch")[0],
        (q_small,), torch.ones(n))
    torch.testing.assert_close(gq, ref_gq, rtol=1e-2, atol=1e-3)


def test_configs_cover_every_kernel_and_range():
    for dclass in configs.DTYPE_CLASSES:
        for arch in configs.ARCHS:
            table = configs.TABLE[(dclass, arch)]
            for kernel in configs.KERNELS:
                entries = table[kernel]
                assert entries[-1][0] is None and not entries[-1][1].single
                assert all(c.single for d_max, c in entries[:-1])
                assert all(configs.KEY_PAD % c.block_i == 0 for _, c in entries)
    dtype = torch.bfloat16
    assert configs.select("fwd", 128, dtype, 90).single
    assert not configs.select("fwd", 4096, dtype, 90).single
    assert configs.block_d_for(configs.select("fwd", 3, dtype, 80), 3, dtype) == (16, True)
    # fp32: IEEE (torch's default "highest") and tf32 have their own configs
    f32 = torch.float32
    assert configs.select("fwd", 128, f32, 90, tf32=False) is not configs.select(
        "fwd", 128, f32, 90, tf32=True)
    assert configs.dtype_class(f32, tf32=False) == "fp32"


def test_no_duplicated_warps_in_configs():
    """A 64-row tile with a 32-column streamed tile takes 4 warps: with 8, two warp groups
    would compute the same logits (the AOT test counts the exps on the compiled code)."""
    shipped = (list(configs.shipped()) + list(configs.shipped(two_sided=True))
               + list(configs.shipped(sigmoid=True)))
    bad = [(k, dc, a, c.describe()) for k, dc, a, _, c in shipped
           if c.block_o <= 64 and c.block_i <= 32 and c.num_warps > 4]
    assert not bad, bad


def test_two_sided_configs():
    """The two-sided and the sigmoid kernels run on the shared entries but where
    TWO_SIDED_TILES / SIGMOID_TILES replace one (each replacement names a real entry and
    keeps its d tile and strategy)."""
    for table in (configs.TWO_SIDED_TILES, configs.SIGMOID_TILES):
        for (kernel, dclass, arch, d_max), cfg in table.items():
            shared = dict(configs.TABLE[(dclass, arch)][kernel])[d_max]
            assert (cfg.block_d, cfg.single) == (shared.block_d, shared.single)
    assert configs.select("sigmoid_bwd_dk", 200, torch.float16, 90).block_o == 16
    assert configs.select("sigmoid_fwd", 100, torch.float16, 90) is configs.select(
        "fwd", 100, torch.float16, 90)
    f16 = torch.float16
    assert configs.select("two_sided_bwd_dk", 100, f16, 80).block_o == 32
    assert configs.select("two_sided_bwd_dk", 100, f16, 90) is configs.select("bwd_dk", 100,
                                                                              f16, 90)
    assert configs.select("two_sided_fwd", 100, f16, None) is configs.select("fwd", 100, f16,
                                                                             None)


@pytest.mark.parametrize("cap, family", [((8, 0), 80), ((8, 6), 80), ((8, 9), 80), ((9, 0), 90),
                                         ((10, 0), 90), ((12, 0), 80)])
def test_arch_family(cap, family):
    assert configs.arch_of(cap) == family and configs.unsupported_arch(cap) is None


@pytest.mark.parametrize("cap", [(7, 5), (7, 0), (11, 0)])
def test_arch_rejected_with_a_reason(cap, monkeypatch):
    reason = configs.unsupported_arch(cap)
    assert reason and f"{cap[0]}.{cap[1]}" in reason
    with pytest.raises(ValueError):
        configs.arch_of(cap)
    # the backend's device check names it for a CUDA device of that capability
    monkeypatch.setattr(_ops, "kernels_interpreted", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    monkeypatch.delenv("CONTRASTIVE_KERNELS_TRITON_ARCH", raising=False)
    assert ck_triton.device_check(torch.device("cuda", 0), torch.float32) == reason


# --------------------------------------------------------------------------- GPU only


@pytest.fixture
def native_cuda(cuda_device):
    if INTERPRETED:
        pytest.skip("compiled Triton needed: run the GPU tests with CONTRASTIVE_KERNELS_TRITON_NATIVE=1")
    return cuda_device


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_oracle_table(native_cuda, dtype):
    """The whole oracle table on CUDA tensors, compiled kernels (real bf16 / tf32 MMA)."""
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # IEEE fp32: the tolerance is fp32's
    try:
        for shape in SHAPES + [(1025, 2049, 256), (300, 500, 1024)]:
            for opt in OPTIONS:
                check_against_oracle("triton", *shape, dtype, opt, device=native_cuda)
    finally:
        torch.set_float32_matmul_precision(prev)


@pytest.mark.gpu
def test_gpu_tf32_is_used_when_allowed(native_cuda):
    q, k, _ = make_inputs(512, 512, 256, torch.float32, device=native_cuda)
    exact = reference.lse_reference(q.double(), k.double(), torch.tensor(20.0, dtype=torch.float64,
                                    device=native_cuda), None, None, None, None, False, 1e-12,
                                    False, False)[0]
    prev = torch.get_float32_matmul_precision()
    try:
        errs = {}
        for prec in ("highest", "high"):
            torch.set_float32_matmul_precision(prec)
            lse, _ = ck.ops.lse(q, k, 20.0, backend="triton")
            errs[prec] = (lse.double() - exact).abs().max().item()
    finally:
        torch.set_float32_matmul_precision(prev)
    assert errs["highest"] < 1e-4 and errs["high"] > errs["highest"]


@pytest.mark.gpu
def test_gpu_auto_picks_triton(native_cuda):
    q, k, _ = make_inputs(64, 64, 32, torch.bfloat16, device=native_cuda)
    chosen = registry.select("auto", q, CoreOptions(normalize=True))
    assert chosen.name == "triton"


@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph(native_cuda):
    q, k, gen = make_inputs(300, 200, 64, torch.bfloat16, device=native_cuda)
    labels = torch.randint(0, 5, (300,), device=native_cuda)

    def loss(q, k, scale):
        lse, o = ck.ops.lse(q, k, scale, normalize=True, self_offset=0, q_labels=labels,
                            k_labels=labels[:200], exclude_positives=True, return_o=True,
                            backend="triton")
        return torch.where(torch.isfinite(lse), lse, 0).sum() + o.float().sum()

    scale = torch.tensor(10.0, device=native_cuda, requires_grad=True)
    qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
    eager = torch.autograd.grad(loss(qq, kk, scale), (qq, kk, scale))
    compiled = torch.compile(loss, fullgraph=True)
    got = torch.autograd.grad(compiled(qq, kk, scale), (qq, kk, scale))
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_gpu_no_host_sync(native_cuda):
    """The forward and backward launch without reading any value back to the host."""
    q, k, _ = make_inputs(1024, 1024, 128, torch.bfloat16, device=native_cuda)
    scale = torch.tensor(10.0, device=native_cuda, requires_grad=True)
    qq = q.clone().requires_grad_()

    def step():
        lse, _ = ck.ops.lse(qq, k, scale, normalize=True, backend="triton")
        torch.autograd.grad(lse.sum(), (qq, scale))

    step()  # compile the kernels outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_gpu_timing_sanity(native_cuda):
    """Forward + backward at N = M = 16384, d = 128, bf16 run at a sane fraction of the
    tensor-core floor (the benchmarks in bench/ report the real numbers)."""
    import triton.testing

    n, d = 16384, 128
    q, k, _ = make_inputs(n, n, d, torch.bfloat16, device=native_cuda)
    qq, kk = q.requires_grad_(), k.requires_grad_()
    fwd_ms = triton.testing.do_bench(lambda: ck.ops.lse(qq, kk, 10.0, normalize=True,
                                                        backend="triton"))
    lse, _ = ck.ops.lse(qq, kk, 10.0, normalize=True, backend="triton")
    bwd_ms = triton.testing.do_bench(
        lambda: torch.autograd.grad(lse, (qq, kk), torch.ones_like(lse), retain_graph=True))
    fwd_tflops = 2 * n * n * d / fwd_ms / 1e9
    bwd_tflops = 8 * n * n * d / bwd_ms / 1e9
    print(f"forward {fwd_ms:.3f} ms ({fwd_tflops:.0f} TFLOP/s), backward {bwd_ms:.3f} ms "
          f"({bwd_tflops:.0f} TFLOP/s)")
    assert fwd_tflops > 20 and bwd_tflops > 20


@pytest.mark.gpu
def test_gpu_runtime_has_no_spills(native_cuda):
    """The kernels compiled at run time on this GPU report no spills (as the AOT report)."""
    from contrastive_kernels.backends.triton.lse_backward import lse_bwd_kernel
    from contrastive_kernels.backends.triton.lse_forward import lse_fwd_kernel

    for d in (64, 128, 256, 1024):
        q, k, _ = make_inputs(256, 256, d, torch.bfloat16, device=native_cuda)
        qq = q.requires_grad_()
        lse, _ = ck.ops.lse(qq, k, 5.0, normalize=True, return_o=True, backend="triton")
        torch.autograd.grad(lse.sum(), qq)
    for kernel in (lse_fwd_kernel, lse_bwd_kernel):
        for compiled in kernel.device_caches[torch.cuda.current_device()][0].values():
            assert compiled.n_spills == 0, (compiled.name, compiled.n_spills)


@pytest.mark.gpu
@pytest.mark.parametrize("magnitude", [1e2, 1e4, 1e9, 1e20, 1e38, 3e38])
def test_gpu_huge_bias_on_device(native_cuda, magnitude):
    """Compiled kernels on the device: one key's bias far above the logit range. dq and dk
    are the float64 oracle's only if every pass rounds each logit as the forward did."""
    from contrastive_kernels.testing.core_check import lse_grad
    gen = torch.Generator().manual_seed(4)
    q, k = torch.randn(300, 64, generator=gen), torch.randn(200, 64, generator=gen)
    bias = torch.randn(200, generator=gen)
    bias[17] = magnitude
    for wrt in ("q", "k"):
        want = lse_grad("reference", q.double(), k.double(), wrt=wrt, bias=bias.double(),
                        normalize=True).float()
        got = lse_grad("triton", q.to(native_cuda), k.to(native_cuda), wrt=wrt,
                       bias=bias.to(native_cuda), normalize=True)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)
