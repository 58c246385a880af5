// Expert dispatch: a hand-computed routing example, capacity drops, permute/gather/combine and their
// backwards against naive loops and finite differences, and every argument rejection.
#include "mechinterp.h"
#include "random_vector.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace {

void expect_error(mi_status got, mi_status want, const std::string& text) {
    EXPECT_EQ(got, want);
    EXPECT_NE(std::string(mi_last_error()).find(text), std::string::npos) << mi_last_error();
}

// 3 tokens, 4 experts, top-2: the softmax of these logits is the weights. Token 2 ties experts 0 and 1:
// the lower id wins.
const std::vector<float> kLogits = {1, 3, 2, 0,   //
                                    0, 0, 5, 1,   //
                                    2, 2, 1, 0};

std::vector<float> softmax_rows(const std::vector<float>& logits, int64_t experts) {
    std::vector<float> w(logits.size());
    for (size_t r = 0; r < logits.size() / experts; ++r) {
        double sum = 0;
        for (int64_t e = 0; e < experts; ++e) sum += std::exp(static_cast<double>(logits[r * experts + e]));
        for (int64_t e = 0; e < experts; ++e) w[r * experts + e] = static_cast<float>(std::exp(static_cast<double>(logits[r * experts + e])) / sum);
    }
    return w;
}

const std::vector<float> kWeights = softmax_rows(kLogits, 4);

struct Route {
    std::vector<int64_t> index = std::vector<int64_t>(6), counts = std::vector<int64_t>(4);
    std::vector<float> gates = std::vector<float>(6);
    std::vector<uint8_t> kept = std::vector<uint8_t>(6);
    int64_t dropped = -1;
    mi_status run(int32_t renormalize, int64_t capacity, int32_t choose = 1) {
        return mi_moe_route_f32(kWeights.data(), 1, 3, 4, 2, choose, renormalize, capacity, index.data(), gates.data(),
                                counts.data(), kept.data(), &dropped);
    }
};

TEST(MoeRoute, HandComputedTopTwo) {
    Route r;
    ASSERT_EQ(r.run(1, 0), MI_OK) << mi_last_error();
    EXPECT_EQ(r.index, (std::vector<int64_t>{1, 2, 2, 3, 0, 1}));
    EXPECT_EQ(r.counts, (std::vector<int64_t>{1, 2, 2, 1}));
    EXPECT_EQ(r.dropped, 0);
    // Renormalized over the chosen two, as a softmax over their logits (Mixtral).
    const double e = std::exp(1.0), e4 = std::exp(4.0);
    const std::vector<double> want = {e / (e + 1), 1 / (e + 1), e4 / (e4 + 1), 1 / (e4 + 1), 0.5, 0.5};
    for (int i = 0; i < 6; ++i) EXPECT_NEAR(r.gates[i], want[i], 1e-6) << i;

    ASSERT_EQ(r.run(0, 0), MI_OK);
    const double z0 = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + 1.0;
    EXPECT_NEAR(r.gates[0], std::exp(3.0) / z0, 1e-6);
    EXPECT_NEAR(r.gates[1], std::exp(2.0) / z0, 1e-6);
}

TEST(MoeRoute, CapacityDropsAndReportsPairs) {
    Route r;
    ASSERT_EQ(r.run(1, 1), MI_OK) << mi_last_error();
    // First choices claim capacity first: t0->1, t1->2, t2->0; then t0->2 (full), t1->3, t2->1 (full).
    EXPECT_EQ(r.kept, (std::vector<uint8_t>{1, 0, 1, 1, 1, 0}));
    EXPECT_EQ(r.dropped, 2);
    EXPECT_EQ(r.counts, (std::vector<int64_t>{1, 1, 1, 1}));
    EXPECT_EQ(r.gates[1], 0.0f);
    EXPECT_EQ(r.gates[5], 0.0f);
    EXPECT_EQ(r.index[1], 2);   // the dropped pair still says where it would have gone
}

