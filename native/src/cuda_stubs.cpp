// The mi_cuda_* entry points of a library built without a CUDA compiler: the ABI stays complete,
// every call says why it cannot run.
#include "common.hpp"

#ifndef MI_WITH_CUDA

namespace {
mi_status unsupported(const char* function) {
    return mi::fail(MI_ERR_UNSUPPORTED, std::string(function) + ": this library was built without CUDA (no CUDA compiler was found)");
}
}  // namespace

extern "C" {

MI_API int32_t mi_cuda_device_count(void) { return 0; }

MI_API mi_status mi_cuda_attention_forward_f32(const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                               int64_t, int32_t, float*, float*, float*, float*) {
    return unsupported("mi_cuda_attention_forward_f32");
}
MI_API mi_status mi_cuda_attention_backward_f32(const float*, const float*, const float*, const float*, const float*,
                                                const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int32_t, float*,
                                                float*, float*) {
    return unsupported("mi_cuda_attention_backward_f32");
}
MI_API mi_status mi_cuda_moe_route_f32(const float*, int64_t, int64_t, int64_t, int64_t, int32_t, int32_t, int64_t, int64_t*,
                                       float*, int64_t*, uint8_t*, int64_t*) {
    return unsupported("mi_cuda_moe_route_f32");
}
MI_API mi_status mi_cuda_moe_count_i64(const int64_t*, int64_t, int64_t, int64_t, int64_t*) {
    return unsupported("mi_cuda_moe_count_i64");
}
MI_API mi_status mi_cuda_moe_permute_i64(const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t*, int64_t*) {
    return unsupported("mi_cuda_moe_permute_i64");
}
MI_API mi_status mi_cuda_moe_gather_f32(const float*, const int64_t*, int64_t, int64_t, int64_t, int64_t, float*) {
    return unsupported("mi_cuda_moe_gather_f32");
}
MI_API mi_status mi_cuda_moe_gather_backward_f32(const float*, const int64_t*, int64_t, int64_t, int64_t, int64_t, float*) {
    return unsupported("mi_cuda_moe_gather_backward_f32");
}
MI_API mi_status mi_cuda_moe_combine_f32(const float*, const float*, const int64_t*, int64_t, int64_t, int64_t, int64_t, float*) {
    return unsupported("mi_cuda_moe_combine_f32");
}
MI_API mi_status mi_cuda_moe_combine_backward_f32(const float*, const float*, const int64_t*, const float*, int64_t, int64_t,
                                                  int64_t, int64_t, float*, float*) {
    return unsupported("mi_cuda_moe_combine_backward_f32");
}

}  // extern "C"

#endif  // MI_WITH_CUDA
