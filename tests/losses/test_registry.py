"""The loss registry (contrastive_kernels.losses.SPECS) is the one list of losses: every
registered loss is exported, in the generated tables of README.md and docs/losses.md, in the
family test, the accuracy benchmark and the bad-input table, and has an oracle; nothing in
contrastive_kernels/losses/ is a loss without being registered."""

import importlib
import inspect
import pathlib
import subprocess
import sys

import pytest
from torch import nn

import contrastive_kernels as ck
from contrastive_kernels import functional, losses
from contrastive_kernels.losses import SPECS, tables
from contrastive_kernels.losses.spec import oracle_of
from contrastive_kernels.testing import bad_inputs, loss_cases

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import loss_accuracy  # noqa: E402  (bench/, on the path above)


def _family(spec):
    return spec.family


@pytest.mark.parametrize("spec", SPECS, ids=_family)
def test_registry_covers_every_loss(spec):
    name = spec.module.__name__
    # exports: the package top level, losses, functional
    assert name in ck.__all__ and getattr(ck, name) is spec.module
    for obj in spec.public:
        assert obj.__name__ in losses.__all__ and getattr(losses, obj.__name__) is obj
    for f in spec.functional + tuple(h for h in spec.helpers if not isinstance(h, type)):
        assert f.__name__ in functional.__all__ and getattr(functional, f.__name__) is f
    # every functional form has its oracle, and configurations in the family test that call it
    assert spec.functional and spec.cases and spec.accuracy
    for f in spec.functional:
        assert callable(oracle_of(f)), f"testing.reference_losses.{f.__name__}_reference"
        assert any(case.function is f for case in spec.cases), f"no case calls {f.__name__}"
    assert all(case.function in spec.functional for case in spec.cases)
    assert all(row.function in spec.functional for row in spec.accuracy)
    assert all(case in loss_cases.CASES for case in spec.cases)
    # the accuracy benchmark measures its rows; the tables show them
    assert [row for s, row in loss_accuracy.losses() if s is spec] == list(spec.accuracy)
    docs = [line for line in tables.docs_table().splitlines() if f"| `{name}" in line]
    assert len(docs) == len(spec.accuracy)
    assert f"| {spec.family} | `{name}` |" in tables.readme_table()
    # the bad-input table knows its names and holds rows for it
    assert all(bad_inputs.FAMILIES[obj.__name__] == spec.family for obj in spec.public)
    assert any(case.family == spec.family for case in bad_inputs.CASES), (
        f"no bad-input rows for {spec.family} (contrastive_kernels/testing/bad_inputs/)")


def test_names_are_unique():
    for key in (lambda s: s.name, lambda s: s.family, lambda s: s.module):
        values = [key(spec) for spec in SPECS]
        assert len(set(values)) == len(values)
    ids = [case.id for case in loss_cases.CASES]
    assert len(set(ids)) == len(ids), "case ids must be unique"


def test_every_loss_in_the_package_is_registered():
    """A module of contrastive_kernels/losses/ that declares SPECS registers every loss it
    defines: each public nn.Module and each public function taking ``backend=``."""
    registered = {obj for spec in SPECS for obj in spec.public}
    for name in {spec.module.__module__ for spec in SPECS}:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if isinstance(obj, type) and issubclass(obj, nn.Module):
                assert obj in registered, f"{name}.{attr} is a module of no LossSpec"
            elif inspect.isfunction(obj) and "backend" in inspect.signature(obj).parameters:
                assert obj in registered, f"{name}.{attr} is a loss of no LossSpec"


@pytest.mark.parametrize("path", list(tables.TABLES))
def test_tables_are_generated(path):
    text = (ROOT / path).read_text()
    assert tables.TABLES[path]() in text, (
        f"{path} is out of date: run `python -m contrastive_kernels.losses --write`")
    assert tables.replace_table(text, tables.TABLES[path]()) == text


def test_the_library_loads_without_its_test_tooling():
    """The losses name their oracles (testing.reference_losses) instead of importing them."""
    code = ("import sys, contrastive_kernels; "
            "print(sorted(m for m in sys.modules if m.startswith('contrastive_kernels.testing')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]"
