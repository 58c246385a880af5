// Row softmax against a naive double-precision reference, and every argument rejection.
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

std::vector<double> reference_softmax(const std::vector<float>& x, int64_t rows, int64_t cols) {
    std::vector<double> y(x.size());
    for (int64_t r = 0; r < rows; ++r) {
        double max = -std::numeric_limits<double>::infinity();
        for (int64_t c = 0; c < cols; ++c) max = std::max(max, static_cast<double>(x[r * cols + c]));
        double sum = 0;
        for (int64_t c = 0; c < cols; ++c) sum += std::exp(x[r * cols + c] - max);
        for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = std::exp(x[r * cols + c] - max) / sum;
    }
    return y;
}

struct Shape {
    int64_t rows, cols;
    float scale;
};

class SoftmaxShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(SoftmaxShapes, MatchesReference) {
    const auto [rows, cols, scale] = GetParam();
    auto x = random_vector(rows * cols, scale, 1234u + static_cast<uint32_t>(rows * 31 + cols));
    std::vector<float> y(x.size());
    ASSERT_EQ(mi_softmax_rows_f32(x.data(), y.data(), rows, cols), MI_OK) << mi_last_error();
    auto ref = reference_softmax(x, rows, cols);
    for (size_t i = 0; i < y.size(); ++i) {
        ASSERT_FALSE(std::isnan(y[i])) << "at " << i;
        ASSERT_NEAR(y[i], ref[i], 1e-6) << "at " << i;
    }
}

TEST_P(SoftmaxShapes, BackwardMatchesReference) {
    const auto [rows, cols, scale] = GetParam();
    auto x = random_vector(rows * cols, scale, 99u);
    auto dy = random_vector(rows * cols, 1.0f, 7u);
    std::vector<float> y(x.size()), dx(x.size());
    ASSERT_EQ(mi_softmax_rows_f32(x.data(), y.data(), rows, cols), MI_OK);
    ASSERT_EQ(mi_softmax_rows_backward_f32(y.data(), dy.data(), dx.data(), rows, cols), MI_OK) << mi_last_error();
    auto ref = reference_softmax(x, rows, cols);
    for (int64_t r = 0; r < rows; ++r) {
        double dot = 0;
        for (int64_t c = 0; c < cols; ++c) dot += dy[r * cols + c] * ref[r * cols + c];
        for (int64_t c = 0; c < cols; ++c) {
            double expect = ref[r * cols + c] * (dy[r * cols + c] - dot);
            ASSERT_NEAR(dx[r * cols + c], expect, 1e-5) << "row " << r << " col " << c;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SoftmaxShapes,
                         ::testing::Values(Shape{1, 1, 1.0f}, Shape{3, 7, 1.0f}, Shape{130, 33, 3.0f},
                                           Shape{257, 256, 1.0f}, Shape{5, 100, 1e4f}));

TEST(Softmax, AliasedOutputIsAllowed) {
    auto x = random_vector(64, 1.0f, 5u);
    auto ref = reference_softmax(x, 8, 8);
    ASSERT_EQ(mi_softmax_rows_f32(x.data(), x.data(), 8, 8), MI_OK);
    for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], ref[i], 1e-6);
}

TEST(Softmax, RejectsNullPointers) {
    float buf[4] = {};
    EXPECT_EQ(mi_softmax_rows_f32(nullptr, buf, 2, 2), MI_ERR_NULL_POINTER);
    EXPECT_NE(std::string(mi_last_error()).find("x is a null pointer"), std::string::npos) << mi_last_error();
    EXPECT_EQ(mi_softmax_rows_f32(buf, nullptr, 2, 2), MI_ERR_NULL_POINTER);
    EXPECT_EQ(mi_softmax_rows_backward_f32(buf, nullptr, buf, 2, 2), MI_ERR_NULL_POINTER);
    EXPECT_NE(std::string(mi_last_error()).find("dy"), std::string::npos);
}

TEST(Softmax, RejectsZeroAndNegativeSizes) {
    float buf[4] = {};
    EXPECT_EQ(mi_softmax_rows_f32(buf, buf, 0, 2), MI_ERR_INVALID_SIZE);
    EXPECT_NE(std::string(mi_last_error()).find("rows must be positive, got 0"), std::string::npos) << mi_last_error();
    EXPECT_EQ(mi_softmax_rows_f32(buf, buf, 2, -3), MI_ERR_INVALID_SIZE);
    EXPECT_NE(std::string(mi_last_error()).find("cols must be positive, got -3"), std::string::npos) << mi_last_error();
}

TEST(Softmax, RejectsOverflowingSizes) {
    float buf[4] = {};
    const int64_t big = int64_t{1} << 40;
    EXPECT_EQ(mi_softmax_rows_f32(buf, buf, big, big), MI_ERR_OVERFLOW);
    EXPECT_NE(std::string(mi_last_error()).find("overflows"), std::string::npos) << mi_last_error();
}

TEST(Softmax, SuccessClearsTheLastError) {
    float buf[4] = {};
    ASSERT_NE(mi_softmax_rows_f32(nullptr, buf, 2, 2), MI_OK);
    ASSERT_EQ(mi_softmax_rows_f32(buf, buf, 2, 2), MI_OK);
    EXPECT_STREQ(mi_last_error(), "");
}

}  // namespace
