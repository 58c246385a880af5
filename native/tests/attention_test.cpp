// Fused attention against a naive double-precision reference (forward, lse, scores, pattern,
// backward) on both the AVX2 and the portable path, and every argument rejection.
#include "mechinterp.h"
#include "each_path.hpp"
#include "random_vector.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Case {
    int64_t b, h, tq, tk, d;
    bool causal;
    float scale;   // magnitude of q and k entries; 100 makes logits of order +-1e4
};

std::ostream& operator<<(std::ostream& os, const Case& c) {
    return os << "B" << c.b << "H" << c.h << "Tq" << c.tq << "Tk" << c.tk << "D" << c.d << (c.causal ? "causal" : "full")
              << "x" << c.scale;
}

// Naive attention for one (batch, head) in double: materialized scores, masked softmax, matmuls.
struct Reference {
    std::vector<double> scores, pattern, out, lse, dq, dk, dv;

    Reference(const Case& c, const float* q, const float* k, const float* v, const float* dout) {
        const int64_t tq = c.tq, tk = c.tk, d = c.d;
        const double scale = 1.0 / std::sqrt(static_cast<double>(d));
        scores.assign(tq * tk, -kInf);
        pattern.assign(tq * tk, 0.0);
        out.assign(tq * d, 0.0);
        lse.assign(tq, -kInf);
        for (int64_t i = 0; i < tq; ++i) {
            double m = -kInf;
            for (int64_t j = 0; j < tk; ++j) {
                if (c.causal && j > i + tk - tq) continue;
                double s = 0;
                for (int64_t x = 0; x < d; ++x) s += static_cast<double>(q[i * d + x]) * k[j * d + x];
                scores[i * tk + j] = s * scale;
                m = std::max(m, s * scale);
            }
            if (m == -kInf) continue;
            double sum = 0;
            for (int64_t j = 0; j < tk; ++j) sum += std::exp(scores[i * tk + j] - m);
            lse[i] = m + std::log(sum);
            for (int64_t j = 0; j < tk; ++j) {
                pattern[i * tk + j] = std::exp(scores[i * tk + j] - lse[i]);
                for (int64_t x = 0; x < d; ++x) out[i * d + x] += pattern[i * tk + j] * v[j * d + x];
            }
        }
        dq.assign(tq * d, 0.0);
        dk.assign(tk * d, 0.0);
        dv.assign(tk * d, 0.0);
        for (int64_t i = 0; i < tq; ++i) {
            std::vector<double> dp(tk, 0.0);
            double dot = 0;
            for (int64_t j = 0; j < tk; ++j) {
                for (int64_t x = 0; x < d; ++x) {
                    dp[j] += static_cast<double>(dout[i * d + x]) * v[j * d + x];
                    dv[j * d + x] += pattern[i * tk + j] * dout[i * d + x];
                }
                dot += dp[j] * pattern[i * tk + j];
            }
            for (int64_t j = 0; j < tk; ++j) {
                const double ds = pattern[i * tk + j] * (dp[j] - dot) * scale;
                for (int64_t x = 0; x < d; ++x) {
                    dq[i * d + x] += ds * k[j * d + x];
                    dk[j * d + x] += ds * q[i * d + x];
                }
            }
        }
    }
};

// Relative-to-magnitude comparison: |a - b| <= tol * (1 + |b|), and never NaN.
void expect_close(const float* got, const std::vector<double>& want, double tol, const char* what) {
    for (size_t i = 0; i < want.size(); ++i) {
        ASSERT_FALSE(std::isnan(got[i])) << what << " is NaN at " << i;
        if (std::isinf(want[i])) {
            ASSERT_EQ(got[i], static_cast<float>(want[i])) << what << " at " << i;
            continue;
        }
        ASSERT_NEAR(got[i], want[i], tol * (1.0 + std::abs(want[i]))) << what << " at " << i;
    }
}

