"""The committed compile ledger: docs/triton_compile_ledger.json.

A cold ahead-of-time run compiles every shipped config (~340 jobs, ~12 CPU-minutes here),
which used to dominate ``make test``. The compile is deterministic in its inputs, so the
ledger records each job's measured row (its SASS left out) under :func:`.aot_compile.job_key`
(the kernels' source, the job, the Triton version), for one version of the counting and
the model (:func:`analysis_key`). A run takes a job's row from the ledger when its key is
there, compiles it when not (a kernel edited since the ledger was written), and recompiles
a sample of the ledger's rows (:func:`sample`, a different one each day) to check that
they are still what the compiler makes of them: a mismatch is reported as that row's
compile error. ``make triton-report`` rewrites the ledger with the report;
tests/backends/test_triton_aot.py fails when the ledger does not hold every job.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import inspect
import json
import os
import random

from .aot_report import Row

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "docs",
                    "triton_compile_ledger.json")
_FORMAT = 1
# not recorded: the SASS (large; its counts are recorded), the compile time (varies) and
# where this run took the row from
_DROPPED = ("sass", "seconds", "source")


def analysis_key() -> str:
    """What turns a compile into a row: the SASS counting and model (perf_model), the row
    (aot_report), the measuring and the analysis (aot_compile's _compile_one, analyse).
    A ledger of another analysis is unused."""
    from . import aot_compile, aot_report, perf_model

    h = hashlib.sha256(str(_FORMAT).encode())
    for obj in (perf_model, aot_report, aot_compile._compile_one, aot_compile.analyse):
        h.update(inspect.getsource(obj).encode())
    return h.hexdigest()[:32]


def _recorded(row: Row) -> dict:
    return {k: v for k, v in dataclasses.asdict(row).items() if k not in _DROPPED}


def load(path: str = PATH) -> dict:
    """{job key: Row} of the ledger, or {} when it is missing or of another analysis or
    Triton version."""
    import triton

    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    if data.get("analysis") != analysis_key() or data.get("triton") != triton.__version__:
        return {}
    return {key: Row(**row) for key, row in data["rows"].items()}


def write(keys: list, rows: list, path: str = PATH) -> None:
    """The ledger of these rows (one per line, sorted by key: diffs stay readable)."""
    import triton

    entries = sorted((k, _recorded(r)) for k, r in zip(keys, rows) if not r.error)
    lines = [json.dumps(k) + ": " + json.dumps(r, sort_keys=True) for k, r in entries]
    text = ("{\"format\": %d, \"triton\": %s, \"analysis\": %s,\n\"rows\": {\n%s\n}}\n"
            % (_FORMAT, json.dumps(triton.__version__), json.dumps(analysis_key()),
               ",\n".join(lines)))
    with open(f"{path}.{os.getpid()}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{path}.{os.getpid()}.tmp", path)


def sample(items: list, k: int, day: int | None = None) -> list:
    """k of the items, a different draw each day (so that, over the days, every row of
    the ledger is recompiled), the same all day (reruns agree)."""
    day = datetime.date.today().toordinal() if day is None else day
    return random.Random(day).sample(items, min(k, len(items)))


def mismatch(recorded: Row, fresh: Row) -> str:
    """'' when the fresh compile measures what the ledger recorded, else the fields that
    differ."""
    a, b = _recorded(recorded), _recorded(fresh)
    diff = [f"{k}: ledger {a[k]!r}, compiled {b[k]!r}" for k in a if a[k] != b.get(k)]
    return "; ".join(diff)
