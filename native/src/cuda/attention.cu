// Attention on CUDA, same ABI and conventions as attention.cpp. One block per (query row, head) in
// the forward and the dq pass, one per (key row, head) for dk and dv: no atomics, the pattern is
// recomputed from the saved log-sum-exp, and the score matrix exists only when asked for.
#include "../attention.hpp"
#include "cuda_common.cuh"

#include <math_constants.h>

namespace {

using mi::cuda::block_reduce;
using mi::cuda::kThreads;

// Output dims per thread: d_head up to kThreads * kDimsPerThread.
constexpr int kDimsPerThread = 4;
constexpr int64_t kMaxDHead = kThreads * kDimsPerThread;

__device__ inline int64_t visible(int64_t i, int64_t tq, int64_t tk, int causal) {
    if (!causal) return tk;
    const int64_t v = i + tk - tq + 1;
    return v < 0 ? 0 : (v > tk ? tk : v);
}

__device__ inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ inline float dot(const float* a, const float* b, int64_t d) {
    float s = 0.0f;
    for (int64_t c = 0; c < d; ++c) s = fmaf(a[c], b[c], s);
    return s;
}

__global__ void forward_kernel(const float* q, const float* k, const float* v, int64_t tq, int64_t tk, int64_t d, int causal,
                               float scale, float* out, float* lse, float* scores, float* pattern) {
    __shared__ float p[kThreads];
    __shared__ float red[kThreads];
    const int64_t i = blockIdx.x, h = blockIdx.y, row = h * tq + i;
    const float* qi = q + row * d;
    const float* kh = k + h * tk * d;
    const float* vh = v + h * tk * d;
    const int64_t vis = visible(i, tq, tk, causal);
    float m = -CUDART_INF_F, l = 0.0f, acc[kDimsPerThread] = {};
    for (int64_t j0 = 0; j0 < vis; j0 += kThreads) {   // online softmax over chunks of keys
        const int64_t j = j0 + threadIdx.x;
        const float s = j < vis ? dot(qi, kh + j * d, d) * scale : -CUDART_INF_F;
        const float m_new = fmaxf(m, block_reduce(s, red, true));
        const float e = j < vis ? __expf(s - m_new) : 0.0f;
        p[threadIdx.x] = e;
        const float alpha = m == -CUDART_INF_F ? 0.0f : __expf(m - m_new);
        l = l * alpha + block_reduce(e, red, false);
        m = m_new;
        const int64_t n = min64(kThreads, vis - j0);
        for (int r = 0; r < kDimsPerThread; ++r) {
            const int64_t c = threadIdx.x + r * kThreads;
            if (c >= d) break;
            float a = acc[r] * alpha;
            for (int64_t jj = 0; jj < n; ++jj) a = fmaf(p[jj], vh[(j0 + jj) * d + c], a);
            acc[r] = a;
        }
        __syncthreads();
    }
    const float row_lse = l > 0.0f ? m + logf(l) : -CUDART_INF_F;   // a row that sees no key: z = 0, lse = -inf
    for (int r = 0; r < kDimsPerThread; ++r) {
        const int64_t c = threadIdx.x + r * kThreads;
        if (c < d) out[row * d + c] = l > 0.0f ? acc[r] / l : 0.0f;
    }
    if (threadIdx.x == 0) lse[row] = row_lse;
    if (scores == nullptr && pattern == nullptr) return;
    for (int64_t j = threadIdx.x; j < tk; j += kThreads) {
        const float s = j < vis ? dot(qi, kh + j * d, d) * scale : -CUDART_INF_F;
        if (scores) scores[row * tk + j] = s;
        if (pattern) pattern[row * tk + j] = j < vis ? __expf(s - row_lse) : 0.0f;
    }
}

// delta[i] = dout[i] . out[i], the row term of the softmax backward.
__global__ void delta_kernel(const float* out, const float* dout, int64_t rows, int64_t d, float* delta) {
    const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (r < rows) delta[r] = dot(out + r * d, dout + r * d, d);
}

// dq[i] = scale * sum_j P_ij (dP_ij - delta_i) k_j over the keys row i sees.
__global__ void dq_kernel(const float* q, const float* k, const float* v, const float* lse, const float* dout,
                          const float* delta, int64_t tq, int64_t tk, int64_t d, int causal, float scale, float* dq) {
    __shared__ float ds[kThreads];
    const int64_t i = blockIdx.x, h = blockIdx.y, row = h * tq + i;
    const int64_t vis = visible(i, tq, tk, causal);
    const float* kh = k + h * tk * d;
    const float* vh = v + h * tk * d;
    float acc[kDimsPerThread] = {};
    for (int64_t j0 = 0; j0 < vis; j0 += kThreads) {
        const int64_t j = j0 + threadIdx.x;
        float g = 0.0f;
        if (j < vis) {
            const float pij = __expf(dot(q + row * d, kh + j * d, d) * scale - lse[row]);
            g = pij * (dot(dout + row * d, vh + j * d, d) - delta[row]);
        }
        ds[threadIdx.x] = g;
        __syncthreads();
        const int64_t n = min64(kThreads, vis - j0);
        for (int r = 0; r < kDimsPerThread; ++r) {
            const int64_t c = threadIdx.x + r * kThreads;
            if (c >= d) break;
            for (int64_t jj = 0; jj < n; ++jj) acc[r] = fmaf(ds[jj], kh[(j0 + jj) * d + c], acc[r]);
        }
        __syncthreads();
    }
    for (int r = 0; r < kDimsPerThread; ++r) {
        const int64_t c = threadIdx.x + r * kThreads;
        if (c < d) dq[row * d + c] = acc[r] * scale;
    }
}

// dv[j] = sum_i P_ij dout_i and dk[j] = scale * sum_i dS_ij q_i over the queries that see key j.
__global__ void dkv_kernel(const float* q, const float* k, const float* v, const float* lse, const float* dout,
                           const float* delta, int64_t tq, int64_t tk, int64_t d, int causal, float scale, float* dk,
                           float* dv) {
    __shared__ float ps[kThreads];
    __shared__ float ds[kThreads];
    const int64_t j = blockIdx.x, h = blockIdx.y, key = h * tk + j;
    // Under the causal mask query i sees key j when j < visible(i), i.e. i >= j - (tk - tq).
    int64_t first = causal ? j - (tk - tq) : 0;
    if (first < 0) first = 0;
    float acc_k[kDimsPerThread] = {}, acc_v[kDimsPerThread] = {};
    for (int64_t i0 = first; i0 < tq; i0 += kThreads) {
        const int64_t i = i0 + threadIdx.x, row = h * tq + i;
        float pij = 0.0f, g = 0.0f;
        if (i < tq && lse[row] != -CUDART_INF_F) {
            pij = __expf(dot(q + row * d, k + key * d, d) * scale - lse[row]);
            g = pij * (dot(dout + row * d, v + key * d, d) - delta[row]);
        }
        ps[threadIdx.x] = pij;
        ds[threadIdx.x] = g;
        __syncthreads();
        const int64_t n = min64(kThreads, tq - i0);
        for (int r = 0; r < kDimsPerThread; ++r) {
            const int64_t c = threadIdx.x + r * kThreads;
            if (c >= d) break;
            for (int64_t ii = 0; ii < n; ++ii) {
                const int64_t rr = h * tq + i0 + ii;
                acc_v[r] = fmaf(ps[ii], dout[rr * d + c], acc_v[r]);
                acc_k[r] = fmaf(ds[ii], q[rr * d + c], acc_k[r]);
            }
        }
        __syncthreads();
    }
    for (int r = 0; r < kDimsPerThread; ++r) {
        const int64_t c = threadIdx.x + r * kThreads;
        if (c < d) {
            dk[key * d + c] = acc_k[r] * scale;
            dv[key * d + c] = acc_v[r];
        }
    }
}

mi::AttentionDims check(int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len, int64_t d_head, int32_t causal,
                        bool with_pattern) {
    const auto g = mi::check_attention(batch, heads, q_len, kv_len, d_head, causal, with_pattern);
    if (d_head > kMaxDHead)
        throw mi::Error{MI_ERR_INVALID_ARGUMENT, "d_head (" + std::to_string(d_head) + ") exceeds the CUDA kernels' limit of " +
                                                     std::to_string(kMaxDHead)};
    if (q_len > 2147483647 || kv_len > 2147483647 || batch * heads > 65535)
        throw mi::Error{MI_ERR_INVALID_SIZE, "CUDA grids hold at most 2^31 - 1 positions and 65535 batch * heads, got q_len " +
                                                 std::to_string(q_len) + ", kv_len " + std::to_string(kv_len) +
                                                 ", batch * heads " + std::to_string(batch * heads)};
    return g;
}

}  // namespace

