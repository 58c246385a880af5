// The AdamW step and the clipping norms against double-precision references, both back ends and any thread
// count alike, and every argument rejection.
#include "mechinterp.h"
#include "random_vector.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

// PyTorch's AdamW in double, one element.
void reference_step(double& p, double g, double& m, double& v, double lr, double wd, double b1, double b2, double eps, int step) {
    p *= 1 - lr * wd;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double bias1 = 1 - std::pow(b1, step), bias2 = 1 - std::pow(b2, step);
    p -= lr / bias1 * m / (std::sqrt(v) / std::sqrt(bias2) + eps);
}

struct Case {
    int64_t instances, n;
    int simd;      // the widest back end allowed (MI_SIMD_*): the AdamW kernel has portable and AVX2 ones
    int threads;
};

class AdamWCases : public ::testing::TestWithParam<Case> {
protected:
    void SetUp() override {
        ASSERT_EQ(mi_set_simd(GetParam().simd), MI_OK);
        ASSERT_EQ(mi_set_num_threads(GetParam().threads), MI_OK);
    }
    void TearDown() override {
        mi_set_simd(MI_SIMD_AVX512);
        mi_set_num_threads(1);
    }
};

// Five steps with a different gradient each, instances with their own rates (one with no decay, one frozen
// at lr 0): every element follows the double reference to float rounding.
TEST_P(AdamWCases, FollowsTheReferenceOverSteps) {
    const auto [instances, n, simd, threads] = GetParam();
    const size_t total = static_cast<size_t>(instances * n);
    auto p = random_vector(total, 1.0f, 11u);
    std::vector<float> m(total, 0.0f), v(total, 0.0f);
    std::vector<double> rp(p.begin(), p.end()), rm(total, 0.0), rv(total, 0.0);
    std::vector<double> lr(instances), wd(instances);
    for (int64_t i = 0; i < instances; ++i) {
        lr[i] = i == 1 ? 0.0 : 1e-3 * (1 + i);
        wd[i] = i == 2 ? 0.0 : 0.01 * (1 + i);
    }
    for (int step = 1; step <= 5; ++step) {
        auto g = random_vector(total, 0.1f, 100u + step);
        ASSERT_EQ(mi_adamw_step_f32(p.data(), g.data(), m.data(), v.data(), instances, n, lr.data(), wd.data(), 0.9, 0.999, 1e-8, step),
                  MI_OK)
            << mi_last_error();
        for (size_t j = 0; j < total; ++j)
            reference_step(rp[j], g[j], rm[j], rv[j], lr[j / n], wd[j / n], 0.9, 0.999, 1e-8, step);
    }
    for (size_t j = 0; j < total; ++j) {
        ASSERT_NEAR(p[j], rp[j], 1e-6 + 1e-6 * std::abs(rp[j])) << "p at " << j;
        ASSERT_NEAR(m[j], rm[j], 1e-7) << "m at " << j;
        ASSERT_NEAR(v[j], rv[j], 1e-8) << "v at " << j;
    }
    // lr 0 leaves instance 1 where it started, though its moments moved.
    if (instances > 1) {
        const auto start = random_vector(total, 1.0f, 11u);
        for (int64_t j = n; j < 2 * n; ++j) ASSERT_EQ(p[j], start[j]) << "frozen instance moved at " << j;
    }
}

TEST_P(AdamWCases, SumsOfSquaresAreTheDoubleSums) {
    const auto [instances, n, simd, threads] = GetParam();
    const auto x = random_vector(static_cast<size_t>(instances * n), 2.0f, 5u);
    std::vector<double> sums(instances, 1.5);   // added to, not overwritten
    ASSERT_EQ(mi_sum_squares_f32(x.data(), instances, n, sums.data()), MI_OK) << mi_last_error();
    for (int64_t i = 0; i < instances; ++i) {
        double ref = 1.5;
        for (int64_t j = 0; j < n; ++j) ref += static_cast<double>(x[i * n + j]) * x[i * n + j];
        EXPECT_NEAR(sums[i], ref, 1e-12 * ref) << "instance " << i;
    }
}

TEST_P(AdamWCases, ScaleRowsScalesEachInstanceByItsFactor) {
    const auto [instances, n, simd, threads] = GetParam();
    auto x = random_vector(static_cast<size_t>(instances * n), 1.0f, 8u);
    const auto before = x;
    std::vector<float> factor(instances);
    for (int64_t i = 0; i < instances; ++i) factor[i] = 0.25f * static_cast<float>(i + 1);
    ASSERT_EQ(mi_scale_rows_f32(x.data(), instances, n, factor.data()), MI_OK) << mi_last_error();
    for (int64_t j = 0; j < instances * n; ++j) ASSERT_EQ(x[j], before[j] * factor[j / n]) << "at " << j;
}

