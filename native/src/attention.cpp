// Fused scaled dot-product attention on the CPU, a query block at a time: its whole score rows in cache up to
// kWholeRowKeys keys, an online softmax over key blocks past that (the full score matrix is never materialized
// unless the caller asks for it); log-sum-exp saved for a backward that recomputes the pattern block by block.
// Layout: [batch, head, pos, d_head], dense float32.
#include "attention.hpp"
#include "common.hpp"
#include "parallel.hpp"
#include "simd.hpp"

#include <cmath>
#include <limits>
#include <vector>

namespace {

using mi::AttentionDims;
using mi::kAttnBlockK;
using mi::kAttnBlockQ;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Rows per GEMM call on diagonal blocks: the AVX2 tile height, so masked columns are skipped per tile.
constexpr int64_t kStrip = 6;
// Key lengths up to which the forward keeps a query block's whole score rows ([BlockQ, kv_len], 512 KiB at most, in L2).
constexpr int64_t kWholeRowKeys = 2048;

// How a query block (nq rows from q0) meets a key block (nk keys from k0). On the diagonal the masked triangle is
// skipped by kStrip-row strips: a query strip computes only the keys its last row sees, a key strip only the queries
// from the first that sees its first key. Elsewhere one strip is the whole block.
struct BlockPair {
    const AttentionDims& g;
    int64_t q0, nq, k0, nk;
    bool diagonal;
    int64_t strip, key_strip;

    BlockPair(const AttentionDims& dims, int64_t q0_, int64_t nq_, int64_t k0_, int64_t nk_)
        : g(dims), q0(q0_), nq(nq_), k0(k0_), nk(nk_), diagonal(dims.visible(q0_) - k0_ < nk_),
          strip(diagonal ? kStrip : nq_), key_strip(diagonal ? kStrip : nk_) {}

    // Keys the query strip from row i0 sees.
    int64_t keys_seen(int64_t i0) const {
        return std::clamp<int64_t>(g.visible(q0 + std::min(nq, i0 + strip) - 1) - k0, 0, nk);
    }
    // The first query row that sees key k0 + j0.
    int64_t first_query(int64_t j0) const {
        return g.causal ? std::clamp<int64_t>(k0 + j0 - q0 - g.offset(), 0, nq) : int64_t{0};
    }
};

// Per-thread scratch reused across tasks and calls: no allocation in the hot loop. Several slots, for a task that
// holds buffers (a head's packed keys, a query block's scores) while it calls code that takes another.
float* scratch(size_t floats, int slot = 0) {
    thread_local std::vector<float> buffers[4];
    std::vector<float>& buffer = buffers[slot];
    if (buffer.size() < floats) buffer.resize(floats);
    return buffer.data();
}

// Scaled copy of rows [0, n) of a [*, d] matrix into a [*, dp] one with zero padding columns.
void copy_rows_padded(const float* src, int64_t n, int64_t d, int64_t dp, float scale, float* dst) {
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t c = 0; c < d; ++c) dst[i * dp + c] = src[i * d + c] * scale;
        for (int64_t c = d; c < dp; ++c) dst[i * dp + c] = 0.0f;
    }
}

// K^T of one key block, [d, kAttnBlockK], columns past the last key zero, so that the scores of a
// query block are one row-major GEMM with the key index contiguous.
template <class Ops>
void transpose_block(const float* src, int64_t nk, int64_t d, float* dst) {
    Ops::transpose(src, nk, d, d, dst, kAttnBlockK);
    if (nk < kAttnBlockK)
        for (int64_t c = 0; c < d; ++c) std::fill(dst + c * kAttnBlockK + nk, dst + (c + 1) * kAttnBlockK, 0.0f);
}

// Rotary position embedding applied inside the kernel (GPT-NeoX "rotate half" on the first `dim` entries of
// every row): row r at position p becomes x * cos[p] + roll(x, dim / 2) * sin[p], sin signed as the ABI says.
struct Rotary {
    const float* cos = nullptr;   // [kv_len, dim]
    const float* sin = nullptr;   // [kv_len, dim]
    int64_t dim = 0;

    bool on() const { return cos != nullptr; }

    // The rotated row x at position p, times scale, into out[0, d). Two branch-free halves, so they vectorize.
    void rotate(const float* x, int64_t d, int64_t p, float scale, float* out) const {
        const int64_t half = dim / 2;
        const float* c = cos + p * dim;
        const float* s = sin + p * dim;
        for (int64_t i = 0; i < half; ++i) out[i] = (x[i] * c[i] + x[i + half] * s[i]) * scale;
        for (int64_t i = half; i < dim; ++i) out[i] = (x[i] * c[i] + x[i - half] * s[i]) * scale;
        for (int64_t i = dim; i < d; ++i) out[i] = x[i] * scale;
    }

