// The CUDA kernels against the CPU ones (which the other tests hold to naive references). On a
// machine without a CUDA device these skip; without CUDA compiled in, the entry points must refuse.
#include "mechinterp.h"
#include "random_vector.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#ifdef MI_TEST_CUDA
#include <cuda_runtime.h>
#endif

namespace {

TEST(Cuda, EntryPointsRefuseHostPointersOrReportUnsupported) {
    std::vector<float> host(64);
    float* p = host.data();
    const mi_status s = mi_cuda_attention_forward_f32(p, p, p, 1, 1, 2, 2, 4, 1, p, p, nullptr, nullptr);
    if (mi_has_cuda()) {
        EXPECT_EQ(s, MI_ERR_INVALID_ARGUMENT);
        EXPECT_NE(std::string(mi_last_error()).find("q is"), std::string::npos) << mi_last_error();
    } else {
        EXPECT_EQ(s, MI_ERR_UNSUPPORTED);
        EXPECT_NE(std::string(mi_last_error()).find("built without CUDA"), std::string::npos) << mi_last_error();
        EXPECT_EQ(mi_cuda_device_count(), 0);
    }
    EXPECT_EQ(mi_cuda_moe_gather_f32(nullptr, nullptr, 1, 1, 1, 1, nullptr), mi_has_cuda() ? MI_ERR_NULL_POINTER : MI_ERR_UNSUPPORTED);
}

#ifdef MI_TEST_CUDA

// A device copy of a host vector, freed at scope exit.
template <class T>
struct Device {
    T* ptr = nullptr;
    size_t n;
    explicit Device(const std::vector<T>& host) : n(host.size()) {
        EXPECT_EQ(cudaMalloc(&ptr, n * sizeof(T)), cudaSuccess);
        cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice);
    }
    explicit Device(size_t count) : Device(std::vector<T>(count)) {}
    std::vector<T> host() const {
        std::vector<T> h(n);
        cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
        return h;
    }
    ~Device() { cudaFree(ptr); }
};

class CudaDevice : public ::testing::Test {
protected:
    void SetUp() override {
        if (mi_cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine: CUDA kernels compiled but not run";
    }
};

void expect_near(const std::vector<float>& got, const std::vector<float>& want, float tol, const char* what) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
        if (std::isinf(want[i])) {
            ASSERT_EQ(got[i], want[i]) << what << " at " << i;
            continue;
        }
        ASSERT_NEAR(got[i], want[i], tol * (1 + std::abs(want[i]))) << what << " at " << i;
    }
}

TEST_F(CudaDevice, AttentionMatchesCpu) {
    const int64_t b = 2, h = 3, tq = 67, tk = 67, d = 20;
    const size_t nq = b * h * tq * d, nk = b * h * tk * d, np = b * h * tq * tk;
    auto q = random_vector(nq, 1), k = random_vector(nk, 2), v = random_vector(nk, 3), dout = random_vector(nq, 4);
    std::vector<float> out(nq), lse(b * h * tq), scores(np), pattern(np), dq(nq), dk(nk), dv(nk);
    ASSERT_EQ(mi_attention_forward_f32(q.data(), k.data(), v.data(), b, h, tq, tk, d, 1, out.data(), lse.data(), scores.data(), pattern.data()), MI_OK);
    ASSERT_EQ(mi_attention_backward_f32(q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(), b, h, tq, tk, d, 1, dq.data(), dk.data(), dv.data()), MI_OK);
    Device<float> gq(q), gk(k), gv(v), gdout(dout), gout(nq), glse(lse.size()), gs(np), gp(np), gdq(nq), gdk(nk), gdv(nk);
    ASSERT_EQ(mi_cuda_attention_forward_f32(gq.ptr, gk.ptr, gv.ptr, b, h, tq, tk, d, 1, gout.ptr, glse.ptr, gs.ptr, gp.ptr), MI_OK) << mi_last_error();
    ASSERT_EQ(mi_cuda_attention_backward_f32(gq.ptr, gk.ptr, gv.ptr, gout.ptr, glse.ptr, gdout.ptr, b, h, tq, tk, d, 1, gdq.ptr, gdk.ptr, gdv.ptr), MI_OK) << mi_last_error();
    expect_near(gout.host(), out, 1e-4f, "out");
    expect_near(glse.host(), lse, 1e-4f, "lse");
    expect_near(gs.host(), scores, 1e-4f, "scores");
    expect_near(gp.host(), pattern, 1e-4f, "pattern");
    expect_near(gdq.host(), dq, 1e-3f, "dq");
    expect_near(gdk.host(), dk, 1e-3f, "dk");
    expect_near(gdv.host(), dv, 1e-3f, "dv");
}

