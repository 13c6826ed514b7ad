"""What the ahead-of-time compile builds: the specialization of each kernel per job.

A job is ``(kernel, dtype, arch, d_max, Config[, probe])``. Kernels: the core op's
``fwd`` / ``fwd_o`` / ``bwd_dq`` / ``bwd_dk``, the two-sided lse's ``two_sided_fwd`` /
``two_sided_bwd_dq`` / ``two_sided_bwd_dk`` (the same kernels with REDUCTION =
ROWS_AND_COLUMNS, on the configs of ``fwd`` / ``bwd_dq`` / ``bwd_dk``), pairwise_sigmoid's
``sigmoid_fwd`` / ``sigmoid_bwd_dq`` / ``sigmoid_bwd_dk`` (REDUCTION = SIGMOID; the dk
grid with dbias) and the key split's ``merge`` / ``finish`` (:data:`AUX_KERNELS`).

Each config is compiled in its heaviest specialization: every feature on (bias, labels,
self-exclusion, normalization; o for ``fwd_o``; dx and dscale for the backward), no
EVEN_* shortcut (masked tails), 32-bit offsets, 16-byte aligned pointers and row strides,
unit column strides, int32 labels (the launcher's), and the largest d tile of its range.
Probes change one thing: ``int64`` (64-bit offsets), ``split`` (the key split's SPLIT),
``simclr`` (no bias, no labels: the common call), ``aux`` (a key-split kernel).
"""

from __future__ import annotations

import inspect

# dtype class of configs.TABLE -> the dtypes compiled for it. "tf32": fp32 operands on
# tf32 tensor cores (torch's matmul precision "high" / "medium"); "fp32": IEEE fp32
# (precision "highest", torch's default), FMA on the CUDA cores.
DTYPES = {"16": ("fp16", "bf16"), "tf32": ("tf32",), "fp32": ("fp32",), "64": ("fp64",)}
_ACC = {"fp16": "fp32", "bf16": "fp32", "tf32": "fp32", "fp32": "fp32", "fp64": "fp64"}
_OPERAND = {"tf32": "fp32"}

AUX_KERNELS = ("merge", "finish")
# two-sided kernel -> the main kernel it is a specialization of
TWO_SIDED = {"two_sided_fwd": "fwd", "two_sided_bwd_dq": "bwd_dq",
             "two_sided_bwd_dk": "bwd_dk"}
# pairwise_sigmoid's kernels likewise (REDUCTION = SIGMOID)
SIGMOID = {"sigmoid_fwd": "fwd", "sigmoid_bwd_dq": "bwd_dq", "sigmoid_bwd_dk": "bwd_dk"}


def base_kernel(kernel: str) -> str:
    """The configs.TABLE kernel a job's kernel runs with."""
    return TWO_SIDED.get(kernel, SIGMOID.get(kernel, kernel))


def reduction_of(kernel: str) -> int:
    """The REDUCTION constexpr of a main kernel (score_tile: ROWS, ROWS_AND_COLUMNS,
    SIGMOID)."""
    return 1 if kernel in TWO_SIDED else 2 if kernel in SIGMOID else 0


def exps_per_logit(kernel: str) -> int:
    """MUFU.EX2 per logit of a main kernel: the two-sided sweeps exponentiate each logit
    against its row's pivot and its column's (forward), or both saved lse (backward); the
    sigmoid's e^{-|x|} is one."""
    return 2 if kernel in TWO_SIDED else 1


def mufu_per_logit(kernel: str) -> int:
    """Every MUFU op per logit (ex2, rcp, lg2): the exps, and the sigmoid backward's
    reciprocal 1 / (1 + e) (its forward's log1p is a polynomial on the FMA units, no lg2)."""
    return exps_per_logit(kernel) + (kernel in ("sigmoid_bwd_dq", "sigmoid_bwd_dk"))


def _aux_signature(kernel: str, dtype: str, cfg, block_d: int):
    """The key-split kernels, heaviest specialization: o merged / normalization on."""
    from . import key_split

    acc = _ACC[dtype]
    dtype = _OPERAND.get(dtype, dtype)
    if kernel == "merge":
        fn = key_split.merge_kernel.fn
        ptrs = dict(PART_M=acc, PART_L=acc, PART_O=acc, LSE=acc, O=acc)
        ints = dict(N="i32", D="i32", S="i32")
        const = dict(BLOCK_R=cfg.block_o, BLOCK_D=block_d, RETURN_O=True, INT64=False)
        aligned = ("D",)
    else:
        fn = key_split.finish_kernel.fn
        ptrs = dict(PART=acc, X=dtype, DX=dtype, SCALE=acc)
        ints = dict(NX="i32", D="i32", S="i32", EPS="fp32", stride_xn="i32")
        const = dict(stride_xd=1, BLOCK_R=cfg.block_o, BLOCK_D=block_d, HAS_NORM=True,
                     EVEN_O=False, EVEN_D=False, SINGLE_D=cfg.single, UPCAST=False,
                     INT64=False)
        aligned = ("D", "stride_xn")
    return fn, ptrs, ints, const, aligned


