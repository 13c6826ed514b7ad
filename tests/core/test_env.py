"""One prefix, one list: every environment variable the project reads is declared in
contrastive_kernels/env.py and documented in the README."""

import pathlib
import re

from contrastive_kernels import env

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCES = ["contrastive_kernels", "csrc", "tests", "bench", "examples", "setup.py", "Makefile"]


def _mentioned():
    names = set()
    for top in SOURCES:
        path = ROOT / top
        files = [path] if path.is_file() else [p for p in path.rglob("*")
                                               if p.suffix in (".py", ".sh", ".cpp", ".h", ".cu", ".cuh", "")
                                               and p.is_file()]
        for f in files:
            names |= set(re.findall(r"CONTRASTIVE_KERNELS_([A-Z0-9_]+)", f.read_text(errors="ignore")))
    return names


def test_every_variable_is_declared():
    undeclared = sorted(_mentioned() - set(env.VARIABLES))
    assert not undeclared, f"read but not in env.VARIABLES: {undeclared}"


def test_no_other_prefix():
    offenders = []
    for top in ("contrastive_kernels", "tests", "bench"):
        for f in (ROOT / top).rglob("*.py"):
            for m in re.findall(r"environ(?:\.get)?\(?\[?\s*[\"'](CK_[A-Z_]+)", f.read_text()):
                offenders.append(f"{f.relative_to(ROOT)}: {m}")
    assert not offenders, offenders


def test_readme_lists_every_variable():
    """... and the paths the README and docs/ name exist (docs that point at moved files)."""
    readme = (ROOT / "README.md").read_text()
    missing = [env.name(k) for k in env.VARIABLES if env.name(k) not in readme]
    assert not missing, missing
    # and every file of the repository that the README and docs/ name by path exists
    import re
    named = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named |= {(doc.name, p) for p in re.findall(
            r"(?<![\w/.])((?:tests|examples|bench|contrastive_kernels|csrc)/[\w/]+\.(?:cuh|cu|cpp|py|h))\b",
            doc.read_text())}
    gone = sorted((doc, p) for doc, p in named if not (ROOT / p).exists())
    assert named and not gone, gone
