// Library-wide entry points: version, threads, the error channel.
#include "mechinterp.h"

#include <gtest/gtest.h>

#include <csignal>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

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

TEST(Library, ThreadCountAboveTheLimitIsRejectedAndChangesNothing) {
    const int32_t before = mi_get_num_threads();
    EXPECT_EQ(mi_set_num_threads(5000), MI_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(mi_last_error()).find("[1, 4096], got 5000"), std::string::npos) << mi_last_error();
    EXPECT_EQ(mi_get_num_threads(), before);
}

// A softmax big enough to go through the pool: 4096 rows in tasks.
mi_status parallel_kernel() {
    std::vector<float> x(4096 * 64, 1.0f);
    return mi_softmax_rows_f32(x.data(), x.data(), 4096, 64);
}

// Each round forks right after the pool starts new workers: a worker still starting up may hold the allocator's lock
// (ASan's does), which the child would inherit held. start() returning only once every worker is parked prevents it.
TEST(Library, AForkedChildRunsKernelsOnAFreshPool) {
    for (int round = 0; round < 8; ++round) {
        ASSERT_EQ(mi_set_num_threads(round % 2 == 0 ? 4 : 3), MI_OK);
        if (round % 2 == 0) ASSERT_EQ(parallel_kernel(), MI_OK);   // the workers are running when we fork
        const pid_t child = fork();
        ASSERT_NE(child, -1);
        if (child == 0) {
            alarm(20);   // a deadlocked child dies of SIGALRM instead of hanging the test
            const bool ok = parallel_kernel() == MI_OK && mi_set_num_threads(2) == MI_OK && parallel_kernel() == MI_OK &&
                            mi_get_num_threads() == 2;
            _exit(ok ? 0 : 1);
        }
        int status = 0;
        ASSERT_EQ(waitpid(child, &status, 0), child);
        EXPECT_TRUE(WIFEXITED(status)) << "round " << round << ": the child was killed by signal "
                                       << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0) << "round " << round;
        EXPECT_EQ(parallel_kernel(), MI_OK);   // the parent's pool is untouched
    }
}
