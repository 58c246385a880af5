// The inner-loop back ends the blocked kernels are written against: a portable one (plain loops the
// compiler may vectorize for the baseline ISA), an AVX2/FMA one and an AVX-512 one, chosen at run time
// (simd_level()), so one binary runs everywhere and is fast where the CPU allows.
#pragma once

#include "mechinterp.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 headers spell "undefined" as a self-initialized variable and then warn about it once inlined
// (GCC bug 105593, fixed in 13): silenced for the header's own lines only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#define MI_HAVE_X86 1
#define MI_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace mi {

// The back end to run (MI_SIMD_PORTABLE, MI_SIMD_AVX2 or MI_SIMD_AVX512): the widest this CPU runs, at most the level
// mi_set_simd allows.
int simd_level();

inline int64_t round_up8(int64_t n) { return (n + 7) & ~int64_t{7}; }

// Every back end offers, on float rows:
//   gemm: C[m, n] (+)= A[m, k] · B[k, n]. A is read through (a_row, a_col) strides so a transposed
//         operand costs nothing; B and C are row-major and n is a multiple of 8 (callers pad). With
//         c_scale, accumulating rows start from C[i, :] * c_scale[i] (the online softmax's rescale, in
//         the tile's own load of C rather than a pass of its own).
//   scale_max: x[j] *= scale for j < n, returning the largest.
//   max: the largest x[j] for j < n (-inf for n = 0).
//   dot: the sum of x[j] * y[j] for j < n.
//   exp_shift: y[j] = exp(x[j] * scale - shift) for j < n (y may be x; scale 1 unless given), returning the sum;
//              NaN stays NaN.
//   log: y[j] = log(x[j]) for j < n.
//   transpose: dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols.
struct PortableOps {
    static void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row, int64_t a_col, const float* b,
                     int64_t ldb, float* c, int64_t ldc, bool accumulate, const float* c_scale = nullptr) {
        for (int64_t i = 0; i < m; ++i) {
            float* crow = c + i * ldc;
            if (!accumulate) std::fill(crow, crow + n, 0.0f);
            else if (c_scale != nullptr)
                for (int64_t j = 0; j < n; ++j) crow[j] *= c_scale[i];
            for (int64_t p = 0; p < k; ++p) {
                const float av = a[i * a_row + p * a_col];
                const float* brow = b + p * ldb;
                for (int64_t j = 0; j < n; ++j) crow[j] += av * brow[j];
            }
        }
    }
    static float scale_max(float* x, int64_t n, float scale) {
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j] *= scale);
        return m;
    }
    static float max(const float* x, int64_t n) {
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
        return m;
    }
    static float dot(const float* x, const float* y, int64_t n) {
        double sum = 0.0;
        for (int64_t j = 0; j < n; ++j) sum += static_cast<double>(x[j]) * y[j];
        return static_cast<float>(sum);
    }
    static float exp_shift(const float* x, float* y, int64_t n, float shift, float scale = 1.0f) {
        float sum = 0.0f;
        for (int64_t j = 0; j < n; ++j) {
            y[j] = std::exp(x[j] * scale - shift);
            sum += y[j];
        }
        return sum;
    }
    static float exp_shift(float* x, int64_t n, float shift, float scale = 1.0f) { return exp_shift(x, x, n, shift, scale); }
    static void log(const float* x, float* y, int64_t n) {
        for (int64_t j = 0; j < n; ++j) y[j] = std::log(x[j]);
    }
    static void transpose(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst, int64_t ldd) {
        for (int64_t c = 0; c < cols; ++c)
            for (int64_t r = 0; r < rows; ++r) dst[c * ldd + r] = src[r * lds + c];
    }
};

#ifdef MI_HAVE_X86

// The exp's constants, shared by every vector width: clamps, the 1.5 * 2^23 shifter, log2(e), ln2 in two parts, and
// the degree-6 minimax coefficients of e^f from f^6 down to f^1 (e^0 = 1 exactly).
namespace exp_poly {
constexpr float lo = -87.3f, hi = 88.37f, shifter = 12582912.0f, log2e = 1.44269504088896341f;
constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
constexpr float c6 = 1.39261761e-3f, c5 = 8.36317307e-3f, c4 = 4.16665547e-2f, c3 = 1.66665770e-1f, c2 = 0.5f, c1 = 1.0f;
}  // namespace exp_poly

