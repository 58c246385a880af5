// A GoogleTest case run on the AVX2 path and on the portable one: parameters are (case, simd) tuples, and the test
// name says which path ran.
#pragma once

#include "mechinterp.h"

#include <gtest/gtest.h>

#include <cctype>
#include <sstream>
#include <string>
#include <tuple>

// A test name from a (case, simd) parameter: the case printed, "_avx2" or "_portable", other characters as '_'.
inline const auto case_name = [](const auto& info) {
    std::ostringstream name;
    name << std::get<0>(info.param) << (std::get<1>(info.param) ? "_avx2" : "_portable");
    std::string s = name.str();
    for (auto& ch : s)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    return s;
};

// A case run on the AVX2 path (true) or the portable one (false).
template <class C>
class OnBothPaths : public ::testing::TestWithParam<std::tuple<C, bool>> {
protected:
    void SetUp() override { ASSERT_EQ(mi_set_simd(std::get<1>(this->GetParam()) ? 1 : 0), MI_OK); }
    void TearDown() override { mi_set_simd(1); }
};