    // The gradient for the unrotated row from the gradient g of the rotated one (the transpose of the rotation:
    // roll by half is its own inverse), times scale, into out.
    void unrotate(const float* g, int64_t d, int64_t p, float scale, float* out) const {
        const int64_t half = dim / 2;
        const float* c = cos + p * dim;
        const float* s = sin + p * dim;
        for (int64_t i = 0; i < half; ++i) out[i] = (g[i] * c[i] + g[i + half] * s[i + half]) * scale;
        for (int64_t i = half; i < dim; ++i) out[i] = (g[i] * c[i] + g[i - half] * s[i - half]) * scale;
        for (int64_t i = dim; i < d; ++i) out[i] = g[i] * scale;
    }
};

// copy_rows_padded with every row rotated: row i is at position p0 + i.
void copy_rows_rotated(const float* src, int64_t n, int64_t d, int64_t dp, float scale, const Rotary& rot, int64_t p0, float* dst) {
    if (!rot.on()) return copy_rows_padded(src, n, d, dp, scale, dst);
    for (int64_t i = 0; i < n; ++i) {
        rot.rotate(src + i * d, d, p0 + i, scale, dst + i * dp);
        for (int64_t c = d; c < dp; ++c) dst[i * dp + c] = 0.0f;
    }
}

// transpose_block with every key row rotated first: key j is at position p0 + j.
template <class Ops>
void transpose_rotated(const float* src, int64_t nk, int64_t d, const Rotary& rot, int64_t p0, float* dst) {
    if (!rot.on()) return transpose_block<Ops>(src, nk, d, dst);
    thread_local std::vector<float> rows;
    if (rows.size() < static_cast<size_t>(nk * d)) rows.resize(static_cast<size_t>(nk * d));
    for (int64_t j = 0; j < nk; ++j) rot.rotate(src + j * d, d, p0 + j, 1.0f, rows.data() + j * d);
    transpose_block<Ops>(rows.data(), nk, d, dst);
}

