// Mixture-of-experts dispatch: top-k routing with an optional capacity (route.hpp), a counting sort of
// (token, slot) pairs into per-expert groups, gather into the grouped layout and the gate-weighted
// combine back, with their backwards. Every write loop runs over tokens, so two threads never
// write the same row: no atomics. The expert MLPs themselves run as GEMMs in the caller.
#include "common.hpp"
#include "moe.hpp"
#include "parallel.hpp"
#include "route.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kTokensPerTask = 128;

template <class Fn>
void for_tokens(int64_t tokens, Fn&& fn) {
    const int64_t tasks = (tokens + kTokensPerTask - 1) / kTokensPerTask;
    mi::parallel_for(tasks, [&](int64_t t) {
        const int64_t end = std::min(tokens, (t + 1) * kTokensPerTask);
        for (int64_t i = t * kTokensPerTask; i < end; ++i) fn(i);
    });
}

// Tokens of one slot per capacity chunk (route.hpp): enough work per task, many tasks for a large batch.
constexpr int64_t kCapacityChunk = 1024;

// Validates row_of against the grouped buffer: every row in [0, rows) and no two pairs on one row
// (a shared row would be a write race). Returns the used rows, sorted: scratch sized by the pairs the caller
// passed, never by the row count it claims (which may be anything up to int64).
std::vector<int64_t> check_rows(const int64_t* row_of, int64_t pairs, int64_t rows) {
    for (int64_t p = 0; p < pairs; ++p) {
        const int64_t r = row_of[p];
        if (r < 0 || r >= rows)
            throw mi::Error{MI_ERR_INVALID_ARGUMENT, "row_of[" + std::to_string(p) + "] = " + std::to_string(r) +
                                                         " is outside the grouped buffer [0, " + std::to_string(rows) + ")"};
    }
    std::vector<int64_t> used(row_of, row_of + pairs);
    std::sort(used.begin(), used.end());
    const auto twice = std::adjacent_find(used.begin(), used.end());
    if (twice != used.end()) {
        // Name the later of the two pairs, as a scan in pair order would.
        const int64_t r = *twice;
        int64_t p = 0, seen = 0;
        for (; p < pairs; ++p)
            if (row_of[p] == r && ++seen == 2) break;
        throw mi::Error{MI_ERR_INVALID_ARGUMENT, "row " + std::to_string(r) + " is the target of two pairs (row_of[" +
                                                     std::to_string(p) + "])"};
    }
    return used;
}

}  // namespace

namespace mi {

void count_experts(const int64_t* expert_index, int64_t pairs, int64_t k, int64_t experts, int64_t* counts) {
    std::fill(counts, counts + experts, int64_t{0});
    for (int64_t p = 0; p < pairs; ++p) {
        const int64_t e = expert_index[p];
        if (e < 0 || e >= experts)
            throw Error{MI_ERR_INVALID_ARGUMENT, "expert index " + std::to_string(e) + " at token " + std::to_string(p / k) +
                                                     " slot " + std::to_string(p % k) + " is out of range [0, " +
                                                     std::to_string(experts) + ")"};
        ++counts[e];
    }
}

}  // namespace mi

