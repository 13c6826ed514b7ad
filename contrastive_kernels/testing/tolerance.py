"""Tolerances relative to the naive computation's own error in the same dtype.

A fused result passes when its distance to the float64 oracle is at most twice the
distance of the naive PyTorch formulation run in that dtype (apple/ml-cross-entropy's
criterion), with a floor of a few accumulation-precision ulps of the values' magnitude
so that a naive error of exactly zero (tiny shapes) does not demand bit equality.
"""

import torch

ACC_EPS = {torch.float64: 2.0 ** -52, torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -23,
           torch.bfloat16: 2.0 ** -23}
FLOOR_ULPS = 64


def max_err(x: torch.Tensor, oracle: torch.Tensor) -> float:
    x, oracle = x.double(), oracle.double()
    both_inf = torch.isinf(x) & torch.isinf(oracle) & (torch.sign(x) == torch.sign(oracle))
    diff = torch.where(both_inf, torch.zeros_like(x), (x - oracle).abs())
    return float(diff.max()) if diff.numel() else 0.0


def assert_close(name: str, ours: torch.Tensor, oracle: torch.Tensor, naive: torch.Tensor,
                 dtype: torch.dtype) -> None:
    assert ours.shape == oracle.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(oracle.shape)}"
    assert not torch.isnan(ours).any(), f"{name}: NaN in result"
    finite = oracle[torch.isfinite(oracle)].double()
    magnitude = float(finite.abs().max()) if finite.numel() else 1.0
    floor = FLOOR_ULPS * ACC_EPS[dtype] * max(1.0, magnitude)
    naive_err = max_err(naive, oracle)
    tol = max(2.0 * naive_err, floor)
    err = max_err(ours, oracle)
    assert err <= tol, (f"{name} ({dtype}): max error {err:.3e} > tolerance {tol:.3e} "
                        f"(naive {dtype} error {naive_err:.3e}, floor {floor:.3e})")
