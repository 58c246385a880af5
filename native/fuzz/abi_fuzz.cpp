// libFuzzer target for the C ABI (mechinterp.h), built with ASan and UBSan beside it (native/CMakeLists.txt,
// MI_BUILD_FUZZERS). Each input picks an entry point and its arguments. Three kinds of call:
//   - sane sizes with buffers of exactly the sizes the ABI documents, and fuzzed contents (NaN, infinities,
//     indices anywhere in int64): any status may come back, but nothing may read or write out of bounds;
//   - a size that is zero or negative, a pair of sizes whose product overflows int64, an enum out of range
//     or a NULL where a pointer is required: the call must fail with a status and a message;
// Anything else (a crash, a sanitizer report, MI_OK for a call that had to fail, an empty or unbounded
// message) is a crash. The buffers the sizes describe are the caller's duty, so the fuzzer never lies about them.
#include "mechinterp.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

struct Reader {
    const uint8_t* p;
    size_t n;
    uint8_t byte() {
        if (n == 0) return 0;
        --n;
        return *p++;
    }
    uint32_t u32() { return uint32_t(byte()) | uint32_t(byte()) << 8 | uint32_t(byte()) << 16 | uint32_t(byte()) << 24; }
    int64_t i64() { return int64_t(uint64_t(u32()) | uint64_t(u32()) << 32); }
    float value() {
        static const float special[] = {0.0f, -0.0f, 1.0f, -1.0f, 1e30f, -1e30f, 1e-40f,
                                        std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                                        std::numeric_limits<float>::quiet_NaN()};
        const uint8_t b = byte();
        if (b < 200) return (float(b) - 100.0f) / 25.0f;
        if (b < 240) return special[b % 10];
        const uint32_t bits = u32();
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
    }
};

// What kind of call this input makes.
enum Mode { kSane = 0, kNonPositive = 1, kOverflow = 2, kNull = 3, kBadEnum = 4 };

struct Call {
    Reader in;
    Mode mode;
    int nonpositive_slot = -1;   // which size argument gets the bad value, in kNonPositive
    int null_slot = -1;          // which required pointer is NULL, in kNull
    int size_slot = 0;
    int ptr_slot = 0;

    // A size argument: small in a sane call; the chosen one non-positive in kNonPositive.
    int64_t size(int64_t max_small) {
        const int slot = size_slot++;
        static const int64_t small[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 65};
        int64_t v = small[in.byte() % 12];
        if (v > max_small) v = 1 + v % max_small;
        if (mode == kNonPositive && slot == nonpositive_slot) {
            static const int64_t bad[] = {0, -1, -7, std::numeric_limits<int64_t>::min(), -(int64_t{1} << 40)};
            v = bad[in.byte() % 5];
        }
        return v;
    }
    // A buffer of n elements (n from sane sizes), filled from the input; NULL when this is the chosen pointer.
    template <class T, class Fill>
    T* buffer(std::vector<T>& storage, int64_t n, Fill&& fill) {
        const int slot = ptr_slot++;
        const int64_t count = n > 0 && n < (int64_t{1} << 22) ? n : 1;
        storage.resize(static_cast<size_t>(count));
        for (auto& x : storage) x = fill();
        return mode == kNull && slot == null_slot ? nullptr : storage.data();
    }
    float* floats(std::vector<float>& s, int64_t n) { return buffer(s, n, [&] { return in.value(); }); }
    int64_t* indices(std::vector<int64_t>& s, int64_t n, int64_t range) {
        return buffer(s, n, [&] {
            const uint8_t b = in.byte();
            return b < 220 && range > 0 ? int64_t(b) % range : in.i64();
        });
    }
    // Products the ABI checks, multiplied here only when they are small (sane mode) or marked bad anyway.
    static int64_t mul(int64_t a, int64_t b) {
        int64_t r;
        return __builtin_mul_overflow(a, b, &r) ? -1 : r;
    }
    static int64_t add(int64_t a, int64_t b) {
        int64_t r;
        return __builtin_add_overflow(a, b, &r) ? -1 : r;
    }
};

// The status of a call that had to fail must be an error with a bounded, non-empty message.
void check(const Call& c, mi_status status) {
    const std::string message = mi_last_error();
    if (status != MI_OK && (message.empty() || message.size() > 4096)) std::abort();
    if (c.mode != kSane && status == MI_OK) std::abort();
}

