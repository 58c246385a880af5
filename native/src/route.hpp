// Routing shared by the CPU kernels (moe.cpp) and the CUDA ones (cuda/moe.cu): top-k choice, gates and
// GShard-order capacity. One definition, so the two backends cannot drift apart; the managed twin is
// Kernels/Routing.cs.
#pragma once

#include "mechinterp.h"

#include <cstdint>

#if defined(__CUDACC__)
#define MI_HOST_DEVICE __host__ __device__
#else
#define MI_HOST_DEVICE
#endif

namespace mi::route {

// The k largest weights of one token, descending; ties go to the lower expert id.
MI_HOST_DEVICE inline void top_k(const float* weights, int64_t experts, int64_t k, int64_t* index) {
    for (int64_t s = 0; s < k; ++s) {
        int64_t best = -1;
        for (int64_t e = 0; e < experts; ++e) {
            bool taken = false;
            for (int64_t p = 0; p < s; ++p) taken = taken || index[p] == e;
            if (!taken && (best < 0 || weights[e] > weights[best])) best = e;
        }
        index[s] = best;
    }
}

// The gates of one token before any drop: its weights at the chosen experts, divided by their sum when
// renormalize is set (Mixtral). Also used by the backward to recompute them.
MI_HOST_DEVICE inline void gates_of(const float* weights, int64_t k, int32_t renormalize, const int64_t* index, float* gates) {
    double sum = 0.0;
    for (int64_t s = 0; s < k; ++s) sum += weights[index[s]];
    for (int64_t s = 0; s < k; ++s)
        gates[s] = renormalize ? static_cast<float>(weights[index[s]] / sum) : weights[index[s]];
}

// Capacity in GShard's order, one group (model) at a time: a group's pairs queue slot-major, tokens in
// order (every token's first choice before any second choice), and a pair is kept while fewer than
// `capacity` pairs are ahead of it in its expert's queue (capacity 0: no limit). That rule is sequential
// as stated; cutting the queue into chunks of consecutive tokens of one slot makes it parallel: every
// chunk counts its pairs per expert (chunk_count), one scan per expert turns the counts into each
// chunk's first place in that expert's queue (scan_chunks), and every chunk then decides its own pairs
// (chunk_keep). The result does not depend on the chunk size.

struct Chunk {
    int64_t slot, begin, end;   // tokens [begin, end) of one slot
};

// Chunks per group: k slots of ceil(tokens / chunk_tokens) chunks each, in queue order.
MI_HOST_DEVICE inline int64_t chunks_per_group(int64_t tokens, int64_t k, int64_t chunk_tokens) {
    return k * ((tokens + chunk_tokens - 1) / chunk_tokens);
}

MI_HOST_DEVICE inline Chunk chunk_at(int64_t c, int64_t tokens, int64_t chunk_tokens) {
    const int64_t per_slot = (tokens + chunk_tokens - 1) / chunk_tokens, begin = (c % per_slot) * chunk_tokens;
    return {c / per_slot, begin, begin + chunk_tokens < tokens ? begin + chunk_tokens : tokens};
}

// place[e] = pairs of the chunk routed to expert e. index: the group's [tokens, k].
MI_HOST_DEVICE inline void chunk_count(const int64_t* index, int64_t k, int64_t experts, Chunk c, int64_t* place) {
    for (int64_t e = 0; e < experts; ++e) place[e] = 0;
    for (int64_t t = c.begin; t < c.end; ++t) ++place[index[t * k + c.slot]];
}

// For expert e of one group: place [chunks, experts] holds chunk counts and becomes each chunk's first
// place in e's queue. Returns the pairs routed to e.
MI_HOST_DEVICE inline int64_t scan_chunks(int64_t* place, int64_t chunks, int64_t experts, int64_t e) {
    int64_t total = 0;
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t n = place[c * experts + e];
        place[c * experts + e] = total;
        total += n;
    }
    return total;
}

// Keeps or drops the chunk's pairs: kept[p] = 1 or 0, gates of dropped pairs zeroed. place [experts]: the
// chunk's first places from scan_chunks, advanced as pairs join the queues.
MI_HOST_DEVICE inline void chunk_keep(const int64_t* index, int64_t k, Chunk c, int64_t capacity, int64_t* place,
                                      float* gates, uint8_t* kept) {
    for (int64_t t = c.begin; t < c.end; ++t) {
        const int64_t p = t * k + c.slot;
        const bool keep = capacity == 0 || place[index[p]]++ < capacity;
        kept[p] = keep ? 1 : 0;
        if (!keep) gates[p] = 0.0f;
    }
}

// Pairs an expert keeps out of the `routed` pairs sent to it.
MI_HOST_DEVICE inline int64_t kept_of(int64_t routed, int64_t capacity) {
    return capacity == 0 || routed < capacity ? routed : capacity;
}

}  // namespace mi::route
