"""Short runs of the digits examples: supcon_digits.py's fused SupCon training curve
equals the float64 reference run's step for step and the encoder is usable by a linear
probe; supcon_cached_digits.py's cached-gradient step trains 8x the batch that fits in
its memory budget, with the plain full-batch run's curve."""

import importlib.util
import pathlib

import pytest

pytest.importorskip("sklearn")

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def _load(name="supcon_digits"):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_digits_runs_match_reference(tmp_path):
    result = _load().main(["--steps", "4", "--quiet", "--json", str(tmp_path / "run.json")])
    fused, ref = result["fused"], result["reference"]
    assert len(fused) == len(ref) == 4
    assert result["max_abs_diff"] <= 1e-6
    assert fused[-1] < fused[0]  # it trains
    assert result["probe_accuracy"] >= 0.9
    assert (tmp_path / "run.json").exists()

    cached = _load("supcon_cached_digits").main(["--steps", "2", "--quiet"])
    assert cached["samples_per_step"] >= 8 * cached["samples_that_fit"]
    assert cached["plain_full_batch_bytes"] > 4 * cached["budget_bytes"]
    assert cached["cached_full_batch_bytes"] <= cached["budget_bytes"]
    assert cached["max_abs_diff"] <= 1e-12 and len(cached["cached"]) == 2
