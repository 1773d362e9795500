// The 1-bit kernel's BinaryMatMul work alone, outside OpenVINO: MiniLM's matmul shapes at b1 s128 (and two
// other row counts), timed by calling the kernel's run() directly. Built and run by bench/xnor_tiles.py, which
// includes the kernel source (KERNEL_SOURCE) so that two versions of it can be timed side by side.
#include KERNEL_SOURCE
#include <oneapi/tbb/global_control.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>

using edgekit::Problem;

int main(int argc, char** argv) {
    const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
    const int calls = argc > 2 ? std::atoi(argv[2]) : 200;
    oneapi::tbb::global_control gc(oneapi::tbb::global_control::max_allowed_parallelism, threads);
    std::mt19937_64 rng(0);
    struct Shape {
        int64_t m, n, k;
        bool x_bits, y_bits;
        int64_t sections;
        const char* name;
    } shapes[] = {
        {128, 1152, 384, false, false, 3, "qkv_f32_in"},  // one call for a layer's Q, K and V, three binarizers
        {128, 384, 384, true, false, 1, "o_bits_in"},
        {128, 1536, 384, false, true, 1, "ffn1_bits_out"},
        {128, 384, 1536, true, false, 1, "ffn2_bits_in"},
        {16, 1536, 384, false, true, 1, "ffn1_m16"},
        {4096, 1536, 384, false, true, 1, "ffn1_m4096"},
    };
    for (const Shape& s : shapes) {
        const int64_t kw = (s.k + 63) / 64, nb = (s.n + 15) / 16, ykw = (s.n + 63) / 64;
        std::vector<uint64_t> w(nb * kw * 16), xbits(s.m * kw);
        for (auto& v : w) v = rng();
        for (auto& v : xbits) v = rng();
        std::vector<float> x(s.m * s.k), scale(s.n, 0.01f), bias(s.n, 0.1f), y(s.m * s.n);
        for (auto& v : x) v = static_cast<float>(rng() % 1000) / 500.0f - 1.0f;
        std::vector<int32_t> ge(s.n, 3), le(s.n, -3);
        std::vector<uint8_t> ybits(s.m * ykw * 8);
        Problem p{s.x_bits ? nullptr : x.data(), s.x_bits ? xbits.data() : nullptr, w.data(), s.y_bits ? nullptr : scale.data(),
                  s.y_bits ? nullptr : bias.data(), s.y_bits ? ge.data() : nullptr, s.y_bits ? le.data() : nullptr,
                  s.y_bits ? nullptr : y.data(), s.y_bits ? ybits.data() : nullptr, s.m, s.n, s.k, kw, nb, ykw, false, 0.0f, 1.0f, 1.0f};
        const float params[9] = {0.0f, 1.0f, 1.0f, 0.0f, 1.0f, 1.0f, 0.0f, 1.0f, 1.0f};
        for (int i = 0; i < 20; ++i)
            edgekit::run(p, params, s.sections);
        std::vector<double> us;
        for (int i = 0; i < calls; ++i) {
            const auto t0 = std::chrono::steady_clock::now();
            edgekit::run(p, params, s.sections);
            us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
        }
        std::sort(us.begin(), us.end());
        std::printf("%s %ld %ld %ld %.2f %.2f\n", s.name, static_cast<long>(s.m), static_cast<long>(s.n), static_cast<long>(s.k),
                    us[us.size() / 2], us[us.size() / 10]);
    }
    return 0;
}