TEST(MoeRoute, GivenExpertsAreGatedAndCapacitatedTheSameWay) {
    Route r;
    r.index = {3, 0, 3, 2, 3, 1};   // a hook sends every token's first choice to expert 3
    ASSERT_EQ(r.run(0, 2, 0), MI_OK) << mi_last_error();
    EXPECT_EQ(r.index, (std::vector<int64_t>{3, 0, 3, 2, 3, 1}));   // read, not replaced
    EXPECT_EQ(r.kept, (std::vector<uint8_t>{1, 1, 1, 1, 0, 1}));    // expert 3 holds two
    EXPECT_EQ(r.counts, (std::vector<int64_t>{1, 1, 1, 2}));
    EXPECT_EQ(r.dropped, 1);
    EXPECT_FLOAT_EQ(r.gates[0], kWeights[3]);
    EXPECT_FLOAT_EQ(r.gates[1], kWeights[0]);
    EXPECT_EQ(r.gates[4], 0.0f);
    r.index[5] = 4;
    expect_error(r.run(0, 2, 0), MI_ERR_INVALID_ARGUMENT, "expert index 4 at token 2 slot 1 is out of range [0, 4)");
}

// The rule as GShard states it, one pair after another: the reference for the chunked kernel.
void sequential_capacity(const std::vector<int64_t>& index, int64_t groups, int64_t tokens, int64_t experts, int64_t k,
                         int64_t capacity, std::vector<uint8_t>& kept, std::vector<int64_t>& counts, int64_t& dropped) {
    dropped = 0;
    for (int64_t g = 0; g < groups; ++g) {
        std::vector<int64_t> n(experts, 0);
        for (int64_t s = 0; s < k; ++s)
            for (int64_t t = 0; t < tokens; ++t) {
                const int64_t p = (g * tokens + t) * k + s;
                const bool keep = capacity == 0 || n[index[p]] < capacity;
                kept[p] = keep;
                if (keep) ++n[index[p]]; else ++dropped;
            }
        for (int64_t e = 0; e < experts; ++e) counts[g * experts + e] = n[e];
    }
}

TEST(MoeRoute, ChunkedCapacityEqualsTheSequentialRule) {
    // Thousands of tokens span several chunks per slot; three groups have separate queues.
    const int64_t groups = 3, tokens = 2500, experts = 5, k = 2;
    const auto weights = softmax_rows(random_vector(groups * tokens * experts, 21u), experts);
    for (int64_t capacity : {int64_t{0}, int64_t{1}, int64_t{700}, int64_t{1000}, int64_t{5000}}) {
        std::vector<int64_t> index(groups * tokens * k), counts(groups * experts), want_counts(groups * experts);
        std::vector<float> gates(groups * tokens * k);
        std::vector<uint8_t> kept(groups * tokens * k), want_kept(groups * tokens * k);
        int64_t dropped = -1, want_dropped = -1;
        ASSERT_EQ(mi_moe_route_f32(weights.data(), groups, tokens, experts, k, 1, 0, capacity, index.data(), gates.data(),
                                   counts.data(), kept.data(), &dropped), MI_OK) << mi_last_error();
        sequential_capacity(index, groups, tokens, experts, k, capacity, want_kept, want_counts, want_dropped);
        EXPECT_EQ(kept, want_kept) << "capacity " << capacity;
        EXPECT_EQ(counts, want_counts) << "capacity " << capacity;
        EXPECT_EQ(dropped, want_dropped) << "capacity " << capacity;
        if (capacity == 1000) EXPECT_GT(dropped, 0);   // the drops are in the test
        for (size_t p = 0; p < kept.size(); ++p)
            if (!kept[p]) ASSERT_EQ(gates[p], 0.0f) << p;
    }
}

TEST(MoeRoute, BackwardMatchesFiniteDifferences) {
    const int64_t tokens = 5, experts = 6, k = 3;
    for (int32_t renormalize : {0, 1}) {
        auto weights = softmax_rows(random_vector(tokens * experts, 11u), experts);
        auto dg = random_vector(tokens * k, 12u);
        std::vector<int64_t> index(tokens * k), counts(experts);
        std::vector<float> gates(tokens * k), dw(tokens * experts);
        std::vector<uint8_t> kept(tokens * k);
        int64_t dropped = 0;
        ASSERT_EQ(mi_moe_route_f32(weights.data(), 1, tokens, experts, k, 1, renormalize, 2, index.data(), gates.data(),
                                   counts.data(), kept.data(), &dropped), MI_OK);
        ASSERT_GT(dropped, 0);   // capacity 2 with 15 pairs over 6 experts must drop: drops are in the test
        ASSERT_EQ(mi_moe_route_backward_f32(weights.data(), index.data(), kept.data(), dg.data(), tokens, experts, k,
                                            renormalize, dw.data()), MI_OK) << mi_last_error();
        // Loss = sum dg * gates with the routing (index, kept) held fixed, as autograd sees it.
        auto loss = [&](const std::vector<float>& w) {
            std::vector<int64_t> i2 = index, c2(experts);
            std::vector<float> g2(tokens * k);
            std::vector<uint8_t> k2(tokens * k);
            int64_t d2;
            mi_moe_route_f32(w.data(), 1, tokens, experts, k, 0, renormalize, 2, i2.data(), g2.data(), c2.data(), k2.data(), &d2);
            double s = 0;
            for (int64_t p = 0; p < tokens * k; ++p) s += static_cast<double>(dg[p]) * g2[p];
            return s;
        };
        for (int64_t i = 0; i < tokens * experts; ++i) {
            auto up = weights, down = weights;
            up[i] += 1e-3f;
            down[i] -= 1e-3f;
            EXPECT_NEAR(dw[i], (loss(up) - loss(down)) / 2e-3, 2e-3) << "renormalize " << renormalize << " weight " << i;
        }
    }
}