TEST_F(CudaDevice, DispatchMatchesCpu) {
    // Two groups of 300 tokens: many capacity chunks per queue, and capacity 100 of ~120 pairs per expert drops.
    const int64_t groups = 2, tokens = 300, experts = 5, k = 2, d = 24;
    auto weights = random_vector(groups * tokens * experts, 7);
    for (auto& w : weights) w = std::exp(w);   // positive, as a softmax is
    std::vector<int64_t> index(groups * tokens * k), counts(groups * experts), row_of(tokens * k), offsets(experts + 1);
    std::vector<float> gates(index.size());
    std::vector<uint8_t> kept(index.size());
    int64_t dropped = 0, gdropped = 0;
    ASSERT_EQ(mi_moe_route_f32(weights.data(), groups, tokens, experts, k, 1, 1, 100, index.data(), gates.data(), counts.data(), kept.data(), &dropped), MI_OK);
    ASSERT_GT(dropped, 0);
    Device<float> gweights(weights), ggates(gates.size());
    Device<int64_t> gindex(index.size()), gcounts(counts.size()), growof(row_of.size()), goffsets(offsets.size());
    Device<uint8_t> gkept(kept.size());
    ASSERT_EQ(mi_cuda_moe_route_f32(gweights.ptr, groups, tokens, experts, k, 1, 1, 100, gindex.ptr, ggates.ptr, gcounts.ptr, gkept.ptr, &gdropped), MI_OK) << mi_last_error();
    EXPECT_EQ(gindex.host(), index);
    EXPECT_EQ(gcounts.host(), counts);
    EXPECT_EQ(gkept.host(), kept);
    EXPECT_EQ(gdropped, dropped);
    expect_near(ggates.host(), gates, 1e-6f, "gates");
    // Given experts (choose = 0), unnormalized: the same capacity rule on the caller's choice.
    std::reverse(index.begin(), index.end());
    Device<int64_t> gforced(index);
    ASSERT_EQ(mi_moe_route_f32(weights.data(), groups, tokens, experts, k, 0, 0, 90, index.data(), gates.data(), counts.data(), kept.data(), &dropped), MI_OK);
    ASSERT_EQ(mi_cuda_moe_route_f32(gweights.ptr, groups, tokens, experts, k, 0, 0, 90, gforced.ptr, ggates.ptr, gcounts.ptr, gkept.ptr, &gdropped), MI_OK) << mi_last_error();
    EXPECT_EQ(gforced.host(), index);
    EXPECT_EQ(gcounts.host(), counts);
    EXPECT_EQ(gkept.host(), kept);
    EXPECT_EQ(gdropped, dropped);
    expect_near(ggates.host(), gates, 0.0f, "given-expert gates");
    // Dispatch below runs on the first group's routing.
    std::reverse(index.begin(), index.end());
    index.resize(tokens * k);
    gates.resize(tokens * k);
    Device<int64_t> gindex0(index);
    Device<float> ggates0(gates);

    ASSERT_EQ(mi_moe_permute_i64(index.data(), tokens, k, experts, 0, row_of.data(), offsets.data()), MI_OK);
    ASSERT_EQ(mi_cuda_moe_permute_i64(gindex0.ptr, tokens, k, experts, 0, growof.ptr, goffsets.ptr), MI_OK) << mi_last_error();
    EXPECT_EQ(growof.host(), row_of);
    EXPECT_EQ(goffsets.host(), offsets);

    const int64_t rows = tokens * k;
    auto x = random_vector(tokens * d, 8), grouped_out = random_vector(rows * d, 9), dy = random_vector(tokens * d, 10);
    std::vector<float> grouped(rows * d), y(tokens * d), dgrouped(rows * d), dgates(tokens * k), dx(tokens * d);
    ASSERT_EQ(mi_moe_gather_f32(x.data(), row_of.data(), tokens, k, d, rows, grouped.data()), MI_OK);
    ASSERT_EQ(mi_moe_combine_f32(grouped_out.data(), gates.data(), row_of.data(), tokens, k, d, rows, y.data()), MI_OK);
    ASSERT_EQ(mi_moe_combine_backward_f32(grouped_out.data(), gates.data(), row_of.data(), dy.data(), tokens, k, d, rows, dgrouped.data(), dgates.data()), MI_OK);
    ASSERT_EQ(mi_moe_gather_backward_f32(dgrouped.data(), row_of.data(), tokens, k, d, rows, dx.data()), MI_OK);
    Device<float> gx(x), gg(rows * d), gyo(grouped_out), gy(tokens * d), gdy(dy), gdg(rows * d), gdgates(tokens * k), gdx(tokens * d);
    ASSERT_EQ(mi_cuda_moe_gather_f32(gx.ptr, growof.ptr, tokens, k, d, rows, gg.ptr), MI_OK) << mi_last_error();
    ASSERT_EQ(mi_cuda_moe_combine_f32(gyo.ptr, ggates0.ptr, growof.ptr, tokens, k, d, rows, gy.ptr), MI_OK) << mi_last_error();
    ASSERT_EQ(mi_cuda_moe_combine_backward_f32(gyo.ptr, ggates0.ptr, growof.ptr, gdy.ptr, tokens, k, d, rows, gdg.ptr, gdgates.ptr), MI_OK) << mi_last_error();
    ASSERT_EQ(mi_cuda_moe_gather_backward_f32(gdg.ptr, growof.ptr, tokens, k, d, rows, gdx.ptr), MI_OK) << mi_last_error();
    expect_near(gg.host(), grouped, 0.0f, "grouped");
    expect_near(gy.host(), y, 1e-5f, "y");
    expect_near(gdg.host(), dgrouped, 1e-5f, "dgrouped");
    expect_near(gdgates.host(), dgates, 1e-4f, "dgates");
    expect_near(gdx.host(), dx, 1e-5f, "dx");
}

TEST_F(CudaDevice, RejectsOutOfRangeExpertIds) {
    Device<int64_t> index(std::vector<int64_t>{0, 1, 2, 9}), counts(4);
    EXPECT_EQ(mi_cuda_moe_count_i64(index.ptr, 2, 2, 4, counts.ptr), MI_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(mi_last_error()).find("expert index 9 at token 1 slot 1 is out of range [0, 4)"), std::string::npos) << mi_last_error();
}

#endif  // MI_TEST_CUDA

}  // namespace
