// Test inputs shared by the GoogleTest files: normal floats from a fixed seed, the same sequence on every machine.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

inline std::vector<float> random_vector(size_t n, float scale, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
}

inline std::vector<float> random_vector(size_t n, uint32_t seed) { return random_vector(n, 1.0f, seed); }
