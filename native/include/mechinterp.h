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
#define MI_ABI_VERSION 5

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
/* Threads used by the kernels, in [1, 4096]. The pool survives fork(): a child starts fresh workers on its first
 * parallel call. */
MI_API mi_status mi_set_num_threads(int32_t n);
MI_API int32_t mi_get_num_threads(void);
/* 1 when the kernels have an AVX2/FMA path and this CPU runs it. */
MI_API int32_t mi_cpu_has_avx2(void);
/* 1 when the kernels have an AVX-512 path (F, DQ, VL) and this CPU and OS run it. */
MI_API int32_t mi_cpu_has_avx512(void);
/* The widest back end the kernels may use, process-wide: MI_SIMD_PORTABLE (plain loops), MI_SIMD_AVX2 (AVX2/FMA)
 * or MI_SIMD_AVX512 (the default). Each runs only where the CPU has it, else the next narrower one does; a lower
 * level is for tests and comparisons. */
enum { MI_SIMD_PORTABLE = 0, MI_SIMD_AVX2 = 1, MI_SIMD_AVX512 = 2 };
MI_API mi_status mi_set_simd(int32_t level);
/* The back end the kernels use now: the lower of mi_set_simd's level and what this CPU runs. */
MI_API int32_t mi_get_simd(void);
/* 1 when CUDA kernels were compiled into this library. */
MI_API int32_t mi_has_cuda(void);

/* ---- row softmax: y[r, :] = softmax(x[r, :]) ------------------------------ */

/* x, y: [rows, cols]; y may alias x. Numerically stable (max-subtracted). */
MI_API mi_status mi_softmax_rows_f32(const float* x, float* y, int64_t rows, int64_t cols);
/* Backward: dx = y * (dy - sum(dy * y, row)). y, dy, dx: [rows, cols]; dx may alias dy. */
MI_API mi_status mi_softmax_rows_backward_f32(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols);

/* ---- attention: z = softmax(q k^T / sqrt(d_head) + mask) v ------------------------------------
 * q: [batch, heads, q_len, d_head]; k, v: [batch, heads, kv_len, d_head]; all dense row-major.
 * causal = 1 masks key j for query i when j > i + kv_len - q_len (the last query sees every key) and needs
 * q_len <= kv_len (else the first queries would see no key: MI_ERR_INVALID_ARGUMENT). NaN in q, k or v
 * propagates to the rows that read it. */

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
/* The same with rotary position embeddings applied to q and k inside the kernel (no rotated copy is
 * materialized): GPT-NeoX "rotate half" on the first rotary_dim (even, <= d_head) entries of every row, a row at
 * position p becoming x * rot_cos[p] + roll(x, rotary_dim / 2) * rot_sin[p] there, so rot_sin holds -sin on its
 * first half and +sin on its second. rot_cos, rot_sin: [kv_len, rotary_dim]; key j is at position j, query i at
 * i + kv_len - q_len (q_len <= kv_len). scores and pattern come from the rotated q and k; the backward's dq and
 * dk are gradients for the unrotated q and k. CPU only. */
MI_API mi_status mi_attention_rotary_forward_f32(const float* q, const float* k, const float* v, int64_t batch, int64_t heads,
                                                 int64_t q_len, int64_t kv_len, int64_t d_head, int32_t causal,
                                                 const float* rot_cos, const float* rot_sin, int64_t rotary_dim, float* out,
                                                 float* lse, float* scores, float* pattern);
MI_API mi_status mi_attention_rotary_backward_f32(const float* q, const float* k, const float* v, const float* out,
                                                  const float* lse, const float* dout, int64_t batch, int64_t heads,
                                                  int64_t q_len, int64_t kv_len, int64_t d_head, int32_t causal,
                                                  const float* rot_cos, const float* rot_sin, int64_t rotary_dim, float* dq,
                                                  float* dk, float* dv);

