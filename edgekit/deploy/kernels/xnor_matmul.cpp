// The 1-bit OpenVINO extension: BinaryMatMul (a 1-bit x 1-bit matmul: XNOR/AND + popcount, no multiplications)
// and BinaryAttention (a binary self-attention on packed bits, further below).
//
// Inputs
//   0  X      f32 [..., K]            activations, binarized inside (see `mode`)
//   1  W      u8  [NB, KW, 128]       weight sign bits (1 = +1, 0 = -1) as little-endian 64-bit words: K padded
//                                     with zero bits to KW = ceil(K/64) words, N padded to NB = ceil(N/16) blocks
//                                     of 16 outputs; block b, word i holds outputs 16b..16b+15 (u8, not u64: the
//                                     CPU plugin narrows 64-bit integer constants to i32)
//   2  scale  f32 [N]                 output multiplier per output channel (activation scale * weight scale)
//   3  bias   f32 [N]
//   4  params f32 [3 sections]        (beta, hi, qscale): the binarizer's constants, kept as a tensor so they
//                                     stay bit-exact through every serialization; 3 s values make s sections:
//                                     the outputs are s equal runs, run i binarizing X with params 3i..3i+2
// Attributes: n (N), k (K), x_bits, y_bits (0|1; see "Packed bits" below), mode:
//   "pm1": code = x >= beta ? +1 : -1               dot = K - 2 popcount(x ^ w)
//   "01":  code = round_half_even(clip(x - beta, 0, hi) / qscale) in {0, 1}, i.e. (clip(..) / qscale) > 0.5
//                                                   dot = 2 popcount(x & w) - popcount(x)
// Output f32 [..., N] = float(dot) * scale[n] + bias[n]  (dot exact: an integer computed with popcounts).
//
// Packed bits, so that a binary matmul feeding the next one through nothing but its binarizer (and a GELU)
// hands it 1 bit per value instead of 32:
//   x_bits = 1: X is u8 [..., 8 ceil(K/64)], each row's activation bits already packed as little-endian 64-bit
//               words, padding bits zero (another BinaryMatMul's y_bits output); params is not read
//   y_bits = 1: inputs 2 and 3 are i32 [N] thresholds (ge, le) instead of scale and bias, and the output is
//               u8 [..., 8 ceil(N/64)]: bit n of a row = (dot_n >= ge[n]) | (dot_n <= le[n]), padding bits zero.
//               The rewrite computes the thresholds from the epilogue, the GELU and the next binarizer
//               (edgekit/deploy/kernels/rewrite.py: fuse_bits), so the bits are the next binarizer's codes.
//
// The AVX-512 VPOPCNTDQ path is chosen at run time; EDGEKIT_XNOR_ISA=portable forces the portable one.
// Work is spread over OpenVINO's TBB arena (the caller's), serial for small problems.

#include <oneapi/tbb/blocked_range2d.h>
#include <oneapi/tbb/parallel_for.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define XNOR_X86 1
#endif

namespace edgekit {

constexpr int64_t kBlock = 16;  // outputs per weight block

struct Problem {
    const float* x;        // f32 activations (x_bits = 0)
    const uint64_t* xbits;  // packed activation bits (x_bits = 1), kw words a row
    const uint64_t* w;
    const float* scale;  // y_bits = 0
    const float* bias;
    const int32_t* ge;  // y_bits = 1
    const int32_t* le;
    float* y;        // y_bits = 0
    uint8_t* ybits;  // y_bits = 1, ykw words a row
    int64_t m, n, k, kw, nb, ykw;
    bool and_mode;  // "01" mode: AND; "pm1": XOR
    float beta, hi, qscale;
};

// ------------------------------------------------------------------ binarization (shared by both paths)

// "pm1": v >= beta; "01": round_half_even(clip(v - beta, 0, hi) / qscale) = 1, i.e. the quotient > 0.5
static inline bool binarize(bool and_mode, float beta, float hi, float qscale, float v) {
    if (!and_mode)
        return v >= beta;
    float d = v - beta;
    d = d < 0.0f ? 0.0f : d;
    d = d > hi ? hi : d;
    return d / qscale > 0.5f;
}

static inline bool bit_of(const Problem& p, float v) {
    return binarize(p.and_mode, p.beta, p.hi, p.qscale, v);
}

static void pack_rows_portable(const Problem& p, uint64_t* xb, int32_t* pc, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        const float* row = p.x + r * p.k;
        uint64_t* out = xb + r * p.kw;
        int32_t count = 0;
        for (int64_t wd = 0; wd < p.kw; ++wd) {
            uint64_t bits = 0;
            const int64_t base = wd * 64, end = std::min<int64_t>(64, p.k - base);
            for (int64_t b = 0; b < end; ++b)
                bits |= static_cast<uint64_t>(bit_of(p, row[base + b])) << b;
            out[wd] = bits;
            count += __builtin_popcountll(bits);
        }
        pc[r] = count;
    }
}

// x_bits = 1: the rows are packed already; only their popcounts are needed (the "01" dot)
static void count_rows(const Problem& p, int32_t* pc, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        int32_t count = 0;
        for (int64_t wd = 0; wd < p.kw; ++wd)
            count += __builtin_popcountll(p.xbits[r * p.kw + wd]);
        pc[r] = count;
    }
}

// y_bits = 1: bits n0 .. n0 + 15 of a row as one 16-bit store (n0 is a multiple of 16, so no two tiles share one)
static inline void store_bits16(const Problem& p, int64_t r, int64_t n0, uint16_t bits) {
    std::memcpy(p.ybits + r * p.ykw * 8 + n0 / 8, &bits, sizeof(bits));
}

// dot from the popcount of (x op w): pm1: K - 2 acc; 01: 2 acc - popcount(x)
static inline int32_t dot_of(const Problem& p, int32_t acc, int32_t pcx) {
    return p.and_mode ? 2 * acc - pcx : static_cast<int32_t>(p.k) - 2 * acc;
}

static void gemm_portable(const Problem& p, const uint64_t* xb, const int32_t* pc, int64_t r0, int64_t r1, int64_t b0, int64_t b1) {
    for (int64_t r = r0; r < r1; ++r) {
        const uint64_t* xr = xb + r * p.kw;
        for (int64_t blk = b0; blk < b1; ++blk) {
            const uint64_t* wb = p.w + blk * p.kw * kBlock;
            int32_t acc[kBlock] = {0};
            for (int64_t wd = 0; wd < p.kw; ++wd) {
                const uint64_t xv = xr[wd];
                for (int j = 0; j < kBlock; ++j) {
                    uint64_t wv;
                    std::memcpy(&wv, wb + wd * kBlock + j, sizeof(wv));  // the weights may be unaligned
                    const uint64_t v = p.and_mode ? (xv & wv) : (xv ^ wv);
                    acc[j] += __builtin_popcountll(v);
                }
            }
            const int64_t n0 = blk * kBlock, nend = std::min<int64_t>(kBlock, p.n - n0);
            if (p.ybits != nullptr) {
                uint16_t bits = 0;
                for (int64_t j = 0; j < nend; ++j) {
                    const int32_t d = dot_of(p, acc[j], pc[r]);
                    bits |= static_cast<uint16_t>((d >= p.ge[n0 + j]) | (d <= p.le[n0 + j])) << j;
                }
                store_bits16(p, r, n0, bits);
                continue;
            }
            float* yr = p.y + r * p.n + n0;
            for (int64_t j = 0; j < nend; ++j)
                yr[j] = static_cast<float>(dot_of(p, acc[j], pc[r])) * p.scale[n0 + j] + p.bias[n0 + j];
        }
    }
}

