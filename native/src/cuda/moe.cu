// Expert dispatch on CUDA, same ABI and conventions as moe.cpp. Route, count and the counting sort
// run on the device; gather and combine run one block per token, so no two blocks write one row.
#include "../moe.hpp"
#include "../route.hpp"
#include "cuda_common.cuh"

#include <vector>

namespace {

using mi::cuda::DeviceBuffer;
using mi::cuda::kThreads;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// One thread per token: top-k by repeated max (ties to the lower id) unless the caller chose, then the gates.
__global__ void route_kernel(const float* weights, int64_t rows, int64_t experts, int64_t k, int choose, int renormalize,
                             int64_t* index, float* gates) {
    const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (t >= rows) return;
    if (choose) mi::route::top_k(weights + t * experts, experts, k, index + t * k);
    mi::route::gates_of(weights + t * experts, k, renormalize, index + t * k, gates + t * k);
}

// Capacity as route.hpp defines it, in three parallel steps: one thread per (group, chunk) counts, one per
// (group, expert) scans the chunks of its queue, one per (group, chunk) keeps or drops its pairs.
constexpr int64_t kCapacityChunk = 32;   // tokens per chunk: many threads even for a small batch

__global__ void capacity_count_kernel(const int64_t* index, int64_t groups, int64_t tokens, int64_t experts, int64_t k,
                                      int64_t chunks, int64_t* place) {
    const int64_t gc = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (gc >= groups * chunks) return;
    mi::route::chunk_count(index + (gc / chunks) * tokens * k, k, experts,
                           mi::route::chunk_at(gc % chunks, tokens, kCapacityChunk), place + gc * experts);
}

__global__ void capacity_scan_kernel(int64_t groups, int64_t experts, int64_t chunks, int64_t capacity, int64_t* place,
                                     int64_t* counts, unsigned long long* dropped) {
    const int64_t ge = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (ge >= groups * experts) return;
    const int64_t g = ge / experts, e = ge % experts;
    const int64_t routed = mi::route::scan_chunks(place + g * chunks * experts, chunks, experts, e);
    counts[ge] = mi::route::kept_of(routed, capacity);
    if (routed > counts[ge]) atomicAdd(dropped, static_cast<unsigned long long>(routed - counts[ge]));
}

__global__ void capacity_keep_kernel(const int64_t* index, int64_t groups, int64_t tokens, int64_t k, int64_t experts,
                                     int64_t chunks, int64_t capacity, int64_t* place, float* gates, uint8_t* kept) {
    const int64_t gc = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (gc >= groups * chunks) return;
    const int64_t offset = (gc / chunks) * tokens * k;
    mi::route::chunk_keep(index + offset, k, mi::route::chunk_at(gc % chunks, tokens, kCapacityChunk), capacity,
                          place + gc * experts, gates + offset, kept + offset);
}

// counts[e] += 1 per pair; the first out-of-range pair (lowest id) is kept in *bad.
__global__ void count_kernel(const int64_t* index, int64_t pairs, int64_t experts, unsigned long long* counts,
                             unsigned long long* bad) {
    const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (p >= pairs) return;
    const int64_t e = index[p];
    if (e < 0 || e >= experts)
        atomicMin(bad, static_cast<unsigned long long>(p));
    else
        atomicAdd(counts + e, 1ull);
}

// One block per expert scans the pairs in order with a block-wide prefix sum: a stable counting sort.
__global__ void permute_kernel(const int64_t* index, int64_t pairs, const int64_t* offsets, int64_t* row_of) {
    __shared__ int64_t scan[kThreads];
    const int64_t e = blockIdx.x;
    int64_t base = offsets[e];
    for (int64_t p0 = 0; p0 < pairs; p0 += kThreads) {
        const int64_t p = p0 + threadIdx.x;
        const int64_t mine = p < pairs && index[p] == e ? 1 : 0;
        scan[threadIdx.x] = mine;
        __syncthreads();
        for (int s = 1; s < kThreads; s <<= 1) {   // Hillis-Steele inclusive scan
            const int64_t add = threadIdx.x >= s ? scan[threadIdx.x - s] : 0;
            __syncthreads();
            scan[threadIdx.x] += add;
            __syncthreads();
        }
        if (mine) row_of[p] = base + scan[threadIdx.x] - 1;
        const int64_t total = scan[kThreads - 1];
        __syncthreads();
        base += total;
    }
}

// used[row] counts the pairs on each row; *bad records the first pair out of range or on a shared row.
__global__ void rows_kernel(const int64_t* row_of, int64_t pairs, int64_t rows, unsigned int* used, unsigned long long* bad) {
    const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (p >= pairs) return;
    const int64_t r = row_of[p];
    if (r < 0 || r >= rows || atomicAdd(used + r, 1u) != 0) atomicMin(bad, static_cast<unsigned long long>(p));
}

__global__ void gather_kernel(const float* x, const int64_t* row_of, int64_t k, int64_t d, float* grouped) {
    const int64_t t = blockIdx.x;
    for (int64_t s = 0; s < k; ++s)
        for (int64_t c = threadIdx.x; c < d; c += blockDim.x) grouped[row_of[t * k + s] * d + c] = x[t * d + c];
}

__global__ void gather_backward_kernel(const float* dgrouped, const int64_t* row_of, int64_t k, int64_t d, float* dx) {
    const int64_t t = blockIdx.x;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        float sum = 0.0f;
        for (int64_t s = 0; s < k; ++s) sum += dgrouped[row_of[t * k + s] * d + c];
        dx[t * d + c] = sum;
    }
}

