// cpu/sigmoid_forward.cpp compiled for AVX2 + FMA (cpu/isa.h); empty where that build does not exist.
#include "cpu/kernels.h"
#if CK_CPU_AVX2_VARIANT
#define CK_CPU_AVX2 1
#include "cpu/sigmoid_forward.cpp"
#endif