// ------------------------------------------------------------------ AVX-512 VPOPCNTDQ

#ifdef XNOR_X86
#define XNOR_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq")))

XNOR_AVX512 static void pack_rows_avx512(const Problem& p, uint64_t* xb, int32_t* pc, int64_t r0, int64_t r1) {
    const __m512 beta = _mm512_set1_ps(p.beta), hi = _mm512_set1_ps(p.hi), qs = _mm512_set1_ps(p.qscale);
    const __m512 zero = _mm512_setzero_ps(), half = _mm512_set1_ps(0.5f);
    for (int64_t r = r0; r < r1; ++r) {
        const float* row = p.x + r * p.k;
        uint64_t* out = xb + r * p.kw;
        int32_t count = 0;
        for (int64_t wd = 0; wd < p.kw; ++wd) {
            uint64_t bits = 0;
            for (int q = 0; q < 4; ++q) {
                const int64_t base = wd * 64 + q * 16;
                const int64_t left = p.k - base;
                if (left <= 0)
                    break;
                const __mmask16 lm = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
                const __m512 v = _mm512_maskz_loadu_ps(lm, row + base);
                __mmask16 m;
                if (!p.and_mode) {
                    m = _mm512_mask_cmp_ps_mask(lm, v, beta, _CMP_GE_OQ);
                } else {
                    __m512 d = _mm512_sub_ps(v, beta);
                    d = _mm512_min_ps(_mm512_max_ps(d, zero), hi);
                    m = _mm512_mask_cmp_ps_mask(lm, _mm512_div_ps(d, qs), half, _CMP_GT_OQ);
                }
                bits |= static_cast<uint64_t>(m) << (q * 16);
            }
            out[wd] = bits;
            count += __builtin_popcountll(bits);
        }
        pc[r] = count;
    }
}

// R rows x 16 outputs per step; weights of a block are 16 consecutive words per K-word. KW > 0: the K loop
// has that many words, known at compile time (unrolled); KW = 0: p.kw words.
template <int R, bool AND, int KW>
XNOR_AVX512 static inline void tile_avx512(const Problem& p, const uint64_t* xb, const int32_t* pc, int64_t r, int64_t blk) {
    const int64_t kw = KW > 0 ? KW : p.kw;
    const uint64_t* wb = p.w + blk * kw * kBlock;
    const uint64_t* xr = xb + r * kw;
    __m512i acc0[R], acc1[R];
    for (int i = 0; i < R; ++i)
        acc0[i] = acc1[i] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int64_t wd = 0; wd < kw; ++wd) {
        const __m512i w0 = _mm512_loadu_si512(wb + wd * kBlock);
        const __m512i w1 = _mm512_loadu_si512(wb + wd * kBlock + 8);
        for (int i = 0; i < R; ++i) {
            const __m512i xv = _mm512_set1_epi64(static_cast<long long>(xr[i * kw + wd]));
            const __m512i v0 = AND ? _mm512_and_si512(xv, w0) : _mm512_xor_si512(xv, w0);
            const __m512i v1 = AND ? _mm512_and_si512(xv, w1) : _mm512_xor_si512(xv, w1);
            acc0[i] = _mm512_add_epi64(acc0[i], _mm512_popcnt_epi64(v0));
            acc1[i] = _mm512_add_epi64(acc1[i], _mm512_popcnt_epi64(v1));
        }
    }
    const int64_t n0 = blk * kBlock, nend = std::min<int64_t>(kBlock, p.n - n0);
    const __mmask16 om = nend >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << nend) - 1u);
    // the low 32 bits of each 64-bit popcount (< 2^31), outputs 0-7 from acc0 and 8-15 from acc1: one permute
    const __m512i lows = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    __m512i dots[R];
    for (int i = 0; i < R; ++i) {
        const __m512i acc = _mm512_permutex2var_epi32(acc0[i], lows, acc1[i]);
        if (AND)  // 2 acc - popcount(x)
            dots[i] = _mm512_sub_epi32(_mm512_add_epi32(acc, acc), _mm512_set1_epi32(pc[r + i]));
        else  // K - 2 acc
            dots[i] = _mm512_sub_epi32(_mm512_set1_epi32(static_cast<int32_t>(p.k)), _mm512_add_epi32(acc, acc));
    }
    if (p.ybits != nullptr) {  // the next binarizer's bits: two integer compares, 16 bits a row
        const __m512i ge = _mm512_maskz_loadu_epi32(om, p.ge + n0), le = _mm512_maskz_loadu_epi32(om, p.le + n0);
        for (int i = 0; i < R; ++i) {
            const __mmask16 bits = _mm512_mask_cmpge_epi32_mask(om, dots[i], ge) | _mm512_mask_cmple_epi32_mask(om, dots[i], le);
            store_bits16(p, r + i, n0, static_cast<uint16_t>(bits));
        }
        return;
    }
    const __m512 sc = _mm512_maskz_loadu_ps(om, p.scale + n0), bs = _mm512_maskz_loadu_ps(om, p.bias + n0);
    for (int i = 0; i < R; ++i) {
        // float(dot) * scale + bias, rounded twice (no FMA), as the INT8 kernels do
        const __m512 out = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dots[i]), sc), bs);
        _mm512_mask_storeu_ps(p.y + (r + i) * p.n + n0, om, out);
    }
}

template <bool AND, int KW>
XNOR_AVX512 static void gemm_avx512_k(const Problem& p, const uint64_t* xb, const int32_t* pc, int64_t r0, int64_t r1, int64_t b0, int64_t b1) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4)
        for (int64_t blk = b0; blk < b1; ++blk)
            tile_avx512<4, AND, KW>(p, xb, pc, r, blk);
    for (; r < r1; ++r)
        for (int64_t blk = b0; blk < b1; ++blk)
            tile_avx512<1, AND, KW>(p, xb, pc, r, blk);
}

// K of 384, 768 and 1536 (6, 12 and 24 words: MiniLM's and BERT-base's hidden sizes and MiniLM's FFN) with the
// K loop unrolled; any other K loops over p.kw
template <bool AND>
XNOR_AVX512 static void gemm_avx512_t(const Problem& p, const uint64_t* xb, const int32_t* pc, int64_t r0, int64_t r1, int64_t b0, int64_t b1) {
    switch (p.kw) {
    case 6:
        return gemm_avx512_k<AND, 6>(p, xb, pc, r0, r1, b0, b1);
    case 12:
        return gemm_avx512_k<AND, 12>(p, xb, pc, r0, r1, b0, b1);
    case 24:
        return gemm_avx512_k<AND, 24>(p, xb, pc, r0, r1, b0, b1);
    default:
        return gemm_avx512_k<AND, 0>(p, xb, pc, r0, r1, b0, b1);
    }
}

