/* mechinterp.h: the whole C ABI of mechinterp_native.
 *
 * Plain C, no C++ types. Every kernel returns an mi_status (0 = ok); on failure
 * mi_last_error() returns a thread-local message naming the problem and the value.
 * Tensors are dense, row-major float32 buffers described by their sizes.
 * Every function validates its pointers and sizes and never crashes on bad input. */
#ifndef MECHINTERP_H
#define MECHINTERP_H

#include <stdint.h>

#if defined(_WIN32)
#  if defined(MI_BUILDING_LIBRARY)
#    define MI_API __declspec(dllexport)
#  else
#    define MI_API __declspec(dllimport)
#  endif
#else
#  define MI_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of this header; the C# side refuses a mismatch. */
#define MI_ABI_VERSION 1

typedef int32_t mi_status;
enum {
    MI_OK = 0,
    MI_ERR_NULL_POINTER = 1,   /* a required pointer was NULL */
    MI_ERR_INVALID_SIZE = 2,   /* a size was zero, negative or inconsistent */
    MI_ERR_OVERFLOW = 3,       /* sizes whose product overflows int64 */
    MI_ERR_INVALID_ARGUMENT = 4, /* any other argument out of range */
    MI_ERR_INTERNAL = 5,       /* an exception escaped a kernel (e.g. out of memory) */
    MI_ERR_UNSUPPORTED = 6     /* not built into this library (e.g. CUDA) */
};

/* ---- library ---------------------------------------------------------- */

/* The ABI version this library was built with (MI_ABI_VERSION). */
MI_API int32_t mi_version(void);
/* Message for the last non-zero status on this thread; "" when none. Valid until the next call on this thread. */
MI_API const char* mi_last_error(void);
/* Threads used by the kernels (>= 1). */
MI_API mi_status mi_set_num_threads(int32_t n);
MI_API int32_t mi_get_num_threads(void);
/* 1 when the kernels have an AVX2/FMA path and this CPU runs it. */
MI_API int32_t mi_cpu_has_avx2(void);
/* enabled = 0 forces the portable kernels even where AVX2 runs (for tests and comparisons); 1 (the default)
 * uses AVX2/FMA when mi_cpu_has_avx2(). Process-wide. */
MI_API mi_status mi_set_simd(int32_t enabled);
/* 1 when CUDA kernels were compiled into this library. */
MI_API int32_t mi_has_cuda(void);

/* ---- row softmax: y[r, :] = softmax(x[r, :]) ------------------------------ */

/* x, y: [rows, cols]; y may alias x. Numerically stable (max-subtracted). */
MI_API mi_status mi_softmax_rows_f32(const float* x, float* y, int64_t rows, int64_t cols);
/* Backward: dx = y * (dy - sum(dy * y, row)). y, dy, dx: [rows, cols]; dx may alias dy. */
MI_API mi_status mi_softmax_rows_backward_f32(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols);

/* ---- attention: z = softmax(q k^T / sqrt(d_head) + mask) v ------------------------------------
 * q: [batch, heads, q_len, d_head]; k, v: [batch, heads, kv_len, d_head]; all dense row-major.
 * causal = 1 masks key j for query i when j > i + kv_len - q_len (the last query sees every key);
 * a query that sees no key gets z = 0 and lse = -inf. */

/* out: [batch, heads, q_len, d_head]; lse: [batch, heads, q_len] (log-sum-exp of the scaled scores,
 * kept for the backward). scores and pattern, [batch, heads, q_len, kv_len], may each be NULL; when
 * given, scores = q k^T / sqrt(d_head) with -inf where masked, pattern = exp(scores - lse). */
MI_API mi_status mi_attention_forward_f32(const float* q, const float* k, const float* v, int64_t batch, int64_t heads,
                                          int64_t q_len, int64_t kv_len, int64_t d_head, int32_t causal, float* out,
                                          float* lse, float* scores, float* pattern);
/* Gradients from the forward's out and lse and the output gradient dout (the pattern is recomputed).
 * dq like q; dk, dv like k. */
MI_API mi_status mi_attention_backward_f32(const float* q, const float* k, const float* v, const float* out,
                                           const float* lse, const float* dout, int64_t batch, int64_t heads,
                                           int64_t q_len, int64_t kv_len, int64_t d_head, int32_t causal, float* dq,
                                           float* dk, float* dv);

#ifdef __cplusplus
}
#endif
#endif /* MECHINTERP_H */
