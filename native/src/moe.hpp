// Expert-dispatch validation shared by the CPU kernels (moe.cpp) and the CUDA ones.
#pragma once

#include <cstdint>

namespace mi {

// counts[e] = pairs routed to expert e; throws MI_ERR_INVALID_ARGUMENT naming the token and slot of
// the first id outside [0, experts). expert_index: [pairs / k, k].
void count_experts(const int64_t* expert_index, int64_t pairs, int64_t k, int64_t experts, int64_t* counts);

}  // namespace mi