XNOR_AVX512 static void gemm_avx512(const Problem& p, const uint64_t* xb, const int32_t* pc, int64_t r0, int64_t r1, int64_t b0, int64_t b1) {
    if (p.and_mode)
        gemm_avx512_t<true>(p, xb, pc, r0, r1, b0, b1);
    else
        gemm_avx512_t<false>(p, xb, pc, r0, r1, b0, b1);
}
#endif

static bool cpu_has_avx512_popcnt() {
#ifdef XNOR_X86
    static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                            __builtin_cpu_supports("avx512vpopcntdq");
    return has;
#else
    return false;
#endif
}

static bool use_avx512() {
    const char* forced = std::getenv("EDGEKIT_XNOR_ISA");
    if (forced != nullptr && std::strcmp(forced, "portable") == 0)
        return false;
    return cpu_has_avx512_popcnt();
}

// `sections` > 1 (x_bits = 0; params of 3 sections values): the outputs are that many equal runs of whole blocks, run i reading X through its
// own binarizer, params[3i .. 3i+2] (one call for a layer's Q, K and V, each with its own activation binarizer).
static void run(const Problem& p, const float* params, int64_t sections) {
    const bool fast = use_avx512();
    const int64_t per = p.nb / sections;  // blocks a section
    std::vector<uint64_t> packed(p.xbits != nullptr ? 0 : static_cast<size_t>(sections * p.m * p.kw));
    std::vector<int32_t> pc(static_cast<size_t>(sections * p.m));
    std::vector<Problem> parts(static_cast<size_t>(sections), p);
    for (int64_t sec = 0; sec < sections; ++sec) {
        parts[sec].beta = params[3 * sec];
        parts[sec].hi = params[3 * sec + 1];
        parts[sec].qscale = params[3 * sec + 2];
    }
    if (p.ybits != nullptr) {  // the bytes past the last 16-output block of each row stay zero bits
        const int64_t written = p.nb * 2, row = p.ykw * 8;
        if (written < row)
            for (int64_t r = 0; r < p.m; ++r)
                std::memset(p.ybits + r * row + written, 0, static_cast<size_t>(row - written));
    }
    auto pack = [&](int64_t r0, int64_t r1) {
        if (p.xbits != nullptr)
            return count_rows(p, pc.data(), r0, r1);
        for (int64_t sec = 0; sec < sections; ++sec) {
            uint64_t* xb = packed.data() + sec * p.m * p.kw;
            int32_t* counts = pc.data() + sec * p.m;
#ifdef XNOR_X86
            if (fast) {
                pack_rows_avx512(parts[sec], xb, counts, r0, r1);
                continue;
            }
#endif
            pack_rows_portable(parts[sec], xb, counts, r0, r1);
        }
    };
    auto gemm = [&](int64_t r0, int64_t r1, int64_t b0, int64_t b1) {
        for (int64_t sec = 0; sec < sections; ++sec) {
            const int64_t lo = std::max(b0, sec * per), hi = std::min(b1, (sec + 1) * per);
            if (lo >= hi)
                continue;
            const uint64_t* xb = p.xbits != nullptr ? p.xbits : packed.data() + sec * p.m * p.kw;
            const int32_t* counts = pc.data() + sec * p.m;
#ifdef XNOR_X86
            if (fast) {
                gemm_avx512(p, xb, counts, r0, r1, lo, hi);
                continue;
            }
#endif
            gemm_portable(p, xb, counts, r0, r1, lo, hi);
        }
    };
    // 64-bit word products: below ~100k of them a parallel region costs more than it saves
    const int64_t work = p.m * p.nb * kBlock * p.kw;
    if (work < (1 << 17)) {
        pack(0, p.m);
        gemm(0, p.m, 0, p.nb);
        return;
    }
    oneapi::tbb::parallel_for(oneapi::tbb::blocked_range<int64_t>(0, p.m, 64), [&](const oneapi::tbb::blocked_range<int64_t>& r) {
        pack(r.begin(), r.end());
    });
    oneapi::tbb::parallel_for(oneapi::tbb::blocked_range2d<int64_t>(0, p.m, 16, 0, p.nb, 4),
                              [&](const oneapi::tbb::blocked_range2d<int64_t>& r) {
                                  gemm(r.rows().begin(), r.rows().end(), r.cols().begin(), r.cols().end());
                              });
}

// ------------------------------------------------------------------ BinaryAttention
//
// One BERT self-attention whose Q, K, V, probabilities and output are all binary (BiT W1A1), on packed bits:
//   inputs   0-2  Q, K, V  u8 [B, S, 8 ceil(E/64)]   the sign bits (1 = +1) of the query/key/value binarizers,
//                                                    as the Q/K/V BinaryMatMuls write them (y_bits = 1);
//                                                    head h is bits h*D .. h*D+D-1 of a row (E = heads * D)
//            3    mask     f32, broadcastable to [B, heads, S, S] (rank <= 4, last dim S): added to the scores
//            4    params   f32 [9]: qk, mul, p_beta, p_hi, p_qscale, pv, o_beta, o_hi, o_qscale
//            (qkv = 1: inputs 0-2 are one u8 [B, S, 3 * 8 ceil(E/64)] tensor holding each row's Q, K and V bits
//            in turn, each from a word boundary: one BinaryMatMul computed all three)
//   attributes heads, head_dim (D), div (0|1), o_mode ("pm1"|"01"), qkv (0|1)
//   output   u8 [B, S, 8 ceil(E/64)]: the bits of the next binarizer (o_mode, o_beta, o_hi, o_qscale) of the
//            attention output [B, S, E], i.e. what the output projection's BinaryMatMul reads (x_bits = 1).
// Per head, as the lowered graph computes it:
//   dot_qk = D - 2 popcount(q ^ k)                               (the {-1,+1} codes' dot product)
//   score  = float(dot_qk) * qk * mul  (div: / mul) + mask        (qk = the two activation scales' product)
//   p      = softmax(score) over the keys, in float32
//   code_p = "01" binarizer of p (p_beta, p_hi, p_qscale)           ({0,1} probabilities)
//   dot_pv = 2 popcount(p & v) - popcount(p)                      ({0,1} x {-1,+1})
//   out    = the output binarizer of float(dot_pv) * pv            (pv = the two activation scales' product)
// A score takes one of D + 1 values where the mask is 0, so exp(score - max) comes from a table of
// (D + 1)^2 entries computed once per set of constants; keys whose mask puts exp() below float32's range
// (the exporter's -3.4e38) count as exact zeros; a row with any other mask value is computed key by key.
// The exp is the C library's, the sum in a fixed order: a probability within a rounding of the binarizer's
// threshold may take the other bit than the runtime's own Softmax gives it (the parity check bounds that).

