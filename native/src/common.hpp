// Shared by every kernel file: the thread-local error, argument checks, the status guard.
#pragma once

#include "mechinterp.h"

#include <cstdint>
#include <exception>
#include <string>

namespace mi {

// Sets the thread-local message and returns the status, so checks read `return fail(...)`.
mi_status fail(mi_status status, const std::string& message);
void clear_error();

// Thrown inside kernels, turned into a status by guard().
struct Error {
    mi_status status;
    std::string message;
};

inline void require_pointer(const void* p, const char* name) {
    if (p == nullptr) throw Error{MI_ERR_NULL_POINTER, std::string(name) + " is a null pointer"};
}

inline void require_positive(int64_t v, const char* name) {
    if (v <= 0) throw Error{MI_ERR_INVALID_SIZE, std::string(name) + " must be positive, got " + std::to_string(v)};
}

// a*b, or an MI_ERR_OVERFLOW naming both factors.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r))
        throw Error{MI_ERR_OVERFLOW, std::string(what) + ": " + std::to_string(a) + " * " + std::to_string(b) + " overflows int64"};
    return r;
}

// a+b, or an MI_ERR_OVERFLOW naming both terms.
inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        throw Error{MI_ERR_OVERFLOW, std::string(what) + ": " + std::to_string(a) + " + " + std::to_string(b) + " overflows int64"};
    return r;
}

// The sizes of a [rows, cols] buffer: both positive and their product within int64, each named in the error.
inline void check_matrix(int64_t rows, int64_t cols, const char* rows_name, const char* cols_name, const char* product) {
    require_positive(rows, rows_name);
    require_positive(cols, cols_name);
    checked_mul(rows, cols, product);
}

// The grouped dispatch buffers (CPU and CUDA alike): tokens * k (token, slot) pairs land in `rows`
// rows of width d, so rows must hold every pair and no product may overflow.
inline void check_dispatch_sizes(int64_t tokens, int64_t k, int64_t d, int64_t rows) {
    require_positive(tokens, "tokens");
    require_positive(k, "k");
    require_positive(d, "d");
    require_positive(rows, "rows");
    checked_mul(tokens, d, "tokens * d");
    checked_mul(rows, d, "rows * d");
    const int64_t pairs = checked_mul(tokens, k, "tokens * k");
    if (rows < pairs)
        throw Error{MI_ERR_INVALID_SIZE, "rows (" + std::to_string(rows) + ") must hold every pair: tokens * k = " + std::to_string(pairs)};
}

// Runs a kernel body, converting Error and any C++ exception into a status: nothing escapes the C ABI.
template <class F>
mi_status guard(F&& body) noexcept {
    try {
        clear_error();
        body();
        return MI_OK;
    } catch (const Error& e) {
        return fail(e.status, e.message);
    } catch (const std::bad_alloc&) {
        return fail(MI_ERR_INTERNAL, "out of memory");
    } catch (const std::exception& e) {
        return fail(MI_ERR_INTERNAL, std::string("internal error: ") + e.what());
    } catch (...) {
        return fail(MI_ERR_INTERNAL, "internal error: unknown exception");
    }
}

// Routing's arguments, checked the same way by the CPU and the CUDA entry points.
inline void check_route_flags(int32_t choose, int32_t renormalize, int64_t capacity) {
    if (choose != 0 && choose != 1)
        throw mi::Error{MI_ERR_INVALID_ARGUMENT, "choose must be 0 (expert_index given) or 1 (top-k chosen here), got " + std::to_string(choose)};
    if (renormalize != 0 && renormalize != 1)
        throw mi::Error{MI_ERR_INVALID_ARGUMENT, "renormalize must be 0 or 1, got " + std::to_string(renormalize)};
    if (capacity < 0)
        throw mi::Error{MI_ERR_INVALID_ARGUMENT, "capacity must be 0 (no limit) or positive, got " + std::to_string(capacity)};
}

inline void check_route_sizes(int64_t tokens, int64_t experts, int64_t k) {
    mi::require_positive(tokens, "tokens");
    mi::require_positive(experts, "experts");
    mi::require_positive(k, "k");
    if (k > experts)
        throw mi::Error{MI_ERR_INVALID_ARGUMENT, "k (" + std::to_string(k) + ") must be at most experts (" + std::to_string(experts) + ")"};
    mi::checked_mul(tokens, experts, "tokens * experts");
}

}  // namespace mi