namespace avx2 {

// exp for 8 floats, ~1 ulp: x = n ln2 + f with |f| <= ln2 / 2 (n rounded by the 1.5 * 2^23 shifter, ln2 in two
// parts so f is exact), e^f from a degree-6 minimax polynomial with e^0 = 1 exactly, and 2^n added to its exponent
// bits. Inputs below -87.3 give exactly 0, so far-masked and -inf entries cannot produce denormals or NaN; a NaN
// input gives NaN (the clamp would turn it into a number), so a NaN logit poisons its row as in libtorch.
MI_AVX2 inline __m256 exp8(__m256 x) {
    namespace e = exp_poly;
    const __m256 lo = _mm256_set1_ps(e::lo), hi = _mm256_set1_ps(e::hi), shifter = _mm256_set1_ps(e::shifter);
    const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ), nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(e::log2e), shifter);   // n in t's low mantissa bits
    const __m256 n = _mm256_sub_ps(t, shifter);
    const __m256 f = _mm256_fnmadd_ps(n, _mm256_set1_ps(e::ln2_lo), _mm256_fnmadd_ps(n, _mm256_set1_ps(e::ln2_hi), x));
    __m256 y = _mm256_set1_ps(e::c6);
    for (const float c : {e::c5, e::c4, e::c3, e::c2, e::c1, 1.0f}) y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(c));
    const __m256i scale = _mm256_slli_epi32(_mm256_castps_si256(t), 23);   // n << 23
    return _mm256_or_ps(nan, _mm256_andnot_ps(underflow, _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), scale))));
}

// log for 8 floats, ~1 ulp (Cephes logf): x = 2^e m with m in [sqrt(1/2), sqrt(2)), log(m) = f - f^2 / 2 + f^3 P(f)
// for f = m - 1 with P of degree 8, and e ln2 added in two parts. Lanes that are not positive finite normals (0, negatives, NaN,
// inf, denormals) take std::log, so every special value is exactly libm's.
MI_AVX2 inline __m256 log8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 special = _mm256_or_ps(_mm256_cmp_ps(x, _mm256_set1_ps(1.17549435e-38f), _CMP_NGE_UQ),
                                        _mm256_cmp_ps(x, _mm256_set1_ps(3.40282347e38f), _CMP_GT_OQ));
    const __m256i bits = _mm256_castps_si256(x);
    __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));
    __m256 m = _mm256_or_ps(_mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x007fffff))), _mm256_set1_ps(0.5f));   // [0.5, 1)
    const __m256 low = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
    e = _mm256_sub_ps(e, _mm256_and_ps(one, low));
    const __m256 f = _mm256_add_ps(_mm256_sub_ps(m, one), _mm256_and_ps(m, low));   // m - 1, or 2m - 1 below sqrt(1/2)
    const __m256 z = _mm256_mul_ps(f, f);
    __m256 y = _mm256_fmadd_ps(_mm256_set1_ps(7.0376836292e-2f), f, _mm256_set1_ps(-1.1514610310e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.1676998740e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-1.2420140846e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.4249322787e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-1.6668057665e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(2.0000714765e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-2.4999993993e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(3.3333331174e-1f));
    y = _mm256_mul_ps(_mm256_mul_ps(y, f), z);
    y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
    y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
    __m256 r = _mm256_add_ps(f, y);
    r = _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), r);
    if (_mm256_movemask_ps(special) != 0) {
        alignas(32) float in[8], out[8];
        _mm256_store_ps(in, x);
        _mm256_store_ps(out, r);
        const int lanes = _mm256_movemask_ps(special);
        for (int l = 0; l < 8; ++l)
            if ((lanes >> l) & 1) out[l] = std::log(in[l]);
        r = _mm256_load_ps(out);
    }
    return r;
}

// Lanes [0, n) of 8 set (n <= 8), for masked loads and stores of a row's ragged end.
MI_AVX2 inline __m256i tail_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