struct AttnProblem {
    const uint64_t* q;
    const uint64_t* k;
    const uint64_t* v;
    const float* mask;
    int64_t m_b, m_h, m_s;  // mask strides of batch, head, query row (0 where broadcast); keys are contiguous
    uint64_t* out;
    int64_t nb, s, h, d, ew, dw, sw;  // batch, sequence, heads, head dim, words per row, per head, per key row
    int64_t rs;                       // words from one Q/K/V row to the next (ew, or 3 ew for one QKV tensor)
    bool div;
    float qk, mul, p_beta, p_hi, p_qscale, pv;
    bool o_and;
    float o_beta, o_hi, o_qscale;
    const float* score;  // [d + 1]: the score of popcount pc (mask 0)
    const float* etab;   // [(d + 1)^2]: etab[m * (d + 1) + pc] = exp(score[pc] - score[m])
    float dead;          // a mask value below this makes exp() zero for any key and row
    float p_cut, o_cut;  // "01" binarizers as one compare: bit = (v - beta >= cut) (see clip_cut)
    int64_t ref;         // the popcount of the largest score, if every score's exp() relative to it is a normal float; else -1
};

// The "01" binarizer round_half_even(clip(x, 0, hi) / qscale) = 1 of x = v - beta is monotone in x: it is
// x >= cut for the smallest float32 cut where it holds (+inf if none), found by bisection over the floats.
static float clip_cut(float hi, float qscale) {
    auto holds = [&](float x) { return binarize(true, 0.0f, hi, qscale, x); };
    auto key = [](float v) {
        int32_t i;
        std::memcpy(&i, &v, sizeof(i));
        return i >= 0 ? static_cast<int64_t>(i) : -static_cast<int64_t>(i & 0x7FFFFFFF);
    };
    auto of = [](int64_t k) {
        const uint32_t bits = k >= 0 ? static_cast<uint32_t>(k) : (static_cast<uint32_t>(-k) | 0x80000000u);
        float v;
        std::memcpy(&v, &bits, sizeof(v));
        return v;
    };
    int64_t lo = key(-std::numeric_limits<float>::max()), hi_k = key(std::numeric_limits<float>::max());
    if (!holds(of(hi_k)))
        return std::numeric_limits<float>::infinity();
    while (lo < hi_k) {
        const int64_t mid = lo + (hi_k - lo) / 2;
        if (holds(of(mid)))
            hi_k = mid;
        else
            lo = mid + 1;
    }
    return of(lo);
}

// Bits [off, off + len) of a packed row as words, the last one zero-padded.
static inline void extract_bits(const uint64_t* row, int64_t off, int64_t len, uint64_t* out) {
    for (int64_t w = 0; w * 64 < len; ++w) {
        const int64_t lo = off + w * 64, word = lo / 64, sh = lo % 64;
        uint64_t bits = row[word] >> sh;
        if (sh != 0 && (lo + 64 - sh) < off + len)
            bits |= row[word + 1] << (64 - sh);
        const int64_t left = len - w * 64;
        out[w] = left >= 64 ? bits : bits & ((uint64_t{1} << left) - 1);
    }
}

// In-place transpose of a 64 x 64 bit matrix (bit j of a[i] <-> bit i of a[j]).
static void transpose64(uint64_t a[64]) {
    uint64_t m = 0x00000000FFFFFFFFULL;
    for (int j = 32; j != 0; j >>= 1, m ^= m << j)
        for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
            const uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
            a[k] ^= t << j;
            a[k | j] ^= t;
        }
}

// Per batch item: each head's key bits as [head][word][key] (keys contiguous), and the value bits transposed to
// [key word][column] (bit t of word c, column n = value bit n of key 64 c + t).
static void attn_prepare(const AttnProblem& p, int64_t b, uint64_t* kt, uint32_t* kt32, uint64_t* vt) {
    for (int64_t hh = 0; hh < p.h; ++hh)
        for (int64_t t = 0; t < p.s; ++t) {
            uint64_t words[64];
            extract_bits(p.k + (b * p.s + t) * p.rs, hh * p.d, p.d, words);
            for (int64_t w = 0; w < p.dw; ++w)
                kt[((b * p.h + hh) * p.dw + w) * p.s + t] = words[w];
            if (kt32 != nullptr)  // D <= 32: the same words in 32 bits, 16 keys to a vector
                kt32[(b * p.h + hh) * p.s + t] = static_cast<uint32_t>(words[0]);
        }
    const int64_t cols = p.ew * 64;
    for (int64_t c = 0; c < p.sw; ++c)
        for (int64_t cw = 0; cw < p.ew; ++cw) {
            uint64_t block[64];
            for (int64_t i = 0; i < 64; ++i) {
                const int64_t t = c * 64 + i;
                block[i] = t < p.s ? p.v[(b * p.s + t) * p.rs + cw] : 0;
            }
            transpose64(block);
            std::memcpy(vt + (b * p.sw + c) * cols + cw * 64, block, sizeof(block));
        }
}

// Keys of one mask row: 1 where the mask is 0 (as bytes and as packed words), 0 where exp() is zero for sure;
// false if any key is neither or none is 0 (the row is then computed key by key).
static inline bool classify(const AttnProblem& p, const float* mrow, uint8_t* valid, uint64_t* validw) {
    bool any = false, plain = true;
    for (int64_t w = 0; w < p.sw; ++w)
        validw[w] = 0;
    for (int64_t t = 0; t < p.s; ++t) {
        const float m = mrow[t];
        valid[t] = m == 0.0f;
        validw[t / 64] |= static_cast<uint64_t>(m == 0.0f) << (t % 64);
        any |= m == 0.0f;
        plain &= (m == 0.0f) | (m < p.dead);
    }
    return plain && any;
}

static inline void set_bit(uint64_t* words, int64_t pos, bool bit) {
    words[pos / 64] |= static_cast<uint64_t>(bit) << (pos % 64);
}

// sum over the valid keys of e[pc[t]] in 16 lanes (key t in lane t % 16), the lanes added pairwise as
// _mm512_reduce_add_ps does, so both paths round alike
static inline float lane_sum(const float* e, const int32_t* pc, const uint8_t* valid, int64_t s) {
    float acc[16] = {0};
    for (int64_t t = 0; t < s; ++t)
        acc[t % 16] += valid[t] ? e[pc[t]] : 0.0f;
    for (int half = 8; half >= 1; half /= 2)
        for (int l = 0; l < half; ++l)
            acc[l] += acc[l + half];
    return acc[0];
}

