"""A short run of examples/supcon_digits.py: the fused SupCon training curve equals the
float64 reference run's step for step, and the encoder is usable by a linear probe."""

import importlib.util
import pathlib

import pytest

pytest.importorskip("sklearn")

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "supcon_digits.py"


def _load():
    spec = importlib.util.spec_from_file_location("supcon_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_digits_run_matches_reference(tmp_path):
    result = _load().main(["--steps", "4", "--quiet", "--json", str(tmp_path / "run.json")])
    fused, ref = result["fused"], result["reference"]
    assert len(fused) == len(ref) == 4
    assert result["max_abs_diff"] <= 1e-6
    assert fused[-1] < fused[0]  # it trains
    assert result["probe_accuracy"] >= 0.9
    assert (tmp_path / "run.json").exists()
