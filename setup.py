"""Builds contrastive_kernels._C: the C++ CPU kernels and, when torch has CUDA and nvcc
is found, the CUDA C++ kernels. Metadata lives in pyproject.toml.

Install with ``pip install --no-build-isolation -e .`` (an isolated build would pull a
second torch). ``python setup.py build_ext --inplace`` rebuilds incrementally with ninja.
Environment: CONTRASTIVE_KERNELS_NO_EXT=1 skips the extension; CONTRASTIVE_KERNELS_NO_CUDA=1
builds CPU only; TORCH_CUDA_ARCH_LIST picks the CUDA arches (default "8.0;9.0").
"""

import glob
import os
import platform
import shutil
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_wanted(torch_mod):
    from torch.utils import cpp_extension

    if os.environ.get("CONTRASTIVE_KERNELS_NO_CUDA") == "1":
        return False, "CONTRASTIVE_KERNELS_NO_CUDA=1"
    if not glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        return False, "no CUDA sources"
    if torch_mod.version.cuda is None:
        return False, "torch was built without CUDA"
    home = cpp_extension.CUDA_HOME
    if home is None or not (os.path.exists(os.path.join(home, "bin", "nvcc")) or shutil.which("nvcc")):
        return False, "nvcc not found (set CUDA_HOME)"
    return True, ""


def extensions():
    if os.environ.get("CONTRASTIVE_KERNELS_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    with_cuda, why_not = _cuda_wanted(torch)
    cxx = ["-O3", "-g0", "-std=c++20", "-fopenmp", "-DNDEBUG"]
    if platform.machine() in ("x86_64", "AMD64"):
        cxx.append("-march=x86-64-v3")  # AVX2 + FMA: every x86 server of the last decade
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    info = {
        "CK_TORCH_VERSION": torch.__version__,
        "CK_TORCH_CUDA": str(torch.version.cuda),
        "CK_WITH_CUDA": "1" if with_cuda else "0",
        "CK_CUDA_ARCHES": arch_list if with_cuda else "",
        "CK_NO_CUDA_REASON": why_not,
        "CK_CXX_FLAGS": " ".join(cxx),
    }
    macros = [(k, '"' + v + '"') for k, v in info.items()]
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], define_macros=macros,
                  extra_link_args=["-fopenmp"])
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", arch_list)
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) +
                          glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        site = sysconfig.get_paths()["purelib"]
        nvidia_include = os.path.join(site, "nvidia", "cu13", "include")
        nvcc = ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo", "-DCK_WITH_CUDA=1"]
        if os.path.isdir(nvidia_include):
            nvcc += ["-isystem", nvidia_include]
        ext = cpp_extension.CUDAExtension(
            "contrastive_kernels._C", sources,
            extra_compile_args={"cxx": cxx + ["-DCK_WITH_CUDA=1"], "nvcc": nvcc}, **kwargs)
    else:
        ext = cpp_extension.CppExtension("contrastive_kernels._C", sources,
                                         extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
