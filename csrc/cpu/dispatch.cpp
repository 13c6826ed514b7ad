// The run-time choice of the CPU kernel set (kernels.h). Compiled once, for the baseline.
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace ck {
namespace cpu {
namespace {

// Read here only; declared, with every variable of the package, in contrastive_kernels/env.py.
constexpr char kEnvVar[] = "CONTRASTIVE_KERNELS_CPU_KERNEL";

bool cpu_has_avx2_fma() {
#if CK_CPU_AVX2_VARIANT
  // __builtin_cpu_supports("avx2") also requires the OS to save the YMM registers.
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

const KernelSet* runnable(const std::string& name) {
#if CK_CPU_AVX2_VARIANT
  if (name == kAvx2Name || name == "avx2") return cpu_has_avx2_fma() ? &avx2::kKernelSet : nullptr;
#endif
  if (name == kBaselineName) return &baseline::kKernelSet;
  return nullptr;
}

const KernelSet* fastest() {
#if CK_CPU_AVX2_VARIANT
  if (cpu_has_avx2_fma()) return &avx2::kKernelSet;
#endif
  return &baseline::kKernelSet;
}

// name: "auto" (or empty) or a kernel set name; `what` says where it came from.
const KernelSet* resolve(const std::string& name, const char* what) {
  if (name.empty() || name == "auto") return fastest();
  const KernelSet* set = runnable(name);
  if (set != nullptr) return set;
  std::string known;
  for (const std::string& n : runnable_kernel_sets()) known += (known.empty() ? "" : ", ") + n;
  const bool exists = name == kBaselineName || name == kAvx2Name || name == "avx2";
  TORCH_CHECK(false, what, ": CPU kernel set '", name, "' ",
              exists ? "cannot run here (this build or this CPU lacks it)" : "is unknown",
              "; expected 'auto' or one of: ", known);
  return nullptr;
}

const KernelSet* from_environment() {
  const char* value = std::getenv(kEnvVar);
  return resolve(value != nullptr ? value : "", kEnvVar);
}

std::atomic<const KernelSet*> g_active{nullptr};
std::mutex g_choose;

}  // namespace

const KernelSet& kernel_set() {
  const KernelSet* set = g_active.load(std::memory_order_acquire);
  if (set != nullptr) return *set;
  std::lock_guard<std::mutex> lock(g_choose);
  set = g_active.load(std::memory_order_acquire);
  if (set == nullptr) {
    set = from_environment();
    g_active.store(set, std::memory_order_release);
  }
  return *set;
}

std::string set_kernel_set(const std::string& name) {
  const KernelSet* next = (name.empty() || name == "auto") ? from_environment()
                                                           : resolve(name, "set_cpu_kernel");
  std::lock_guard<std::mutex> lock(g_choose);
  const KernelSet* previous = g_active.load(std::memory_order_acquire);
  if (previous == nullptr) previous = from_environment();
  g_active.store(next, std::memory_order_release);
  return previous->name;
}

std::vector<std::string> runnable_kernel_sets() {
  std::vector<std::string> names;
  if (cpu_has_avx2_fma()) names.push_back(kAvx2Name);
  names.push_back(kBaselineName);
  return names;
}

}  // namespace cpu
}  // namespace ck
