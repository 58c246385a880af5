// Shared by the CUDA kernels: pointer checks, error conversion, a block reduction.
#pragma once

#include "../common.hpp"

#include <cuda_runtime.h>

#include <string>

namespace mi::cuda {

constexpr int kThreads = 128;   // threads per block; a power of two for block_reduce

// Throws MI_ERR_INTERNAL naming the step when a CUDA call failed.
inline void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw Error{MI_ERR_INTERNAL, std::string(what) + ": " + cudaGetErrorString(e)};
}

// A null pointer is MI_ERR_NULL_POINTER; a pointer CUDA does not know as device or managed memory
// is MI_ERR_INVALID_ARGUMENT, so a host buffer never reaches a kernel.
inline void require_device(const void* p, const char* name) {
    require_pointer(p, name);
    cudaPointerAttributes attributes{};
    const cudaError_t e = cudaPointerGetAttributes(&attributes, p);
    if (e != cudaSuccess) {
        cudaGetLastError();   // clear the sticky error of the query
        throw Error{MI_ERR_INVALID_ARGUMENT, std::string(name) + " is not a CUDA pointer (" + cudaGetErrorString(e) + ")"};
    }
    if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
        throw Error{MI_ERR_INVALID_ARGUMENT, std::string(name) + " is host memory; the mi_cuda_* functions take device pointers"};
}

// Waits for the default stream and turns a kernel failure into a status.
inline void finish(const char* what) {
    check(cudaGetLastError(), what);
    check(cudaDeviceSynchronize(), what);
}

// Max (is_max) or sum of v over the block; every thread gets the result. red: kThreads floats of shared memory.
__device__ inline float block_reduce(float v, float* red, bool is_max) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] = is_max ? fmaxf(red[threadIdx.x], red[threadIdx.x + s]) : red[threadIdx.x] + red[threadIdx.x + s];
        __syncthreads();
    }
    const float r = red[0];
    __syncthreads();
    return r;
}

// A device buffer freed at scope exit, so a thrown Error leaks nothing. Empty (n = 0) it allocates nothing
// and ptr stays null; no kernel then reads it.
template <class T>
struct DeviceBuffer {
    T* ptr = nullptr;
    explicit DeviceBuffer(size_t n) {
        if (n > 0) check(cudaMalloc(&ptr, n * sizeof(T)), "cudaMalloc");
    }
    ~DeviceBuffer() { cudaFree(ptr); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

}  // namespace mi::cuda
