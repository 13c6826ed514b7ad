"""The bad-input and edge-case table: what ``ops.lse`` and every loss do with input that is
wrong (an error naming the argument and what was expected) or degenerate (a value, checked
against the oracle: NaN in -> NaN out, +inf bias -> +inf lse, no keys -> -inf lse, ...).

Each :class:`BadInput` is a function of the backend name: the suite
(``tests/core/test_bad_inputs.py``) runs every edge value on every backend, and every bad
input once (it raises before a backend is chosen). A case that does
not behave as it should carries ``xfail_reason`` (a known defect, xfail strict in the suite).

``python -m contrastive_kernels.testing.bad_inputs --markdown`` prints the README section
generated from the table (a test keeps README.md equal to it).
"""

from __future__ import annotations

import argparse
import textwrap

# each module adds its cases to the table, in this (the README's) order
from . import core_op  # noqa: F401,E402
from . import supcon_paco  # noqa: F401,E402
from . import pairs  # noqa: F401,E402
from . import siglip  # noqa: F401,E402
from . import queue_dcl_hcl  # noqa: F401,E402
from . import devices  # noqa: F401,E402
from .table import CASES, FAMILIES, TOPICS, BadInput  # noqa: F401

# --------------------------------------------------------------------------- README


def _row_cases():
    rows = {}
    for case in CASES:
        rows.setdefault(case.topic, []).append(case)
    return [(topic, rows[topic]) for topic in TOPICS if topic in rows]


def markdown() -> str:
    """The README section "Behaviour on bad input and edge cases", from the table."""
    n_err = sum(c.is_error for c in CASES)
    intro = (
        f"`contrastive_kernels.testing.bad_inputs` holds {len(CASES)} cases ({n_err} bad "
        f"inputs, {len(CASES) - n_err} edge values) over `ops.lse` and every loss, run by "
        "`tests/core/test_bad_inputs.py`. A bad input raises an exception whose message names "
        "the argument and what was expected (before any backend is chosen: it runs once); an "
        "edge value, on every backend, is "
        "compared with the oracle (`reference` backend or "
        "`contrastive_kernels.testing.reference_losses`). This section is generated: "
        "`python -m contrastive_kernels.testing.bad_inputs --markdown`.")
    lines = ["## Behaviour on bad input and edge cases", "", textwrap.fill(intro, 92), "",
             "| input | applies to | expected outcome | cases |", "|---|---|---|---:|"]
    for topic, cases in _row_cases():
        what, outcome = TOPICS[topic]
        families = list(dict.fromkeys(c.family for c in cases))
        errors = list(dict.fromkeys(c.raises.__name__ for c in cases if c.is_error))
        if errors:
            outcome = " / ".join(f"`{e}`" for e in errors) + ": " + outcome
        lines.append(f"| {what} | {', '.join(families)} | {outcome} | {len(cases)} |")
    known = [c for c in CASES if c.xfail_reason]
    if known:
        lines += ["", "Known deviations (xfail in the suite until fixed):", ""]
        lines += [textwrap.fill(f"- `{c.id}` ({c.api}): {c.xfail_reason}.", 92,
                                subsequent_indent="  ", break_on_hyphens=False)
                  for c in known]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true",
                        help="print the README section generated from the table")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(), end="")
    else:
        for case in CASES:
            expected = (f"{case.raises.__name__}: {case.match}" if case.is_error
                        else f"value {case.pattern!r}")
            flag = "  [xfail]" if case.xfail_reason else ""
            print(f"{case.id:40s} {case.api:12s} {expected}{flag}")
    return 0
