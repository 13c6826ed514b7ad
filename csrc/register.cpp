// The extension module contrastive_kernels._C: build metadata for `python -m
// contrastive_kernels.info`. The core ops themselves are declared with TORCH_LIBRARY in
// the backend files (csrc/cpu/, csrc/cuda/); importing this module registers them.
#include <pybind11/pybind11.h>

#include <string>

#ifndef CK_TORCH_VERSION
#define CK_TORCH_VERSION "unknown"
#define CK_TORCH_CUDA "unknown"
#define CK_WITH_CUDA "0"
#define CK_CUDA_ARCHES ""
#define CK_NO_CUDA_REASON ""
#define CK_CXX_FLAGS ""
#endif

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
  info["torch_version"] = std::string(CK_TORCH_VERSION);
  info["torch_cuda"] = std::string(CK_TORCH_CUDA);
  info["with_cuda"] = std::string(CK_WITH_CUDA) == "1";
  info["cuda_arches"] = std::string(CK_CUDA_ARCHES);
  info["no_cuda_reason"] = std::string(CK_NO_CUDA_REASON);
  info["cxx_flags"] = std::string(CK_CXX_FLAGS);
  info["openmp"] = openmp_enabled();
  info["compiler"] = std::string(__VERSION__);
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "contrastive_kernels compiled kernels";
  m.def("build_info", &build_info, "What this extension was built with");
}
