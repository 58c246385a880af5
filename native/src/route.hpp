// Per-token routing shared by the CPU kernels (moe.cpp) and the CUDA ones (cuda/moe.cu): top-k choice,
// gates and GShard-order capacity. One definition, so the two backends cannot drift apart.
#pragma once

#include "mechinterp.h"

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MI_HOST_DEVICE __host__ __device__
#else
#define MI_HOST_DEVICE
#endif

namespace mi::route {

// The k largest logits of one token, descending; ties go to the lower expert id.
MI_HOST_DEVICE inline void top_k(const float* logits, int64_t experts, int64_t k, int64_t* index) {
    for (int64_t s = 0; s < k; ++s) {
        int64_t best = -1;
        for (int64_t e = 0; e < experts; ++e) {
            bool taken = false;
            for (int64_t p = 0; p < s; ++p) taken = taken || index[p] == e;
            if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
        }
        index[s] = best;
    }
}

// The gates of one token before any drop: softmax over all experts read at the chosen ones, or
// softmax over the chosen logits only (Mixtral). Also used by the backward to recompute them.
MI_HOST_DEVICE inline void gates_of(const float* logits, int64_t experts, int64_t k, int32_t gating, const int64_t* index,
                                    float* gates) {
    float max = -INFINITY;
    double sum = 0.0;
    if (gating == MI_GATING_SOFTMAX) {
        for (int64_t e = 0; e < experts; ++e) max = fmaxf(max, logits[e]);
        for (int64_t e = 0; e < experts; ++e) sum += exp(static_cast<double>(logits[e]) - max);
    } else {
        for (int64_t s = 0; s < k; ++s) max = fmaxf(max, logits[index[s]]);
        for (int64_t s = 0; s < k; ++s) sum += exp(static_cast<double>(logits[index[s]]) - max);
    }
    for (int64_t s = 0; s < k; ++s) gates[s] = static_cast<float>(exp(static_cast<double>(logits[index[s]]) - max) / sum);
}

// Capacity in GShard's order: every token's first choice before any second choice (slot-major, token
// order), so it is sequential. Fills counts[experts] and kept[pairs], zeroes the dropped pairs' gates,
// and returns how many pairs were dropped. capacity 0 means no limit.
MI_HOST_DEVICE inline int64_t apply_capacity(const int64_t* index, int64_t tokens, int64_t experts, int64_t k,
                                             int64_t capacity, float* gates, int64_t* counts, uint8_t* kept) {
    for (int64_t e = 0; e < experts; ++e) counts[e] = 0;
    int64_t dropped = 0;
    for (int64_t s = 0; s < k; ++s)
        for (int64_t t = 0; t < tokens; ++t) {
            const int64_t p = t * k + s, e = index[p];
            const bool keep = capacity == 0 || counts[e] < capacity;
            kept[p] = keep ? 1 : 0;
            if (keep) {
                ++counts[e];
            } else {
                gates[p] = 0.0f;
                ++dropped;
            }
        }
    return dropped;
}

}  // namespace mi::route