// Sizes around the 8-lane width and the 16K-element task chunk, one and several instances.
INSTANTIATE_TEST_SUITE_P(Shapes, AdamWCases,
                         ::testing::Values(Case{1, 1, 1, 1}, Case{1, 13, 1, 2}, Case{3, 37, 1, 2}, Case{3, 37, 0, 1},
                                           Case{4, 16 * 1024 + 5, 1, 2}, Case{2, 40000, 0, 2}, Case{1, 3 * 16 * 1024, 1, 3}));

// The chunked sums are added in a fixed order: 1 thread and 3 threads give the same bits.
TEST(SumSquares, IsTheSameOnAnyNumberOfThreads) {
    const auto x = random_vector(3 * 50000, 1.0f, 9u);
    std::vector<double> one(3, 0.0), three(3, 0.0);
    ASSERT_EQ(mi_set_num_threads(1), MI_OK);
    ASSERT_EQ(mi_sum_squares_f32(x.data(), 3, 50000, one.data()), MI_OK);
    ASSERT_EQ(mi_set_num_threads(3), MI_OK);
    ASSERT_EQ(mi_sum_squares_f32(x.data(), 3, 50000, three.data()), MI_OK);
    mi_set_num_threads(1);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(one[i], three[i]) << "instance " << i;
}

TEST(AdamWArguments, AreRejectedWithMessages) {
    std::vector<float> p(4, 1.0f), g(4, 1.0f), m(4, 0.0f), v(4, 0.0f);
    std::vector<double> lr{1e-3, 1e-3}, wd{0.0, 0.0};
    auto step = [&](const float* gp, int64_t instances, int64_t n, const double* lrp, double b1, double b2, double eps, int64_t s) {
        return mi_adamw_step_f32(p.data(), gp, m.data(), v.data(), instances, n, lrp, wd.data(), b1, b2, eps, s);
    };
    EXPECT_EQ(step(nullptr, 2, 2, lr.data(), 0.9, 0.999, 1e-8, 1), MI_ERR_NULL_POINTER);
    EXPECT_NE(std::string(mi_last_error()).find("g is a null pointer"), std::string::npos) << mi_last_error();
    EXPECT_EQ(step(g.data(), 2, 2, nullptr, 0.9, 0.999, 1e-8, 1), MI_ERR_NULL_POINTER);
    EXPECT_EQ(step(g.data(), 0, 2, lr.data(), 0.9, 0.999, 1e-8, 1), MI_ERR_INVALID_SIZE);
    EXPECT_EQ(step(g.data(), 2, -1, lr.data(), 0.9, 0.999, 1e-8, 1), MI_ERR_INVALID_SIZE);
    EXPECT_EQ(step(g.data(), int64_t{1} << 40, int64_t{1} << 40, lr.data(), 0.9, 0.999, 1e-8, 1), MI_ERR_OVERFLOW);
    EXPECT_EQ(step(g.data(), 2, 2, lr.data(), 1.0, 0.999, 1e-8, 1), MI_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(mi_last_error()).find("beta1"), std::string::npos) << mi_last_error();
    EXPECT_EQ(step(g.data(), 2, 2, lr.data(), 0.9, -0.1, 1e-8, 1), MI_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(step(g.data(), 2, 2, lr.data(), 0.9, 0.999, std::nan(""), 1), MI_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(step(g.data(), 2, 2, lr.data(), 0.9, 0.999, 1e-8, 0), MI_ERR_INVALID_SIZE);
    std::vector<double> bad{1e-3, std::numeric_limits<double>::infinity()};
    EXPECT_EQ(step(g.data(), 2, 2, bad.data(), 0.9, 0.999, 1e-8, 1), MI_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(mi_last_error()).find("lr[1]"), std::string::npos) << mi_last_error();
    // Nothing was written by a rejected call.
    for (float x : p) EXPECT_EQ(x, 1.0f);
    for (float x : m) EXPECT_EQ(x, 0.0f);

    double sums[2] = {0, 0};
    EXPECT_EQ(mi_sum_squares_f32(nullptr, 2, 2, sums), MI_ERR_NULL_POINTER);
    EXPECT_EQ(mi_sum_squares_f32(p.data(), 2, 2, nullptr), MI_ERR_NULL_POINTER);
    EXPECT_EQ(mi_sum_squares_f32(p.data(), 2, 0, sums), MI_ERR_INVALID_SIZE);
    float factor[2] = {1, 1};
    EXPECT_EQ(mi_scale_rows_f32(p.data(), 2, 2, nullptr), MI_ERR_NULL_POINTER);
    EXPECT_EQ(mi_scale_rows_f32(p.data(), -2, 2, factor), MI_ERR_INVALID_SIZE);
}

}  // namespace