__global__ void combine_kernel(const float* grouped, const float* gates, const int64_t* row_of, int64_t k, int64_t d, float* y) {
    const int64_t t = blockIdx.x;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        float sum = 0.0f;
        for (int64_t s = 0; s < k; ++s) sum = fmaf(gates[t * k + s], grouped[row_of[t * k + s] * d + c], sum);
        y[t * d + c] = sum;
    }
}

__global__ void combine_backward_kernel(const float* grouped, const float* gates, const int64_t* row_of, const float* dy,
                                        int64_t k, int64_t d, float* dgrouped, float* dgates) {
    __shared__ float red[kThreads];
    const int64_t t = blockIdx.x;
    for (int64_t s = 0; s < k; ++s) {
        const int64_t p = t * k + s, r = row_of[p];
        float dot = 0.0f;
        for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
            dgrouped[r * d + c] = gates[p] * dy[t * d + c];
            dot = fmaf(dy[t * d + c], grouped[r * d + c], dot);
        }
        dot = mi::cuda::block_reduce(dot, red, false);
        if (threadIdx.x == 0) dgates[p] = dot;
    }
}

__global__ void zero_unused_rows_kernel(const unsigned int* used, int64_t rows, int64_t d, float* dgrouped) {
    const int64_t r = blockIdx.x;
    if (r < rows && used[r] == 0)
        for (int64_t c = threadIdx.x; c < d; c += blockDim.x) dgrouped[r * d + c] = 0.0f;
}