// One (query row, head), any head size and mask, key by key: the probability bits into pw, the output bits of
// the head into orow. `fast`: the row's mask is 0 or negligible everywhere (classify).
static inline void row_head_generic(const AttnProblem& p, const uint64_t* qw, const uint64_t* kh, const uint64_t* vb, const float* mrow,
                                    bool fast, const uint8_t* valid, int32_t* pc, float* st, uint64_t* pw, uint64_t* orow, int64_t hh) {
    const int64_t s = p.s, d = p.d, cols = p.ew * 64;
    for (int64_t t = 0; t < s; ++t)
        pc[t] = 0;
    for (int64_t w = 0; w < p.dw; ++w)
        for (int64_t t = 0; t < s; ++t)
            pc[t] += static_cast<int32_t>(__builtin_popcountll(qw[w] ^ kh[w * s + t]));
    for (int64_t w = 0; w < p.sw; ++w)
        pw[w] = 0;
    if (fast) {  // exp() from the table, one value per popcount
        int64_t top = p.ref;  // exp() relative to the largest score any key can have; else to this row's largest
        if (top < 0) {
            int32_t lo = static_cast<int32_t>(d), hi = 0;
            for (int64_t t = 0; t < s; ++t)
                if (valid[t]) {
                    lo = pc[t] < lo ? pc[t] : lo;
                    hi = pc[t] > hi ? pc[t] : hi;
                }
            top = p.score[lo] >= p.score[hi] ? lo : hi;
        }
        const float* e = p.etab + top * (d + 1);
        const float sum = lane_sum(e, pc, valid, s);
        const bool zero = binarize(true, p.p_beta, p.p_hi, p.p_qscale, 0.0f / sum);
        for (int64_t t = 0; t < s; ++t)
            set_bit(pw, t, valid[t] ? binarize(true, p.p_beta, p.p_hi, p.p_qscale, e[pc[t]] / sum) : zero);
    } else {  // as the graph does
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < s; ++t) {
            st[t] = p.score[pc[t]] + mrow[t];
            mx = st[t] > mx ? st[t] : mx;
        }
        float sum = 0.0f;
        for (int64_t t = 0; t < s; ++t) {
            st[t] = std::exp(st[t] - mx);
            sum += st[t];
        }
        for (int64_t t = 0; t < s; ++t)
            set_bit(pw, t, binarize(true, p.p_beta, p.p_hi, p.p_qscale, st[t] / sum));
    }
    int32_t pcp = 0;
    for (int64_t w = 0; w < p.sw; ++w)
        pcp += static_cast<int32_t>(__builtin_popcountll(pw[w]));
    for (int64_t j = 0; j < d; ++j) {
        int32_t a = 0;
        for (int64_t w = 0; w < p.sw; ++w)
            a += static_cast<int32_t>(__builtin_popcountll(pw[w] & vb[w * cols + j]));
        set_bit(orow, hh * d + j, binarize(p.o_and, p.o_beta, p.o_hi, p.o_qscale, static_cast<float>(2 * a - pcp) * p.pv));
    }
}

// All heads of query rows [r0, r1) (a row index is b * s + i). `head(...)` may take a (row, head) on a faster
// path and return true; otherwise the generic one computes it.
template <class Head>
static void attn_rows(const AttnProblem& p, const uint64_t* kt, const uint64_t* vt, int64_t r0, int64_t r1, Head head) {
    const int64_t s = p.s, cols = p.ew * 64;
    std::vector<int32_t> pc(s + 16);
    std::vector<uint8_t> valid(s);
    std::vector<float> st(s);
    std::vector<uint64_t> pw(p.sw), validw(p.sw), orow(p.ew);
    const float* last = nullptr;
    bool fast = false;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / s, i = r % s;
        std::fill(orow.begin(), orow.end(), 0);
        for (int64_t hh = 0; hh < p.h; ++hh) {
            const float* mrow = p.mask + b * p.m_b + hh * p.m_h + i * p.m_s;
            // a new mask row: classified again unless it holds what the last one held (an expanded [B, 1, S, S] mask)
            if (mrow != last && (last == nullptr || std::memcmp(mrow, last, s * sizeof(float)) != 0))
                fast = classify(p, mrow, valid.data(), validw.data());
            last = mrow;
            uint64_t qw[64];
            extract_bits(p.q + r * p.rs, hh * p.d, p.d, qw);
            const uint64_t* kh = kt + (b * p.h + hh) * p.dw * s;
            const uint64_t* vb = vt + b * p.sw * cols + hh * p.d;
            if (!(fast && head(qw[0], kh, validw.data(), vb, pc.data(), pw.data(), orow.data(), hh)))
                row_head_generic(p, qw, kh, vb, mrow, fast, valid.data(), pc.data(), st.data(), pw.data(), orow.data(), hh);
        }
        std::memcpy(p.out + r * p.ew, orow.data(), p.ew * sizeof(uint64_t));
    }
}

static void attn_rows_portable(const AttnProblem& p, const uint64_t* kt, const uint64_t* vt, int64_t r0, int64_t r1) {
    attn_rows(p, kt, vt, r0, r1, [](uint64_t, const uint64_t*, const uint64_t*, const uint64_t*, int32_t*, uint64_t*, uint64_t*, int64_t) { return false; });
}

#ifdef XNOR_X86
// One (query row, head) whose mask row is 0 or negligible, for D <= 64 (a key's head bits in one word) and
// D % 8 == 0, 16 keys at a time. The probability bits are those of popcounts in a range [a, b] (the
// binarizer of a monotone function of the popcount); false, leaving the head to the generic path, where the
// table says otherwise (it does not for a monotone exp).
// 16 popcounts of q ^ k for keys t .. t + 15 (lm: those that exist); kh32: D <= 32, one 32-bit word a key
XNOR_AVX512 static inline __m512i popcounts16(__m512i xq, __m512i xq32, const uint64_t* kh, const uint32_t* kh32, int64_t t, __mmask16 lm) {
    if (kh32 != nullptr)
        return _mm512_popcnt_epi32(_mm512_xor_si512(xq32, _mm512_maskz_loadu_epi32(lm, kh32 + t)));
    const __m512i k0 = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(lm), kh + t);
    const __m512i k1 = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(lm >> 8), kh + t + 8);
    const __m256i c0 = _mm512_cvtepi64_epi32(_mm512_popcnt_epi64(_mm512_xor_si512(xq, k0)));
    const __m256i c1 = _mm512_cvtepi64_epi32(_mm512_popcnt_epi64(_mm512_xor_si512(xq, k1)));
    return _mm512_inserti64x4(_mm512_castsi256_si512(c0), c1, 1);
}

