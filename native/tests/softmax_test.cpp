// Row softmax against a naive double-precision reference on both paths, NaN and -inf entries, and every argument
// rejection.
#include "mechinterp.h"
#include "each_path.hpp"
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

std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.rows << "x" << s.cols << "scale" << s.scale; }

class SoftmaxShapes : public OnEachPath<Shape> {};

TEST_P(SoftmaxShapes, MatchesReference) {
    const auto [rows, cols, scale] = std::get<0>(GetParam());
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
    const auto [rows, cols, scale] = std::get<0>(GetParam());
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

// 50257 columns: a GPT-2 vocabulary row, where the sums run over many chunks.
INSTANTIATE_TEST_SUITE_P(Shapes, SoftmaxShapes,
                         ::testing::Combine(::testing::Values(Shape{1, 1, 1.0f}, Shape{3, 7, 1.0f}, Shape{130, 33, 3.0f},
                                                              Shape{257, 256, 1.0f}, Shape{5, 100, 1e4f}, Shape{2, 50257, 4.0f}),
                                            kSimdLevels),
                         case_name);

class SoftmaxEntries : public OnEachPath<int> {};

// A NaN anywhere in a row makes the whole row NaN (as torch.softmax does), on the full vectors and the ragged end alike;
// -inf entries (a mask) get exactly 0 and leave the rest a distribution. Other rows are untouched.
TEST_P(SoftmaxEntries, NanPoisonsItsRowAndMinusInfGivesExactZero) {
    const int64_t rows = 4, cols = 37;
    auto x = random_vector(rows * cols, 1.0f, 11u);
    x[0 * cols + 3] = std::numeric_limits<float>::quiet_NaN();    // a vector lane
    x[1 * cols + 35] = std::numeric_limits<float>::quiet_NaN();   // the ragged end past the last 8
    for (int64_t c = 0; c < cols; c += 3) x[2 * cols + c] = -std::numeric_limits<float>::infinity();
    std::vector<float> y(x.size());
    ASSERT_EQ(mi_softmax_rows_f32(x.data(), y.data(), rows, cols), MI_OK) << mi_last_error();
    for (int64_t r = 0; r < 2; ++r)
        for (int64_t c = 0; c < cols; ++c) EXPECT_TRUE(std::isnan(y[r * cols + c])) << "row " << r << " col " << c;
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c) {
        if (c % 3 == 0) EXPECT_EQ(y[2 * cols + c], 0.0f) << "col " << c;
        else EXPECT_GT(y[2 * cols + c], 0.0f) << "col " << c;
        sum += y[2 * cols + c];
    }
    EXPECT_NEAR(sum, 1.0, 1e-6);
    auto ref = reference_softmax(std::vector<float>(x.begin() + 3 * cols, x.end()), 1, cols);
    for (int64_t c = 0; c < cols; ++c) EXPECT_NEAR(y[3 * cols + c], ref[c], 1e-6) << "col " << c;
}

INSTANTIATE_TEST_SUITE_P(EachPath, SoftmaxEntries, ::testing::Combine(::testing::Values(0), kSimdLevels), case_name);

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
