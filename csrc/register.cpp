// The extension module contrastive_kernels._C: declares the core op pair
// contrastive_kernels::lse_native / lse_native_backward (common/contract.h), exposes the
// build metadata for `python -m contrastive_kernels.info`, and the choice of CPU kernel
// set (csrc/cpu/kernels.h: which one runs, which ones this CPU runs, forcing one). The
// kernels register themselves per dispatch key (csrc/cpu/ops_cpu.cpp, csrc/cuda/);
// importing this module loads them all.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <exception>
#include <string>

#include "common/contract.h"
#include "cpu/kernels.h"

// setup.py defines these as string literals. They carry their own prefix so that no
// string macro can share a name with the integer feature flag CK_WITH_CUDA, which is
// tested with #if (a string there fails to preprocess; an integer in std::string fails
// to compile).
#ifndef CK_BUILD_TORCH_VERSION
#define CK_BUILD_TORCH_VERSION "unknown"
#endif
#ifndef CK_BUILD_TORCH_CUDA
#define CK_BUILD_TORCH_CUDA "unknown"
#endif
#ifndef CK_BUILD_CUDA_ARCHES
#define CK_BUILD_CUDA_ARCHES ""
#endif
#ifndef CK_BUILD_NO_CUDA_REASON
#define CK_BUILD_NO_CUDA_REASON "built without setup.py"
#endif
#ifndef CK_BUILD_CXX_FLAGS
#define CK_BUILD_CXX_FLAGS ""
#endif
#ifndef CK_WITH_CUDA
#define CK_WITH_CUDA 0
#endif

#if CK_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

// FRAGMENT: Python declares other ops (the pure-PyTorch kernel sets) in the same namespace.
TORCH_LIBRARY_FRAGMENT(contrastive_kernels, m) {
  namespace c = ck::contract;
  for (const c::OpDecl& op : c::kOps) {
    m.def(c::declaration(c::op_name(op, "native", false).c_str(), op.forward_schema).c_str());
    m.def(c::declaration(c::op_name(op, "native", true).c_str(), op.backward_schema).c_str());
  }
}

namespace py = pybind11;

namespace {

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

py::dict build_info() {
  py::dict info;
  info["torch_version"] = std::string(CK_BUILD_TORCH_VERSION);
  info["torch_cuda"] = std::string(CK_BUILD_TORCH_CUDA);
  info["with_cuda"] = kWithCuda;
  info["cuda_arches"] = std::string(CK_BUILD_CUDA_ARCHES);
  info["no_cuda_reason"] = std::string(CK_BUILD_NO_CUDA_REASON);
  info["cxx_flags"] = std::string(CK_BUILD_CXX_FLAGS);
  info["openmp"] = openmp_enabled();
  info["compiler"] = std::string(__VERSION__);
  // The CPU kernel set the ops run now (csrc/cpu/kernels.h): "avx2+fma" or "baseline".
  // A bad CONTRASTIVE_KERNELS_CPU_KERNEL fails the first op; here it is reported instead.
  try {
    info["cpu_kernel"] = std::string(ck::cpu::kernel_set().name);
  } catch (const std::exception& e) {
    info["cpu_kernel"] = std::string("none: ") + e.what();
  }
  return info;
}

py::list cpu_kernels() {
  py::list names;
  for (const std::string& n : ck::cpu::runnable_kernel_sets()) names.append(n);
  return names;
}

// {op name: (forward schema, backward schema)} as compiled in (common/contract.h).
py::dict op_table() {
  py::dict table;
  for (const ck::contract::OpDecl& op : ck::contract::kOps)
    table[op.name] = py::make_tuple(std::string(op.forward_schema), std::string(op.backward_schema));
  return table;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "contrastive_kernels compiled kernels";
  m.def("build_info", &build_info, "What this extension was built with");
  m.def("cpu_kernels", &cpu_kernels,
        "Names of the CPU kernel sets this build has and this CPU runs, fastest first");
  m.def("set_cpu_kernel", &ck::cpu::set_kernel_set, py::arg("name"),
        "Runs the CPU ops with kernel set `name` ('auto', 'baseline', 'avx2+fma') from now "
        "on; returns the name of the one it replaces (for tests and benchmarks)");
  m.def("op_table", &op_table,
        "{op: (forward schema, backward schema)} of the core ops, as compiled in");
}