XNOR_AVX512 static bool row_head_avx512(const AttnProblem& p, uint64_t q, const uint64_t* kh, const uint32_t* kh32, const uint64_t* validw,
                                        const uint64_t* vb, int32_t* pc, uint64_t* pw, uint64_t* orow, int64_t hh) {
    const int64_t s = p.s, d = p.d, cols = p.ew * 64;
    const __m512i xq = _mm512_set1_epi64(static_cast<long long>(q)), xq32 = _mm512_set1_epi32(static_cast<int>(q));
    auto popcounts = [&](int64_t t, __mmask16 lm) { return popcounts16(xq, xq32, kh, kh32, t, lm); };
    int64_t top = p.ref;  // exp() relative to the largest score any key can have; else to this row's largest
    if (top < 0) {
        __m512i lo = _mm512_set1_epi32(static_cast<int>(d)), hi = _mm512_setzero_si512();
        for (int64_t t = 0; t < s; t += 16) {
            const int64_t left = s - t;
            const __mmask16 lm = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
            const __m512i c = popcounts(t, lm);
            _mm512_storeu_si512(pc + t, c);  // pc has 16 spare entries
            const __mmask16 vm = lm & static_cast<__mmask16>(validw[t / 64] >> (t % 64));
            lo = _mm512_mask_min_epi32(lo, vm, lo, c);
            hi = _mm512_mask_max_epi32(hi, vm, hi, c);
        }
        const int64_t plo = _mm512_reduce_min_epi32(lo), phi = _mm512_reduce_max_epi32(hi);
        top = p.score[plo] >= p.score[phi] ? plo : phi;
    }
    const float* e = p.etab + top * (d + 1);
    // e[pc] by in-register permutes over 32-entry pieces of the table (a gather is several times slower here)
    const int64_t pieces = (d + 32) / 32;  // d + 1 entries, d <= 64
    __m512 tab[3][2];
    for (int64_t c = 0; c < pieces; ++c)
        for (int half = 0; half < 2; ++half) {
            const int64_t at = c * 32 + half * 16, left = d + 1 - at;
            const __mmask16 lm = left >= 16 ? static_cast<__mmask16>(0xFFFF) : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1u);
            tab[c][half] = _mm512_maskz_loadu_ps(lm, e + (left > 0 ? at : 0));
        }
    __m512 acc = _mm512_setzero_ps();
    for (int64_t t = 0; t < s; t += 16) {
        const int64_t left = s - t;
        const __mmask16 lm = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
        const __mmask16 vm = lm & static_cast<__mmask16>(validw[t / 64] >> (t % 64));
        __m512i idx;
        if (p.ref >= 0) {  // one pass: the popcounts here
            idx = popcounts(t, lm);
            _mm512_storeu_si512(pc + t, idx);
        } else {
            idx = _mm512_loadu_si512(pc + t);
        }
        __m512 v = _mm512_permutex2var_ps(tab[0][0], idx, tab[0][1]);  // uses idx's low 5 bits
        for (int64_t c = 1; c < pieces; ++c)
            v = _mm512_mask_mov_ps(v, _mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32(static_cast<int>(32 * c))),
                                   _mm512_permutex2var_ps(tab[c][0], idx, tab[c][1]));
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(vm, v));
    }
    const float sum = _mm512_reduce_add_ps(acc);
    // the probability bit of each popcount 0..d, 16 at a time
    unsigned __int128 table = 0;
    const __m512 vsum = _mm512_set1_ps(sum), beta = _mm512_set1_ps(p.p_beta), cut = _mm512_set1_ps(p.p_cut);
    for (int64_t c = 0; c <= d; c += 16) {
        const int64_t left = d + 1 - c;
        const __mmask16 lm = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
        const __m512 v = _mm512_sub_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(lm, e + c), vsum), beta);
        const __mmask16 bits = _mm512_mask_cmp_ps_mask(lm, v, cut, _CMP_GE_OQ);  // the binarizer: see p_cut
        table |= static_cast<unsigned __int128>(bits) << c;
    }
    int64_t a = 0, b = -1;  // the range of popcounts with bit 1 (empty: b < a)
    if (table != 0) {
        const auto lo64 = static_cast<uint64_t>(table), hi64 = static_cast<uint64_t>(table >> 64);
        a = lo64 != 0 ? __builtin_ctzll(lo64) : 64 + __builtin_ctzll(hi64);
        const unsigned __int128 run = table >> a;
        if ((run & (run + 1)) != 0)
            return false;  // not one range
        b = a + __builtin_popcountll(lo64) + __builtin_popcountll(hi64) - 1;
    }
    const bool zbit = binarize(true, p.p_beta, p.p_hi, p.p_qscale, 0.0f / sum);
    const __m512i va = _mm512_set1_epi32(static_cast<int>(a)), vb_ = _mm512_set1_epi32(static_cast<int>(b));
    for (int64_t w = 0; w < p.sw; ++w)
        pw[w] = 0;
    for (int64_t t = 0; t < s; t += 16) {
        const int64_t left = s - t;
        const __mmask16 lm = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
        const __mmask16 vm = lm & static_cast<__mmask16>(validw[t / 64] >> (t % 64));
        const __m512i c = _mm512_loadu_si512(pc + t);
        __mmask16 m = _mm512_mask_cmpge_epi32_mask(vm, c, va) & _mm512_cmple_epi32_mask(c, vb_);
        if (zbit)
            m |= lm & ~vm;
        pw[t / 64] |= static_cast<uint64_t>(m) << (t % 64);
    }
    int32_t pcp = 0;
    for (int64_t w = 0; w < p.sw; ++w)
        pcp += static_cast<int32_t>(__builtin_popcountll(pw[w]));
    const __m256 pv = _mm256_set1_ps(p.pv), ob = _mm256_set1_ps(p.o_beta), oc = _mm256_set1_ps(p.o_cut);
    for (int64_t j = 0; j < d; j += 8) {
        __m512i cnt = _mm512_setzero_si512();
        for (int64_t w = 0; w < p.sw; ++w)
            cnt = _mm512_add_epi64(
                cnt, _mm512_popcnt_epi64(_mm512_and_si512(_mm512_set1_epi64(static_cast<long long>(pw[w])), _mm512_loadu_si512(vb + w * cols + j))));
        const __m512i dot = _mm512_sub_epi64(_mm512_slli_epi64(cnt, 1), _mm512_set1_epi64(pcp));
        const __m256 y = _mm256_mul_ps(_mm512_cvtepi64_ps(dot), pv);
        const __mmask8 m = p.o_and ? _mm256_cmp_ps_mask(_mm256_sub_ps(y, ob), oc, _CMP_GE_OQ) : _mm256_cmp_ps_mask(y, ob, _CMP_GE_OQ);
        const int64_t pos = hh * d + j;
        orow[pos / 64] |= static_cast<uint64_t>(m) << (pos % 64);
    }
    return true;
}

XNOR_AVX512 static void attn_rows_avx512(const AttnProblem& p, const uint64_t* kt, const uint32_t* kt32, const uint64_t* vt, int64_t r0, int64_t r1) {
    const bool usable = p.dw == 1 && p.d % 8 == 0;
    attn_rows(p, kt, vt, r0, r1,
              [&](uint64_t q, const uint64_t* kh, const uint64_t* validw, const uint64_t* vb, int32_t* pc, uint64_t* pw, uint64_t* orow, int64_t hh) {
                  const uint32_t* kh32 = kt32 != nullptr ? kt32 + (kh - kt) : nullptr;  // one word a key: the same offset
                  return usable && row_head_avx512(p, q, kh, kh32, validw, vb, pc, pw, orow, hh);
              });
}
#endif

static void attention(const AttnProblem& p) {
    const bool fast = use_avx512();
    std::vector<uint64_t> kt(static_cast<size_t>(p.nb * p.h * p.dw * p.s)), vt(static_cast<size_t>(p.nb * p.sw * p.ew * 64));
    std::vector<uint32_t> kt32(fast && p.d <= 32 ? static_cast<size_t>(p.nb * p.h * p.s) : 0);
    uint32_t* k32 = kt32.empty() ? nullptr : kt32.data();
    auto rows = [&](int64_t r0, int64_t r1) {
#ifdef XNOR_X86
        if (fast)
            return attn_rows_avx512(p, kt.data(), k32, vt.data(), r0, r1);
#endif
        attn_rows_portable(p, kt.data(), vt.data(), r0, r1);
    };
    const int64_t work = p.nb * p.s * p.h * p.s;  // query-key pairs
    if (work < (1 << 15)) {
        for (int64_t b = 0; b < p.nb; ++b)
            attn_prepare(p, b, kt.data(), k32, vt.data());
        rows(0, p.nb * p.s);
        return;
    }
    oneapi::tbb::parallel_for(int64_t{0}, p.nb, [&](int64_t b) { attn_prepare(p, b, kt.data(), k32, vt.data()); });
    oneapi::tbb::parallel_for(oneapi::tbb::blocked_range<int64_t>(0, p.nb * p.s, 8),
                              [&](const oneapi::tbb::blocked_range<int64_t>& r) { rows(r.begin(), r.end()); });
}

