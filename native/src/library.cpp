// Library-wide entry points: version, last error, thread setting, capabilities.
#include "common.hpp"
#include "parallel.hpp"
#include "simd.hpp"

#include <algorithm>
#include <atomic>

namespace {
thread_local std::string last_error;
std::atomic<int32_t> simd_cap{MI_SIMD_AVX512};   // the widest back end mi_set_simd allows
}

namespace mi {
mi_status fail(mi_status status, const std::string& message) {
    last_error = message;
    return status;
}
void clear_error() { last_error.clear(); }
int simd_level() {
    // Every kernel call dispatches through here: the CPU's widest back end is read once, not probed per call.
    static const int32_t cpu = mi_cpu_has_avx512() == 1 ? MI_SIMD_AVX512 : mi_cpu_has_avx2() == 1 ? MI_SIMD_AVX2 : MI_SIMD_PORTABLE;
    return std::min(simd_cap.load(std::memory_order_relaxed), cpu);
}
}  // namespace mi

extern "C" {

MI_API int32_t mi_version(void) { return MI_ABI_VERSION; }

MI_API const char* mi_last_error(void) { return last_error.c_str(); }

MI_API mi_status mi_set_num_threads(int32_t n) {
    return mi::guard([&] {
        if (n < 1 || n > 4096)
            throw mi::Error{MI_ERR_INVALID_ARGUMENT, "thread count must be in [1, 4096], got " + std::to_string(n)};
        mi::ThreadPool::instance().set_threads(n);
    });
}

MI_API int32_t mi_get_num_threads(void) { return mi::ThreadPool::instance().threads(); }

MI_API int32_t mi_cpu_has_avx2(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
#else
    return 0;
#endif
}

// AVX-512F with DQ and VL (what the back end uses); __builtin_cpu_supports also checks that the OS saves zmm state.
MI_API int32_t mi_cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
    return mi_cpu_has_avx2() == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512vl")
               ? 1
               : 0;
#else
    return 0;
#endif
}

MI_API mi_status mi_set_simd(int32_t level) {
    return mi::guard([&] {
        if (level < MI_SIMD_PORTABLE || level > MI_SIMD_AVX512)
            throw mi::Error{MI_ERR_INVALID_ARGUMENT,
                            "simd level must be 0 (portable), 1 (AVX2) or 2 (AVX-512), got " + std::to_string(level)};
        simd_cap = level;
    });
}

MI_API int32_t mi_get_simd(void) { return mi::simd_level(); }

MI_API int32_t mi_has_cuda(void) {
#ifdef MI_WITH_CUDA
    return 1;
#else
    return 0;
#endif
}

}  // extern "C"