extern "C" {

MI_API mi_status mi_moe_route_f32(const float* weights, int64_t groups, int64_t tokens, int64_t experts, int64_t k,
                                  int32_t choose, int32_t renormalize, int64_t capacity, int64_t* expert_index,
                                  float* gates, int64_t* counts, uint8_t* kept, int64_t* dropped) {
    return mi::guard([&] {
        mi::require_pointer(weights, "weights");
        mi::require_pointer(expert_index, "expert_index");
        mi::require_pointer(gates, "gates");
        mi::require_pointer(counts, "counts");
        mi::require_pointer(kept, "kept");
        mi::require_pointer(dropped, "dropped");
        mi::require_positive(groups, "groups");
        mi::require_positive(tokens, "tokens");
        const int64_t rows = mi::checked_mul(groups, tokens, "groups * tokens");
        mi::check_route_sizes(rows, experts, k);
        mi::check_route_flags(choose, renormalize, capacity);
        if (!choose) {
            std::vector<int64_t> routed(static_cast<size_t>(experts));
            mi::count_experts(expert_index, mi::checked_mul(rows, k, "groups * tokens * k"), k, experts, routed.data());   // validates the given ids
        }
        for_tokens(rows, [&](int64_t t) {
            if (choose) mi::route::top_k(weights + t * experts, experts, k, expert_index + t * k);
            mi::route::gates_of(weights + t * experts, k, renormalize, expert_index + t * k, gates + t * k);
        });
        const int64_t chunks = mi::route::chunks_per_group(tokens, k, kCapacityChunk);
        std::vector<int64_t> place(static_cast<size_t>(mi::checked_mul(groups * chunks, experts, "chunks * experts")));
        auto chunk = [&](int64_t gc) { return mi::route::chunk_at(gc % chunks, tokens, kCapacityChunk); };
        auto group_index = [&](int64_t gc) { return expert_index + (gc / chunks) * tokens * k; };
        mi::parallel_for(groups * chunks, [&](int64_t gc) {
            mi::route::chunk_count(group_index(gc), k, experts, chunk(gc), place.data() + gc * experts);
        });
        int64_t lost = 0;
        for (int64_t g = 0; g < groups; ++g)
            for (int64_t e = 0; e < experts; ++e) {
                const int64_t routed = mi::route::scan_chunks(place.data() + g * chunks * experts, chunks, experts, e);
                counts[g * experts + e] = mi::route::kept_of(routed, capacity);
                lost += routed - counts[g * experts + e];
            }
        mi::parallel_for(groups * chunks, [&](int64_t gc) {
            const int64_t offset = (gc / chunks) * tokens * k;
            mi::route::chunk_keep(group_index(gc), k, chunk(gc), capacity, place.data() + gc * experts, gates + offset,
                                  kept + offset);
        });
        *dropped = lost;
    });
}

MI_API mi_status mi_moe_route_backward_f32(const float* weights, const int64_t* expert_index, const uint8_t* kept,
                                           const float* dgates, int64_t rows, int64_t experts, int64_t k,
                                           int32_t renormalize, float* dweights) {
    return mi::guard([&] {
        mi::require_pointer(weights, "weights");
        mi::require_pointer(expert_index, "expert_index");
        mi::require_pointer(kept, "kept");
        mi::require_pointer(dgates, "dgates");
        mi::require_pointer(dweights, "dweights");
        mi::check_route_sizes(rows, experts, k);
        mi::check_route_flags(1, renormalize, 0);
        std::vector<int64_t> routed(static_cast<size_t>(experts));
        mi::count_experts(expert_index, mi::checked_mul(rows, k, "rows * k"), k, experts, routed.data());
        for_tokens(rows, [&](int64_t t) {
            const float* w = weights + t * experts;
            const int64_t* idx = expert_index + t * k;
            float* dw = dweights + t * experts;
            std::fill(dw, dw + experts, 0.0f);
            // A dropped pair's gate is the constant 0: it passes no gradient.
            auto dg = [&](int64_t s) { return kept[t * k + s] ? static_cast<double>(dgates[t * k + s]) : 0.0; };
            if (!renormalize) {
                for (int64_t s = 0; s < k; ++s) dw[idx[s]] += static_cast<float>(dg(s));
                return;
            }
            // gate_s = w_s / S with S the sum of the chosen weights: dw_{e_r} += (dg_r - sum_s dg_s gate_s) / S.
            double sum = 0.0, weighted = 0.0;
            for (int64_t s = 0; s < k; ++s) sum += w[idx[s]];
            for (int64_t s = 0; s < k; ++s) weighted += dg(s) * w[idx[s]] / sum;
            for (int64_t s = 0; s < k; ++s) dw[idx[s]] += static_cast<float>((dg(s) - weighted) / sum);
        });
    });
}

MI_API mi_status mi_moe_count_i64(const int64_t* expert_index, int64_t tokens, int64_t k, int64_t experts,
                                  int64_t* counts) {
    return mi::guard([&] {
        mi::require_pointer(expert_index, "expert_index");
        mi::require_pointer(counts, "counts");
        mi::require_positive(tokens, "tokens");
        mi::require_positive(k, "k");
        mi::require_positive(experts, "experts");
        mi::count_experts(expert_index, mi::checked_mul(tokens, k, "tokens * k"), k, experts, counts);
    });
}

MI_API mi_status mi_moe_permute_i64(const int64_t* expert_index, int64_t tokens, int64_t k, int64_t experts,
                                    int64_t group_stride, int64_t* row_of, int64_t* offsets) {
    return mi::guard([&] {
        mi::require_pointer(expert_index, "expert_index");
        mi::require_pointer(row_of, "row_of");
        mi::require_pointer(offsets, "offsets");
        mi::require_positive(tokens, "tokens");
        mi::require_positive(k, "k");
        mi::require_positive(experts, "experts");
        if (group_stride < 0) throw mi::Error{MI_ERR_INVALID_SIZE, "group_stride must be 0 or positive, got " + std::to_string(group_stride)};
        const int64_t pairs = mi::checked_mul(tokens, k, "tokens * k");
        std::vector<int64_t> counts(static_cast<size_t>(experts));
        mi::count_experts(expert_index, pairs, k, experts, counts.data());
        offsets[0] = 0;
        for (int64_t e = 0; e < experts; ++e) {
            if (group_stride > 0 && counts[e] > group_stride)
                throw mi::Error{MI_ERR_INVALID_ARGUMENT, "expert " + std::to_string(e) + " has " + std::to_string(counts[e]) +
                                                             " pairs, more than group_stride = " + std::to_string(group_stride)};
            offsets[e + 1] = group_stride > 0 ? mi::checked_mul(e + 1, group_stride, "experts * group_stride")
                                              : offsets[e] + counts[e];
        }
        // Counting sort, stable: within a group, pairs keep token order.
        std::vector<int64_t> next(offsets, offsets + experts);
        for (int64_t p = 0; p < pairs; ++p) row_of[p] = next[expert_index[p]]++;
    });
}

MI_API mi_status mi_moe_gather_f32(const float* x, const int64_t* row_of, int64_t tokens, int64_t k, int64_t d,
                                   int64_t rows, float* grouped) {
    return mi::guard([&] {
        mi::require_pointer(x, "x");
        mi::require_pointer(row_of, "row_of");
        mi::require_pointer(grouped, "grouped");
        mi::check_dispatch_sizes(tokens, k, d, rows);
        check_rows(row_of, tokens * k, rows);
        for_tokens(tokens, [&](int64_t t) {
            for (int64_t s = 0; s < k; ++s) std::copy(x + t * d, x + (t + 1) * d, grouped + row_of[t * k + s] * d);
        });
    });
}

MI_API mi_status mi_moe_gather_backward_f32(const float* dgrouped, const int64_t* row_of, int64_t tokens, int64_t k,
                                            int64_t d, int64_t rows, float* dx) {
    return mi::guard([&] {
        mi::require_pointer(dgrouped, "dgrouped");
        mi::require_pointer(row_of, "row_of");
        mi::require_pointer(dx, "dx");
        mi::check_dispatch_sizes(tokens, k, d, rows);
        check_rows(row_of, tokens * k, rows);
        for_tokens(tokens, [&](int64_t t) {
            float* out = dx + t * d;
            std::copy(dgrouped + row_of[t * k] * d, dgrouped + (row_of[t * k] + 1) * d, out);
            for (int64_t s = 1; s < k; ++s) {
                const float* src = dgrouped + row_of[t * k + s] * d;
                for (int64_t c = 0; c < d; ++c) out[c] += src[c];
            }
        });
    });
}

MI_API mi_status mi_moe_combine_f32(const float* grouped, const float* gates, const int64_t* row_of, int64_t tokens,
                                    int64_t k, int64_t d, int64_t rows, float* y) {
    return mi::guard([&] {
        mi::require_pointer(grouped, "grouped");
        mi::require_pointer(gates, "gates");
        mi::require_pointer(row_of, "row_of");
        mi::require_pointer(y, "y");
        mi::check_dispatch_sizes(tokens, k, d, rows);
        check_rows(row_of, tokens * k, rows);
        for_tokens(tokens, [&](int64_t t) {
            float* out = y + t * d;
            std::fill(out, out + d, 0.0f);
            for (int64_t s = 0; s < k; ++s) {
                const float g = gates[t * k + s];
                const float* src = grouped + row_of[t * k + s] * d;
                for (int64_t c = 0; c < d; ++c) out[c] += g * src[c];
            }
        });
    });
}

MI_API mi_status mi_moe_combine_backward_f32(const float* grouped, const float* gates, const int64_t* row_of,
                                             const float* dy, int64_t tokens, int64_t k, int64_t d, int64_t rows,
                                             float* dgrouped, float* dgates) {
    return mi::guard([&] {
        mi::require_pointer(grouped, "grouped");
        mi::require_pointer(gates, "gates");
        mi::require_pointer(row_of, "row_of");
        mi::require_pointer(dy, "dy");
        mi::require_pointer(dgrouped, "dgrouped");
        mi::require_pointer(dgates, "dgates");
        mi::check_dispatch_sizes(tokens, k, d, rows);
        const auto used = check_rows(row_of, tokens * k, rows);
        // Padding rows of a batched layout (the gaps between used rows) get no gradient.
        int64_t next = 0;
        for (const int64_t r : used) {
            std::fill(dgrouped + next * d, dgrouped + r * d, 0.0f);
            next = r + 1;
        }
        std::fill(dgrouped + next * d, dgrouped + rows * d, 0.0f);
        for_tokens(tokens, [&](int64_t t) {
            const float* g = dy + t * d;
            for (int64_t s = 0; s < k; ++s) {
                const int64_t p = t * k + s;
                const float* src = grouped + row_of[p] * d;
                float* dst = dgrouped + row_of[p] * d;
                double dot = 0.0;
                for (int64_t c = 0; c < d; ++c) {
                    dst[c] = gates[p] * g[c];
                    dot += static_cast<double>(g[c]) * src[c];
                }
                dgates[p] = static_cast<float>(dot);
            }
        });
    });
}

}  // extern "C"
