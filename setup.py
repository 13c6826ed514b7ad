"""Builds contrastive_kernels._C: the C++ CPU kernels and, when torch has CUDA and nvcc
is found, the CUDA C++ kernels. Static metadata lives in pyproject.toml; the version (from
contrastive_kernels/_version.py) and the torch requirement are set here, because a build
with the extension is tied to the torch it was compiled against: version
``0.1.0+cu130torch2.14`` and ``torch==2.14.*`` (flash-attention names its wheels alike).

Install with ``pip install --no-build-isolation -e .`` (an isolated build would pull a
second torch). ``python setup.py build_ext --inplace`` rebuilds incrementally with ninja.
Environment (read, never written): CONTRASTIVE_KERNELS_NO_EXT=1 skips the extension;
CONTRASTIVE_KERNELS_NO_CUDA=1 builds CPU only; TORCH_CUDA_ARCH_LIST picks the CUDA arches
(default "8.0;9.0"; "9.0+PTX" also embeds PTX, "9.0a" targets sm_90a); CUDA_HOME / CUDA_PATH
name the toolkit (else torch's guess, else /usr/local/cuda).
"""

import glob
import os
import re
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHES = "8.0;9.0+PTX"  # newer GPUs JIT from the sm_90 PTX
FALLBACK_CUDA_HOME = "/usr/local/cuda"


def _is_toolkit(home):
    return bool(home) and os.path.exists(os.path.join(home, "bin", "nvcc")) and \
        os.path.exists(os.path.join(home, "include", "cuda_runtime.h"))


def _cuda_home(cpp_extension):
    """The CUDA toolkit root, or None.

    torch guesses it at import from CUDA_HOME / CUDA_PATH, else from the nvcc on PATH; a
    wrapper script such as /usr/local/bin/nvcc makes that guess /usr/local, which has
    neither the headers nor libcudart. An explicit variable is always obeyed.
    """
    guess = cpp_extension.CUDA_HOME
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or _is_toolkit(guess):
        return guess
    if _is_toolkit(FALLBACK_CUDA_HOME):
        return FALLBACK_CUDA_HOME
    return guess


def _cuda_arches(arch_list):
    """(normalized arch list, nvcc -gencode flags) from a TORCH_CUDA_ARCH_LIST value.

    Explicit -gencode flags, rather than setting TORCH_CUDA_ARCH_LIST for torch to read:
    setup.py must not change the environment of whatever runs it, and torch adds no arch
    flags of its own once the nvcc flags name one (cpp_extension._get_cuda_arch_flags).
    """
    entries = [e for e in re.split(r"[;\s]+", arch_list.strip()) if e]
    flags = []
    for entry in entries:
        ptx = entry.endswith("+PTX")
        m = re.fullmatch(r"(\d+)\.(\d+)([af]?)", entry[:-len("+PTX")] if ptx else entry)
        if m is None:
            raise ValueError(f"TORCH_CUDA_ARCH_LIST: cannot read {entry!r}; expected entries "
                             "like 8.0, 9.0a or 9.0+PTX separated by ';'")
        cc = m[1] + m[2] + m[3]
        flags.append(f"-gencode=arch=compute_{cc},code=sm_{cc}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{cc},code=compute_{cc}")
    if not flags:
        raise ValueError(f"TORCH_CUDA_ARCH_LIST names no arch: {arch_list!r}")
    return ";".join(entries), flags


def _cuda_wanted(torch_mod, cuda_home):
    if os.environ.get("CONTRASTIVE_KERNELS_NO_CUDA") == "1":
        return False, "CONTRASTIVE_KERNELS_NO_CUDA=1"
    if not glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        return False, "no CUDA sources"
    if torch_mod.version.cuda is None:
        return False, "torch was built without CUDA"
    if cuda_home is None or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return False, "nvcc not found (set CUDA_HOME)"
    return True, ""