class AttentionShapes : public OnEachPath<Case> {};

TEST_P(AttentionShapes, ForwardBackwardPatternMatchReference) {
    const Case c = std::get<0>(GetParam());
    const int64_t bh = c.b * c.h, nq = bh * c.tq * c.d, nk = bh * c.tk * c.d;
    const uint32_t seed = static_cast<uint32_t>(c.tq * 131 + c.tk * 17 + c.d);
    auto q = random_vector(nq, c.scale, seed), k = random_vector(nk, c.scale, seed + 1);
    auto v = random_vector(nk, 1.0f, seed + 2), dout = random_vector(nq, 1.0f, seed + 3);
    std::vector<float> out(nq), lse(bh * c.tq), scores(bh * c.tq * c.tk), pattern(bh * c.tq * c.tk);
    std::vector<float> out2(nq), lse2(bh * c.tq), dq(nq), dk(nk), dv(nk);

    ASSERT_EQ(mi_attention_forward_f32(q.data(), k.data(), v.data(), c.b, c.h, c.tq, c.tk, c.d, c.causal, out.data(),
                                       lse.data(), scores.data(), pattern.data()),
              MI_OK)
        << mi_last_error();
    // Without the pattern the kernel takes its streaming path: same output.
    ASSERT_EQ(mi_attention_forward_f32(q.data(), k.data(), v.data(), c.b, c.h, c.tq, c.tk, c.d, c.causal, out2.data(),
                                       lse2.data(), nullptr, nullptr),
              MI_OK);
    ASSERT_EQ(mi_attention_backward_f32(q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(), c.b, c.h,
                                        c.tq, c.tk, c.d, c.causal, dq.data(), dk.data(), dv.data()),
              MI_OK)
        << mi_last_error();
    // The forward splits work by head (keys packed inside the task) when there are at least 4 heads a thread, else
    // by query block (every head packed first); one thread and bh threads take both on any machine. Each query
    // block's arithmetic is the same either way, so the results are identical.
    const int32_t threads = mi_get_num_threads();
    for (int32_t n : {1, static_cast<int32_t>(std::max<int64_t>(2, bh))}) {
        std::vector<float> out3(nq), lse3(bh * c.tq), scores3(scores.size()), pattern3(pattern.size());
        ASSERT_EQ(mi_set_num_threads(n), MI_OK);
        ASSERT_EQ(mi_attention_forward_f32(q.data(), k.data(), v.data(), c.b, c.h, c.tq, c.tk, c.d, c.causal, out3.data(),
                                           lse3.data(), scores3.data(), pattern3.data()),
                  MI_OK);
        EXPECT_EQ(out3, out) << n << " threads";
        EXPECT_EQ(lse3, lse) << n << " threads";
        EXPECT_EQ(scores3, scores) << n << " threads";
        EXPECT_EQ(pattern3, pattern) << n << " threads";
    }
    ASSERT_EQ(mi_set_num_threads(threads), MI_OK);

    // Logits of 1e4 carry float32 rounding of ~1e-3 into the scores; the pattern and grads stay bounded.
    const double tol = c.scale > 10 ? 2e-3 : 2e-5;
    for (int64_t h = 0; h < bh; ++h) {
        const size_t qo = h * c.tq * c.d, ko = h * c.tk * c.d, so = h * c.tq * c.tk;
        Reference ref(c, q.data() + qo, k.data() + ko, v.data() + ko, dout.data() + qo);
        expect_close(out.data() + qo, ref.out, tol, "out");
        expect_close(out2.data() + qo, ref.out, tol, "out (no pattern)");
        expect_close(lse.data() + h * c.tq, ref.lse, tol, "lse");
        expect_close(scores.data() + so, ref.scores, tol, "scores");
        expect_close(pattern.data() + so, ref.pattern, tol, "pattern");
        if (c.scale > 10) continue;   // the gradient of a saturated softmax is float noise times 1e4
        expect_close(dq.data() + qo, ref.dq, 1e-4, "dq");
        expect_close(dk.data() + ko, ref.dk, 1e-4, "dk");
        expect_close(dv.data() + ko, ref.dv, 1e-4, "dv");
    }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionShapes,
    ::testing::Combine(::testing::Values(Case{1, 1, 1, 1, 1, true, 1.0f},        // T = 1
                                         Case{2, 3, 65, 65, 20, true, 1.0f},     // T past one block, d not a multiple of 8
                                         Case{1, 2, 130, 130, 64, true, 1.0f},   // three blocks, last one partial
                                         Case{2, 1, 37, 37, 16, false, 1.0f},    // not causal
                                         Case{1, 2, 5, 70, 8, true, 1.0f},       // fewer queries than keys (KV cache)
                                         Case{1, 1, 70, 5, 12, false, 1.0f},     // more queries than keys (not causal)
                                         Case{3, 4, 33, 33, 8, true, 1.0f},      // one block: K^T packed inside each head's task
                                         Case{4, 2, 150, 150, 20, true, 1.0f},   // 8 heads of three blocks, d padded
                                         Case{1, 2, 33, 33, 7, true, 100.0f},    // logits of order +-1e4
                                         Case{1, 1, 100, 100, 32, false, 100.0f},
                                         // past kWholeRowKeys (2048): the online softmax, key block by key block
                                         Case{1, 2, 70, 2100, 12, true, 1.0f},    // two query blocks, KV cache
                                         Case{1, 1, 9, 2060, 8, false, 1.0f}),
                       kSimdLevels),
    case_name);