/* ---- mixture-of-experts dispatch ----------------------------------------------------------------
 * A token t routed to k experts makes k (token, slot) pairs, pair p = t * k + s. The grouped buffer
 * holds one row per pair, pairs of one expert contiguous, so each expert's MLP is one GEMM over its
 * rows. row_of[p] is the row of pair p (from mi_moe_permute_i64). Every kernel validates row_of: in
 * range, and no row shared by two pairs. */

/* Routing. weights: [groups * tokens, experts], a token's weight for every expert (the router's softmax
 * over all experts, or what a hook put there); groups are independent models of a batch, group g owning
 * rows [g * tokens, (g + 1) * tokens), each with its own experts and capacity.
 * choose = 1: expert_index [groups * tokens, k] is written: the k largest weights, descending, ties to the
 * lower id. choose = 0: expert_index is read (chosen by the caller, e.g. a hook), each id in [0, experts).
 * gates [groups * tokens, k] = the weights at the chosen experts, divided by their sum when renormalize = 1
 * (Mixtral); counts [groups * experts]: pairs each expert keeps; kept [groups * tokens, k]: 1 or 0.
 * capacity = 0: no limit; else an expert keeps at most capacity pairs of its group, every token's slot 0
 * before any slot 1 (GShard), tokens in order. A dropped pair keeps its expert index, gets gate 0 and
 * kept 0, and is counted in *dropped: reported, never silently lost. */
MI_API mi_status mi_moe_route_f32(const float* weights, int64_t groups, int64_t tokens, int64_t experts, int64_t k,
                                  int32_t choose, int32_t renormalize, int64_t capacity, int64_t* expert_index,
                                  float* gates, int64_t* counts, uint8_t* kept, int64_t* dropped);
/* dweights [rows, experts] from dgates [rows, k] (rows = groups * tokens); dropped pairs pass no gradient. */
MI_API mi_status mi_moe_route_backward_f32(const float* weights, const int64_t* expert_index, const uint8_t* kept,
                                           const float* dgates, int64_t rows, int64_t experts, int64_t k,
                                           int32_t renormalize, float* dweights);
/* counts [experts]: pairs per expert. Rejects ids outside [0, experts). */
MI_API mi_status mi_moe_count_i64(const int64_t* expert_index, int64_t tokens, int64_t k, int64_t experts,
                                  int64_t* counts);
/* Stable counting sort of the pairs by expert: row_of [tokens * k], offsets [experts + 1] (expert e owns
 * rows [offsets[e], offsets[e] + count_e)). group_stride = 0: groups packed back to back; > 0: group e
 * starts at e * group_stride (a padded layout for one batched GEMM); it must be >= every count. */
MI_API mi_status mi_moe_permute_i64(const int64_t* expert_index, int64_t tokens, int64_t k, int64_t experts,
                                    int64_t group_stride, int64_t* row_of, int64_t* offsets);
/* grouped[row_of[t * k + s], :] = x[t, :]. x: [tokens, d]; grouped: [rows, d]; other rows untouched. */
MI_API mi_status mi_moe_gather_f32(const float* x, const int64_t* row_of, int64_t tokens, int64_t k, int64_t d,
                                   int64_t rows, float* grouped);
/* dx[t, :] = sum_s dgrouped[row_of[t * k + s], :]. */
MI_API mi_status mi_moe_gather_backward_f32(const float* dgrouped, const int64_t* row_of, int64_t tokens, int64_t k,
                                            int64_t d, int64_t rows, float* dx);
/* y[t, :] = sum_s gates[t, s] * grouped[row_of[t * k + s], :]. */
MI_API mi_status mi_moe_combine_f32(const float* grouped, const float* gates, const int64_t* row_of, int64_t tokens,
                                    int64_t k, int64_t d, int64_t rows, float* y);
/* dgrouped[row_of[p], :] = gates[p] * dy[t, :] (rows no pair uses: 0); dgates[p] = dy[t, :] . grouped[row_of[p], :]. */
MI_API mi_status mi_moe_combine_backward_f32(const float* grouped, const float* gates, const int64_t* row_of,
                                             const float* dy, int64_t tokens, int64_t k, int64_t d, int64_t rows,
                                             float* dgrouped, float* dgates);