def _nvcc_flags():
    """csrc/cuda/nvcc_flags.py's list (shared with the compile report; setup.py cannot
    import the package)."""
    import runpy
    return runpy.run_path(os.path.join(ROOT, "csrc", "cuda", "nvcc_flags.py"))["NVCC_FLAGS"]


def _c_string(value):
    """A C string literal for a -D macro value."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def extensions():
    if os.environ.get("CONTRASTIVE_KERNELS_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    # The CPU kernels build twice (csrc/cpu/isa.h): csrc/cpu/*.cpp for the baseline of the
    # target and csrc/cpu/avx2/*.cpp (wrappers, empty off x86-64 / GCC) for AVX2 + FMA,
    # chosen at run time. Only code in the namespace ck::cpu::avx2 holds AVX instructions
    # (tests/backends/test_native_numerics.py checks the built module with objdump).
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) +
                     glob.glob(os.path.join("csrc", "common", "*.cpp")) +
                     glob.glob(os.path.join("csrc", "cpu", "*.cpp")) +
                     glob.glob(os.path.join("csrc", "cpu", "avx2", "*.cpp")) +
                     # the CUDA kernel source run on the CPU through the emulation layer
                     glob.glob(os.path.join("csrc", "emulation", "*.cpp")))
    cuda_home = _cuda_home(cpp_extension)
    with_cuda, why_not = _cuda_wanted(torch, cuda_home)
    # No -march: the extension must load and run on any CPU of the target. The AVX2 + FMA
    # kernels switch their instruction set on in their own sources (csrc/cpu/isa.h).
    cxx = ["-O3", "-g0", "-std=c++20", "-fopenmp", "-DNDEBUG"]
    arches, gencode = "", []
    if with_cuda:
        arches, gencode = _cuda_arches(os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHES)
    # String macros for build_info() only, prefixed CK_BUILD_ so none can collide with the
    # integer feature flag CK_WITH_CUDA that sources test with #if.
    info = {
        "CK_BUILD_TORCH_VERSION": torch.__version__,
        "CK_BUILD_TORCH_CUDA": str(torch.version.cuda),
        "CK_BUILD_CUDA_ARCHES": arches,
        "CK_BUILD_NO_CUDA_REASON": why_not,
        "CK_BUILD_CXX_FLAGS": " ".join(cxx),
    }
    macros = [(k, _c_string(v)) for k, v in info.items()]
    macros.append(("CK_WITH_CUDA", "1" if with_cuda else "0"))
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], define_macros=macros,
                  extra_link_args=["-fopenmp"])
    if with_cuda:
        # torch reads its module global, not the environment, when it compiles and links.
        cpp_extension.CUDA_HOME = cuda_home
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) +
                          glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        site = sysconfig.get_paths()["purelib"]
        nvidia_include = os.path.join(site, "nvidia", "cu13", "include")
        nvcc = list(_nvcc_flags()) + gencode
        if os.path.isdir(nvidia_include):
            nvcc += ["-isystem", nvidia_include]
        ext = cpp_extension.CUDAExtension(
            "contrastive_kernels._C", sources,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = cpp_extension.CppExtension("contrastive_kernels._C", sources,
                                         extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


def _base_version():
    text = open(os.path.join(ROOT, "contrastive_kernels", "_version.py")).read()
    return re.search(r'__version__ = "([^"]+)"', text)[1]


def metadata(ext_modules):
    """(version, install_requires): a build with the extension pins the torch it used."""
    if not ext_modules:
        return _base_version(), ["torch>=2.4"]
    import torch

    torch_mm = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    with_cuda = any("CK_WITH_CUDA" == k and v == "1" for k, v in ext_modules[0].define_macros)
    flavour = f"cu{torch.version.cuda.replace('.', '')}" if with_cuda else "cpu"
    return f"{_base_version()}+{flavour}torch{torch_mm}", [f"torch=={torch_mm}.*"]


ext_modules, cmdclass = extensions()
version, install_requires = metadata(ext_modules)
setup(version=version, install_requires=install_requires, ext_modules=ext_modules,
      cmdclass=cmdclass)