MI_AVX2 inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// dst[c * ldd + r] = src[r * lds + c] for one 8 x 8 tile.
MI_AVX2 inline void transpose8(const float* src, int64_t lds, float* dst, int64_t ldd) {
    const __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + lds), r2 = _mm256_loadu_ps(src + 2 * lds),
                 r3 = _mm256_loadu_ps(src + 3 * lds), r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds),
                 r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
                 t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE), u2 = _mm256_shuffle_ps(t1, t3, 0x44),
                 u3 = _mm256_shuffle_ps(t1, t3, 0xEE), u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

MI_AVX2 inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// An R x (8*NV) tile of C, kept in registers across the whole k loop: NV loads and R broadcasts
// feed R*NV FMAs per step (6 x 16 keeps 12 accumulators plus operands within 16 ymm registers).
// Named accumulators rather than an array: GCC spills an array of __m256 to the stack every step.
template <int R, int NV>
MI_AVX2 inline void tile(int64_t k, const float* a, int64_t a_row, int64_t a_col, const float* b, int64_t ldb, float* c,
                         int64_t ldc, bool accumulate, const float* c_scale) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#define MI_TILE_ROW(r, c0, c1)                                                  \
    if constexpr (R > r) {                                                      \
        if (accumulate) {                                                       \
            c0 = _mm256_loadu_ps(c + r * ldc);                                  \
            if constexpr (NV > 1) c1 = _mm256_loadu_ps(c + r * ldc + 8);        \
            if (c_scale != nullptr) {                                           \
                const __m256 f = _mm256_broadcast_ss(c_scale + r);              \
                c0 = _mm256_mul_ps(c0, f);                                      \
                if constexpr (NV > 1) c1 = _mm256_mul_ps(c1, f);                \
            }                                                                   \
        }                                                                       \
    }
    MI_TILE_ROW(0, c00, c01) MI_TILE_ROW(1, c10, c11) MI_TILE_ROW(2, c20, c21)
    MI_TILE_ROW(3, c30, c31) MI_TILE_ROW(4, c40, c41) MI_TILE_ROW(5, c50, c51)
#undef MI_TILE_ROW
    const float* a1 = a + a_row;
    const float* a2 = a + 2 * a_row;
    const float* a3 = a + 3 * a_row;
    const float* a4 = a + 4 * a_row;
    const float* a5 = a + 5 * a_row;
    for (int64_t p = 0; p < k; ++p) {
        const __m256 b0 = _mm256_loadu_ps(b);
        const __m256 b1 = NV > 1 ? _mm256_loadu_ps(b + 8) : b0;
        b += ldb;
        const int64_t o = p * a_col;
#define MI_TILE_FMA(r, ar, c0, c1)                                              \
    if constexpr (R > r) {                                                      \
        const __m256 av = _mm256_broadcast_ss(ar + o);                          \
        c0 = _mm256_fmadd_ps(av, b0, c0);                                       \
        if constexpr (NV > 1) c1 = _mm256_fmadd_ps(av, b1, c1);                 \
    }
        MI_TILE_FMA(0, a, c00, c01) MI_TILE_FMA(1, a1, c10, c11) MI_TILE_FMA(2, a2, c20, c21)
        MI_TILE_FMA(3, a3, c30, c31) MI_TILE_FMA(4, a4, c40, c41) MI_TILE_FMA(5, a5, c50, c51)
#undef MI_TILE_FMA
    }
#define MI_TILE_STORE(r, c0, c1)                                                \
    if constexpr (R > r) {                                                      \
        _mm256_storeu_ps(c + r * ldc, c0);                                      \
        if constexpr (NV > 1) _mm256_storeu_ps(c + r * ldc + 8, c1);            \
    }
    MI_TILE_STORE(0, c00, c01) MI_TILE_STORE(1, c10, c11) MI_TILE_STORE(2, c20, c21)
    MI_TILE_STORE(3, c30, c31) MI_TILE_STORE(4, c40, c41) MI_TILE_STORE(5, c50, c51)
#undef MI_TILE_STORE
}