template <class Ops>
void forward(const AttentionDims& g, const Rotary& rot, const float* q, const float* k, const float* v, float* out, float* lse,
             float* scores, float* pattern) {
    constexpr int64_t BQ = kAttnBlockQ, BK = kAttnBlockK;
    const int64_t d = g.d_head, dp = mi::round_up8(d), tq = g.q_len, tk = g.kv_len;
    const int64_t nkb = (tk + BK - 1) / BK, nqb = (tq + BQ - 1) / BQ;
    const int64_t heads = g.batch * g.heads;

    // K^T of a head, [nkb, d, BlockK], and V with rows padded to dp when d is not a multiple of 8.
    const bool pad_v = dp != d;
    const int64_t kt_floats = nkb * d * BK, v_floats = pad_v ? tk * dp : 0;
    auto pack = [&](int64_t h, float* kt, float* vpad) {
        for (int64_t kb = 0; kb < nkb; ++kb) {
            const int64_t k0 = kb * BK, nk = std::min(BK, tk - k0);
            transpose_rotated<Ops>(k + (h * tk + k0) * d, nk, d, rot, k0, kt + kb * d * BK);
        }
        if (pad_v) copy_rows_padded(v + h * tk * d, tk, d, dp, 1.0f, vpad);
    };

    // The GEMMs read q's rows where they are, or rotated ones from qs; the scores come out unscaled.
    auto query_rows = [&](int64_t h, int64_t q0, int64_t nq, float* qs, int64_t& lda) {
        lda = d;
        if (!rot.on()) return q + (h * tq + q0) * d;
        copy_rows_rotated(q + (h * tq + q0) * d, nq, d, dp, 1.0f, rot, q0 + g.offset(), qs);
        lda = dp;
        return static_cast<const float*>(qs);
    };

    // One query block of head h against all the keys it sees at once, its scores [nq, kv_end] kept whole (in L2 for
    // kv_len <= kWholeRowKeys): exact row maxima and one exp pass a row with no online rescaling, so a row's
    // bookkeeping (maxima, sums, rescale) is paid once rather than once per key block.
    auto query_block_whole = [&](int64_t h, int64_t qb, const float* kt, const float* vh) {
        const int64_t q0 = qb * BQ, nq = std::min(BQ, tq - q0);
        const int64_t kv_end = g.causal ? std::clamp<int64_t>(q0 + nq + g.offset(), 0, tk) : tk;
        const int64_t lds = mi::round_up8(kv_end);
        float* qs = scratch(BQ * (2 * dp + 3) + BQ * lds);
        float* acc = qs + BQ * dp;    // [BlockQ, dp] unnormalized output
        float* m = acc + BQ * dp;     // [BlockQ] row max of the scaled scores
        float* sum = m + BQ;          // [BlockQ] row sum of exp(scaled score - max), then its log
        float* inv = sum + BQ;        // [BlockQ] 1 / row sum
        float* s = inv + BQ;          // [BlockQ, lds] scores, then exp(scale * s - max)
        int64_t lda = 0;
        const float* qa = query_rows(h, q0, nq, qs, lda);

        for (int64_t k0 = 0; k0 < kv_end; k0 += BK) {   // key blocks outer: a block's K^T stays in L1 across the rows
            const BlockPair pair(g, q0, nq, k0, std::min(BK, tk - k0));
            for (int64_t i0 = 0; i0 < nq; i0 += pair.strip)
                Ops::gemm(std::min(pair.strip, nq - i0), mi::round_up8(pair.keys_seen(i0)), d, qa + i0 * lda, lda, 1,
                          kt + (k0 / BK) * d * BK, BK, s + i0 * lds + k0, lds, false);
        }
        // On a diagonal block the P·V GEMM runs by kStrip-row strips, each over the keys its last row sees; a row's
        // entries from its own last key to its strip's are zeroed, so the masked scores there add nothing.
        const int64_t strip = g.causal ? kStrip : nq;
        auto strip_keys = [&](int64_t i0) { return g.visible(q0 + std::min(nq, i0 + strip) - 1); };
        // The softmax in passes over a few rows at a time rather than row by row: a row's max, its exp pass and its
        // sum are a chain of latencies that rows in flight together hide, and a group's rows stay in L1 between passes.
        // The max of the raw scores is scaled after: scaling is monotonic, and the exp applies it in its FMA.
        constexpr int64_t kGroup = 8;
        for (int64_t i0 = 0; i0 < nq; i0 += kGroup) {
            const int64_t i1 = std::min(nq, i0 + kGroup);
            for (int64_t i = i0; i < i1; ++i) m[i] = Ops::max(s + i * lds, g.visible(q0 + i)) * g.scale;
            if (scores != nullptr)
                for (int64_t i = i0; i < i1; ++i) {
                    const int64_t r = h * tq + q0 + i, vis = g.visible(q0 + i);
                    for (int64_t j = 0; j < vis; ++j) scores[r * tk + j] = s[i * lds + j] * g.scale;
                    std::fill(scores + r * tk + vis, scores + (r + 1) * tk, kNegInf);
                }
            for (int64_t i = i0; i < i1; ++i) {
                float* row = s + i * lds;
                const int64_t vis = g.visible(q0 + i);
                sum[i] = Ops::exp_shift(row, vis, m[i], g.scale);
                std::fill(row + vis, row + strip_keys(i - i % strip), 0.0f);
                // The sum is 0 only for a row that sees no key, which check_attention rules out; such a row would get
                // z = 0 and lse = -inf. A NaN sum (a NaN logit) stays NaN in z, lse and the pattern.
                inv[i] = sum[i] == 0.0f ? 0.0f : 1.0f / sum[i];
            }
        }
        Ops::log(sum, sum, nq);
        for (int64_t i = 0; i < nq; ++i) lse[h * tq + q0 + i] = m[i] + sum[i];
        if (pattern != nullptr)
            for (int64_t i = 0; i < nq; ++i) {
                const int64_t r = h * tq + q0 + i, vis = g.visible(q0 + i);
                for (int64_t j = 0; j < vis; ++j) pattern[r * tk + j] = s[i * lds + j] * inv[i];
                std::fill(pattern + r * tk + vis, pattern + (r + 1) * tk, 0.0f);
            }
        // P·V by key blocks with the scores' strips: a block of V stays in L1 across them. Every row sees key 0.
        for (int64_t k0 = 0; k0 < kv_end; k0 += BK) {
            const BlockPair pair(g, q0, nq, k0, std::min(BK, tk - k0));
            for (int64_t i0 = 0; i0 < nq; i0 += pair.strip) {
                const int64_t keys = pair.keys_seen(i0);
                if (keys > 0)
                    Ops::gemm(std::min(pair.strip, nq - i0), dp, keys, s + i0 * lds + k0, lds, 1, vh + k0 * dp, dp, acc + i0 * dp,
                              dp, k0 > 0);
            }
        }
        for (int64_t i = 0; i < nq; ++i) {
            const int64_t r = h * tq + q0 + i;
            for (int64_t c = 0; c < d; ++c) out[r * d + c] = acc[i * dp + c] * inv[i];
        }
    };

    // One query block of head h against its packed keys kt and values vh ([tk, dp]), key block by key block with an
    // online softmax: for key lengths whose whole score rows would not stay in cache.
    auto query_block_online = [&](int64_t h, int64_t qb, const float* kt, const float* vh) {
        const int64_t q0 = qb * BQ, nq = std::min(BQ, tq - q0);
        float* qs = scratch(BQ * (2 * dp + BK + 4));
        float* acc = qs + BQ * dp;          // [BlockQ, dp] unnormalized output
        float* s = acc + BQ * dp;           // [BlockQ, BlockK] scores, then probabilities
        float* row_max = s + BQ * BK;
        float* row_sum = row_max + BQ;
        float* new_max = row_sum + BQ;      // [BlockQ] this key block's running max
        float* alpha = new_max + BQ;        // [BlockQ] exp(old max - new max), the rescale of acc and row_sum
        // Kept in cache until lse is known, then each output row is written once, masked tail included: the scaled
        // scores [BlockQ, tk] when the scores are wanted; for the pattern, the softmax's own exp(s - m) [BlockQ, tk]
        // with the running max m each key block used [BlockQ, nkb], so the pattern is exp(s - m) · exp(m - lse),
        // one multiply an entry instead of a second exp.
        float* kept_s = scores != nullptr ? scratch(static_cast<size_t>(nq * tk), 2) : nullptr;
        float* kept_p = pattern != nullptr ? scratch(static_cast<size_t>(nq * (tk + nkb)), 3) : nullptr;
        float* kept_m = kept_p != nullptr ? kept_p + nq * tk : nullptr;
        // The softmax's max pass scales the scores, so q is not copied just to be scaled.
        int64_t lda = 0;
        const float* qa = query_rows(h, q0, nq, qs, lda);
        std::fill(acc, acc + nq * dp, 0.0f);
        std::fill(row_max, row_max + nq, kNegInf);
        std::fill(row_sum, row_sum + nq, 0.0f);

        const int64_t kv_end = g.causal ? std::clamp<int64_t>(q0 + nq + g.offset(), 0, tk) : tk;
        for (int64_t k0 = 0; k0 < kv_end; k0 += BK) {   // blocks past kv_end are fully masked: skipped
            const int64_t nk = std::min(BK, tk - k0), nkp = mi::round_up8(nk);
            const float* ktb = kt + (k0 / BK) * d * BK;
            const BlockPair pair(g, q0, nq, k0, nk);
            const int64_t strip = pair.strip;
            for (int64_t i0 = 0; i0 < nq; i0 += strip)
                Ops::gemm(std::min(strip, nq - i0), mi::round_up8(pair.keys_seen(i0)), d, qa + i0 * lda, lda, 1, ktb, BK,
                          s + i0 * BK, BK, false);
            // The new running maxima, then every row's rescale in one vector exp: exp(-inf) is 0 for a row that had
            // no key yet (its acc and sum are 0 either way).
            for (int64_t i = 0; i < nq; ++i) {
                float* row = s + i * BK;
                const int64_t vis = std::clamp<int64_t>(g.visible(q0 + i) - k0, 0, nk);
                new_max[i] = vis == 0 ? row_max[i] : std::max(row_max[i], Ops::scale_max(row, vis, g.scale));
                alpha[i] = row_max[i] == kNegInf ? kNegInf : row_max[i] - new_max[i];
            }
            Ops::exp_shift(alpha, nq, 0.0f);
            for (int64_t i = 0; i < nq; ++i) {
                float* row = s + i * BK;
                const int64_t vis = std::clamp<int64_t>(g.visible(q0 + i) - k0, 0, nk);
                const float m = new_max[i];
                row_max[i] = m;
                if (vis == 0) {
                    std::fill(row, row + nkp, 0.0f);
                    continue;
                }
                if (kept_s != nullptr) std::copy(row, row + vis, kept_s + i * tk + k0);
                const float sum = Ops::exp_shift(row, vis, m);
                if (kept_p != nullptr) {
                    std::copy(row, row + vis, kept_p + i * tk + k0);
                    kept_m[i * nkb + k0 / BK] = m;
                }
                std::fill(row + vis, row + nkp, 0.0f);
                row_sum[i] = row_sum[i] * alpha[i] + sum;
            }
            const float* vb = vh + k0 * dp;
            for (int64_t i0 = 0; i0 < nq; i0 += strip)
                Ops::gemm(std::min(strip, nq - i0), dp, pair.keys_seen(i0), s + i0 * BK, BK, 1, vb, dp, acc + i0 * dp, dp, true,
                          alpha + i0);
        }

        for (int64_t i = 0; i < nq; ++i) {
            const int64_t r = h * tq + q0 + i;
            // row_sum is 0 only for a row that sees no key, which check_attention rules out; such a row would get z = 0.
            // A NaN sum (a NaN logit) stays NaN in z, lse and the pattern.
            const float inv = row_sum[i] == 0.0f ? 0.0f : 1.0f / row_sum[i];
            for (int64_t c = 0; c < d; ++c) out[r * d + c] = acc[i * dp + c] * inv;
            lse[r] = row_sum[i] == 0.0f ? kNegInf : row_max[i] + std::log(row_sum[i]);
            const int64_t vis = g.visible(q0 + i);
            if (scores != nullptr) {
                std::copy(kept_s + i * tk, kept_s + i * tk + vis, scores + r * tk);
                std::fill(scores + r * tk + vis, scores + (r + 1) * tk, kNegInf);
            }
            if (pattern != nullptr) {
                for (int64_t k0 = 0; k0 < vis; k0 += BK) {
                    const float factor = std::exp(kept_m[i * nkb + k0 / BK] - lse[r]);
                    const float* src = kept_p + i * tk + k0;
                    float* dst = pattern + r * tk + k0;
                    for (int64_t j = 0, n = std::min(BK, vis - k0); j < n; ++j) dst[j] = src[j] * factor;
                }
                std::fill(pattern + r * tk + vis, pattern + (r + 1) * tk, 0.0f);
            }
        }
    };

    auto query_block = [&](int64_t h, int64_t qb, const float* kt, const float* vh) {
        if (tk <= kWholeRowKeys) query_block_whole(h, qb, kt, vh);
        else query_block_online(h, qb, kt, vh);
    };

    // With heads enough to keep the pool busy and a head's keys small enough to stay in L2 while its query blocks
    // use them (128 KiB of K^T), a task is a head: it packs its keys into its own scratch and uses them at once,
    // from cache. Otherwise the tasks are (head, query block) and every head is packed first into one
    // buffer, kept on the calling thread across calls (fresh pages every call cost more page faults than packing).
    // Either way the last query blocks go first: under a causal mask they see the most keys, so the pool ends balanced.
    const bool per_head_fits = kt_floats <= 32 * 1024;
    if ((heads >= 4 * mi::ThreadPool::instance().threads() && per_head_fits) || nqb == 1) {
        mi::parallel_for(heads, [&](int64_t h) {
            float* kt = scratch(kt_floats + v_floats, 1);
            pack(h, kt, kt + kt_floats);
            for (int64_t qb = nqb - 1; qb >= 0; --qb) query_block(h, qb, kt, pad_v ? kt + kt_floats : v + h * tk * d);
        });
        return;
    }
    thread_local std::vector<float> packed;   // the calling thread's: the tasks see it through `all`
    const int64_t per_head = kt_floats + v_floats;
    if (packed.size() < static_cast<size_t>(heads * per_head)) packed.resize(static_cast<size_t>(heads * per_head));
    float* all = packed.data();
    mi::parallel_for(heads, [&](int64_t h) { pack(h, all + h * per_head, all + h * per_head + kt_floats); });
    mi::parallel_for(heads * nqb, [&](int64_t task) {
        const int64_t h = task / nqb, qb = nqb - 1 - task % nqb;
        const float* kt = all + h * per_head;
        query_block(h, qb, kt, pad_v ? kt + kt_floats : v + h * tk * d);
    });
}

