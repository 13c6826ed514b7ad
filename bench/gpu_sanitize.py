"""The workload the GPU check runs under compute-sanitizer (memcheck, racecheck, synccheck,
initcheck): every CUDA kernel of the cuda backend once, on small shapes with tails.

    compute-sanitizer --tool memcheck python bench/gpu_sanitize.py
    CONTRASTIVE_KERNELS_CUDA_EMULATE=1 python bench/gpu_sanitize.py --dry   # CPU, emulated

Forward (lse; lse and o), backward (the row grid for dq and dscale, the key grid for dk),
the split grids (forced to 3 ranges, and the automatic rule on a small grid), the tf32
path of fp32 (torch's matmul precision "high"), bf16 / fp16 / fp32 / fp64, and inputs that
the kernels cannot load with 16-byte vectors (strided views). Prints "workload ok" last;
the sanitizer's own exit code (--error-exitcode) says whether it found anything.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contrastive_kernels as ck  # noqa: E402
from contrastive_kernels.testing import core_cases, core_check  # noqa: E402

SHAPES = ((97, 61, 3), (130, 257, 64), (65, 70, 130))
DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def run_case(dev, dtype, shape, opt, strided=False):
    n, m, d = shape
    q, k, gen = core_cases.make_inputs(n, m, d, dtype, device=dev)
    kw = opt.kwargs(n, m, dev, core_check.acc_dtype(dtype), gen)
    if strided:
        q, k = core_check.strided_view(q), core_check.strided_view(k)
    q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
    scale = torch.tensor(opt.scale, device=dev, dtype=core_check.acc_dtype(dtype),
                         requires_grad=True)
    lse, o = ck.ops.lse(q, k, scale, backend="cuda", **kw)
    live = torch.isfinite(lse)
    grads = torch.autograd.grad(torch.where(live, lse, 0).sum(), (q, k, scale))
    assert not torch.isnan(lse).any() and not torch.isnan(grads[0]).any(), (dtype, shape, opt)
    return lse, o, grads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU tensors through the emulation")
    args = parser.parse_args(argv)
    dev = torch.device("cpu" if args.dry else "cuda")
    opts = {o.id: o for o in core_cases.OPTIONS}
    shapes = SHAPES[:1] if args.dry else SHAPES
    cases = 0
    for dtype in DTYPES:
        for shape in shapes:
            for opt in ("plain", "all"):
                run_case(dev, dtype, shape, opts[opt])
                cases += 1
    with core_check.variant_context("tf32"):
        for opt in ("plain", "all"):
            run_case(dev, torch.float32, shapes[-1], opts[opt])
            cases += 1
    with core_check.variant_context("split3"):
        for dtype in (torch.bfloat16, torch.float32):
            run_case(dev, dtype, shapes[-1], opts["all"])
            cases += 1
    for dtype in (torch.bfloat16, torch.float32):
        run_case(dev, dtype, shapes[-1], opts["all"], strided=True)
        cases += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"workload ok: {cases} cases", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