template <int NV>
MI_AVX2 inline void tile_rows(int64_t rows, int64_t k, const float* a, int64_t a_row, int64_t a_col, const float* b,
                              int64_t ldb, float* c, int64_t ldc, bool accumulate, const float* c_scale) {
    switch (rows) {
        case 6: tile<6, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale); break;
        case 5: tile<5, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale); break;
        case 4: tile<4, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale); break;
        case 3: tile<3, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale); break;
        case 2: tile<2, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale); break;
        default: tile<1, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale); break;
    }
}

}  // namespace avx2

struct Avx2Ops {
    MI_AVX2 static void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row, int64_t a_col,
                             const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate, const float* c_scale = nullptr) {
        for (int64_t i = 0; i < m; i += 6) {
            const int64_t rows = std::min<int64_t>(6, m - i);
            const float* ai = a + i * a_row;
            const float* si = c_scale != nullptr ? c_scale + i : nullptr;
            float* ci = c + i * ldc;
            int64_t j = 0;
            for (; j + 16 <= n; j += 16) avx2::tile_rows<2>(rows, k, ai, a_row, a_col, b + j, ldb, ci + j, ldc, accumulate, si);
            for (; j < n; j += 8) avx2::tile_rows<1>(rows, k, ai, a_row, a_col, b + j, ldb, ci + j, ldc, accumulate, si);
        }
    }
    MI_AVX2 static float scale_max(float* x, int64_t n, float scale) {
        const __m256 a = _mm256_set1_ps(scale);
        __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) {
            const __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + j), a);
            _mm256_storeu_ps(x + j, y);
            m = _mm256_max_ps(m, y);
        }
        float r = avx2::hmax(m);
        for (; j < n; ++j) r = std::max(r, x[j] *= scale);
        return r;
    }
    // Eight float partial sums of d terms each (d <= a few hundred): rounding far below the gradients' own.
    MI_AVX2 static float dot(const float* x, const float* y, int64_t n) {
        __m256 acc = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j), acc);
        float r = avx2::hsum(acc);
        for (; j < n; ++j) r += x[j] * y[j];
        return r;
    }
    MI_AVX2 static float max(const float* x, int64_t n) {
        const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
        __m256 m = neg_inf;
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
        if (j < n) {   // the ragged end in one masked load, -inf in the lanes past n
            const __m256i mask = avx2::tail_mask(n - j);
            m = _mm256_max_ps(m, _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(x + j, mask), _mm256_castsi256_ps(mask)));
        }
        return avx2::hmax(m);
    }
    // x * scale - shift in one FMA: exact for scale 1.
    MI_AVX2 static float exp_shift(const float* x, float* y, int64_t n, float shift, float scale = 1.0f) {
        const __m256 s = _mm256_set1_ps(shift), a = _mm256_set1_ps(scale);
        __m256 sum = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) {
            const __m256 e = avx2::exp8(_mm256_fmsub_ps(_mm256_loadu_ps(x + j), a, s));
            _mm256_storeu_ps(y + j, e);
            sum = _mm256_add_ps(sum, e);
        }
        if (j < n) {   // the ragged end in one masked exp rather than a libm call an entry
            const __m256i mask = avx2::tail_mask(n - j);
            const __m256 e = _mm256_and_ps(avx2::exp8(_mm256_fmsub_ps(_mm256_maskload_ps(x + j, mask), a, s)),
                                           _mm256_castsi256_ps(mask));
            _mm256_maskstore_ps(y + j, mask, e);
            sum = _mm256_add_ps(sum, e);
        }
        return avx2::hsum(sum);
    }
    MI_AVX2 static float exp_shift(float* x, int64_t n, float shift, float scale = 1.0f) { return exp_shift(x, x, n, shift, scale); }
    MI_AVX2 static void log(const float* x, float* y, int64_t n) {
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, avx2::log8(_mm256_loadu_ps(x + j)));
        for (; j < n; ++j) y[j] = std::log(x[j]);
    }
    // 8 x 8 tiles transposed in registers (unpack, shuffle, lane swap); the ragged edges element by element.
    MI_AVX2 static void transpose(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst, int64_t ldd) {
        int64_t r0 = 0;
        for (; r0 + 8 <= rows; r0 += 8) {
            int64_t c0 = 0;
            for (; c0 + 8 <= cols; c0 += 8) avx2::transpose8(src + r0 * lds + c0, lds, dst + c0 * ldd + r0, ldd);
            for (int64_t c = c0; c < cols; ++c)
                for (int64_t r = r0; r < r0 + 8; ++r) dst[c * ldd + r] = src[r * lds + c];
        }
        for (int64_t c = 0; c < cols; ++c)
            for (int64_t r = r0; r < rows; ++r) dst[c * ldd + r] = src[r * lds + c];
    }
};