// Two sizes whose product overflows int64 (each alone is positive).
void overflow_pair(int64_t& a, int64_t& b) {
    a = (int64_t{1} << 32) + 1;
    b = (int64_t{1} << 32) + 3;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Call c{Reader{data, size}, kSane};
    const uint8_t op = c.in.byte() % 12;
    const uint8_t m = c.in.byte();
    c.mode = m < 160 ? kSane : Mode(1 + m % 4);
    c.nonpositive_slot = c.in.byte() % 8;
    c.null_slot = c.in.byte() % 8;
    std::vector<float> f0, f1, f2, f3, f4, f5, f6, f7, f8, f9;
    std::vector<int64_t> i0, i1, i2;
    std::vector<uint8_t> u0;

    switch (op) {
    case 0:
    case 1: {  // softmax and its backward
        int64_t rows = c.size(65), cols = c.size(65);
        if (c.mode == kOverflow) overflow_pair(rows, cols);
        const int64_t n = Call::mul(rows, cols);
        if (c.mode == kNull) c.null_slot %= op == 0 ? 2 : 3;
        if (c.mode == kNonPositive) c.nonpositive_slot %= 2, c.size_slot = 0, rows = c.size(65), cols = c.size(65);
        if (c.mode == kBadEnum) c.mode = kSane;
        float* x = c.floats(f0, n);
        float* y = c.floats(f1, n);
        if (op == 0) check(c, mi_softmax_rows_f32(x, y, rows, cols));
        else check(c, mi_softmax_rows_backward_f32(x, y, c.floats(f2, n), rows, cols));
        break;
    }
    case 2:
    case 3:
    case 4:
    case 5: {  // attention forward / backward, plain / rotary
        const bool backward = op == 3 || op == 5, rotary = op >= 4;
        int64_t b = c.size(3), h = c.size(3), tq = c.size(65), tk = c.size(65), d = c.size(33);
        int32_t causal = int32_t(c.in.byte() % 2);
        int64_t rd = 2 * (1 + c.in.byte() % 8);
        if (c.mode == kOverflow) overflow_pair(b, h);
        if (c.mode == kBadEnum) causal = int32_t(c.in.byte() % 2 ? 2 : -1);
        if (c.mode == kNonPositive) {
            c.nonpositive_slot %= 5;
            c.size_slot = 0;
            b = c.size(3), h = c.size(3), tq = c.size(65), tk = c.size(65), d = c.size(33);
        }
        const int64_t bh = Call::mul(b, h), nq = Call::mul(bh, Call::mul(tq, d)), nk = Call::mul(bh, Call::mul(tk, d));
        const bool with_pattern = c.in.byte() % 2;
        const int64_t np = Call::mul(bh, Call::mul(tq, tk));
        // A rotary_dim past d_head or odd must be rejected; a valid one reads [kv_len, rotary_dim] tables.
        const bool rd_bad = rd > d;
        if (rotary && c.mode == kSane && rd_bad) c.mode = kBadEnum;
        if (c.mode == kNull) c.null_slot %= backward ? 9 : 5;
        float *q = c.floats(f0, nq), *k = c.floats(f1, nk), *v = c.floats(f2, nk);
        float* out = c.floats(f3, nq);
        float* lse = c.floats(f4, Call::mul(bh, tq));
        const int64_t table = Call::mul(tk, d);
        float* cos = rotary ? f5.resize(size_t(table > 0 && table < (1 << 22) ? table : 1)), f5.data() : nullptr;
        float* sin = rotary ? f6.resize(f5.size()), f6.data() : nullptr;
        for (auto& x : f5) x = c.in.value();
        for (auto& x : f6) x = c.in.value();
        if (!backward) {
            float* scores = with_pattern ? f7.resize(size_t(np > 0 && np < (1 << 22) ? np : 1)), f7.data() : nullptr;
            float* pattern = with_pattern ? f8.resize(f7.size()), f8.data() : nullptr;
            const mi_status s = rotary ? mi_attention_rotary_forward_f32(q, k, v, b, h, tq, tk, d, causal, cos, sin, rd, out, lse, scores, pattern)
                                       : mi_attention_forward_f32(q, k, v, b, h, tq, tk, d, causal, out, lse, scores, pattern);
            check(c, s);
        } else {
            float* dout = c.floats(f7, nq);
            float *dq = c.floats(f8, nq), *dk = c.floats(f9, nk);
            std::vector<float> dvs;
            float* dv = c.floats(dvs, nk);
            const mi_status s = rotary ? mi_attention_rotary_backward_f32(q, k, v, out, lse, dout, b, h, tq, tk, d, causal, cos, sin, rd, dq, dk, dv)
                                       : mi_attention_backward_f32(q, k, v, out, lse, dout, b, h, tq, tk, d, causal, dq, dk, dv);
            check(c, s);
        }
        break;
    }
    case 6:
    case 7: {  // routing (groups of tokens, experts chosen here or given) and its backward
        int64_t groups = c.size(4), tokens = c.size(65), experts = c.size(9), k = c.size(9);
        const int32_t choose = int32_t(c.in.byte() % 2);
        int32_t renormalize = int32_t(c.in.byte() % 2);
        int64_t capacity = c.in.byte() % 4 == 0 ? 0 : int64_t(c.in.byte() % 40);
        if (c.mode == kOverflow) overflow_pair(tokens, experts);
        if (c.mode == kBadEnum) renormalize = c.in.byte() % 2 ? 2 : -1;
        if (c.mode == kNonPositive)
            c.nonpositive_slot %= 4, c.size_slot = 0, groups = c.size(4), tokens = c.size(65), experts = c.size(9), k = c.size(9);
        if (c.mode == kSane && k > experts) c.mode = kBadEnum;   // k must be at most experts
        const int64_t rows = Call::mul(groups, tokens);
        const int64_t pairs = Call::mul(rows, k);
        if (c.mode == kNull) c.null_slot %= op == 6 ? 6 : 5;
        float* weights = c.floats(f0, Call::mul(rows, experts));
        int64_t* index = c.indices(i0, pairs, experts);
        float* gates = c.floats(f1, pairs);
        if (op == 6) {
            int64_t* counts = c.indices(i1, Call::mul(groups, experts), 1);
            uint8_t* kept = c.buffer(u0, pairs, [&] { return c.in.byte(); });
            int64_t dropped_value = 0;
            int64_t* dropped = c.mode == kNull && c.null_slot == 5 ? nullptr : &dropped_value;
            check(c, mi_moe_route_f32(weights, groups, tokens, experts, k, choose, renormalize, capacity, index, gates, counts, kept, dropped));
        } else {
            uint8_t* kept = c.buffer(u0, pairs, [&] { return c.in.byte(); });
            check(c, mi_moe_route_backward_f32(weights, index, kept, gates, rows, experts, k, renormalize, c.floats(f2, Call::mul(rows, experts))));
        }
        break;
    }
    case 8: {  // count and permute
        int64_t tokens = c.size(65), k = c.size(9), experts = c.size(9);
        int64_t stride = c.in.byte() % 3 == 0 ? 0 : int64_t(c.in.byte() % 80) - 4;
        if (c.mode == kOverflow) overflow_pair(tokens, k);
        if (c.mode == kBadEnum) stride = -1 - c.in.byte();
        if (c.mode == kNonPositive) c.nonpositive_slot %= 3, c.size_slot = 0, tokens = c.size(65), k = c.size(9), experts = c.size(9);
        if (c.mode == kSane && stride < 0) c.mode = kBadEnum;
        if (c.mode == kNull) c.null_slot %= 3;
        const int64_t pairs = Call::mul(tokens, k);
        int64_t* index = c.indices(i0, pairs, experts);
        int64_t* row_of = c.indices(i1, pairs, 1);
        int64_t* offsets = c.indices(i2, experts + 1, 1);
        check(c, mi_moe_permute_i64(index, tokens, k, experts, stride, row_of, offsets));
        if (c.mode == kSane) {
            std::vector<int64_t> counts(static_cast<size_t>(experts));
            check(c, mi_moe_count_i64(index, tokens, k, experts, counts.data()));
        }
        break;
    }
    case 11: {  // the optimizer: AdamW step, sums of squares, row scaling
        int64_t instances = c.size(5), n = c.size(65);
        if (c.mode == kOverflow) overflow_pair(instances, n);
        if (c.mode == kNonPositive) c.nonpositive_slot %= 2, c.size_slot = 0, instances = c.size(5), n = c.size(65);
        const int64_t total = Call::mul(instances, n);
        const uint8_t which = c.in.byte() % 3;
        if (c.mode == kNull) c.null_slot %= which == 0 ? 6 : 2;
        // Rates, betas, eps and step: mostly valid, sometimes out of range (must be rejected).
        double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
        int64_t step = 1 + c.in.byte() % 100;
        if (c.mode == kBadEnum) {
            switch (c.in.byte() % 4) {
            case 0: beta1 = 1.0; break;
            case 1: beta2 = -0.5; break;
            case 2: eps = std::numeric_limits<double>::quiet_NaN(); break;
            default: step = 0; break;
            }
        }
        if (which == 0) {
            float *p = c.floats(f0, total), *g = c.floats(f1, total), *m = c.floats(f2, total), *v = c.floats(f3, total);
            std::vector<double> lr, wd;
            const int64_t rates = instances > 0 && instances < 64 ? instances : 1;
            for (int64_t i = 0; i < rates; ++i) {
                lr.push_back(double(c.in.byte()) * 1e-4);
                wd.push_back(double(c.in.byte()) * 1e-3);
            }
            const double* lrp = c.mode == kNull && c.null_slot == 4 ? nullptr : lr.data();
            const double* wdp = c.mode == kNull && c.null_slot == 5 ? nullptr : wd.data();
            check(c, mi_adamw_step_f32(p, g, m, v, instances, n, lrp, wdp, beta1, beta2, eps, step));
        } else {
            if (c.mode == kBadEnum) c.mode = kSane;   // no enum or rate to get wrong
            float* x = c.floats(f0, total);
            if (which == 1) {
                std::vector<double> sums(size_t(instances > 0 && instances < 64 ? instances : 1), 0.0);
                check(c, mi_sum_squares_f32(x, instances, n, c.mode == kNull && c.null_slot == 1 ? nullptr : sums.data()));
            } else {
                check(c, mi_scale_rows_f32(x, instances, n, c.floats(f1, instances)));
            }
        }
        break;
    }
    default: {  // gather, combine and their backwards
        int64_t tokens = c.size(65), k = c.size(9), d = c.size(33);
        // Sometimes too few rows for the pairs: that must be rejected.
        int64_t rows = Call::add(Call::mul(tokens, k), int64_t(c.in.byte() % 8) - 2);
        if (c.mode == kOverflow) overflow_pair(tokens, d);
        if (c.mode == kNonPositive) c.nonpositive_slot %= 3, c.size_slot = 0, tokens = c.size(65), k = c.size(9), d = c.size(33);
        if (c.mode == kBadEnum) c.mode = kSane;
        if (c.mode == kSane && rows < Call::mul(tokens, k)) c.mode = kBadEnum;
        const int64_t pairs = Call::mul(tokens, k);
        const uint8_t which = c.in.byte() % 4;
        if (c.mode == kNull) c.null_slot %= which == 3 ? 6 : which == 2 ? 4 : 3;
        // row_of mostly a permutation of the first rows, sometimes anything (duplicates, out of range).
        const bool any_rows = c.in.byte() % 4 == 0;
        const int64_t safe_rows = rows > 0 && rows < (1 << 22) ? rows : 1;
        switch (which) {
        case 0: {
            float* x = c.floats(f0, Call::mul(tokens, d));
            int64_t* row_of = any_rows ? c.indices(i0, pairs, safe_rows) : c.buffer(i0, pairs, [n = int64_t{0}]() mutable { return n++; });
            check(c, mi_moe_gather_f32(x, row_of, tokens, k, d, rows, c.floats(f1, Call::mul(safe_rows, d))));
            break;
        }
        case 1: {
            float* dg = c.floats(f0, Call::mul(safe_rows, d));
            int64_t* row_of = any_rows ? c.indices(i0, pairs, safe_rows) : c.buffer(i0, pairs, [n = int64_t{0}]() mutable { return n++; });
            check(c, mi_moe_gather_backward_f32(dg, row_of, tokens, k, d, rows, c.floats(f1, Call::mul(tokens, d))));
            break;
        }
        case 2: {
            float* grouped = c.floats(f0, Call::mul(safe_rows, d));
            float* gates = c.floats(f1, pairs);
            int64_t* row_of = any_rows ? c.indices(i0, pairs, safe_rows) : c.buffer(i0, pairs, [n = int64_t{0}]() mutable { return n++; });
            check(c, mi_moe_combine_f32(grouped, gates, row_of, tokens, k, d, rows, c.floats(f2, Call::mul(tokens, d))));
            break;
        }
        default: {
            float* grouped = c.floats(f0, Call::mul(safe_rows, d));
            float* gates = c.floats(f1, pairs);
            int64_t* row_of = any_rows ? c.indices(i0, pairs, safe_rows) : c.buffer(i0, pairs, [n = int64_t{0}]() mutable { return n++; });
            float* dy = c.floats(f2, Call::mul(tokens, d));
            float* dgrouped = c.floats(f3, Call::mul(safe_rows, d));
            check(c, mi_moe_combine_backward_f32(grouped, gates, row_of, dy, tokens, k, d, rows, dgrouped, c.floats(f4, pairs)));
            break;
        }
        }
        break;
    }
    }
    // The library-wide switches, with values in and out of range.
    const uint8_t t = c.in.byte();
    if (t < 16) {
        static const int32_t counts[] = {-1, 0, 1, 2, 3, 4097, 5000, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()};
        const int32_t n = counts[t % 9];
        const mi_status s = mi_set_num_threads(n);
        if ((s == MI_OK) != (n >= 1 && n <= 4096)) std::abort();
        if (mi_get_num_threads() < 1) std::abort();
    } else if (t < 24) {
        const int32_t e = int32_t(t % 5) - 1;
        if ((mi_set_simd(e) == MI_OK) != (e >= 0 && e <= 2)) std::abort();
        if (mi_get_simd() < 0 || mi_get_simd() > 2) std::abort();
    }
    return 0;
}
