// A GoogleTest case run on each kernel back end (portable, AVX2, AVX-512): parameters are (case, level) tuples, and
// the test name says which back end ran. A back end this CPU lacks is reported skipped, not run as a narrower one.
#pragma once

#include "mechinterp.h"

#include <gtest/gtest.h>

#include <cctype>
#include <sstream>
#include <string>
#include <tuple>

// The back ends, for ::testing::Combine.
inline const auto kSimdLevels = ::testing::Values(MI_SIMD_PORTABLE, MI_SIMD_AVX2, MI_SIMD_AVX512);

inline const char* simd_name(int level) {
    return level == MI_SIMD_AVX512 ? "avx512" : level == MI_SIMD_AVX2 ? "avx2" : "portable";
}

// Sets the back end, true when this CPU runs it.
inline bool use_simd(int level) {
    if (mi_set_simd(level) != MI_OK) return false;
    return mi_get_simd() == level;
}

// A test name from a (case, level) parameter: the case printed, then "_portable", "_avx2" or "_avx512", other
// characters as '_'.
inline const auto case_name = [](const auto& info) {
    std::ostringstream name;
    name << std::get<0>(info.param) << '_' << simd_name(std::get<1>(info.param));
    std::string s = name.str();
    for (auto& ch : s)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    return s;
};

// A case run on one back end.
template <class C>
class OnEachPath : public ::testing::TestWithParam<std::tuple<C, int>> {
protected:
    void SetUp() override {
        const int level = std::get<1>(this->GetParam());
        if (!use_simd(level)) GTEST_SKIP() << "this CPU does not run the " << simd_name(level) << " back end";
    }
    void TearDown() override { mi_set_simd(MI_SIMD_AVX512); }
};