// The AVX-512 back end: 16-float vectors where the CPU runs them (on Zen 5 a 512-bit FMA costs what a 256-bit one
// does, so the GEMMs and the exp pass do twice the work per instruction). Same algorithms as the AVX2 path, the
// ragged ends in masked loads and stores; log and transpose, off the hot path, stay AVX2.
#define MI_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma")))

namespace avx512 {

// exp8's algorithm and constants on 16 lanes: the same result, lane for lane.
MI_AVX512 inline __m512 exp16(__m512 x) {
    namespace e = exp_poly;
    const __m512 lo = _mm512_set1_ps(e::lo), hi = _mm512_set1_ps(e::hi), shifter = _mm512_set1_ps(e::shifter);
    const __mmask16 underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    const __m512 input = x;
    x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(e::log2e), shifter);
    const __m512 n = _mm512_sub_ps(t, shifter);
    const __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(e::ln2_lo), _mm512_fnmadd_ps(n, _mm512_set1_ps(e::ln2_hi), x));
    __m512 y = _mm512_set1_ps(e::c6);
    for (const float c : {e::c5, e::c4, e::c3, e::c2, e::c1, 1.0f}) y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(c));
    const __m512i scale = _mm512_slli_epi32(_mm512_castps_si512(t), 23);
    y = _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(y), scale)));
    return _mm512_mask_mov_ps(y, nan, input);   // a NaN in gives that NaN out
}

// Lanes [0, n) of 16 set (n <= 16).
MI_AVX512 inline __mmask16 tail_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

// An R x (16*NV) tile of C in registers across the whole k loop, the last of its NV vectors masked to `last`
// (a row's ragged 8): NV loads and R broadcasts feed R*NV FMAs per step. 6 x 64 keeps 24 accumulators, 4 B vectors
// and a broadcast within the 32 zmm registers. Named accumulators, as in avx2::tile.
template <int R, int NV>
MI_AVX512 inline void tile(int64_t k, const float* a, int64_t a_row, int64_t a_col, const float* b, int64_t ldb, float* c,
                           int64_t ldc, bool accumulate, const float* c_scale, __mmask16 last) {
    const __mmask16 m0 = NV == 1 ? last : 0xFFFF, m1 = NV == 2 ? last : 0xFFFF, m2 = NV == 3 ? last : 0xFFFF, m3 = last;
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00;
    __m512 c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
    __m512 c40 = c00, c41 = c00, c42 = c00, c43 = c00, c50 = c00, c51 = c00, c52 = c00, c53 = c00;
#define MI_Z_LOAD(r, v, cv, mv)                                                   \
    if constexpr (NV > v) {                                                       \
        cv = _mm512_maskz_loadu_ps(mv, c + r * ldc + 16 * v);                     \
        if (c_scale != nullptr) cv = _mm512_mul_ps(cv, _mm512_set1_ps(c_scale[r])); \
    }
#define MI_Z_ROW_LOAD(r, x0, x1, x2, x3)                                          \
    if constexpr (R > r) {                                                        \
        if (accumulate) {                                                         \
            MI_Z_LOAD(r, 0, x0, m0) MI_Z_LOAD(r, 1, x1, m1) MI_Z_LOAD(r, 2, x2, m2) MI_Z_LOAD(r, 3, x3, m3) \
        }                                                                         \
    }
    MI_Z_ROW_LOAD(0, c00, c01, c02, c03) MI_Z_ROW_LOAD(1, c10, c11, c12, c13) MI_Z_ROW_LOAD(2, c20, c21, c22, c23)
    MI_Z_ROW_LOAD(3, c30, c31, c32, c33) MI_Z_ROW_LOAD(4, c40, c41, c42, c43) MI_Z_ROW_LOAD(5, c50, c51, c52, c53)
#undef MI_Z_ROW_LOAD
#undef MI_Z_LOAD
    const float* a1 = a + a_row;
    const float* a2 = a + 2 * a_row;
    const float* a3 = a + 3 * a_row;
    const float* a4 = a + 4 * a_row;
    const float* a5 = a + 5 * a_row;
    for (int64_t p = 0; p < k; ++p) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b);
        const __m512 b1 = NV > 1 ? _mm512_maskz_loadu_ps(m1, b + 16) : b0;
        const __m512 b2 = NV > 2 ? _mm512_maskz_loadu_ps(m2, b + 32) : b0;
        const __m512 b3 = NV > 3 ? _mm512_maskz_loadu_ps(m3, b + 48) : b0;
        b += ldb;
        const int64_t o = p * a_col;