template <class Ops>
void backward(const AttentionDims& g, const Rotary& rot, const float* q, const float* k, const float* v, const float* out,
              const float* lse, const float* dout, float* dq, float* dk, float* dv) {
    const int64_t d = g.d_head, dp = mi::round_up8(d), tq = g.q_len, tk = g.kv_len;
    const int64_t heads = g.batch * g.heads;
    constexpr int64_t BQ = kAttnBlockQ, BK = kAttnBlockK;

    // Tasks are (batch, head, key-block group): dk and dv rows belong to one key block, so to one
    // task. dq sums over key blocks: with one group per head it accumulates inside the task; when
    // there are too few heads to feed the pool, key blocks are split into groups (strided, so causal
    // work stays balanced) that each fill a private dq partial, summed afterwards. No atomics.
    const int64_t nkb = (tk + BK - 1) / BK, threads = mi::ThreadPool::instance().threads();
    const int64_t groups = heads >= 2 * threads ? 1 : std::min(nkb, (2 * threads + heads - 1) / heads);
    std::vector<float> partial(groups > 1 ? static_cast<size_t>(heads * groups * tq * dp) : 0);   // [heads, groups, tq, dp]
    mi::parallel_for(heads * groups, [&](int64_t task) {
        const int64_t h = task / groups, group = task % groups;
        float* qs = scratch(3 * tq * dp + tq + BK * (3 * dp + 2 * d) + BQ * BK * 2);
        float* dos_padded = qs + tq * dp;         // [tq, dp] dout, padded, when d is not a multiple of 8
        float* dq_local = dos_padded + tq * dp;   // [tq, dp] dq / scale, accumulated over key blocks
        float* dqa = groups > 1 ? partial.data() + task * tq * dp : dq_local;
        float* delta = dq_local + tq * dp;   // [tq] rowsum(dout * out)
        float* kp = delta + tq;           // [BK, dp] key block
        float* dka = kp + BK * dp;        // [BK, dp]
        float* dva = dka + BK * dp;       // [BK, dp]
        float* kt = dva + BK * dp;        // [d, BK]
        float* vt = kt + d * BK;          // [d, BK]
        float* p = vt + d * BK;           // [BQ, BK] probabilities
        float* ds = p + BQ * BK;          // [BQ, BK] dP, then dS
        const float* qh = q + h * tq * d;
        copy_rows_rotated(qh, tq, d, dp, g.scale, rot, g.offset(), qs);
        const float* dos = dp == d ? dout + h * tq * d : dos_padded;   // read in place when no padding is needed
        if (dp != d) copy_rows_padded(dout + h * tq * d, tq, d, dp, 1.0f, dos_padded);
        std::fill(dqa, dqa + tq * dp, 0.0f);
        for (int64_t i = 0; i < tq; ++i) {
            delta[i] = Ops::dot(dout + (h * tq + i) * d, out + (h * tq + i) * d, d);
        }

        for (int64_t k0 = group * BK; k0 < tk; k0 += groups * BK) {
            const int64_t nk = std::min(BK, tk - k0), nkp = mi::round_up8(nk);
            const float* kh = k + (h * tk + k0) * d;
            const float* vh = v + (h * tk + k0) * d;
            copy_rows_rotated(kh, nk, d, dp, 1.0f, rot, k0, kp);
            transpose_rotated<Ops>(kh, nk, d, rot, k0, kt);
            transpose_block<Ops>(vh, nk, d, vt);
            std::fill(dka, dka + nk * dp, 0.0f);
            std::fill(dva, dva + nk * dp, 0.0f);
            // Under a causal mask, query rows before k0 - offset see none of these keys.
            const int64_t first = g.causal ? std::clamp<int64_t>(k0 - g.offset(), 0, tq) : 0;
            for (int64_t q0 = (first / BQ) * BQ; q0 < tq; q0 += BQ) {
                const int64_t nq = std::min(BQ, tq - q0);
                const BlockPair pair(g, q0, nq, k0, nk);
                const int64_t strip = pair.strip, key_strip = pair.key_strip;
                for (int64_t i0 = 0; i0 < nq; i0 += strip)   // scaled scores
                    Ops::gemm(std::min(strip, nq - i0), mi::round_up8(pair.keys_seen(i0)), d, qs + (q0 + i0) * dp, dp, 1, kt, BK,
                              p + i0 * BK, BK, false);
                for (int64_t i = 0; i < nq; ++i) {
                    float* row = p + i * BK;
                    const int64_t vis = std::clamp<int64_t>(g.visible(q0 + i) - k0, 0, nk);
                    if (vis > 0) Ops::exp_shift(row, vis, lse[h * tq + q0 + i]);   // P = exp(S - lse)
                    std::fill(row + vis, row + nkp, 0.0f);
                }
                for (int64_t j0 = 0; j0 < nk; j0 += key_strip) {   // dV += P^T dO
                    const int64_t i1 = pair.first_query(j0);
                    Ops::gemm(std::min(key_strip, nk - j0), dp, nq - i1, p + i1 * BK + j0, 1, BK, dos + (q0 + i1) * dp, dp,
                              dva + j0 * dp, dp, true);
                }
                for (int64_t i0 = 0; i0 < nq; i0 += strip)   // dP = dO V^T
                    Ops::gemm(std::min(strip, nq - i0), mi::round_up8(pair.keys_seen(i0)), d, dos + (q0 + i0) * dp, dp, 1, vt, BK,
                              ds + i0 * BK, BK, false);
                for (int64_t i = 0; i < nq; ++i) {   // dS, exactly 0 where masked (dP is not computed there)
                    const float di = delta[q0 + i];
                    const int64_t vis = std::clamp<int64_t>(g.visible(q0 + i) - k0, 0, nk);
                    for (int64_t j = 0; j < vis; ++j) ds[i * BK + j] = p[i * BK + j] * (ds[i * BK + j] - di);
                    std::fill(ds + i * BK + vis, ds + i * BK + nkp, 0.0f);
                }
                for (int64_t j0 = 0; j0 < nk; j0 += key_strip) {   // dK += dS^T (q * scale)
                    const int64_t i1 = pair.first_query(j0);
                    Ops::gemm(std::min(key_strip, nk - j0), dp, nq - i1, ds + i1 * BK + j0, 1, BK, qs + (q0 + i1) * dp, dp,
                              dka + j0 * dp, dp, true);
                }
                for (int64_t i0 = 0; i0 < nq; i0 += strip)   // dQ += dS K (scaled below)
                    Ops::gemm(std::min(strip, nq - i0), dp, pair.keys_seen(i0), ds + i0 * BK, BK, 1, kp, dp, dqa + (q0 + i0) * dp, dp,
                              true);
            }
            for (int64_t j = 0; j < nk; ++j) {
                // dK is the gradient of the rotated keys: rotate it back to the keys the caller passed.
                if (rot.on()) rot.unrotate(dka + j * dp, d, k0 + j, 1.0f, dk + (h * tk + k0 + j) * d);
                else std::copy(dka + j * dp, dka + j * dp + d, dk + (h * tk + k0 + j) * d);
                std::copy(dva + j * dp, dva + j * dp + d, dv + (h * tk + k0 + j) * d);
            }
        }
        if (groups > 1) return;
        for (int64_t i = 0; i < tq; ++i) {
            if (rot.on()) rot.unrotate(dqa + i * dp, d, i + g.offset(), g.scale, dq + (h * tq + i) * d);
            else
                for (int64_t c = 0; c < d; ++c) dq[(h * tq + i) * d + c] = dqa[i * dp + c] * g.scale;
        }
    });
    if (groups == 1) return;
    mi::parallel_for(heads, [&](int64_t h) {
        std::vector<float> row(static_cast<size_t>(d));
        for (int64_t i = 0; i < tq; ++i) {
            for (int64_t c = 0; c < d; ++c) {
                float sum = 0.0f;
                for (int64_t gi = 0; gi < groups; ++gi) sum += partial[((h * groups + gi) * tq + i) * dp + c];
                row[c] = sum;
            }
            if (rot.on()) rot.unrotate(row.data(), d, i + g.offset(), g.scale, dq + (h * tq + i) * d);
            else
                for (int64_t c = 0; c < d; ++c) dq[(h * tq + i) * d + c] = row[c] * g.scale;
        }
    });
}

