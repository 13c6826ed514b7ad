"""The prepared GPU run, sized to one lease: ``make gpu-check OUT=dir`` (docs/gpu_check.md).

    python bench/gpu_check.py --out OUT [--work DIR] [--budget SECONDS] [--dry]
    python bench/gpu_check.py --out OUT --pack-only

This process (standard library only: it never imports torch, so it never holds the GPU
or a stale extension) runs each section as a child process with a deadline. The child
enforces it (it does not start a case it cannot finish); the parent enforces it too (it
kills the child's process group GRACE seconds later; the rows already written stay). A
child writes one JSON line per finished row to WORK/<section>.jsonl. After every section
the parent packs WORK into OUT as three files, summary.md, summary.json and
results.tar.gz (the device tool returns at most 8). ``make gpu-check`` runs this under
``timeout`` and packs again afterwards, so even a hung parent leaves its results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# (section, seconds of the nominal budget). "build" waits for the background build; the
# later sections keep at least LATER_KEEP of their share whatever came before.
SECTIONS = (("plan", 8), ("env", 12), ("correctness_triton", 75), ("build", 0),
            ("sanitizer", 55), ("correctness_cuda", 30), ("timing", 80), ("gpu_tests", 55))
NOMINAL = float(sum(share for _, share in SECTIONS))
NEEDS_BUILD = ("sanitizer", "correctness_cuda")
# a section is given at least FLOOR seconds (a child's start and one case), "plan" PLAN_S
# (everything depends on it); one with less than MIN_SECTION left is skipped
LATER_KEEP, GRACE, MIN_SECTION, FLOOR, PLAN_S = 0.6, 8.0, 4.0, 10.0, 30.0
DEFAULT_BUDGET = {False: 330.0, True: 240.0}  # seconds: GPU (6 minutes with the packing), dry
PACKED = ("summary.md", "summary.json", "results.tar.gz")


# --------------------------------------------------------------------------- files


def rows(work: str, name: str) -> list:
    path = os.path.join(work, f"{name}.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:  # a child killed mid-write leaves at most one broken last line
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def append_row(work: str, name: str, row: dict) -> None:
    """One finished row of a section, as one JSON line (what :func:`rows` reads back)."""
    with open(os.path.join(work, f"{name}.jsonl"), "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def status(work: str, name: str) -> dict:
    path = os.path.join(work, f"{name}.status.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_status(work: str, name: str, **fields) -> None:
    merged = dict(status(work, name), **fields)
    with open(os.path.join(work, f"{name}.status.json"), "w") as f:
        json.dump(merged, f)


def _atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def pack(work: str, out: str) -> None:
    """summary.md, summary.json and results.tar.gz (all of WORK) into OUT, each replaced
    whole so that a kill during packing leaves the previous complete copy."""
    import summary  # bench/summary.py: the rendering, standard library only
    os.makedirs(out, exist_ok=True)
    data = {name: dict(status(work, name), rows=rows(work, name)) for name, _ in SECTIONS}
    data["compiled"] = dict(rows=rows(work, "compiled"))
    _atomic(os.path.join(out, "summary.json"), json.dumps(data, indent=1, default=str))
    _atomic(os.path.join(out, "summary.md"), summary.render(data))
    tmp = os.path.join(out, "results.tar.gz.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(work, arcname="gpu_check")
    os.replace(tmp, os.path.join(out, "results.tar.gz"))


# --------------------------------------------------------------------------- the build


def arch_covered(arch_list: str, capability: str) -> bool:
    """Whether an extension built for TORCH_CUDA_ARCH_LIST ``arch_list`` runs natively on
    ``capability`` ("9.0"): its SASS (same major, minor <=) or its PTX (any older arch)."""
    major, minor = (int(x) for x in capability.split("."))
    for entry in filter(None, arch_list.replace(" ", ";").split(";")):
        ptx = entry.endswith("+PTX")
        a_major, a_minor = (int(x) for x in entry.replace("+PTX", "").rstrip("af").split("."))
        if (a_major == major and a_minor <= minor) or (ptx and (a_major, a_minor) <= (major, minor)):
            return True
    return False


def build_plan(plan: dict):
    """(environment of the build, or None to skip it; the reason), from the plan row."""
    ext, capability = plan.get("extension", {}), plan.get("capability")
    if capability is None:  # the dry run: the emulated kernels of the built extension
        if ext.get("loads") and ext.get("emulated_kernels"):
            return None, "already built: _C loads with the emulated CUDA kernels (no GPU)"
        return None, f"no GPU and no usable extension ({ext.get('error')}): cuda rows are skipped"
    if ext.get("loads") and ext.get("cuda_kernels") and arch_covered(ext.get("cuda_arches", ""),
                                                                      capability):
        return None, (f"already built: _C loads with CUDA kernels for {ext['cuda_arches']} "
                      f"(device {capability})")
    why = ext.get("error") or f"built for {ext.get('cuda_arches') or 'no CUDA arch'}"
    return dict(TORCH_CUDA_ARCH_LIST=capability, MAX_JOBS=str(plan.get("cpus") or 8)), \
        f"building for sm_{capability.replace('.', '')} only ({why})"


class Build:
    """The extension build in the background; its row says why and, once it ended, how
    long it took (build.log holds nvcc's output)."""

    def __init__(self, work: str, plan: dict):
        self.env, self.reason = build_plan(plan)
        self.work, self.proc, self.t0, self.rc = work, None, time.time(), None
        if self.env is not None:
            log = open(os.path.join(work, "build.log"), "w")
            env = dict(os.environ, **self.env)
            # timed by the child itself: the parent sees the end only when it next looks
            timed = ("import subprocess, sys, time; t = time.time(); rc = subprocess.call("
                     "[sys.executable, 'setup.py', 'build_ext', '--inplace']); "
                     "print(f'[build] {time.time() - t:.1f} s, rc {rc}', flush=True); sys.exit(rc)")
            self.proc = subprocess.Popen([sys.executable, "-c", timed], cwd=ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        row = dict(reason=self.reason, env=self.env, ninja=plan.get("ninja"))
        append_row(work, "build", row)

    def poll(self, until: float = 0.0):
        """The build's state after waiting until ``until`` at most: ok / failed / running."""
        if self.proc is None:
            return "skipped"
        first = self.rc is None
        try:
            self.rc = self.proc.wait(timeout=max(0.0, until - time.time()))
        except subprocess.TimeoutExpired:
            return "running"
        state = "ok" if self.rc == 0 else f"failed (rc {self.rc})"
        if first:
            with open(os.path.join(self.work, "build.log")) as f:
                text = f.read()
            timed = re.findall(r"\[build\] ([\d.]+) s", text)
            append_row(self.work, "build", dict(state=state, seconds=float(timed[-1]) if timed else None,
                                           tail=text[-2000:] if self.rc else ""))
        return state

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- the parent


class Parent:
    def __init__(self, args):
        self.args, self.work, self.out = args, args.work, args.out
        self.t0 = time.time()
        self.end = self.t0 + args.budget
        self.scale = args.budget / NOMINAL
        self.child, self.build, self.current = None, None, None

    def run_child(self, name: str, deadline: float) -> dict:
        cmd = [sys.executable, os.path.join(HERE, "gpu_sections.py"), name, "--work", self.work,
               "--deadline", repr(deadline)] + (["--dry"] if self.args.dry else [])
        env = dict(os.environ)
        if not self.args.dry:
            env.pop("TRITON_INTERPRET", None)
        with open(os.path.join(self.work, f"{name}.log"), "w") as log:
            self.child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = self.child.wait(timeout=max(1.0, deadline + GRACE - time.time()))
                state = "ok" if rc == 0 else f"error (rc {rc}, see {name}.log)"
            except subprocess.TimeoutExpired:
                os.killpg(self.child.pid, signal.SIGKILL)
                self.child.wait()
                state = "killed at its deadline (rows written before stay)"
        self.child = None
        return dict(state=state)

    def section(self, i: int, name: str, share: float) -> dict:
        later = sum(s for _, s in SECTIONS[i + 1:]) * self.scale
        if name == "build":
            if self.build is None:
                return dict(state="skipped", reason="no plan row")
            state = self.build.poll(until=self.end - later)
            return dict(state=state, reason=self.build.reason)
        now = time.time()
        deadline = min(now + max(share * self.scale, FLOOR), self.end - LATER_KEEP * later)
        if name == "plan":
            deadline = now + PLAN_S
        if deadline - now < MIN_SECTION:
            return dict(state="skipped", reason="time budget")
        if name in NEEDS_BUILD and self.build is not None:
            built = self.build.poll(until=time.time())
            if built not in ("ok", "skipped") or not status(self.work, "plan").get("cuda_rows"):
                return dict(state="skipped", reason=f"no usable cuda backend (build {built}: "
                                                    f"{self.build.reason})")
        return self.run_child(name, deadline)

    def main(self) -> int:
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        signal.signal(signal.SIGTERM, self.interrupted)
        write_status(self.work, "plan", budget=self.args.budget, dry=self.args.dry,
                     started=time.strftime("%Y-%m-%d %H:%M:%S"))
        try:
            for i, (name, share) in enumerate(SECTIONS):
                self.current, t = name, time.time()
                result = self.section(i, name, share)
                write_status(self.work, name, seconds=round(time.time() - t, 1),
                             at=round(time.time() - self.t0, 1), **result)
                print(f"[gpu_check] {name}: {result['state']} ({time.time() - t:.0f} s)", flush=True)
                if name == "plan":
                    plan = (rows(self.work, "plan") or [{}])[0]
                    self.build = Build(self.work, plan)
                    write_status(self.work, "plan", cuda_rows=bool(plan.get("cuda_rows")))
                pack(self.work, self.out)
        finally:
            if self.build is not None:
                if self.build.poll() == "running":
                    write_status(self.work, "build", state="killed at the end of the run")
                self.build.stop()
            write_status(self.work, "plan", elapsed=round(time.time() - self.t0, 1))
            pack(self.work, self.out)
        print(f"[gpu_check] {self.out}: {', '.join(PACKED)} ({time.time() - self.t0:.0f} s)")
        return 0

    def interrupted(self, signum, frame):
        if self.child is not None:
            os.killpg(self.child.pid, signal.SIGKILL)
        if self.current:
            write_status(self.work, self.current, state=f"interrupted (signal {signum})")
        raise SystemExit(124)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the folder that comes back (<= 8 files)")
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "gpu-check"),
                        help="where the sections write (packed into --out)")
    parser.add_argument("--dry", action="store_true",
                        help="CPU: Triton interpreter, CUDA emulation, tiny sizes (CI)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the run")
    parser.add_argument("--pack-only", action="store_true", help="pack --work into --out")
    args = parser.parse_args(argv)
    sys.path.insert(0, HERE)
    if args.pack_only:
        pack(args.work, args.out)
        return 0
    args.budget = args.budget or DEFAULT_BUDGET[args.dry]
    return Parent(args).main()


if __name__ == "__main__":
    sys.exit(main())