// Rotary attention: the kernel rotates q and k itself. Reference: rotate in double (GPT-NeoX rotate-half at
// positions j for keys, i + tk - tq for queries), run the plain reference on the rotated rows, and take the
// gradients back through the rotation.
struct RotaryCase {
    int64_t b, h, tq, tk, d, rd;
    bool causal;
};

std::ostream& operator<<(std::ostream& os, const RotaryCase& c) {
    return os << "B" << c.b << "H" << c.h << "Tq" << c.tq << "Tk" << c.tk << "D" << c.d << "R" << c.rd << (c.causal ? "causal" : "full");
}

class RotaryAttention : public OnEachPath<RotaryCase> {};

TEST_P(RotaryAttention, MatchesTheReferenceOnRotatedRows) {
    const RotaryCase c = std::get<0>(GetParam());
    const int64_t bh = c.b * c.h, nq = bh * c.tq * c.d, nk = bh * c.tk * c.d, half = c.rd / 2;
    auto q = random_vector(nq, 1.0f, 11u), k = random_vector(nk, 1.0f, 12u);
    auto v = random_vector(nk, 1.0f, 13u), dout = random_vector(nq, 1.0f, 14u);
    std::vector<float> cos(c.tk * c.rd), sin(c.tk * c.rd);
    for (int64_t p = 0; p < c.tk; ++p)
        for (int64_t j = 0; j < half; ++j) {
            const double angle = p * std::pow(10000.0, -2.0 * j / c.rd);
            cos[p * c.rd + j] = cos[p * c.rd + j + half] = static_cast<float>(std::cos(angle));
            sin[p * c.rd + j] = static_cast<float>(-std::sin(angle));
            sin[p * c.rd + j + half] = static_cast<float>(std::sin(angle));
        }
    // Rotated copy of rows [n, d], row r at position p0 + r (the rotation the ABI describes).
    auto rotate = [&](const float* x, int64_t n, int64_t p0) {
        std::vector<float> y(x, x + n * c.d);
        for (int64_t r = 0; r < n; ++r)
            for (int64_t j = 0; j < c.rd; ++j) {
                const int64_t partner = j < half ? j + half : j - half, p = p0 + r;
                y[r * c.d + j] = static_cast<float>(static_cast<double>(x[r * c.d + j]) * cos[p * c.rd + j] +
                                                    static_cast<double>(x[r * c.d + partner]) * sin[p * c.rd + j]);
            }
        return y;
    };
    // Gradient through the rotation: dx = g * cos + roll(g * sin).
    auto unrotate = [&](const std::vector<double>& g, int64_t n, int64_t p0) {
        std::vector<double> dx(g);
        for (int64_t r = 0; r < n; ++r)
            for (int64_t j = 0; j < c.rd; ++j) {
                const int64_t partner = j < half ? j + half : j - half, p = p0 + r;
                dx[r * c.d + j] = g[r * c.d + j] * cos[p * c.rd + j] + g[r * c.d + partner] * sin[p * c.rd + partner];
            }
        return dx;
    };
    std::vector<float> out(nq), lse(bh * c.tq), pattern(bh * c.tq * c.tk), dq(nq), dk(nk), dv(nk);
    ASSERT_EQ(mi_attention_rotary_forward_f32(q.data(), k.data(), v.data(), c.b, c.h, c.tq, c.tk, c.d, c.causal, cos.data(),
                                              sin.data(), c.rd, out.data(), lse.data(), nullptr, pattern.data()),
              MI_OK)
        << mi_last_error();
    ASSERT_EQ(mi_attention_rotary_backward_f32(q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(), c.b, c.h,
                                               c.tq, c.tk, c.d, c.causal, cos.data(), sin.data(), c.rd, dq.data(), dk.data(),
                                               dv.data()),
              MI_OK)
        << mi_last_error();
    const Case plain{c.b, c.h, c.tq, c.tk, c.d, c.causal, 1.0f};
    for (int64_t h = 0; h < bh; ++h) {
        const size_t qo = h * c.tq * c.d, ko = h * c.tk * c.d;
        auto qr = rotate(q.data() + qo, c.tq, c.tk - c.tq), kr = rotate(k.data() + ko, c.tk, 0);
        Reference ref(plain, qr.data(), kr.data(), v.data() + ko, dout.data() + qo);
        expect_close(out.data() + qo, ref.out, 2e-5, "out");
        expect_close(pattern.data() + h * c.tq * c.tk, ref.pattern, 2e-5, "pattern");
        expect_close(dq.data() + qo, unrotate(ref.dq, c.tq, c.tk - c.tq), 1e-4, "dq");
        expect_close(dk.data() + ko, unrotate(ref.dk, c.tk, 0), 1e-4, "dk");
        expect_close(dv.data() + ko, ref.dv, 1e-4, "dv");
    }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RotaryAttention,
    ::testing::Combine(::testing::Values(RotaryCase{3, 4, 33, 33, 8, 8, true},     // one block, K^T packed per task
                                         RotaryCase{2, 2, 70, 70, 16, 16, true},   // two blocks
                                         RotaryCase{1, 2, 33, 33, 12, 6, true},    // rotary on part of d_head
                                         RotaryCase{1, 1, 5, 40, 8, 8, true},      // fewer queries than keys (KV cache)
                                         RotaryCase{1, 1, 130, 130, 8, 8, true},   // one head, three key blocks: dq partials
                                         RotaryCase{2, 1, 20, 20, 8, 4, false}),
                       kSimdLevels),
    case_name);