// The rotary tables and their size, checked against the shapes; an empty Rotary when cos is NULL.
Rotary check_rotary(const AttentionDims& g, const float* rot_cos, const float* rot_sin, int64_t rotary_dim) {
    mi::require_pointer(rot_cos, "rot_cos");
    mi::require_pointer(rot_sin, "rot_sin");
    if (rotary_dim <= 0 || rotary_dim % 2 != 0 || rotary_dim > g.d_head)
        throw mi::Error{MI_ERR_INVALID_ARGUMENT, "rotary_dim must be even and in [2, d_head = " + std::to_string(g.d_head) +
                                                     "], got " + std::to_string(rotary_dim)};
    if (g.q_len > g.kv_len)
        throw mi::Error{MI_ERR_INVALID_ARGUMENT, "rotary attention needs q_len <= kv_len (queries are the last positions), got q_len " +
                                                     std::to_string(g.q_len) + " and kv_len " + std::to_string(g.kv_len)};
    mi::checked_mul(g.kv_len, rotary_dim, "kv_len * rotary_dim");
    return Rotary{rot_cos, rot_sin, rotary_dim};
}

}  // namespace

namespace mi {

AttentionDims check_attention(int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len, int64_t d_head,
                              int32_t causal, bool with_pattern) {
    require_positive(batch, "batch");
    require_positive(heads, "heads");
    require_positive(q_len, "q_len");
    require_positive(kv_len, "kv_len");
    require_positive(d_head, "d_head");
    if (causal != 0 && causal != 1)
        throw Error{MI_ERR_INVALID_ARGUMENT, "causal must be 0 or 1, got " + std::to_string(causal)};
    const int64_t bh = checked_mul(batch, heads, "batch * heads");
    // Padded and transposed copies stay within int64 too: bound every buffer product with slack (the sums as well).
    checked_mul(checked_mul(bh, checked_add(std::max(q_len, kv_len), kAttnBlockK, "pos + block"), "batch * heads * (pos + block)"),
                checked_add(d_head, 8, "d_head + 8"), "batch * heads * pos * d_head");
    if (with_pattern) checked_mul(checked_mul(bh, q_len, "batch * heads * q_len"), kv_len, "batch * heads * q_len * kv_len");
    // Causal with more queries than keys leaves the first q_len - kv_len queries without a key: a softmax over
    // nothing has no value (0 or NaN would both be invented), so it is rejected, as the managed twin does.
    if (causal == 1 && q_len > kv_len)
        throw Error{MI_ERR_INVALID_ARGUMENT, "causal attention needs q_len <= kv_len (queries are the last positions), got q_len " +
                                                 std::to_string(q_len) + " and kv_len " + std::to_string(kv_len)};
    AttentionDims g;
    g.batch = batch;
    g.heads = heads;
    g.q_len = q_len;
    g.kv_len = kv_len;
    g.d_head = d_head;
    g.causal = causal == 1;
    g.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d_head)));
    return g;
}

}  // namespace mi