#define MI_Z_FMA(r, ar, x0, x1, x2, x3)                                           \
    if constexpr (R > r) {                                                        \
        const __m512 av = _mm512_set1_ps(ar[o]);                                  \
        x0 = _mm512_fmadd_ps(av, b0, x0);                                         \
        if constexpr (NV > 1) x1 = _mm512_fmadd_ps(av, b1, x1);                   \
        if constexpr (NV > 2) x2 = _mm512_fmadd_ps(av, b2, x2);                   \
        if constexpr (NV > 3) x3 = _mm512_fmadd_ps(av, b3, x3);                   \
    }
        MI_Z_FMA(0, a, c00, c01, c02, c03) MI_Z_FMA(1, a1, c10, c11, c12, c13) MI_Z_FMA(2, a2, c20, c21, c22, c23)
        MI_Z_FMA(3, a3, c30, c31, c32, c33) MI_Z_FMA(4, a4, c40, c41, c42, c43) MI_Z_FMA(5, a5, c50, c51, c52, c53)
#undef MI_Z_FMA
    }
#define MI_Z_STORE(r, v, cv, mv) \
    if constexpr (NV > v) _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mv, cv);
#define MI_Z_ROW_STORE(r, x0, x1, x2, x3) \
    if constexpr (R > r) { MI_Z_STORE(r, 0, x0, m0) MI_Z_STORE(r, 1, x1, m1) MI_Z_STORE(r, 2, x2, m2) MI_Z_STORE(r, 3, x3, m3) }
    MI_Z_ROW_STORE(0, c00, c01, c02, c03) MI_Z_ROW_STORE(1, c10, c11, c12, c13) MI_Z_ROW_STORE(2, c20, c21, c22, c23)
    MI_Z_ROW_STORE(3, c30, c31, c32, c33) MI_Z_ROW_STORE(4, c40, c41, c42, c43) MI_Z_ROW_STORE(5, c50, c51, c52, c53)
#undef MI_Z_ROW_STORE
#undef MI_Z_STORE
}

template <int NV>
MI_AVX512 inline void tile_rows(int64_t rows, int64_t k, const float* a, int64_t a_row, int64_t a_col, const float* b,
                                int64_t ldb, float* c, int64_t ldc, bool accumulate, const float* c_scale, __mmask16 last) {
    switch (rows) {
        case 6: tile<6, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale, last); break;
        case 5: tile<5, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale, last); break;
        case 4: tile<4, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale, last); break;
        case 3: tile<3, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale, last); break;
        case 2: tile<2, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale, last); break;
        default: tile<1, NV>(k, a, a_row, a_col, b, ldb, c, ldc, accumulate, c_scale, last); break;
    }
}

}  // namespace avx512