extern "C" {

MI_API int32_t mi_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

MI_API mi_status mi_cuda_attention_forward_f32(const float* q, const float* k, const float* v, int64_t batch,
                                               int64_t heads, int64_t q_len, int64_t kv_len, int64_t d_head,
                                               int32_t causal, float* out, float* lse, float* scores, float* pattern) {
    return mi::guard([&] {
        mi::cuda::require_device(q, "q");
        mi::cuda::require_device(k, "k");
        mi::cuda::require_device(v, "v");
        mi::cuda::require_device(out, "out");
        mi::cuda::require_device(lse, "lse");
        if (scores) mi::cuda::require_device(scores, "scores");
        if (pattern) mi::cuda::require_device(pattern, "pattern");
        const auto g = check(batch, heads, q_len, kv_len, d_head, causal, scores || pattern);
        const dim3 grid(static_cast<unsigned>(q_len), static_cast<unsigned>(batch * heads));
        forward_kernel<<<grid, kThreads>>>(q, k, v, q_len, kv_len, d_head, causal, g.scale, out, lse, scores, pattern);
        mi::cuda::finish("attention forward kernel");
    });
}

MI_API mi_status mi_cuda_attention_backward_f32(const float* q, const float* k, const float* v, const float* out,
                                                const float* lse, const float* dout, int64_t batch, int64_t heads,
                                                int64_t q_len, int64_t kv_len, int64_t d_head, int32_t causal,
                                                float* dq, float* dk, float* dv) {
    return mi::guard([&] {
        const char* names[] = {"q", "k", "v", "out", "lse", "dout", "dq", "dk", "dv"};
        const void* ptrs[] = {q, k, v, out, lse, dout, dq, dk, dv};
        for (int i = 0; i < 9; ++i) mi::cuda::require_device(ptrs[i], names[i]);
        const auto g = check(batch, heads, q_len, kv_len, d_head, causal, false);
        const int64_t rows = batch * heads * q_len;
        mi::cuda::DeviceBuffer<float> delta(static_cast<size_t>(rows));
        delta_kernel<<<static_cast<unsigned>((rows + kThreads - 1) / kThreads), kThreads>>>(out, dout, rows, d_head, delta.ptr);
        const dim3 qgrid(static_cast<unsigned>(q_len), static_cast<unsigned>(batch * heads));
        dq_kernel<<<qgrid, kThreads>>>(q, k, v, lse, dout, delta.ptr, q_len, kv_len, d_head, causal, g.scale, dq);
        const dim3 kgrid(static_cast<unsigned>(kv_len), static_cast<unsigned>(batch * heads));
        dkv_kernel<<<kgrid, kThreads>>>(q, k, v, lse, dout, delta.ptr, q_len, kv_len, d_head, causal, g.scale, dk, dv);
        mi::cuda::finish("attention backward kernels");
    });
}

}  // extern "C"
