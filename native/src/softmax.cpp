// Row softmax and its backward: the kernel that proves the native path end to end.
#include "common.hpp"
#include "parallel.hpp"
#include "simd.hpp"

#include <algorithm>
#include <cmath>

namespace {

constexpr int64_t kRowsPerTask = 64;

// Sums over chunks of this many columns run in float vector lanes and are added in double: a row as wide as a
// vocabulary keeps the double sum's accuracy at the vector loop's speed.
constexpr int64_t kSumChunk = 256;

template <class Ops>
void softmax_row(const float* x, float* y, int64_t cols) {
    const float max = Ops::max(x, cols);
    double sum = 0.0;
    for (int64_t c = 0; c < cols; c += kSumChunk) sum += Ops::exp_shift(x + c, y + c, std::min(kSumChunk, cols - c), max);
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t c = 0; c < cols; ++c) y[c] *= inv;
}

template <class Ops>
void softmax_backward_row(const float* y, const float* dy, float* dx, int64_t cols) {
    double dot = 0.0;
    for (int64_t c = 0; c < cols; c += kSumChunk) dot += Ops::dot(dy + c, y + c, std::min(kSumChunk, cols - c));
    const float d = static_cast<float>(dot);
    for (int64_t c = 0; c < cols; ++c) dx[c] = y[c] * (dy[c] - d);
}

template <class RowFn>
void for_rows(int64_t rows, RowFn&& fn) {
    const int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
    mi::parallel_for(tasks, [&](int64_t t) {
        const int64_t end = std::min(rows, (t + 1) * kRowsPerTask);
        for (int64_t r = t * kRowsPerTask; r < end; ++r) fn(r);
    });
}

}  // namespace

extern "C" {

MI_API mi_status mi_softmax_rows_f32(const float* x, float* y, int64_t rows, int64_t cols) {
    return mi::guard([&] {
        mi::require_pointer(x, "x");
        mi::require_pointer(y, "y");
        mi::check_matrix(rows, cols, "rows", "cols", "rows * cols");
        mi::dispatch_simd([&](auto ops) {
            for_rows(rows, [&](int64_t r) { softmax_row<decltype(ops)>(x + r * cols, y + r * cols, cols); });
        });
    });
}

MI_API mi_status mi_softmax_rows_backward_f32(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols) {
    return mi::guard([&] {
        mi::require_pointer(y, "y");
        mi::require_pointer(dy, "dy");
        mi::require_pointer(dx, "dx");
        mi::check_matrix(rows, cols, "rows", "cols", "rows * cols");
        mi::dispatch_simd([&](auto ops) {
            for_rows(rows, [&](int64_t r) { softmax_backward_row<decltype(ops)>(y + r * cols, dy + r * cols, dx + r * cols, cols); });
        });
    });
}

}  // extern "C"