TEST(MoePermute, StableCountingSortAndPaddedLayout) {
    const std::vector<int64_t> index = {2, 0, 1, 2, 2, 0};   // 3 tokens, k = 2
    std::vector<int64_t> row_of(6), offsets(4), counts(3);
    ASSERT_EQ(mi_moe_count_i64(index.data(), 3, 2, 3, counts.data()), MI_OK);
    EXPECT_EQ(counts, (std::vector<int64_t>{2, 1, 3}));
    ASSERT_EQ(mi_moe_permute_i64(index.data(), 3, 2, 3, 0, row_of.data(), offsets.data()), MI_OK) << mi_last_error();
    EXPECT_EQ(offsets, (std::vector<int64_t>{0, 2, 3, 6}));
    EXPECT_EQ(row_of, (std::vector<int64_t>{3, 0, 2, 4, 5, 1}));
    ASSERT_EQ(mi_moe_permute_i64(index.data(), 3, 2, 3, 4, row_of.data(), offsets.data()), MI_OK);
    EXPECT_EQ(offsets, (std::vector<int64_t>{0, 4, 8, 12}));
    EXPECT_EQ(row_of, (std::vector<int64_t>{8, 0, 4, 9, 10, 1}));
}

TEST(MoeDispatch, GatherCombineAndBackwardsMatchNaiveLoops) {
    const int64_t tokens = 300, k = 2, experts = 5, d = 13, stride = 200;
    std::mt19937 rng(5);
    std::vector<int64_t> index(tokens * k);
    for (int64_t t = 0; t < tokens; ++t) {
        index[t * k] = rng() % experts;
        index[t * k + 1] = (index[t * k] + 1 + rng() % (experts - 1)) % experts;
    }
    for (int64_t layout : {int64_t{0}, stride}) {
        const int64_t rows = layout ? experts * stride : tokens * k;
        std::vector<int64_t> row_of(tokens * k), offsets(experts + 1);
        ASSERT_EQ(mi_moe_permute_i64(index.data(), tokens, k, experts, layout, row_of.data(), offsets.data()), MI_OK);
        auto x = random_vector(tokens * d, 1u), gates = random_vector(tokens * k, 2u);
        auto grouped_out = random_vector(rows * d, 3u), dy = random_vector(tokens * d, 4u);
        std::vector<float> grouped(rows * d, 7.0f), y(tokens * d), dx(tokens * d), dgrouped(rows * d, 9.0f), dgates(tokens * k);
        ASSERT_EQ(mi_moe_gather_f32(x.data(), row_of.data(), tokens, k, d, rows, grouped.data()), MI_OK);
        ASSERT_EQ(mi_moe_combine_f32(grouped_out.data(), gates.data(), row_of.data(), tokens, k, d, rows, y.data()), MI_OK);
        ASSERT_EQ(mi_moe_combine_backward_f32(grouped_out.data(), gates.data(), row_of.data(), dy.data(), tokens, k, d, rows,
                                              dgrouped.data(), dgates.data()), MI_OK);
        ASSERT_EQ(mi_moe_gather_backward_f32(dgrouped.data(), row_of.data(), tokens, k, d, rows, dx.data()), MI_OK);
        std::vector<uint8_t> used(rows, 0);
        for (int64_t t = 0; t < tokens; ++t)
            for (int64_t s = 0; s < k; ++s) {
                const int64_t p = t * k + s, r = row_of[p];
                used[r] = 1;
                ASSERT_GE(r, offsets[index[p]]);   // the row lies in its expert's group
                ASSERT_LT(r, offsets[index[p]] + (layout ? stride : offsets[index[p] + 1] - offsets[index[p]]));
                double dot = 0;
                for (int64_t c = 0; c < d; ++c) {
                    ASSERT_EQ(grouped[r * d + c], x[t * d + c]);
                    ASSERT_NEAR(dgrouped[r * d + c], gates[p] * dy[t * d + c], 1e-6);
                    dot += static_cast<double>(dy[t * d + c]) * grouped_out[r * d + c];
                }
                ASSERT_NEAR(dgates[p], dot, 1e-4);
            }
        for (int64_t t = 0; t < tokens; ++t)
            for (int64_t c = 0; c < d; ++c) {
                double want_y = 0, want_dx = 0;
                for (int64_t s = 0; s < k; ++s) {
                    want_y += gates[t * k + s] * grouped_out[row_of[t * k + s] * d + c];
                    want_dx += dgrouped[row_of[t * k + s] * d + c];
                }
                ASSERT_NEAR(y[t * d + c], want_y, 1e-5);
                ASSERT_NEAR(dx[t * d + c], want_dx, 1e-5);
            }
        for (int64_t r = 0; r < rows; ++r)
            if (!used[r]) {
                ASSERT_EQ(grouped[r * d], 7.0f) << "gather must leave padding rows alone";
                ASSERT_EQ(dgrouped[r * d], 0.0f) << "padding rows get no gradient";
            }
    }
}