/* ---- optimizer: AdamW over parameters whose leading dimension is the instance ---------------------
 * A parameter, its gradient and its moments are [instances, n] (an ordinary model: instances = 1); instance i
 * has its own learning rate lr[i] and decoupled weight decay weight_decay[i], both finite and >= 0. */

/* One AdamW step in PyTorch's order, step counted from 1, b1 = beta1, b2 = beta2 (both in [0, 1)):
 *   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps).
 * p, m and v are updated in place, g is read; the per-instance constants are rounded to float once. */
MI_API mi_status mi_adamw_step_f32(float* p, const float* g, float* m, float* v, int64_t instances, int64_t n,
                                   const double* lr, const double* weight_decay, double beta1, double beta2,
                                   double eps, int64_t step);
/* sums[i] += sum_j x[i, j]^2, accumulated in double; the same on any number of threads. */
MI_API mi_status mi_sum_squares_f32(const float* x, int64_t instances, int64_t n, double* sums);
/* x[i, :] *= factor[i]. */
MI_API mi_status mi_scale_rows_f32(float* x, int64_t instances, int64_t n, const float* factor);

/* ---- CUDA: the same kernels on device pointers --------------------------------------------------
 * Every mi_cuda_* function takes the arguments of its CPU twin, with every array a CUDA device (or
 * managed) pointer, except route's *dropped, a host pointer. They validate as the CPU ones do, reject
 * host pointers with MI_ERR_INVALID_ARGUMENT, run on the default stream and return after it finishes.
 * In a library built without CUDA (mi_has_cuda() == 0) they return MI_ERR_UNSUPPORTED. */

/* Visible CUDA devices; 0 without CUDA or without a device. */
MI_API int32_t mi_cuda_device_count(void);
MI_API mi_status mi_cuda_attention_forward_f32(const float* q, const float* k, const float* v, int64_t batch,
                                               int64_t heads, int64_t q_len, int64_t kv_len, int64_t d_head,
                                               int32_t causal, float* out, float* lse, float* scores, float* pattern);
MI_API mi_status mi_cuda_attention_backward_f32(const float* q, const float* k, const float* v, const float* out,
                                                const float* lse, const float* dout, int64_t batch, int64_t heads,
                                                int64_t q_len, int64_t kv_len, int64_t d_head, int32_t causal,
                                                float* dq, float* dk, float* dv);
MI_API mi_status mi_cuda_moe_route_f32(const float* weights, int64_t groups, int64_t tokens, int64_t experts, int64_t k,
                                       int32_t choose, int32_t renormalize, int64_t capacity, int64_t* expert_index,
                                       float* gates, int64_t* counts, uint8_t* kept, int64_t* dropped);
MI_API mi_status mi_cuda_moe_count_i64(const int64_t* expert_index, int64_t tokens, int64_t k, int64_t experts,
                                       int64_t* counts);
MI_API mi_status mi_cuda_moe_permute_i64(const int64_t* expert_index, int64_t tokens, int64_t k, int64_t experts,
                                         int64_t group_stride, int64_t* row_of, int64_t* offsets);
MI_API mi_status mi_cuda_moe_gather_f32(const float* x, const int64_t* row_of, int64_t tokens, int64_t k, int64_t d,
                                        int64_t rows, float* grouped);
MI_API mi_status mi_cuda_moe_gather_backward_f32(const float* dgrouped, const int64_t* row_of, int64_t tokens,
                                                 int64_t k, int64_t d, int64_t rows, float* dx);
MI_API mi_status mi_cuda_moe_combine_f32(const float* grouped, const float* gates, const int64_t* row_of,
                                         int64_t tokens, int64_t k, int64_t d, int64_t rows, float* y);
MI_API mi_status mi_cuda_moe_combine_backward_f32(const float* grouped, const float* gates, const int64_t* row_of,
                                                  const float* dy, int64_t tokens, int64_t k, int64_t d, int64_t rows,
                                                  float* dgrouped, float* dgates);

#ifdef __cplusplus
}
#endif
#endif /* MECHINTERP_H */