// ------------------------------------------------------------------ the OpenVINO operation

class BinaryMatMul : public ov::op::Op {
public:
    OPENVINO_OP("BinaryMatMul", "edgekit_xnor");

    BinaryMatMul() = default;
    BinaryMatMul(const ov::OutputVector& args, int64_t n, int64_t k, std::string mode, int64_t x_bits, int64_t y_bits)
        : Op(args),
          m_n(n),
          m_k(k),
          m_mode(std::move(mode)),
          m_x_bits(x_bits),
          m_y_bits(y_bits) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, get_input_size() == 5, "BinaryMatMul takes 5 inputs (X, W, scale|ge, bias|le, params)");
        NODE_VALIDATION_CHECK(this, m_mode == "pm1" || m_mode == "01", "BinaryMatMul mode must be 'pm1' or '01', got ", m_mode);
        NODE_VALIDATION_CHECK(this, m_n > 0 && m_k > 0, "BinaryMatMul needs n > 0 and k > 0");
        NODE_VALIDATION_CHECK(this, (m_x_bits == 0 || m_x_bits == 1) && (m_y_bits == 0 || m_y_bits == 1), "BinaryMatMul x_bits and y_bits are 0 or 1");
        NODE_VALIDATION_CHECK(this, get_input_element_type(1) == ov::element::u8, "BinaryMatMul weights must be u8 (packed 64-bit words)");
        const auto x_type = m_x_bits ? ov::element::u8 : ov::element::f32;
        NODE_VALIDATION_CHECK(this, get_input_element_type(0).compatible(x_type), "BinaryMatMul input must be ", x_type, " (x_bits = ", m_x_bits, ")");
        if (m_y_bits)
            NODE_VALIDATION_CHECK(this, get_input_element_type(2) == ov::element::i32 && get_input_element_type(3) == ov::element::i32,
                                  "BinaryMatMul with y_bits = 1 takes i32 thresholds (ge, le) as inputs 2 and 3");
        auto shape = get_input_partial_shape(0);
        if (shape.rank().is_static()) {
            NODE_VALIDATION_CHECK(this, shape.rank().get_length() >= 1, "BinaryMatMul input must have rank >= 1");
            auto& last = shape[shape.rank().get_length() - 1];
            const int64_t want = m_x_bits ? 8 * ((m_k + 63) / 64) : m_k;
            NODE_VALIDATION_CHECK(this, last.compatible(want), "BinaryMatMul input's last dimension ", last, " != ", want);
            last = m_y_bits ? 8 * ((m_n + 63) / 64) : m_n;
        }
        set_output_type(0, m_y_bits ? ov::element::u8 : ov::element::f32, shape);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override {
        return std::make_shared<BinaryMatMul>(new_args, m_n, m_k, m_mode, m_x_bits, m_y_bits);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("n", m_n);
        visitor.on_attribute("k", m_k);
        visitor.on_attribute("mode", m_mode);
        visitor.on_attribute("x_bits", m_x_bits);
        visitor.on_attribute("y_bits", m_y_bits);
        return true;
    }

    bool has_evaluate() const override {
        return true;
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& x = inputs[0];
        const auto& w = inputs[1];
        const auto& params = inputs[4];
        ov::Shape shape = x.get_shape();
        const int64_t kw = (m_k + 63) / 64, nb = (m_n + kBlock - 1) / kBlock, ykw = (m_n + 63) / 64;
        const int64_t row = m_x_bits ? kw * 8 : m_k;
        OPENVINO_ASSERT(!shape.empty() && static_cast<int64_t>(shape.back()) == row, "BinaryMatMul: input's last dimension != ", row);
        OPENVINO_ASSERT(w.get_byte_size() == static_cast<size_t>(nb * kw * kBlock * 8), "BinaryMatMul: packed weights have ",
                        w.get_byte_size(), " bytes, expected ", nb * kw * kBlock * 8);
        OPENVINO_ASSERT(inputs[2].get_size() == static_cast<size_t>(m_n) && inputs[3].get_size() == static_cast<size_t>(m_n) &&
                            params.get_size() >= 3 && params.get_size() % 3 == 0,
                        "BinaryMatMul: scale/bias (or ge/le) must have n elements and params 3 a section");
        const auto sections = static_cast<int64_t>(params.get_size() / 3);
        OPENVINO_ASSERT(sections == 1 || (m_x_bits == 0 && m_n % (kBlock * sections) == 0),
                        "BinaryMatMul: ", sections, " sections need x_bits = 0 and n a multiple of 16 * sections");
        shape.back() = static_cast<size_t>(m_y_bits ? ykw * 8 : m_n);
        outputs[0].set_shape(shape);
        const float* prm = params.data<const float>();
        Problem p{m_x_bits ? nullptr : x.data<const float>(),
                  m_x_bits ? static_cast<const uint64_t*>(x.data()) : nullptr,
                  static_cast<const uint64_t*>(w.data()),
                  m_y_bits ? nullptr : inputs[2].data<const float>(),
                  m_y_bits ? nullptr : inputs[3].data<const float>(),
                  m_y_bits ? inputs[2].data<const int32_t>() : nullptr,
                  m_y_bits ? inputs[3].data<const int32_t>() : nullptr,
                  m_y_bits ? nullptr : outputs[0].data<float>(),
                  m_y_bits ? static_cast<uint8_t*>(outputs[0].data()) : nullptr,
                  static_cast<int64_t>(x.get_size() / static_cast<size_t>(row)),
                  m_n,
                  m_k,
                  kw,
                  nb,
                  ykw,
                  m_mode == "01",
                  prm[0],
                  prm[1],
                  prm[2]};
        if (p.m > 0)
            run(p, prm, sections);
        return true;
    }

private:
    int64_t m_n = 0;
    int64_t m_k = 0;
    std::string m_mode = "pm1";
    int64_t m_x_bits = 0;
    int64_t m_y_bits = 0;
};


class BinaryAttention : public ov::op::Op {
public:
    OPENVINO_OP("BinaryAttention", "edgekit_xnor");