namespace {

// The entry points' shared body: every pointer checked, the sizes and (when rotary) the tables validated.
// rotary is false for the plain kernels, whose tables are then ignored.
mi_status forward_entry(const float* q, const float* k, const float* v, int64_t batch, int64_t heads, int64_t q_len,
                        int64_t kv_len, int64_t d_head, int32_t causal, bool rotary, const float* rot_cos,
                        const float* rot_sin, int64_t rotary_dim, float* out, float* lse, float* scores, float* pattern) {
    return mi::guard([&] {
        mi::require_pointer(q, "q");
        mi::require_pointer(k, "k");
        mi::require_pointer(v, "v");
        mi::require_pointer(out, "out");
        mi::require_pointer(lse, "lse");
        const auto g = mi::check_attention(batch, heads, q_len, kv_len, d_head, causal, scores || pattern);
        const auto rot = rotary ? check_rotary(g, rot_cos, rot_sin, rotary_dim) : Rotary{};
        mi::dispatch_simd([&](auto ops) { forward<decltype(ops)>(g, rot, q, k, v, out, lse, scores, pattern); });
    });
}

mi_status backward_entry(const float* q, const float* k, const float* v, const float* out, const float* lse,
                         const float* dout, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len, int64_t d_head,
                         int32_t causal, bool rotary, const float* rot_cos, const float* rot_sin, int64_t rotary_dim,
                         float* dq, float* dk, float* dv) {
    return mi::guard([&] {
        mi::require_pointer(q, "q");
        mi::require_pointer(k, "k");
        mi::require_pointer(v, "v");
        mi::require_pointer(out, "out");
        mi::require_pointer(lse, "lse");
        mi::require_pointer(dout, "dout");
        mi::require_pointer(dq, "dq");
        mi::require_pointer(dk, "dk");
        mi::require_pointer(dv, "dv");
        const auto g = mi::check_attention(batch, heads, q_len, kv_len, d_head, causal, false);
        const auto rot = rotary ? check_rotary(g, rot_cos, rot_sin, rotary_dim) : Rotary{};
        mi::dispatch_simd([&](auto ops) { backward<decltype(ops)>(g, rot, q, k, v, out, lse, dout, dq, dk, dv); });
    });
}

}  // namespace

