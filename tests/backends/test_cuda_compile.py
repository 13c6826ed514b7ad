"""The CUDA kernels compile for sm_80 and sm_90 without a GPU: 0 spill bytes for every
kernel instantiation (-Xptxas -v, parsed), tensor-core MMAs (HMMA) in the bf16 / fp16
tile kernels, no local-memory traffic (LDL / STL) anywhere, the per-logit tile math of each
reduction within its MUFU budget (pairwise_sigmoid: one exp per logit forward, one exp and
one reciprocal backward), and the committed report
docs/cuda_compile_report.md is what csrc/cuda/compile_report.py writes today (regenerated
into a temporary file; nothing here writes into docs/). The rows come from the committed
ledger docs/cuda_compile_ledger.json when it was written from today's inputs (`make
cuda-report` writes both), one arch of it recompiled each day and compared; a ledger of
older inputs fails its test and the full compile stands in."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "cuda_compile_report.md"


def _load_script():
    spec = importlib.util.spec_from_file_location("ck_cuda_compile_report",
                                                  ROOT / "csrc" / "cuda" / "compile_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_script = _load_script()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (report_script.cuda_home() / "bin" / "nvcc").exists(),
                       reason="nvcc not found (set CUDA_HOME)"),
    pytest.mark.skipif(report_script.cuobjdump() is None, reason="cuobjdump not found"),
]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, ledger_run):
    """(parsed report, rendered markdown, per-logit rows), once per module."""
    report, logits = ledger_run["report"], ledger_run["logits"]
    return report, report_script.render(report, logits), logits


@pytest.fixture(scope="module")
def ledger_run(tmp_path_factory):
    """The committed ledger's rows (docs/cuda_compile_ledger.json) when it was written from
    today's inputs, one arch of them recompiled and compared; else a full compile."""
    return report_script.collect_or_ledger(tmp_path_factory.mktemp("cuda_cubins"))


def test_ledger_is_current_and_its_arch_of_the_day_compiles_to_it(ledger_run):
    """The ledger holds the compile of today's sources, flags and nvcc (else `make
    cuda-report` was not run after an edit: the full compile above stood in, slowly), the
    arch recompiled today measures what it records, and a ledger that the compile
    contradicts is caught."""
    assert ledger_run["source"] == "ledger", (
        "docs/cuda_compile_ledger.json is not the compile of today's csrc/: regenerate it "
        "with `make cuda-report`")
    assert not ledger_run["mismatch"], (
        f"the ledger's {ledger_run['mismatch']} are not what nvcc compiles today")
    # a planted change in the ledger's rows (registers one off, per-logit counts) is found
    # by comparing with the day's recompile
    import copy

    arch = ledger_run["verified"]
    data = copy.deepcopy({k: ledger_run[k] for k in ("report", "logits")})
    assert not report_script.ledger_mismatch(data, arch, ledger_run["fresh"])
    data["report"][arch][0]["registers"] += 1
    assert report_script.ledger_mismatch(data, arch, ledger_run["fresh"]) == f"sm_{arch} kernels"
    data = copy.deepcopy({k: ledger_run[k] for k in ("report", "logits")})
    data["logits"][arch][0][2] += 1
    assert "per-logit" in report_script.ledger_mismatch(data, arch, ledger_run["fresh"])

def test_every_instantiation_compiles_for_both_arches(compiled):
    report, _, _ = compiled
    assert set(report) == {"80", "90"}
    for arch, rows in report.items():
        kernels = {(r["kernel"], r["dtype"]) for r in rows}
        for kernel in report_script.TILE_KERNELS + ("inverse_norms_kernel", "row_epilogue_kernel"):
            for dtype in ("fp16", "bf16", "fp32", "fp64"):
                assert (kernel, dtype) in kernels, (arch, kernel, dtype)


def test_no_spills(compiled):
    report, _, _ = compiled
    for arch, rows in report.items():
        for r in rows:
            assert r["spill_stores"] == 0 and r["spill_loads"] == 0, (arch, r)
            assert r["stack"] == 0, (arch, r)


# the tile kernels with a second product (o = P K, u = X K, v = X^T Q)
SECOND_PRODUCT_KERNELS = ("lse_forward_kernel+o", "lse_backward_rows_kernel",
                          "lse_backward_keys_kernel", "two_sided_backward_rows_kernel",
                          "two_sided_backward_keys_kernel", "sigmoid_backward_rows_kernel",
                          "sigmoid_backward_keys_kernel")