    BinaryAttention() = default;
    BinaryAttention(const ov::OutputVector& args, int64_t heads, int64_t head_dim, int64_t div, std::string o_mode, int64_t qkv)
        : Op(args),
          m_heads(heads),
          m_head_dim(head_dim),
          m_div(div),
          m_o_mode(std::move(o_mode)),
          m_qkv(qkv) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, get_input_size() == 5, "BinaryAttention takes 5 inputs (Q, K, V bits, mask, params)");
        NODE_VALIDATION_CHECK(this, m_heads > 0 && m_head_dim > 0 && m_head_dim <= 4096, "BinaryAttention needs heads > 0 and 0 < head_dim <= 4096");
        NODE_VALIDATION_CHECK(this, (m_div == 0 || m_div == 1) && (m_qkv == 0 || m_qkv == 1), "BinaryAttention div and qkv are 0 or 1");
        NODE_VALIDATION_CHECK(this, m_o_mode == "pm1" || m_o_mode == "01", "BinaryAttention o_mode must be 'pm1' or '01', got ", m_o_mode);
        for (size_t i = 0; i < 3; ++i)
            NODE_VALIDATION_CHECK(this, get_input_element_type(i).compatible(ov::element::u8), "BinaryAttention Q, K, V must be u8 packed bits");
        NODE_VALIDATION_CHECK(this, get_input_element_type(3).compatible(ov::element::f32), "BinaryAttention mask must be f32");
        auto shape = get_input_partial_shape(0);
        if (shape.rank().is_static()) {
            NODE_VALIDATION_CHECK(this, shape.rank().get_length() == 3, "BinaryAttention Q must be [B, S, bytes]");
            const int64_t ew = (m_heads * m_head_dim + 63) / 64;
            NODE_VALIDATION_CHECK(this, shape[2].compatible(8 * ew * (m_qkv ? 3 : 1)), "BinaryAttention Q's last dimension ", shape[2], " != ",
                                  8 * ew * (m_qkv ? 3 : 1));
            shape[2] = 8 * ew;
        }
        set_output_type(0, ov::element::u8, shape);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override {
        return std::make_shared<BinaryAttention>(new_args, m_heads, m_head_dim, m_div, m_o_mode, m_qkv);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("heads", m_heads);
        visitor.on_attribute("head_dim", m_head_dim);
        visitor.on_attribute("div", m_div);
        visitor.on_attribute("o_mode", m_o_mode);
        visitor.on_attribute("qkv", m_qkv);
        return true;
    }

    bool has_evaluate() const override {
        return true;
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        ov::Shape shape = inputs[0].get_shape();
        const int64_t d = m_head_dim, e = m_heads * d, ew = (e + 63) / 64, rs = ew * (m_qkv ? 3 : 1);
        OPENVINO_ASSERT(shape.size() == 3 && static_cast<int64_t>(shape[2]) == rs * 8, "BinaryAttention: Q must be [B, S, ", rs * 8, "]");
        OPENVINO_ASSERT(inputs[1].get_shape() == shape && inputs[2].get_shape() == shape, "BinaryAttention: Q, K and V shapes differ");
        OPENVINO_ASSERT(inputs[4].get_size() == 9, "BinaryAttention: params must have 9 elements");
        const int64_t nb = static_cast<int64_t>(shape[0]), s = static_cast<int64_t>(shape[1]);
        ov::Shape ms = inputs[3].get_shape();
        OPENVINO_ASSERT(!ms.empty() && ms.size() <= 4 && static_cast<int64_t>(ms.back()) == s, "BinaryAttention: the mask's last dimension must be S = ", s);
        while (ms.size() < 4)
            ms.insert(ms.begin(), 1);
        const int64_t dims[3] = {nb, m_heads, s};
        int64_t strides[3], stride = s;
        for (int i = 2; i >= 0; --i) {
            const auto n = static_cast<int64_t>(ms[i]);
            OPENVINO_ASSERT(n == 1 || n == dims[i], "BinaryAttention: the mask does not broadcast to [B, heads, S, S]");
            strides[i] = n == 1 ? 0 : stride;
            stride *= n;
        }
        shape[2] = static_cast<size_t>(ew * 8);
        outputs[0].set_shape(shape);
        const float* prm = inputs[4].data<const float>();
        const std::shared_ptr<const Tables> tab = tables(prm);
        const auto* q = static_cast<const uint64_t*>(inputs[0].data());
        AttnProblem p{q,
                      m_qkv ? q + ew : static_cast<const uint64_t*>(inputs[1].data()),
                      m_qkv ? q + 2 * ew : static_cast<const uint64_t*>(inputs[2].data()),
                      inputs[3].data<const float>(),
                      strides[0],
                      strides[1],
                      strides[2],
                      static_cast<uint64_t*>(outputs[0].data()),
                      nb,
                      s,
                      m_heads,
                      d,
                      ew,
                      (d + 63) / 64,
                      (s + 63) / 64,
                      rs,
                      m_div == 1,
                      prm[0],
                      prm[1],
                      prm[2],
                      prm[3],
                      prm[4],
                      prm[5],
                      m_o_mode == "01",
                      prm[6],
                      prm[7],
                      prm[8],
                      tab->score.data(),
                      tab->etab.data(),
                      tab->dead,
                      tab->p_cut,
                      tab->o_cut,
                      tab->ref};
        if (nb > 0 && s > 0)
            attention(p);
        return true;
    }

private:
    struct Tables {
        std::vector<float> params, score, etab;
        float dead = 0.0f, p_cut = 0.0f, o_cut = 0.0f;
        int64_t ref = -1;
    };

    // the scores of each popcount, exp() of their differences and the binarizers' cuts, for the node's
    // constants (kept across calls)
    std::shared_ptr<const Tables> tables(const float* prm) const {
        std::lock_guard<std::mutex> lock(m_lock);
        const int64_t d = m_head_dim;
        if (m_tab && std::equal(m_tab->params.begin(), m_tab->params.end(), prm))
            return m_tab;
        auto made = std::make_shared<Tables>();
        Tables& t = *made;
        t.params.assign(prm, prm + 9);
        const float qk = prm[0], mul = prm[1];
        t.p_cut = clip_cut(prm[3], prm[4]);
        t.o_cut = m_o_mode == "01" ? clip_cut(prm[7], prm[8]) : 0.0f;
        t.score.resize(d + 1);
        t.etab.resize((d + 1) * (d + 1));
        for (int64_t c = 0; c <= d; ++c) {
            const float raw = static_cast<float>(d - 2 * c) * qk;
            t.score[c] = m_div ? raw / mul : raw * mul;
        }
        const auto [lo, hi] = std::minmax_element(t.score.begin(), t.score.end());
        t.dead = *lo - *hi - 120.0f;  // exp(x) is +0 in float32 below about -103.97
        // softmax is exp(x - m) / sum for any m; relative to the largest possible score, one pass over the keys
        // gives the sum, unless the smallest term would leave float32's normal range (exp(-80) ~ 1.8e-35)
        t.ref = *hi - *lo <= 80.0f ? hi - t.score.begin() : -1;
        for (int64_t m = 0; m <= d; ++m)
            for (int64_t c = 0; c <= d; ++c)
                t.etab[m * (d + 1) + c] = std::exp(t.score[c] - t.score[m]);
        m_tab = made;
        return m_tab;
    }

    int64_t m_heads = 1;
    int64_t m_head_dim = 1;
    int64_t m_div = 0;
    std::string m_o_mode = "pm1";
    int64_t m_qkv = 0;
    mutable std::mutex m_lock;
    mutable std::shared_ptr<const Tables> m_tab;
};

}  // namespace edgekit

extern "C" {
// Which path evaluate() takes now: "avx512-vpopcntdq" or "portable".
__attribute__((visibility("default"))) const char* edgekit_xnor_isa() {
    return edgekit::use_avx512() ? "avx512-vpopcntdq" : "portable";
}
}

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<edgekit::BinaryMatMul>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<edgekit::BinaryMatMul>>("BinaryMatMul", "edgekit.xnor"),
    std::make_shared<ov::OpExtension<edgekit::BinaryAttention>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<edgekit::BinaryAttention>>("BinaryAttention", "edgekit.xnor"),
}));
