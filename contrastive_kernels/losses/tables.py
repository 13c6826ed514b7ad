"""The loss tables of docs/losses.md and README.md, generated from the registry (a test,
tests/losses/test_registry.py, keeps both files equal to them).

    python -m contrastive_kernels.losses            # print both tables
    python -m contrastive_kernels.losses --write    # rewrite them in README.md and docs/losses.md

Each table is replaced in place: the block of ``|`` lines that starts with its header row.
"""

from __future__ import annotations

import argparse
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS_HEADER = ("| loss | source (read, re-implemented, nothing copied) | module | functional "
               "| accuracy |")
README_HEADER = ("| loss | module | published source | matches its reference in float64 to | "
                 "matches the anchor library in float64 to |")


def _specs() -> tuple:
    # imported on use: the package imports this module while it collects the specs
    from . import SPECS
    return SPECS


def _functional_names(spec) -> str:
    return ", ".join(f"`{f.__name__}`" for f in spec.functional)


def docs_table() -> str:
    """docs/losses.md: one row per measured configuration (:class:`.spec.Accuracy`)."""
    lines = [DOCS_HEADER, "|---|---|---|---|---|"]
    for spec in _specs():
        for row in spec.accuracy:
            functional = f"`{row.functional}`" if row.functional else _functional_names(spec)
            lines.append(f"| {row.label or spec.name} | {row.source or spec.source} | "
                         f"`{row.module or spec.module.__name__}` | {functional} | "
                         f"matches its reference to {row.error} in float64 |")
    return "\n".join(lines) + "\n"


def readme_table() -> str:
    """README.md: one row per loss, the largest error of its measured configurations."""
    lines = [README_HEADER, "|---|---|---|---|---|"]
    for spec in _specs():
        error = max((row.error for row in spec.accuracy), key=float)
        anchors = sorted({(row.anchor.library, row.anchor.version, row.anchor.error)
                          for row in spec.accuracy if row.anchor})
        library = "; ".join(f"{_LIBRARY_NAMES.get(lib, lib)} {version}: {err}"
                            for lib, version, err in anchors) or "-"
        lines.append(f"| {spec.family} | `{spec.module.__name__}` | {spec.source} | {error} | "
                     f"{library} |")
    return "\n".join(lines) + "\n"


_LIBRARY_NAMES = {"pytorch_metric_learning": "pytorch-metric-learning"}

TABLES = {"docs/losses.md": docs_table, "README.md": readme_table}


def replace_table(text: str, table: str) -> str:
    """``text`` with the table that starts with ``table``'s header row replaced by it."""
    header = table.splitlines()[0]
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == header), None)
    if start is None:
        raise ValueError(f"no table with the header {header!r}")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join(lines[:start]) + table + "".join(lines[end:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="rewrite the tables in README.md and docs/losses.md")
    args = parser.parse_args(argv)
    for path, make in TABLES.items():
        if args.write:
            file = ROOT / path
            file.write_text(replace_table(file.read_text(), make()))
        else:
            print(f"{path}:\n\n{make()}")
    return 0