struct Avx512Ops : Avx2Ops {
    // Column tiles of 64 while they last, then one tile of the 8 to 56 left, its last vector masked when 8 remain.
    MI_AVX512 static void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row, int64_t a_col,
                               const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate, const float* c_scale = nullptr) {
        for (int64_t i = 0; i < m; i += 6) {
            const int64_t rows = std::min<int64_t>(6, m - i);
            const float* ai = a + i * a_row;
            const float* si = c_scale != nullptr ? c_scale + i : nullptr;
            float* ci = c + i * ldc;
            int64_t j = 0;
            for (; j + 64 <= n; j += 64)
                avx512::tile_rows<4>(rows, k, ai, a_row, a_col, b + j, ldb, ci + j, ldc, accumulate, si, 0xFFFF);
            const int64_t left = n - j;
            if (left <= 0) continue;
            const __mmask16 last = avx512::tail_mask(left % 16 == 0 ? 16 : left % 16);
            switch ((left + 15) / 16) {
                case 4: avx512::tile_rows<4>(rows, k, ai, a_row, a_col, b + j, ldb, ci + j, ldc, accumulate, si, last); break;
                case 3: avx512::tile_rows<3>(rows, k, ai, a_row, a_col, b + j, ldb, ci + j, ldc, accumulate, si, last); break;
                case 2: avx512::tile_rows<2>(rows, k, ai, a_row, a_col, b + j, ldb, ci + j, ldc, accumulate, si, last); break;
                default: avx512::tile_rows<1>(rows, k, ai, a_row, a_col, b + j, ldb, ci + j, ldc, accumulate, si, last); break;
            }
        }
    }
    MI_AVX512 static float scale_max(float* x, int64_t n, float scale) {
        const __m512 a = _mm512_set1_ps(scale);
        __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
        int64_t j = 0;
        for (; j + 16 <= n; j += 16) {
            const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + j), a);
            _mm512_storeu_ps(x + j, y);
            m = _mm512_max_ps(m, y);
        }
        if (j < n) {
            const __mmask16 mask = avx512::tail_mask(n - j);
            const __m512 y = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x + j), a);
            _mm512_mask_storeu_ps(x + j, mask, y);
            m = _mm512_mask_max_ps(m, mask, m, y);
        }
        return _mm512_reduce_max_ps(m);
    }
    MI_AVX512 static float dot(const float* x, const float* y, int64_t n) {
        __m512 acc = _mm512_setzero_ps();
        int64_t j = 0;
        for (; j + 16 <= n; j += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(y + j), acc);
        if (j < n) {
            const __mmask16 mask = avx512::tail_mask(n - j);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + j), _mm512_maskz_loadu_ps(mask, y + j), acc);
        }
        return _mm512_reduce_add_ps(acc);
    }
    MI_AVX512 static float max(const float* x, int64_t n) {
        const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
        __m512 m = neg_inf;
        int64_t j = 0;
        for (; j + 16 <= n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + j));
        if (j < n) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(neg_inf, avx512::tail_mask(n - j), x + j));
        return _mm512_reduce_max_ps(m);
    }
    MI_AVX512 static float exp_shift(const float* x, float* y, int64_t n, float shift, float scale = 1.0f) {
        const __m512 s = _mm512_set1_ps(shift), a = _mm512_set1_ps(scale);
        __m512 sum = _mm512_setzero_ps();
        int64_t j = 0;
        for (; j + 16 <= n; j += 16) {
            const __m512 e = avx512::exp16(_mm512_fmsub_ps(_mm512_loadu_ps(x + j), a, s));
            _mm512_storeu_ps(y + j, e);
            sum = _mm512_add_ps(sum, e);
        }
        if (j < n) {
            const __mmask16 mask = avx512::tail_mask(n - j);
            const __m512 e = _mm512_maskz_mov_ps(mask, avx512::exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(mask, x + j), a, s)));
            _mm512_mask_storeu_ps(y + j, mask, e);
            sum = _mm512_add_ps(sum, e);
        }
        return _mm512_reduce_add_ps(sum);
    }
    MI_AVX512 static float exp_shift(float* x, int64_t n, float shift, float scale = 1.0f) { return exp_shift(x, x, n, shift, scale); }
};

#endif  // MI_HAVE_X86

// Calls fn.template operator()<Ops>() with the back end simd_level() selects.
template <class Fn>
void dispatch_simd(Fn&& fn) {
#ifdef MI_HAVE_X86
    switch (simd_level()) {
        case MI_SIMD_AVX512: fn(Avx512Ops{}); return;
        case MI_SIMD_AVX2: fn(Avx2Ops{}); return;
        default: break;
    }
#endif
    fn(PortableOps{});
}

}  // namespace mi
