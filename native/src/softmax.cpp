// Row softmax and its backward: the kernel that proves the native path end to end.
#include "common.hpp"
#include "parallel.hpp"

#include <algorithm>
#include <cmath>

namespace {

constexpr int64_t kRowsPerTask = 64;

void softmax_row(const float* x, float* y, int64_t cols) {
    float max = x[0];
    for (int64_t c = 1; c < cols; ++c) max = std::max(max, x[c]);
    double sum = 0.0;  // double: cols can be large, and -inf rows must stay exact
    for (int64_t c = 0; c < cols; ++c) {
        float e = std::exp(x[c] - max);
        y[c] = e;
        sum += e;
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t c = 0; c < cols; ++c) y[c] *= inv;
}

void softmax_backward_row(const float* y, const float* dy, float* dx, int64_t cols) {
    double dot = 0.0;
    for (int64_t c = 0; c < cols; ++c) dot += static_cast<double>(dy[c]) * y[c];
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
        for_rows(rows, [&](int64_t r) { softmax_row(x + r * cols, y + r * cols, cols); });
    });
}

MI_API mi_status mi_softmax_rows_backward_f32(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols) {
    return mi::guard([&] {
        mi::require_pointer(y, "y");
        mi::require_pointer(dy, "dy");
        mi::require_pointer(dx, "dx");
        mi::check_matrix(rows, cols, "rows", "cols", "rows * cols");
        for_rows(rows, [&](int64_t r) {
            softmax_backward_row(y + r * cols, dy + r * cols, dx + r * cols, cols);
        });
    });
}

}  // extern "C"
