// The optimizer's arithmetic over parameters whose leading dimension is the instance: the AdamW step and
// the squared norms that gradient clipping needs, one pass over memory each, where libtorch makes one pass
// (and often a temporary) per operation: p, g, m and v are read once and p, m and v written once.
#include "common.hpp"
#include "parallel.hpp"
#include "simd.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace {

// Elements per task: a few hundred KiB of p, g, m and v together, enough to hide the pool's hand-off.
constexpr int64_t kChunk = 16 * 1024;

// The step's per-instance constants, rounded to float once, as the managed twin does.
struct AdamW {
    float keep, step_size, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bias2, eps;

    // One element: PyTorch's order (decay, moments, bias-corrected update).
    void apply(float& p, float g, float& m, float& v) const {
        p *= keep;
        m = m * beta1 + one_minus_beta1 * g;
        v = v * beta2 + one_minus_beta2 * g * g;
        p -= m / (std::sqrt(v) / sqrt_bias2 + eps) * step_size;
    }
};

void adamw_portable(const AdamW& a, float* p, const float* g, float* m, float* v, int64_t n) {
    for (int64_t j = 0; j < n; ++j) a.apply(p[j], g[j], m[j], v[j]);
}

double sum_squares_portable(const float* x, int64_t n) {
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) sum += static_cast<double>(x[j]) * x[j];
    return sum;
}

#ifdef MI_HAVE_X86
MI_AVX2 void adamw_avx2(const AdamW& a, float* p, const float* g, float* m, float* v, int64_t n) {
    const __m256 keep = _mm256_set1_ps(a.keep), step = _mm256_set1_ps(a.step_size), b1 = _mm256_set1_ps(a.beta1),
                 c1 = _mm256_set1_ps(a.one_minus_beta1), b2 = _mm256_set1_ps(a.beta2), c2 = _mm256_set1_ps(a.one_minus_beta2),
                 sb2 = _mm256_set1_ps(a.sqrt_bias2), eps = _mm256_set1_ps(a.eps);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 gj = _mm256_loadu_ps(g + j);
        const __m256 mj = _mm256_fmadd_ps(c1, gj, _mm256_mul_ps(_mm256_loadu_ps(m + j), b1));
        const __m256 vj = _mm256_fmadd_ps(_mm256_mul_ps(c2, gj), gj, _mm256_mul_ps(_mm256_loadu_ps(v + j), b2));
        const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vj), sb2), eps);
        const __m256 pj = _mm256_mul_ps(_mm256_loadu_ps(p + j), keep);
        _mm256_storeu_ps(p + j, _mm256_fnmadd_ps(_mm256_div_ps(mj, denom), step, pj));
        _mm256_storeu_ps(m + j, mj);
        _mm256_storeu_ps(v + j, vj);
    }
    adamw_portable(a, p + j, g + j, m + j, v + j, n - j);
}

// Two double accumulators of four lanes each: products of floats are exact in double, so the sum's rounding
// is double's, far below the float gradients'.
MI_AVX2 double sum_squares_avx2(const float* x, int64_t n) {
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + j)), hi = _mm256_cvtps_pd(_mm_loadu_ps(x + j + 4));
        s0 = _mm256_fmadd_pd(lo, lo, s0);
        s1 = _mm256_fmadd_pd(hi, hi, s1);
    }
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, _mm256_add_pd(s0, s1));
    return lanes[0] + lanes[1] + lanes[2] + lanes[3] + sum_squares_portable(x + j, n - j);
}
#endif

void adamw_chunk(const AdamW& a, float* p, const float* g, float* m, float* v, int64_t n) {
#ifdef MI_HAVE_X86
    if (mi::simd_level() >= MI_SIMD_AVX2) return adamw_avx2(a, p, g, m, v, n);
#endif
    adamw_portable(a, p, g, m, v, n);
}

double sum_squares_chunk(const float* x, int64_t n) {
#ifdef MI_HAVE_X86
    if (mi::simd_level() >= MI_SIMD_AVX2) return sum_squares_avx2(x, n);
#endif
    return sum_squares_portable(x, n);
}

void require_rate(double x, const char* name, int64_t i) {
    if (!std::isfinite(x) || x < 0)
        throw mi::Error{MI_ERR_INVALID_ARGUMENT, std::string(name) + "[" + std::to_string(i) + "] must be finite and non-negative, got " + std::to_string(x)};
}