extern "C" {

MI_API mi_status mi_attention_forward_f32(const float* q, const float* k, const float* v, int64_t batch, int64_t heads,
                                          int64_t q_len, int64_t kv_len, int64_t d_head, int32_t causal, float* out,
                                          float* lse, float* scores, float* pattern) {
    return forward_entry(q, k, v, batch, heads, q_len, kv_len, d_head, causal, false, nullptr, nullptr, 0, out, lse, scores, pattern);
}

MI_API mi_status mi_attention_rotary_forward_f32(const float* q, const float* k, const float* v, int64_t batch, int64_t heads,
                                                 int64_t q_len, int64_t kv_len, int64_t d_head, int32_t causal,
                                                 const float* rot_cos, const float* rot_sin, int64_t rotary_dim, float* out,
                                                 float* lse, float* scores, float* pattern) {
    return forward_entry(q, k, v, batch, heads, q_len, kv_len, d_head, causal, true, rot_cos, rot_sin, rotary_dim, out, lse,
                         scores, pattern);
}

MI_API mi_status mi_attention_backward_f32(const float* q, const float* k, const float* v, const float* out,
                                           const float* lse, const float* dout, int64_t batch, int64_t heads,
                                           int64_t q_len, int64_t kv_len, int64_t d_head, int32_t causal, float* dq,
                                           float* dk, float* dv) {
    return backward_entry(q, k, v, out, lse, dout, batch, heads, q_len, kv_len, d_head, causal, false, nullptr, nullptr, 0,
                          dq, dk, dv);
}

MI_API mi_status mi_attention_rotary_backward_f32(const float* q, const float* k, const float* v, const float* out,
                                                  const float* lse, const float* dout, int64_t batch, int64_t heads,
                                                  int64_t q_len, int64_t kv_len, int64_t d_head, int32_t causal,
                                                  const float* rot_cos, const float* rot_sin, int64_t rotary_dim, float* dq,
                                                  float* dk, float* dv) {
    return backward_entry(q, k, v, out, lse, dout, batch, heads, q_len, kv_len, d_head, causal, true, rot_cos, rot_sin,
                          rotary_dim, dq, dk, dv);
}

}  // extern "C"
