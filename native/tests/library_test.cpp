// Library-wide entry points: version, threads, the error channel.
#include "mechinterp.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>

TEST(Library, VersionIsTheHeaderVersion) { EXPECT_EQ(mi_version(), MI_ABI_VERSION); }

TEST(Library, ThreadCountRoundTripsAndRejectsBadValues) {
    const int32_t before = mi_get_num_threads();
    ASSERT_EQ(mi_set_num_threads(3), MI_OK);
    EXPECT_EQ(mi_get_num_threads(), 3);
    EXPECT_EQ(mi_set_num_threads(0), MI_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(mi_last_error()).find("got 0"), std::string::npos) << mi_last_error();
    EXPECT_EQ(mi_set_num_threads(-2), MI_ERR_INVALID_ARGUMENT);
    ASSERT_EQ(mi_set_num_threads(before), MI_OK);
}

TEST(Library, LastErrorIsPerThread) {
    float buf[1] = {};
    ASSERT_EQ(mi_softmax_rows_f32(nullptr, buf, 1, 1), MI_ERR_NULL_POINTER);
    std::string other;
    std::thread([&] { other = mi_last_error(); }).join();
    EXPECT_EQ(other, "");
    EXPECT_NE(std::string(mi_last_error()), "");
}
