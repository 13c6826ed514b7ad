"""Smoke test of an installed wheel (run by `make wheel-check`, outside the source tree).

    python tests/wheel_smoke.py dist/contrastive_kernels-<version>.whl

Checks that the package imports from the wheel's install (not the source tree), that the
compiled CPU kernels run and agree with the pure-PyTorch backend, what `info` reports,
and, with cuobjdump (shipped in Triton's package), that the CUDA code for sm_80 and sm_90
(+ PTX) is inside the compiled extension.
"""

import pathlib
import subprocess
import sys
import sysconfig
import tempfile
import zipfile


def main(wheel: str) -> int:
    import torch

    import contrastive_kernels as ck
    from contrastive_kernels import info

    here = pathlib.Path(ck.__file__).resolve()
    site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
    assert site in here.parents, f"imported from {here}, not from the wheel's install in {site}"
    # one version, as pip reports it: the wheel's file name, its metadata, ck.__version__
    from importlib import metadata
    assert ck.__version__ == metadata.version("contrastive_kernels"), ck.__version__
    assert f"-{ck.__version__}-" in pathlib.Path(wheel).name, (ck.__version__, wheel)
    print(info.report())
    assert ck.available_backends()["cpu"] is None, ck.available_backends()["cpu"]

    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(256, 2, 32, generator=gen), dim=-1)
    labels = torch.randint(0, 10, (256,), generator=gen)
    losses = {b: float(ck.SupConLoss(backend=b)(feats, labels)) for b in ("cpu", "torch")}
    assert abs(losses["cpu"] - losses["torch"]) < 1e-4, losses
    print(f"SupCon on the wheel's cpu kernels: {losses['cpu']:.6f} (torch backend "
          f"{losses['torch']:.6f})")

    built = ck._extension.build_info()
    if not built.get("with_cuda"):
        print("wheel built without CUDA: no device code to list")
        return 0
    import triton
    tool = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        name = next(n for n in zf.namelist() if n.startswith("contrastive_kernels/_C"))
        so = zf.extract(name, tmp)
        elf = subprocess.run([str(tool), "--list-elf", so], capture_output=True, text=True).stdout
        ptx = subprocess.run([str(tool), "--list-ptx", so], capture_output=True, text=True).stdout
    arches = sorted(set(a for a in ("sm_80", "sm_90") if a in elf))
    print(f"device code in _C: {arches}; PTX: {'sm_90' in ptx or 'compute_90' in ptx}")
    assert arches == ["sm_80", "sm_90"], elf
    assert "sm_90" in ptx or "compute_90" in ptx, ptx
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