template <class T>
T to_host(const T* device) {
    T value{};
    mi::cuda::check(cudaMemcpy(&value, device, sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return value;
}

// Per-expert counts on the host, after validating every id (the CPU twin's message on failure).
std::vector<int64_t> count_on_device(const int64_t* index, int64_t tokens, int64_t k, int64_t experts) {
    const int64_t pairs = mi::checked_mul(tokens, k, "tokens * k");
    DeviceBuffer<unsigned long long> counts(static_cast<size_t>(experts)), bad(1);
    mi::cuda::check(cudaMemset(counts.ptr, 0, experts * sizeof(unsigned long long)), "cudaMemset");
    mi::cuda::check(cudaMemset(bad.ptr, 0xff, sizeof(unsigned long long)), "cudaMemset");
    count_kernel<<<blocks_for(pairs), kThreads>>>(index, pairs, experts, counts.ptr, bad.ptr);
    mi::cuda::finish("expert count kernel");
    const unsigned long long first_bad = to_host(bad.ptr);
    if (first_bad != ~0ull) {
        const int64_t p = static_cast<int64_t>(first_bad), e = to_host(index + p);
        throw mi::Error{MI_ERR_INVALID_ARGUMENT, "expert index " + std::to_string(e) + " at token " + std::to_string(p / k) +
                                                     " slot " + std::to_string(p % k) + " is out of range [0, " +
                                                     std::to_string(experts) + ")"};
    }
    std::vector<int64_t> host(static_cast<size_t>(experts));
    mi::cuda::check(cudaMemcpy(host.data(), counts.ptr, experts * sizeof(int64_t), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return host;
}

void check_sizes(int64_t tokens, int64_t k, int64_t d, int64_t rows) {
    mi::check_dispatch_sizes(tokens, k, d, rows);
    if (tokens > 2147483647 || rows > 2147483647)
        throw mi::Error{MI_ERR_INVALID_SIZE, "CUDA grids hold at most 2^31 - 1 tokens and rows, got " + std::to_string(tokens) + " and " + std::to_string(rows)};
}

// Validates row_of on the device; returns the per-row use counts for callers that need them.
void check_rows(const int64_t* row_of, int64_t pairs, int64_t rows, unsigned int* used) {
    DeviceBuffer<unsigned long long> bad(1);
    mi::cuda::check(cudaMemset(used, 0, rows * sizeof(unsigned int)), "cudaMemset");
    mi::cuda::check(cudaMemset(bad.ptr, 0xff, sizeof(unsigned long long)), "cudaMemset");
    rows_kernel<<<blocks_for(pairs), kThreads>>>(row_of, pairs, rows, used, bad.ptr);
    mi::cuda::finish("row check kernel");
    const unsigned long long p = to_host(bad.ptr);
    if (p != ~0ull)
        throw mi::Error{MI_ERR_INVALID_ARGUMENT, "row_of[" + std::to_string(p) + "] = " + std::to_string(to_host(row_of + p)) +
                                                     " is outside the grouped buffer [0, " + std::to_string(rows) + ") or shared with another pair"};
}

}  // namespace

extern "C" {

MI_API mi_status mi_cuda_moe_route_f32(const float* weights, int64_t groups, int64_t tokens, int64_t experts, int64_t k,
                                       int32_t choose, int32_t renormalize, int64_t capacity, int64_t* expert_index,
                                       float* gates, int64_t* counts, uint8_t* kept, int64_t* dropped) {
    return mi::guard([&] {
        mi::cuda::require_device(weights, "weights");
        mi::cuda::require_device(expert_index, "expert_index");
        mi::cuda::require_device(gates, "gates");
        mi::cuda::require_device(counts, "counts");
        mi::cuda::require_device(kept, "kept");
        mi::require_pointer(dropped, "dropped");
        mi::require_positive(groups, "groups");
        mi::require_positive(tokens, "tokens");
        const int64_t rows = mi::checked_mul(groups, tokens, "groups * tokens");
        mi::check_route_sizes(rows, experts, k);
        mi::check_route_flags(choose, renormalize, capacity);
        if (!choose) count_on_device(expert_index, rows, k, experts);   // validates the given ids
        const int64_t chunks = mi::route::chunks_per_group(tokens, k, kCapacityChunk);
        DeviceBuffer<int64_t> place(static_cast<size_t>(mi::checked_mul(groups * chunks, experts, "chunks * experts")));
        DeviceBuffer<unsigned long long> n(1);
        mi::cuda::check(cudaMemset(n.ptr, 0, sizeof(unsigned long long)), "cudaMemset");
        route_kernel<<<blocks_for(rows), kThreads>>>(weights, rows, experts, k, choose, renormalize, expert_index, gates);
        capacity_count_kernel<<<blocks_for(groups * chunks), kThreads>>>(expert_index, groups, tokens, experts, k, chunks, place.ptr);
        capacity_scan_kernel<<<blocks_for(groups * experts), kThreads>>>(groups, experts, chunks, capacity, place.ptr, counts, n.ptr);
        capacity_keep_kernel<<<blocks_for(groups * chunks), kThreads>>>(expert_index, groups, tokens, k, experts, chunks, capacity,
                                                                         place.ptr, gates, kept);
        mi::cuda::finish("route kernels");
        *dropped = static_cast<int64_t>(to_host(n.ptr));
    });
}

MI_API mi_status mi_cuda_moe_count_i64(const int64_t* expert_index, int64_t tokens, int64_t k, int64_t experts,
                                       int64_t* counts) {
    return mi::guard([&] {
        mi::cuda::require_device(expert_index, "expert_index");
        mi::cuda::require_device(counts, "counts");
        mi::require_positive(tokens, "tokens");
        mi::require_positive(k, "k");
        mi::require_positive(experts, "experts");
        const auto host = count_on_device(expert_index, tokens, k, experts);
        mi::cuda::check(cudaMemcpy(counts, host.data(), experts * sizeof(int64_t), cudaMemcpyHostToDevice), "cudaMemcpy");
    });
}

MI_API mi_status mi_cuda_moe_permute_i64(const int64_t* expert_index, int64_t tokens, int64_t k, int64_t experts,
                                         int64_t group_stride, int64_t* row_of, int64_t* offsets) {
    return mi::guard([&] {
        mi::cuda::require_device(expert_index, "expert_index");
        mi::cuda::require_device(row_of, "row_of");
        mi::cuda::require_device(offsets, "offsets");
        mi::require_positive(tokens, "tokens");
        mi::require_positive(k, "k");
        mi::require_positive(experts, "experts");
        if (group_stride < 0)
            throw mi::Error{MI_ERR_INVALID_SIZE, "group_stride must be 0 or positive, got " + std::to_string(group_stride)};
        if (experts > 2147483647) throw mi::Error{MI_ERR_INVALID_SIZE, "experts must fit a CUDA grid, got " + std::to_string(experts)};
        const auto counts = count_on_device(expert_index, tokens, k, experts);
        std::vector<int64_t> host(static_cast<size_t>(experts + 1), 0);
        for (int64_t e = 0; e < experts; ++e) {
            if (group_stride > 0 && counts[e] > group_stride)
                throw mi::Error{MI_ERR_INVALID_ARGUMENT, "expert " + std::to_string(e) + " has " + std::to_string(counts[e]) +
                                                             " pairs, more than group_stride = " + std::to_string(group_stride)};
            host[e + 1] = group_stride > 0 ? mi::checked_mul(e + 1, group_stride, "experts * group_stride") : host[e] + counts[e];
        }
        mi::cuda::check(cudaMemcpy(offsets, host.data(), host.size() * sizeof(int64_t), cudaMemcpyHostToDevice), "cudaMemcpy");
        permute_kernel<<<static_cast<unsigned>(experts), kThreads>>>(expert_index, tokens * k, offsets, row_of);
        mi::cuda::finish("permute kernel");
    });
}

MI_API mi_status mi_cuda_moe_gather_f32(const float* x, const int64_t* row_of, int64_t tokens, int64_t k, int64_t d,
                                        int64_t rows, float* grouped) {
    return mi::guard([&] {
        mi::cuda::require_device(x, "x");
        mi::cuda::require_device(row_of, "row_of");
        mi::cuda::require_device(grouped, "grouped");
        check_sizes(tokens, k, d, rows);
        DeviceBuffer<unsigned int> used(static_cast<size_t>(rows));
        check_rows(row_of, tokens * k, rows, used.ptr);
        gather_kernel<<<static_cast<unsigned>(tokens), kThreads>>>(x, row_of, k, d, grouped);
        mi::cuda::finish("gather kernel");
    });
}

MI_API mi_status mi_cuda_moe_gather_backward_f32(const float* dgrouped, const int64_t* row_of, int64_t tokens,
                                                 int64_t k, int64_t d, int64_t rows, float* dx) {
    return mi::guard([&] {
        mi::cuda::require_device(dgrouped, "dgrouped");
        mi::cuda::require_device(row_of, "row_of");
        mi::cuda::require_device(dx, "dx");
        check_sizes(tokens, k, d, rows);
        DeviceBuffer<unsigned int> used(static_cast<size_t>(rows));
        check_rows(row_of, tokens * k, rows, used.ptr);
        gather_backward_kernel<<<static_cast<unsigned>(tokens), kThreads>>>(dgrouped, row_of, k, d, dx);
        mi::cuda::finish("gather backward kernel");
    });
}

MI_API mi_status mi_cuda_moe_combine_f32(const float* grouped, const float* gates, const int64_t* row_of,
                                         int64_t tokens, int64_t k, int64_t d, int64_t rows, float* y) {
    return mi::guard([&] {
        mi::cuda::require_device(grouped, "grouped");
        mi::cuda::require_device(gates, "gates");
        mi::cuda::require_device(row_of, "row_of");
        mi::cuda::require_device(y, "y");
        check_sizes(tokens, k, d, rows);
        DeviceBuffer<unsigned int> used(static_cast<size_t>(rows));
        check_rows(row_of, tokens * k, rows, used.ptr);
        combine_kernel<<<static_cast<unsigned>(tokens), kThreads>>>(grouped, gates, row_of, k, d, y);
        mi::cuda::finish("combine kernel");
    });
}

MI_API mi_status mi_cuda_moe_combine_backward_f32(const float* grouped, const float* gates, const int64_t* row_of,
                                                  const float* dy, int64_t tokens, int64_t k, int64_t d, int64_t rows,
                                                  float* dgrouped, float* dgates) {
    return mi::guard([&] {
        mi::cuda::require_device(grouped, "grouped");
        mi::cuda::require_device(gates, "gates");
        mi::cuda::require_device(row_of, "row_of");
        mi::cuda::require_device(dy, "dy");
        mi::cuda::require_device(dgrouped, "dgrouped");
        mi::cuda::require_device(dgates, "dgates");
        check_sizes(tokens, k, d, rows);
        DeviceBuffer<unsigned int> used(static_cast<size_t>(rows));
        check_rows(row_of, tokens * k, rows, used.ptr);
        zero_unused_rows_kernel<<<static_cast<unsigned>(rows), kThreads>>>(used.ptr, rows, d, dgrouped);
        combine_backward_kernel<<<static_cast<unsigned>(tokens), kThreads>>>(grouped, gates, row_of, dy, k, d, dgrouped, dgates);
        mi::cuda::finish("combine backward kernels");
    });
}

}  // extern "C"
