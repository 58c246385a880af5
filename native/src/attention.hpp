// Attention shapes and validation, shared by the CPU kernels (attention.cpp) and the CUDA ones.
#pragma once

#include <algorithm>
#include <cstdint>

namespace mi {

// Query and key rows per block: a 64 x 64 score tile plus a 64-row q and output tile stay in L1/L2.
constexpr int64_t kAttnBlockQ = 64;
constexpr int64_t kAttnBlockK = 64;

struct AttentionDims {
    int64_t batch = 0, heads = 0, q_len = 0, kv_len = 0, d_head = 0;
    bool causal = false;
    float scale = 1.0f;   // 1 / sqrt(d_head)

    // Causal masks align the last query with the last key (as TransformerLens with a KV cache):
    // query i sees keys j <= i + kv_len - q_len.
    int64_t offset() const { return kv_len - q_len; }
    // How many keys query row i sees.
    int64_t visible(int64_t i) const { return causal ? std::clamp<int64_t>(i + offset() + 1, 0, kv_len) : kv_len; }
};

// Validates sizes (positive, products within int64, causal 0 or 1) and returns the dims, or throws mi::Error.
AttentionDims check_attention(int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len, int64_t d_head,
                              int32_t causal, bool with_pattern);

}  // namespace mi