TEST(Attention, RotaryRejectsBadTables) {
    std::vector<float> buf(256, 0.0f);
    float* p = buf.data();
    auto forward = [&](const float* cos, const float* sin, int64_t rd, int64_t tq, int64_t tk) {
        return mi_attention_rotary_forward_f32(p, p, p, 1, 1, tq, tk, 4, 1, cos, sin, rd, p, p, nullptr, nullptr);
    };
    EXPECT_EQ(forward(nullptr, p, 4, 2, 2), MI_ERR_NULL_POINTER);
    EXPECT_NE(std::string(mi_last_error()).find("rot_cos is a null pointer"), std::string::npos);
    EXPECT_EQ(forward(p, nullptr, 4, 2, 2), MI_ERR_NULL_POINTER);
    EXPECT_EQ(forward(p, p, 3, 2, 2), MI_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(mi_last_error()).find("rotary_dim must be even and in [2, d_head = 4], got 3"), std::string::npos);
    EXPECT_EQ(forward(p, p, 6, 2, 2), MI_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(forward(p, p, 4, 3, 2), MI_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(mi_last_error()).find("q_len <= kv_len"), std::string::npos);
    EXPECT_EQ(mi_attention_rotary_backward_f32(p, p, p, p, p, p, 1, 1, 2, 2, 4, 1, p, p, 0, p, p, p), MI_ERR_INVALID_ARGUMENT);
}

TEST(Attention, ExtremeLogitsGiveNoNaN) {
    const int64_t t = 67, d = 24;
    auto q = random_vector(t * d, 1.0f, 3u), k = random_vector(t * d, 1.0f, 4u), v = random_vector(t * d, 1.0f, 5u);
    for (size_t i = 0; i < q.size(); ++i) q[i] = (i % 2 ? 1e4f : -1e4f);   // scores around +-1e8 / sqrt(d)
    std::vector<float> out(t * d), lse(t), pattern(t * t), dq(t * d), dk(t * d), dv(t * d);
    ASSERT_EQ(mi_attention_forward_f32(q.data(), k.data(), v.data(), 1, 1, t, t, d, 1, out.data(), lse.data(), nullptr,
                                       pattern.data()),
              MI_OK);
    ASSERT_EQ(mi_attention_backward_f32(q.data(), k.data(), v.data(), out.data(), lse.data(), v.data(), 1, 1, t, t, d, 1,
                                        dq.data(), dk.data(), dv.data()),
              MI_OK);
    for (auto* buf : {&out, &lse, &pattern, &dq, &dk, &dv})
        for (float x : *buf) ASSERT_FALSE(std::isnan(x));
    for (int64_t i = 0; i < t; ++i) {
        double sum = 0;
        for (int64_t j = 0; j < t; ++j) sum += pattern[i * t + j];
        EXPECT_NEAR(sum, 1.0, 1e-5) << "row " << i;
    }
}

// The pattern to a few ulp over the whole range of the exp (|logit| up to 80), where the tolerance of the
// shape tests would hide a coarse exp: one query, eight keys scored [x, 0, ..., 0] (d = 1, so no scaling), whose
// pattern is e^x / (e^x + 7) and 1 / (e^x + 7). Eight keys put the exp on the vector path.
class ExpRange : public OnEachPath<int> {};

TEST_P(ExpRange, PatternIsExactToAFewUlpFromMinus80To80) {
    const int64_t n = 1601, tk = 8;   // x = -80, -79.9, ..., 80
    std::vector<float> q(n), k(n * tk, 0.0f), v(n * tk, 1.0f), out(n), lse(n), pattern(n * tk);
    for (int64_t b = 0; b < n; ++b) {
        q[b] = -80.0f + 0.1f * static_cast<float>(b);
        k[b * tk] = 1.0f;
    }
    ASSERT_EQ(mi_attention_forward_f32(q.data(), k.data(), v.data(), n, 1, 1, tk, 1, 0, out.data(), lse.data(), nullptr,
                                       pattern.data()),
              MI_OK)
        << mi_last_error();
    for (int64_t b = 0; b < n; ++b) {
        const double ex = std::exp(static_cast<double>(q[b])), first = ex / (ex + 7.0), other = 1.0 / (ex + 7.0);
        ASSERT_NEAR(pattern[b * tk], first, 1e-6 * first) << "x = " << q[b];
        for (int64_t j = 1; j < tk; ++j) ASSERT_NEAR(pattern[b * tk + j], other, 1e-6 * other) << "x = " << q[b] << ", key " << j;
        ASSERT_NEAR(lse[b], std::log(ex + 7.0), 1e-6 * (1.0 + std::abs(std::log(ex + 7.0)))) << "x = " << q[b];
    }
}

INSTANTIATE_TEST_SUITE_P(EachPath, ExpRange, ::testing::Combine(::testing::Values(0), kSimdLevels), case_name);

// lse to 2 ulp where the shape tests' tolerance would hide a coarse log: causal, every score 0, so row i's sum is
// exactly i + 1 and its lse is log(i + 1), for sums from 1 to 2000.
class LseRange : public OnEachPath<int> {};

TEST_P(LseRange, LseIsLogOfTheSumToTwoUlp) {
    const int64_t t = 2000;
    std::vector<float> q(t, 0.0f), k(t, 1.0f), v(t, 1.0f), out(t), lse(t);
    ASSERT_EQ(mi_attention_forward_f32(q.data(), k.data(), v.data(), 1, 1, t, t, 1, 1, out.data(), lse.data(), nullptr, nullptr),
              MI_OK)
        << mi_last_error();
    for (int64_t i = 0; i < t; ++i) {
        const double want = std::log(static_cast<double>(i + 1));
        ASSERT_NEAR(lse[i], want, 2.0 * std::ldexp(1.0, std::ilogb(std::max(want, 1e-30)) - 23)) << "sum " << i + 1;
        ASSERT_NEAR(out[i], 1.0, 1e-6) << "row " << i;
    }
}

INSTANTIATE_TEST_SUITE_P(EachPath, LseRange, ::testing::Combine(::testing::Values(0), kSimdLevels), case_name);

// NaN logits poison the rows that see them, as in libtorch, and only those. A NaN query entry makes its whole row
// of scores NaN; a NaN key entry makes one score NaN in every row that sees that key, among finite ones, so the
// row's max stays finite and only the exp can carry the NaN on (its clamp would turn it into a number).
class NanInput : public OnEachPath<int> {};

TEST_P(NanInput, PoisonsTheRowsThatSeeItOnly) {
    const int64_t t = 40, d = 16, bad_query = 33, bad_key = 3;   // row 33 sees 34 keys: four vector groups and a tail
    auto q = random_vector(t * d, 1.0f, 21u), k = random_vector(t * d, 1.0f, 22u), v = random_vector(t * d, 1.0f, 23u);
    std::vector<float> out(t * d), lse(t), pattern(t * t);
    auto run = [&] {
        ASSERT_EQ(mi_attention_forward_f32(q.data(), k.data(), v.data(), 1, 1, t, t, d, 1, out.data(), lse.data(), nullptr,
                                           pattern.data()),
                  MI_OK)
            << mi_last_error();
    };
    q[bad_query * d + 5] = std::numeric_limits<float>::quiet_NaN();
    run();
    for (int64_t i = 0; i < t; ++i)
        for (int64_t c = 0; c < d; ++c) {
            if (i == bad_query) EXPECT_TRUE(std::isnan(out[i * d + c])) << "NaN query: col " << c;
            else EXPECT_TRUE(std::isfinite(out[i * d + c])) << "NaN query: row " << i << " col " << c;
        }
    q[bad_query * d + 5] = 0.5f;
    k[bad_key * d + 7] = std::numeric_limits<float>::quiet_NaN();
    run();
    for (int64_t i = 0; i < t; ++i)
        for (int64_t c = 0; c < d; ++c) {
            if (i >= bad_key) EXPECT_TRUE(std::isnan(out[i * d + c])) << "NaN key: row " << i << " col " << c;
            else EXPECT_TRUE(std::isfinite(out[i * d + c])) << "NaN key: row " << i << " col " << c;
        }
    for (int64_t i = bad_key; i < t; ++i) {
        EXPECT_TRUE(std::isnan(lse[i])) << "NaN key: lse of row " << i;
        for (int64_t j = 0; j <= i; ++j) EXPECT_TRUE(std::isnan(pattern[i * t + j])) << "NaN key: pattern row " << i << " key " << j;
    }
}

INSTANTIATE_TEST_SUITE_P(EachPath, NanInput, ::testing::Combine(::testing::Values(0), kSimdLevels), case_name);

// Calls forward with one argument replaced, for the rejection tests.
struct ForwardCall {
    std::vector<float> buf = std::vector<float>(64, 0.0f);
    const float *q = buf.data(), *k = buf.data(), *v = buf.data();
    float *out = buf.data(), *lse = buf.data();
    int64_t b = 1, h = 1, tq = 2, tk = 2, d = 4;
    int32_t causal = 1;
    mi_status run() { return mi_attention_forward_f32(q, k, v, b, h, tq, tk, d, causal, out, lse, nullptr, nullptr); }
};

void expect_error(mi_status got, mi_status want, const std::string& text) {
    EXPECT_EQ(got, want);
    EXPECT_NE(std::string(mi_last_error()).find(text), std::string::npos) << mi_last_error();
}

TEST(Attention, ForwardRejectsNullPointers) {
    ForwardCall c;
    ASSERT_EQ(c.run(), MI_OK) << mi_last_error();
    { ForwardCall x; x.q = nullptr; expect_error(x.run(), MI_ERR_NULL_POINTER, "q is a null pointer"); }
    { ForwardCall x; x.k = nullptr; expect_error(x.run(), MI_ERR_NULL_POINTER, "k is a null pointer"); }
    { ForwardCall x; x.v = nullptr; expect_error(x.run(), MI_ERR_NULL_POINTER, "v is a null pointer"); }
    { ForwardCall x; x.out = nullptr; expect_error(x.run(), MI_ERR_NULL_POINTER, "out is a null pointer"); }
    { ForwardCall x; x.lse = nullptr; expect_error(x.run(), MI_ERR_NULL_POINTER, "lse is a null pointer"); }
}

TEST(Attention, ForwardRejectsBadSizes) {
    { ForwardCall x; x.b = 0; expect_error(x.run(), MI_ERR_INVALID_SIZE, "batch must be positive, got 0"); }
    { ForwardCall x; x.h = -1; expect_error(x.run(), MI_ERR_INVALID_SIZE, "heads must be positive, got -1"); }
    { ForwardCall x; x.tq = 0; expect_error(x.run(), MI_ERR_INVALID_SIZE, "q_len must be positive, got 0"); }
    { ForwardCall x; x.tk = -5; expect_error(x.run(), MI_ERR_INVALID_SIZE, "kv_len must be positive, got -5"); }
    { ForwardCall x; x.d = 0; expect_error(x.run(), MI_ERR_INVALID_SIZE, "d_head must be positive, got 0"); }
    { ForwardCall x; x.causal = 2; expect_error(x.run(), MI_ERR_INVALID_ARGUMENT, "causal must be 0 or 1, got 2"); }
    { ForwardCall x; x.b = int64_t{1} << 40; x.h = int64_t{1} << 30; expect_error(x.run(), MI_ERR_OVERFLOW, "overflows"); }
    { ForwardCall x; x.tq = int64_t{1} << 40; x.d = int64_t{1} << 30; expect_error(x.run(), MI_ERR_OVERFLOW, "overflows"); }
}

TEST(Attention, CausalWithMoreQueriesThanKeysIsRejected) {
    // The first q_len - kv_len queries would see no key: the managed twin gave NaN there and this kernel 0.
    ForwardCall x;
    x.tq = 2;
    x.tk = 1;
    expect_error(x.run(), MI_ERR_INVALID_ARGUMENT, "causal attention needs q_len <= kv_len");
    x.causal = 0;
    EXPECT_EQ(x.run(), MI_OK) << mi_last_error();
}

TEST(Attention, SizesNearInt64MaxOverflowCleanly) {
    // pos + block and d_head + 8 used to wrap (signed overflow, undefined behaviour) before the product checks.
    const int64_t max = std::numeric_limits<int64_t>::max();
    { ForwardCall x; x.tq = max; x.tk = max; expect_error(x.run(), MI_ERR_OVERFLOW, "pos + block"); }
    { ForwardCall x; x.d = max; expect_error(x.run(), MI_ERR_OVERFLOW, "d_head + 8"); }
    { ForwardCall x; x.d = max - 4; expect_error(x.run(), MI_ERR_OVERFLOW, "d_head + 8"); }
}

TEST(Attention, PatternSizeOverflowIsRejected) {
    std::vector<float> buf(8);
    // q_len * kv_len overflows only once the pattern is asked for.
    const int64_t big = int64_t{1} << 32;
    EXPECT_EQ(mi_attention_forward_f32(buf.data(), buf.data(), buf.data(), 1, 1, big, big, 1, 0, buf.data(), buf.data(),
                                       nullptr, buf.data()),
              MI_ERR_OVERFLOW);
    EXPECT_NE(std::string(mi_last_error()).find("q_len * kv_len"), std::string::npos) << mi_last_error();
}

TEST(Attention, BackwardRejectsNullPointersAndBadSizes) {
    std::vector<float> b(64);
    float* p = b.data();
    const char* names[] = {"q", "k", "v", "out", "lse", "dout", "dq", "dk", "dv"};
    for (int which = 0; which < 9; ++which) {
        float* a[9];
        for (int i = 0; i < 9; ++i) a[i] = i == which ? nullptr : p;
        expect_error(mi_attention_backward_f32(a[0], a[1], a[2], a[3], a[4], a[5], 1, 1, 2, 2, 4, 1, a[6], a[7], a[8]),
                     MI_ERR_NULL_POINTER, std::string(names[which]) + " is a null pointer");
    }
    expect_error(mi_attention_backward_f32(p, p, p, p, p, p, 1, 1, 2, 2, -4, 1, p, p, p), MI_ERR_INVALID_SIZE,
                 "d_head must be positive, got -4");
    expect_error(mi_attention_backward_f32(p, p, p, p, p, p, 1, 1, 2, 2, 4, -1, p, p, p), MI_ERR_INVALID_ARGUMENT,
                 "causal must be 0 or 1, got -1");
}

TEST(Library, SimdSwitchRejectsBadValues) {
    expect_error(mi_set_simd(3), MI_ERR_INVALID_ARGUMENT, "simd level must be 0 (portable), 1 (AVX2) or 2 (AVX-512), got 3");
    expect_error(mi_set_simd(-1), MI_ERR_INVALID_ARGUMENT, "simd level must be 0 (portable), 1 (AVX2) or 2 (AVX-512), got -1");
    EXPECT_EQ(mi_set_simd(MI_SIMD_AVX512), MI_OK);
}

// The level in use is the lower of the one allowed and the CPU's widest.
TEST(Library, SimdLevelIsCappedByTheCpu) {
    const int cpu = mi_cpu_has_avx512() == 1 ? MI_SIMD_AVX512 : mi_cpu_has_avx2() == 1 ? MI_SIMD_AVX2 : MI_SIMD_PORTABLE;
    for (int level : {MI_SIMD_PORTABLE, MI_SIMD_AVX2, MI_SIMD_AVX512}) {
        ASSERT_EQ(mi_set_simd(level), MI_OK);
        EXPECT_EQ(mi_get_simd(), std::min(level, cpu)) << "allowed " << level;
    }
    EXPECT_EQ(mi_cpu_has_avx512() == 1 ? mi_cpu_has_avx2() : 1, 1) << "AVX-512 reported without AVX2";
}

}  // namespace