TEST(MoeRejections, ExpertIdsOutOfRange) {
    std::vector<int64_t> index = {0, 1, 2, 4}, out(4), offsets(5), counts(4);
    expect_error(mi_moe_count_i64(index.data(), 2, 2, 4, counts.data()), MI_ERR_INVALID_ARGUMENT,
                 "expert index 4 at token 1 slot 1 is out of range [0, 4)");
    index[1] = -1;
    expect_error(mi_moe_permute_i64(index.data(), 2, 2, 4, 0, out.data(), offsets.data()), MI_ERR_INVALID_ARGUMENT,
                 "expert index -1 at token 0 slot 1");
    std::vector<float> dg(4), dw(8), weights(8);
    std::vector<uint8_t> kept(4, 1);
    expect_error(mi_moe_route_backward_f32(weights.data(), index.data(), kept.data(), dg.data(), 2, 4, 2, 0, dw.data()),
                 MI_ERR_INVALID_ARGUMENT, "out of range");
}

TEST(MoeRejections, RouteArguments) {
    Route r;
    std::vector<float> w(12);
    auto call = [&](const float* weights, int64_t groups, int64_t tokens, int64_t experts, int64_t k, int32_t choose,
                    int32_t renormalize, int64_t cap, int64_t* index) {
        return mi_moe_route_f32(weights, groups, tokens, experts, k, choose, renormalize, cap, index, r.gates.data(),
                                r.counts.data(), r.kept.data(), &r.dropped);
    };
    int64_t* i = r.index.data();
    expect_error(call(nullptr, 1, 3, 4, 2, 1, 0, 0, i), MI_ERR_NULL_POINTER, "weights is a null pointer");
    expect_error(call(w.data(), 1, 3, 4, 2, 1, 0, 0, nullptr), MI_ERR_NULL_POINTER, "expert_index is a null pointer");
    expect_error(call(w.data(), 0, 3, 4, 2, 1, 0, 0, i), MI_ERR_INVALID_SIZE, "groups must be positive, got 0");
    expect_error(call(w.data(), 1, 0, 4, 2, 1, 0, 0, i), MI_ERR_INVALID_SIZE, "tokens must be positive, got 0");
    expect_error(call(w.data(), 1, 3, -4, 2, 1, 0, 0, i), MI_ERR_INVALID_SIZE, "experts must be positive, got -4");
    expect_error(call(w.data(), 1, 3, 4, 5, 1, 0, 0, i), MI_ERR_INVALID_ARGUMENT, "k (5) must be at most experts (4)");
    expect_error(call(w.data(), 1, 3, 4, 2, 2, 0, 0, i), MI_ERR_INVALID_ARGUMENT, "choose must be 0 (expert_index given) or 1 (top-k chosen here), got 2");
    expect_error(call(w.data(), 1, 3, 4, 2, 1, 7, 0, i), MI_ERR_INVALID_ARGUMENT, "renormalize must be 0 or 1, got 7");
    expect_error(call(w.data(), 1, 3, 4, 2, 1, 0, -1, i), MI_ERR_INVALID_ARGUMENT, "capacity must be 0 (no limit) or positive, got -1");
    expect_error(call(w.data(), 1, int64_t{1} << 40, int64_t{1} << 40, 2, 1, 0, 0, i), MI_ERR_OVERFLOW, "overflows");
    expect_error(call(w.data(), int64_t{1} << 40, int64_t{1} << 40, 4, 2, 1, 0, 0, i), MI_ERR_OVERFLOW, "overflows");
}

