"""The bad-input and edge-case table (contrastive_kernels.testing.bad_inputs): each bad
input raises its exception with a message naming the argument (once: it raises before any
backend is chosen), each edge value equals the oracle's (NaN for NaN, inf for inf) and
holds its special values on every backend. Cases
with an ``xfail_reason`` are known defects (xfail strict: fixing one makes this fail until
the reason is removed from the table)."""

import functools
import pathlib
import re

import pytest
import torch

from contrastive_kernels.testing import bad_inputs, emulated_backends, fused_backends
from contrastive_kernels.testing.bad_inputs import CASES, FAMILIES, TOPICS

BACKENDS = fused_backends() + emulated_backends()
BY_ID = {case.id: case for case in CASES}
README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


# A bad input raises in Python (contract.validate, the losses' checks) before any backend
# is chosen, so each runs once, on the backend every build has; an edge value is the
# backend's result, so each runs on every backend.
ERROR_BACKEND = "torch"


def _params():
    """Each known defect (xfail strict) on its own."""
    for case in CASES:
        for backend in ([ERROR_BACKEND] if case.is_error else BACKENDS):
            if case.xfails_on(backend):
                marks = ([pytest.mark.xfail(reason=case.xfail_reason, strict=True)]
                         if case.xfails_on(backend) else [])
                yield pytest.param(case, backend, id=f"{case.id}-{backend}", marks=marks)


def _error_groups():
    """The bad inputs that raise (before any backend is chosen), one item per family."""
    groups = {}
    for case in CASES:
        if case.is_error and not case.xfails_on(ERROR_BACKEND):
            groups.setdefault(case.family, []).append(case)
    return [pytest.param(cases, id=family) for family, cases in groups.items()]


def _value_groups():
    """The edge values that hold, one item per (family, backend): each is a few tiny calls."""
    groups = {}
    for case in CASES:
        if case.is_error:
            continue
        for backend in BACKENDS:
            if not case.xfails_on(backend):
                groups.setdefault((case.family, backend), []).append(case)
    return [pytest.param(cases, backend, id=f"{family}-{backend}")
            for (family, backend), cases in groups.items()]


_PATTERN = {
    "n": lambda x: torch.isnan(x),
    "+": lambda x: torch.isposinf(x),
    "-": lambda x: torch.isneginf(x),
    "0": lambda x: x == 0,
    "f": lambda x: torch.isfinite(x),
}


def check_value(out, reference, pattern):
    assert isinstance(out, torch.Tensor), f"expected a tensor, got {type(out).__name__}"
    out, reference = out.detach().double(), reference.detach().double()
    assert out.shape == reference.shape, f"shape {tuple(out.shape)} != {tuple(reference.shape)}"
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5, equal_nan=True)
    if pattern is not None:
        flat = out.reshape(-1)
        assert len(pattern) == flat.numel(), f"pattern {pattern!r} for {flat.numel()} values"
        for i, (want, value) in enumerate(zip(pattern, flat)):
            assert bool(_PATTERN[want](value)), f"element {i}: {float(value)} is not {want!r}"


@functools.lru_cache(maxsize=None)
def _reference(case_id):
    return BY_ID[case_id].reference()


# Expected noise of the bad inputs themselves: the Triton interpreter's numpy warnings on
# -inf / empty rows, and torch's warning where a complex input is cast to real (an xfail).
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning",
                            "ignore:Casting complex values to real:UserWarning")
@pytest.mark.parametrize("case,backend", list(_params()))
def test_bad_input(case, backend):
    if case.is_error:
        with pytest.raises(case.raises, match=re.escape(case.match)):
            case.run(backend)
    else:
        check_value(case.run(backend), _reference(case.id), case.pattern)


@pytest.mark.filterwarnings("ignore:Casting complex values to real:UserWarning")
@pytest.mark.parametrize("cases", _error_groups())
def test_errors(cases):
    """Every bad input of one family raises its error, naming the argument; the message
    names each case that does not."""
    failed = []
    for case in cases:
        try:
            with pytest.raises(case.raises, match=re.escape(case.match)):
                case.run(ERROR_BACKEND)
        except BaseException as e:  # noqa: BLE001 (pytest.fail is a BaseException)
            failed.append(f"{case.id}: {type(e).__name__}: {e}")
    assert not failed, f"{len(failed)} of {len(cases)} cases:\n" + "\n".join(failed)


@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("cases,backend", _value_groups())
def test_edge_values(cases, backend):
    """Every edge value of one family on one backend; the message names each that fails."""
    failed = []
    for case in cases:
        try:
            check_value(case.run(backend), _reference(case.id), case.pattern)
        except Exception as e:  # noqa: BLE001 (collect every case's failure, then report)
            failed.append(f"{case.id}: {type(e).__name__}: {e}")
    assert not failed, f"{len(failed)} of {len(cases)} cases:\n" + "\n".join(failed)


def test_table_covers_every_entry_point():
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    families = {c.family for c in CASES}
    assert families == set(FAMILIES.values())
    for case in CASES:
        assert case.topic in TOPICS, case.id
        assert case.api in FAMILIES, case.id
        if case.is_error:
            assert case.reference is None and case.match, case.id
            assert case.arg in case.match, f"{case.id}: the phrase must name {case.arg!r}"
        else:
            assert case.reference is not None and case.pattern is not None, case.id


def test_readme_section_is_generated(capsys):
    text = bad_inputs.markdown()
    assert bad_inputs.main(["--markdown"]) == 0
    assert capsys.readouterr().out == text
    readme = README.read_text()
    assert text + "\n## Environment variables\n" in readme, (
        "README.md is out of date: paste `python -m contrastive_kernels.testing.bad_inputs "
        "--markdown` right before '## Environment variables'")
