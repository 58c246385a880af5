// Library-wide entry points: version, last error, thread setting, capabilities.
#include "common.hpp"
#include "parallel.hpp"
#include "simd.hpp"

#include <atomic>

namespace {
thread_local std::string last_error;
std::atomic<bool> simd_allowed{true};
}

namespace mi {
mi_status fail(mi_status status, const std::string& message) {
    last_error = message;
    return status;
}
void clear_error() { last_error.clear(); }
bool simd_enabled() { return simd_allowed.load(std::memory_order_relaxed) && mi_cpu_has_avx2() == 1; }
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

MI_API mi_status mi_set_simd(int32_t enabled) {
    return mi::guard([&] {
        if (enabled != 0 && enabled != 1)
            throw mi::Error{MI_ERR_INVALID_ARGUMENT, "simd must be 0 or 1, got " + std::to_string(enabled)};
        simd_allowed = enabled == 1;
    });
}

MI_API int32_t mi_has_cuda(void) {
#ifdef MI_WITH_CUDA
    return 1;
#else
    return 0;
#endif
}

}  // extern "C"