TEST(MoeRejections, DispatchArguments) {
    std::vector<float> buf(64);
    std::vector<int64_t> rows_ok = {0, 1, 2, 3}, out_of_range = {0, 1, 2, 9}, shared = {0, 1, 1, 3};
    float* f = buf.data();
    expect_error(mi_moe_gather_f32(nullptr, rows_ok.data(), 2, 2, 4, 4, f), MI_ERR_NULL_POINTER, "x is a null pointer");
    expect_error(mi_moe_gather_f32(f, nullptr, 2, 2, 4, 4, f), MI_ERR_NULL_POINTER, "row_of is a null pointer");
    expect_error(mi_moe_gather_f32(f, rows_ok.data(), 2, 2, 0, 4, f), MI_ERR_INVALID_SIZE, "d must be positive, got 0");
    expect_error(mi_moe_gather_f32(f, rows_ok.data(), 2, 2, 4, 3, f), MI_ERR_INVALID_SIZE, "rows (3) must hold every pair");
    expect_error(mi_moe_gather_f32(f, out_of_range.data(), 2, 2, 4, 4, f), MI_ERR_INVALID_ARGUMENT,
                 "row_of[3] = 9 is outside the grouped buffer [0, 4)");
    expect_error(mi_moe_combine_f32(f, f, shared.data(), 2, 2, 4, 4, f), MI_ERR_INVALID_ARGUMENT, "row 1 is the target of two pairs");
    expect_error(mi_moe_combine_backward_f32(f, f, rows_ok.data(), nullptr, 2, 2, 4, 4, f, f), MI_ERR_NULL_POINTER, "dy is a null pointer");
    expect_error(mi_moe_combine_backward_f32(f, f, rows_ok.data(), f, 2, 2, 4, 4, f, nullptr), MI_ERR_NULL_POINTER, "dgates is a null pointer");
    expect_error(mi_moe_gather_backward_f32(f, rows_ok.data(), -2, 2, 4, 4, f), MI_ERR_INVALID_SIZE, "tokens must be positive, got -2");
    expect_error(mi_moe_gather_f32(f, rows_ok.data(), int64_t{1} << 40, 2, int64_t{1} << 40, 4, f), MI_ERR_OVERFLOW, "overflows");
    std::vector<int64_t> index = {0, 0, 0, 1}, row_of(4), offsets(3);
    expect_error(mi_moe_permute_i64(index.data(), 2, 2, 2, 2, row_of.data(), offsets.data()), MI_ERR_INVALID_ARGUMENT,
                 "expert 0 has 3 pairs, more than group_stride = 2");
    expect_error(mi_moe_permute_i64(index.data(), 2, 2, 2, -1, row_of.data(), offsets.data()), MI_ERR_INVALID_SIZE,
                 "group_stride must be 0 or positive, got -1");
}

}  // namespace

TEST(MoeRejections, AHugeRowCountNeedsNoScratchOfThatSize) {
    // rows is the caller's claim about the grouped buffer; validating row_of used to allocate a byte per row
    // (2^60 rows: bad_alloc, reported as out of memory). Only row 0 is written here.
    const float x[2] = {1.0f, 2.0f};
    float grouped[2] = {};
    const int64_t row_of[1] = {0};
    ASSERT_EQ(mi_moe_gather_f32(x, row_of, 1, 1, 2, int64_t{1} << 60, grouped), MI_OK) << mi_last_error();
    EXPECT_EQ(grouped[0], 1.0f);
    EXPECT_EQ(grouped[1], 2.0f);
    float dx[2] = {};
    ASSERT_EQ(mi_moe_gather_backward_f32(grouped, row_of, 1, 1, 2, int64_t{1} << 60, dx), MI_OK) << mi_last_error();
    EXPECT_EQ(dx[1], 2.0f);
}