def test_sass_tensor_cores_and_no_local_memory(compiled):
    report, _, _ = compiled
    for arch, rows in report.items():
        for r in rows:
            assert r["LDL/STL"] == 0, (arch, r["kernel"], r["dtype"])
            if r["kernel"] in report_script.TILE_KERNELS:
                if r["dtype"] in ("bf16", "fp16"):
                    assert r["HMMA"] > 0 and r["LDSM"] > 0, (arch, r)
                    assert r["HMMA.TF32"] == 0, (arch, r)
                    if r["kernel"] in SECOND_PRODUCT_KERNELS:
                        # logits (16 per chunk) and the second product (16, or 32 for bf16 o)
                        # on tensor cores, B operand by ldmatrix.trans
                        assert r["HMMA"] >= 32 and r["LDSM.T"] > 0, (arch, r)
                    else:
                        assert r["LDSM.T"] == 0, (arch, r)
                elif r["dtype"] == "fp32":
                    # the tf32 path (mma.sync.m16n8k8: HMMA.1688.F32.TF32) beside the FMA one:
                    # 32 per chunk for the logits, 32 more for a second product
                    assert r["HMMA.TF32"] > 0 and r["HMMA"] == r["HMMA.TF32"], (arch, r)
                    if r["kernel"] in SECOND_PRODUCT_KERNELS:
                        assert r["HMMA.TF32"] >= 64, (arch, r)
                    assert r["FFMA"] > 0, (arch, r)
                else:
                    assert r["HMMA"] == 0, (arch, r)
                assert r["LDGSTS"] > 0, (arch, r)  # cp.async staging


def test_committed_report_is_current(compiled, tmp_path):
    _, text, _ = compiled
    fresh = tmp_path / "cuda_compile_report.md"
    fresh.write_text(text)
    assert REPORT.exists(), "run: make cuda-report"
    assert REPORT.read_text() == fresh.read_text(), (
        "docs/cuda_compile_report.md is stale; regenerate it with `make cuda-report`")


def test_no_fast_math(compiled):
    """No kernel is compiled with --use_fast_math (or its parts): the PTX holds no fp32
    arithmetic that flushes subnormals and no approximate division / square root, so the
    device computes what the emulation proves (a row of fp32 subnormals keeps its
    gradient). The only approximate exp is the one lse_kernels.cuh asks for (16-bit)."""
    flags = report_script.NVCC_FLAGS
    for flag in ("--use_fast_math", "-use_fast_math", "-ftz=true", "--ftz=true",
                 "-prec-div=false", "--prec-div=false", "-prec-sqrt=false",
                 "--prec-sqrt=false", "-fmad=false"):
        assert flag not in flags, flag
    report, _, _ = compiled
    for arch, rows in report.items():
        for r in rows:
            assert r["fast_math"] == 0, (arch, r["kernel"], r["dtype"], r["fast_math"])


def test_fast_math_detector_sees_fast_math():
    """The PTX pattern the report counts does match what --use_fast_math emits."""
    for op in ("add.ftz.f32", "fma.rn.ftz.f32", "div.approx.ftz.f32", "sqrt.approx.f32",
               "setp.lt.ftz.f32", "mul.ftz.f32"):
        assert report_script.FAST_MATH_PTX.search(f"\t{op} \t%f1, %f2;"), op
    for op in ("add.f32", "fma.rn.f32", "div.rn.f32", "sqrt.rn.f32", "ex2.approx.f32",
               "rcp.approx.ftz.f64"):
        assert not report_script.FAST_MATH_PTX.search(f"\t{op} \t%f1, %f2;"), op


def test_per_logit_tile_math(compiled):
    """The per-logit cost of the reductions' tile math (probe kernels): softplus is one MUFU
    (the exp; log1p by a polynomial on the FMA pipe) and the sigmoid weight one exp plus one
    reciprocal (the static count also holds rcp.rn's slow path, never taken for 1 + e in
    [1, 2]), in the 16-bit and fp32 kernels of both arches."""
    _, _, logits = compiled
    for arch, rows in logits.items():
        cost = {(term, dtype): (sass, mufu) for term, dtype, sass, mufu, _ in rows}
        for dtype in ("bf16", "fp32"):
            sass, mufu = cost[("sigmoid forward: softplus(x)", dtype)]
            assert mufu == 1 and sass <= 24, (arch, dtype, sass, mufu)
            sass, mufu = cost[("sigmoid backward: sigmoid(x)", dtype)]
            assert 2 <= mufu < 2.5 and sass <= 30, (arch, dtype, sass, mufu)
            assert cost[("lse: exp(s - m)", dtype)][1] == 1, (arch, dtype)