def signature(kernel: str, dtype: str, cfg, block_d: int, int64: bool = False,
              split: bool = False, simclr: bool = False):
    """(python fn, signature, constexprs, attrs) for one compile; ``simclr``: without bias
    and labels (normalization and self-exclusion only, the SimCLR / CLIP-like calls)."""
    from . import lse_backward, lse_forward

    if kernel in AUX_KERNELS:
        return _finish(*_aux_signature(kernel, dtype, cfg, block_d))
    reduction = reduction_of(kernel)
    dbias = kernel == "sigmoid_bwd_dk" and not simclr  # the dk grid sums the bias gradient
    kernel = base_kernel(kernel)
    acc = _ACC[dtype]
    tf32 = dtype == "tf32"
    dtype = _OPERAND.get(dtype, dtype)
    common = dict(TF32=tf32, UPCAST=False, RESCALE=dtype == "fp16",
                  BLOCK_O=cfg.block_o, BLOCK_I=cfg.block_i, BLOCK_D=block_d,
                  HAS_SELF=True, HAS_BIAS=not simclr, HAS_LABELS=not simclr, HAS_NORM=True,
                  EVEN_D=False, SINGLE_D=cfg.single, INT64=int64, SPLIT=split,
                  REDUCTION=reduction)
    if kernel in ("fwd", "fwd_o"):
        fn = lse_forward.lse_fwd_kernel_py
        ptrs = dict(Q=dtype, K=dtype, SCALE=acc, BIAS=acc, QLAB="i32", KLAB="i32", INVQ=acc,
                    INVK=acc, LSE=acc, O=acc)
        ints = dict(N="i32", M="i32", D="i32", SELF_OFFSET="i32", stride_qn="i32",
                    stride_kn="i32")
        const = dict(common, stride_qd=1, stride_kd=1, RETURN_O=kernel == "fwd_o",
                     EVEN_N=False, EVEN_M=False)
        if split:
            ptrs["PART_M"] = acc
            ints["SPLIT_KEYS"] = "i32"
        else:
            const.update(PART_M=None, SPLIT_KEYS=0)
        if kernel == "fwd":
            const["O"] = None
            del ptrs["O"]
        if reduction == 1:
            ptrs.update(COL_M=acc, COL_L=acc)
        else:
            const.update(COL_M=None, COL_L=None)
        aligned = ("D", "stride_qn", "stride_kn", "SPLIT_KEYS")
    else:
        fn = lse_backward.lse_bwd_kernel_py
        ptrs = dict(X=dtype, Y=dtype, SCALE=acc, BIAS=acc, XLAB="i32", YLAB="i32", INVX=acc,
                    INVY=acc, LSE=acc, G=acc, DX=dtype, ACC_BUF=acc, DS_PART=acc)
        ints = dict(NX="i32", NY="i32", D="i32", SELF_OFFSET="i32", EPS="fp32",
                    stride_xn="i32", stride_yn="i32")
        const = dict(common, stride_xd=1, stride_yd=1, DK=kernel == "bwd_dk", NEED_DX=True,
                     NEED_DS=True, NEED_DB=dbias, EVEN_O=False, EVEN_I=False)
        if dbias:
            ptrs["DBIAS"] = acc
        else:
            const["DBIAS"] = None
        if reduction == 2:  # no saved statistic
            const["LSE"] = None
            del ptrs["LSE"]
        if split:
            ints["SPLIT_KEYS"] = "i32"
        else:
            const["SPLIT_KEYS"] = 0
        if cfg.single and not split:  # the split writes its partial to ACC_BUF
            const["ACC_BUF"] = None
            del ptrs["ACC_BUF"]
        if reduction == 1:
            ptrs.update(COL_LSE=acc, COL_G=acc)
        else:
            const.update(COL_LSE=None, COL_G=None)
        aligned = ("D", "stride_xn", "stride_yn", "SPLIT_KEYS")
    return _finish(fn, ptrs, ints, const, aligned)


def _finish(fn, ptrs, ints, const, aligned):
    names = list(inspect.signature(fn).parameters)
    sig = {}
    for name in names:
        if name in ptrs:
            sig[name] = "*" + ptrs[name]
        elif name in ints:
            sig[name] = ints[name]
        else:
            sig[name] = "constexpr"
    missing = [n for n in names if sig[n] == "constexpr" and n not in const]
    assert not missing, f"no value for constexprs {missing}"
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if (n in ptrs or n in aligned) and sig[n] != "constexpr"}
    return fn, sig, const, attrs