// Every (instance, chunk) pair of an [instances, n] buffer, as one parallel job.
template <class Fn>
void for_chunks(int64_t instances, int64_t n, Fn&& fn) {
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    mi::parallel_for(instances * chunks, [&](int64_t t) {
        const int64_t i = t / chunks, c = t % chunks, begin = c * kChunk;
        fn(t, i, i * n + begin, std::min(kChunk, n - begin));
    });
}

}  // namespace

extern "C" {

MI_API mi_status mi_adamw_step_f32(float* p, const float* g, float* m, float* v, int64_t instances, int64_t n,
                                   const double* lr, const double* weight_decay, double beta1, double beta2,
                                   double eps, int64_t step) {
    return mi::guard([&] {
        mi::require_pointer(p, "p");
        mi::require_pointer(g, "g");
        mi::require_pointer(m, "m");
        mi::require_pointer(v, "v");
        mi::require_pointer(lr, "lr");
        mi::require_pointer(weight_decay, "weight_decay");
        mi::check_matrix(instances, n, "instances", "n", "instances * n");
        if (!(beta1 >= 0 && beta1 < 1)) throw mi::Error{MI_ERR_INVALID_ARGUMENT, "beta1 must be in [0, 1), got " + std::to_string(beta1)};
        if (!(beta2 >= 0 && beta2 < 1)) throw mi::Error{MI_ERR_INVALID_ARGUMENT, "beta2 must be in [0, 1), got " + std::to_string(beta2)};
        if (!std::isfinite(eps) || eps < 0) throw mi::Error{MI_ERR_INVALID_ARGUMENT, "eps must be finite and non-negative, got " + std::to_string(eps)};
        mi::require_positive(step, "step");
        for (int64_t i = 0; i < instances; ++i) {
            require_rate(lr[i], "lr", i);
            require_rate(weight_decay[i], "weight_decay", i);
        }
        const double bias1 = 1 - std::pow(beta1, static_cast<double>(step)), bias2 = 1 - std::pow(beta2, static_cast<double>(step));
        std::vector<AdamW> per(static_cast<size_t>(instances));
        for (int64_t i = 0; i < instances; ++i)
            per[i] = AdamW{static_cast<float>(1 - lr[i] * weight_decay[i]), static_cast<float>(lr[i] / bias1),
                           static_cast<float>(beta1), static_cast<float>(1 - beta1), static_cast<float>(beta2),
                           static_cast<float>(1 - beta2), static_cast<float>(std::sqrt(bias2)), static_cast<float>(eps)};
        for_chunks(instances, n, [&](int64_t, int64_t i, int64_t at, int64_t len) {
            adamw_chunk(per[i], p + at, g + at, m + at, v + at, len);
        });
    });
}

MI_API mi_status mi_sum_squares_f32(const float* x, int64_t instances, int64_t n, double* sums) {
    return mi::guard([&] {
        mi::require_pointer(x, "x");
        mi::require_pointer(sums, "sums");
        mi::check_matrix(instances, n, "instances", "n", "instances * n");
        // Partial sums per chunk, added in chunk order: the same result on any number of threads.
        const int64_t chunks = (n + kChunk - 1) / kChunk;
        std::vector<double> partial(static_cast<size_t>(mi::checked_mul(instances, chunks, "instances * chunks")));
        for_chunks(instances, n, [&](int64_t t, int64_t, int64_t at, int64_t len) { partial[t] = sum_squares_chunk(x + at, len); });
        for (int64_t i = 0; i < instances; ++i)
            for (int64_t c = 0; c < chunks; ++c) sums[i] += partial[i * chunks + c];
    });
}

MI_API mi_status mi_scale_rows_f32(float* x, int64_t instances, int64_t n, const float* factor) {
    return mi::guard([&] {
        mi::require_pointer(x, "x");
        mi::require_pointer(factor, "factor");
        mi::check_matrix(instances, n, "instances", "n", "instances * n");
        for_chunks(instances, n, [&](int64_t, int64_t i, int64_t at, int64_t len) {
            const float f = factor[i];
            for (int64_t j = 0; j < len; ++j) x[at + j] *= f;
        });
    });
}

}  // extern "C"
