// BinaryMatMul: a 1-bit x 1-bit matmul for OpenVINO (XNOR/AND + popcount, no multiplications).
//
// Inputs
//   0  X      f32 [..., K]            activations, binarized inside (see `mode`)
//   1  W      u8  [NB, KW, 128]       weight sign bits (1 = +1, 0 = -1) as little-endian 64-bit words: K padded
//                                     with zero bits to KW = ceil(K/64) words, N padded to NB = ceil(N/16) blocks
//                                     of 16 outputs; block b, word i holds outputs 16b..16b+15 (u8, not u64: the
//                                     CPU plugin narrows 64-bit integer constants to i32)
//   2  scale  f32 [N]                 output multiplier per output channel (activation scale * weight scale)
//   3  bias   f32 [N]
//   4  params f32 [3]                 (beta, hi, qscale): the binarizer's constants, kept as a tensor so they
//                                     stay bit-exact through every serialization
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

static inline bool bit_of(const Problem& p, float v) {
    if (!p.and_mode)
        return v >= p.beta;
    float d = v - p.beta;
    d = d < 0.0f ? 0.0f : d;
    d = d > p.hi ? p.hi : d;
    return d / p.qscale > 0.5f;  // round half to even of a value in [0, hi/qscale]: 1 iff > 0.5
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

// R rows x 16 outputs per step; weights of a block are 16 consecutive words per K-word.
template <int R, bool AND>
XNOR_AVX512 static inline void tile_avx512(const Problem& p, const uint64_t* xb, const int32_t* pc, int64_t r, int64_t blk) {
    const uint64_t* wb = p.w + blk * p.kw * kBlock;
    __m512i acc0[R], acc1[R];
    for (int i = 0; i < R; ++i)
        acc0[i] = acc1[i] = _mm512_setzero_si512();
    for (int64_t wd = 0; wd < p.kw; ++wd) {
        const __m512i w0 = _mm512_loadu_si512(wb + wd * kBlock);
        const __m512i w1 = _mm512_loadu_si512(wb + wd * kBlock + 8);
        for (int i = 0; i < R; ++i) {
            const __m512i xv = _mm512_set1_epi64(static_cast<long long>(xb[(r + i) * p.kw + wd]));
            const __m512i v0 = AND ? _mm512_and_si512(xv, w0) : _mm512_xor_si512(xv, w0);
            const __m512i v1 = AND ? _mm512_and_si512(xv, w1) : _mm512_xor_si512(xv, w1);
            acc0[i] = _mm512_add_epi64(acc0[i], _mm512_popcnt_epi64(v0));
            acc1[i] = _mm512_add_epi64(acc1[i], _mm512_popcnt_epi64(v1));
        }
    }
    const int64_t n0 = blk * kBlock, nend = std::min<int64_t>(kBlock, p.n - n0);
    const __mmask16 om = nend >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << nend) - 1u);
    __m512i dots[R];
    for (int i = 0; i < R; ++i) {
        // 16 popcounts (two 8 x i64 halves) -> 16 x i32
        const __m512i acc = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(acc0[i])), _mm512_cvtepi64_epi32(acc1[i]), 1);
        if (AND)  // 2 acc - popcount(x)
            dots[i] = _mm512_sub_epi32(_mm512_slli_epi32(acc, 1), _mm512_set1_epi32(pc[r + i]));
        else  // K - 2 acc
            dots[i] = _mm512_sub_epi32(_mm512_set1_epi32(static_cast<int32_t>(p.k)), _mm512_slli_epi32(acc, 1));
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

template <bool AND>
XNOR_AVX512 static void gemm_avx512_t(const Problem& p, const uint64_t* xb, const int32_t* pc, int64_t r0, int64_t r1, int64_t b0, int64_t b1) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4)
        for (int64_t blk = b0; blk < b1; ++blk)
            tile_avx512<4, AND>(p, xb, pc, r, blk);
    for (; r < r1; ++r)
        for (int64_t blk = b0; blk < b1; ++blk)
            tile_avx512<1, AND>(p, xb, pc, r, blk);
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

static void run(const Problem& p) {
    const bool fast = use_avx512();
    std::vector<uint64_t> packed(p.xbits != nullptr ? 0 : static_cast<size_t>(p.m * p.kw));
    const uint64_t* xb = p.xbits != nullptr ? p.xbits : packed.data();
    std::vector<int32_t> pc(static_cast<size_t>(p.m));
    if (p.ybits != nullptr) {  // the bytes past the last 16-output block of each row stay zero bits
        const int64_t written = p.nb * 2, row = p.ykw * 8;
        if (written < row)
            for (int64_t r = 0; r < p.m; ++r)
                std::memset(p.ybits + r * row + written, 0, static_cast<size_t>(row - written));
    }
    auto pack = [&](int64_t r0, int64_t r1) {
        if (p.xbits != nullptr)
            return count_rows(p, pc.data(), r0, r1);
#ifdef XNOR_X86
        if (fast)
            return pack_rows_avx512(p, packed.data(), pc.data(), r0, r1);
#endif
        pack_rows_portable(p, packed.data(), pc.data(), r0, r1);
    };
    auto gemm = [&](int64_t r0, int64_t r1, int64_t b0, int64_t b1) {
#ifdef XNOR_X86
        if (fast)
            return gemm_avx512(p, xb, pc.data(), r0, r1, b0, b1);
#endif
        gemm_portable(p, xb, pc.data(), r0, r1, b0, b1);
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
                            params.get_size() == 3,
                        "BinaryMatMul: scale/bias (or ge/le) must have n elements and params 3");
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
            run(p);
        return true;
    }

private:
    int64_t m_n = 0;
    int64_t m_k = 0;
    std::string m_mode = "pm1";
    int64_t m_x_bits = 0;
    int64_t m_y_bits = 0;
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
}));
