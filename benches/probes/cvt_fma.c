// Does widening f16 with `vcvtph2ps` take FMA throughput? A 4x3 tile of multiply-adds (12
// accumulators, the shape of the AVX2 GEMM tile) fed three ways, all from L1:
//   regs: no loads, the operands stay in registers (the FMA peak of the core);
//   f32:  7 `vmovups` per 12 FMAs (the f32 tile: 4 rows of x, 3 of weights);
//   f16:  7 `vcvtph2ps` from memory per 12 FMAs (both operands f16, as llama.cpp's tinyBLAS
//         reads them);
//   mixed: 3 widenings of weights and 4 f32 loads of x (our 4x3 tile reading f16 weights in
//          place);
//   x3w4:  3 f32 loads of x and 4 widenings of weights (a 3x4 tile: the f32 side short);
//   x2w4:  2 f32 loads and 4 widenings, 8 accumulators (the AVX2 pair kernel's 2x4 tile).
// If `vcvtph2ps` competed with the FMAs for their pipes, f16 would run at ~12/19 of regs.
//
// Zen 4 (AVX-512 hidden), 2026-12-07, three runs: regs 91.1-91.3 GFLOP/s (the FMA peak),
// f16 1.000, x3w4 0.998-1.000, f32 0.879-0.883, mixed 0.882-0.894, x2w4 0.875-0.880 of regs.
// Widening is free here; what costs is a fourth 256-bit f32 load per 12 FMAs (f32, mixed),
// or too few accumulators to cover FMA latency x pipes (x2w4).
//
//   gcc -O2 -march=znver3 benches/probes/cvt_fma.c -o /tmp/cvt_fma && /tmp/cvt_fma
//
// GFLOP/s, best of 7 passes of 2^24 iterations per variant.
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define ITERS (1L << 24)
#define BUF 512 // floats / halves per operand buffer (2 KiB / 1 KiB: L1)

static float xf[BUF + 64] __attribute__((aligned(64)));
static uint16_t xh[BUF + 64] __attribute__((aligned(64)));

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Row i of x against the 3 weight vectors held in registers (12 accumulators + 3 weights + 1 x
// vector = the 16 registers, as in the engine's 4x3 tile).
#define ROW(i, x)                                                                              \
    { __m256 xv = (x); a##i##0 = _mm256_fmadd_ps(xv, w0, a##i##0);                              \
      a##i##1 = _mm256_fmadd_ps(xv, w1, a##i##1); a##i##2 = _mm256_fmadd_ps(xv, w2, a##i##2); }

// Distinct starting values, so the compiler cannot merge accumulators that see the same
// operands (the register variant feeds one x vector to every row).
#define DECL                                                                                   \
    __m256 a00 = _mm256_set1_ps(0.f), a01 = _mm256_set1_ps(1.f), a02 = _mm256_set1_ps(2.f),    \
           a10 = _mm256_set1_ps(3.f), a11 = _mm256_set1_ps(4.f), a12 = _mm256_set1_ps(5.f),    \
           a20 = _mm256_set1_ps(6.f), a21 = _mm256_set1_ps(7.f), a22 = _mm256_set1_ps(8.f),    \
           a30 = _mm256_set1_ps(9.f), a31 = _mm256_set1_ps(10.f), a32 = _mm256_set1_ps(11.f);
#define SUM                                                                                    \
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a00, a01), _mm256_add_ps(a02, a10)),  \
                             _mm256_add_ps(_mm256_add_ps(a11, a12), _mm256_add_ps(a20, a21))); \
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a22, a30), _mm256_add_ps(a31, a32)));     \
    float out[8];                                                                              \
    _mm256_storeu_ps(out, s);                                                                  \
    return out[0] + out[7];

__attribute__((noinline)) static float run_regs(long iters) {
    DECL;
    __m256 w0 = _mm256_set1_ps(1e-9f), w1 = _mm256_set1_ps(2e-9f), w2 = _mm256_set1_ps(3e-9f),
           x = _mm256_set1_ps(1.0f);
    for (long i = 0; i < iters; i++) {
        ROW(0, x) ROW(1, x) ROW(2, x) ROW(3, x)
        __asm__ volatile("" : "+x"(x));
    }
    SUM;
}

__attribute__((noinline)) static float run_f32(long iters) {
    DECL;
    for (long i = 0; i < iters; i++) {
        const float *p = xf + (i * 8 & (BUF - 64));
        __m256 w0 = _mm256_loadu_ps(p), w1 = _mm256_loadu_ps(p + 8), w2 = _mm256_loadu_ps(p + 16);
        ROW(0, _mm256_loadu_ps(p + 24)) ROW(1, _mm256_loadu_ps(p + 32))
        ROW(2, _mm256_loadu_ps(p + 40)) ROW(3, _mm256_loadu_ps(p + 48))
    }
    SUM;
}

#define H(q) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(q)))

__attribute__((noinline)) static float run_f16(long iters) {
    DECL;
    for (long i = 0; i < iters; i++) {
        const uint16_t *p = xh + (i * 8 & (BUF - 64));
        __m256 w0 = H(p), w1 = H(p + 8), w2 = H(p + 16);
        ROW(0, H(p + 24)) ROW(1, H(p + 32)) ROW(2, H(p + 40)) ROW(3, H(p + 48))
    }
    SUM;
}

__attribute__((noinline)) static float run_mixed(long iters) {
    DECL;
    for (long i = 0; i < iters; i++) {
        const float *p = xf + (i * 8 & (BUF - 64));
        const uint16_t *q = xh + (i * 8 & (BUF - 64));
        __m256 w0 = H(q), w1 = H(q + 8), w2 = H(q + 16);
        ROW(0, _mm256_loadu_ps(p)) ROW(1, _mm256_loadu_ps(p + 8))
        ROW(2, _mm256_loadu_ps(p + 16)) ROW(3, _mm256_loadu_ps(p + 24))
    }
    SUM;
}

// 3 rows of x (f32) held, 4 rows of f16 weights streamed and widened: the f32 operand on the
// short side (the accumulators transposed: a{j}{i} is weight row j against x row i).
__attribute__((noinline)) static float run_x3w4(long iters) {
    DECL;
    for (long i = 0; i < iters; i++) {
        const float *p = xf + (i * 8 & (BUF - 64));
        const uint16_t *q = xh + (i * 8 & (BUF - 64));
        __m256 w0 = _mm256_loadu_ps(p), w1 = _mm256_loadu_ps(p + 8), w2 = _mm256_loadu_ps(p + 16);
        ROW(0, H(q)) ROW(1, H(q + 8)) ROW(2, H(q + 16)) ROW(3, H(q + 24))
    }
    SUM;
}

// The pair kernel's tile: 2 rows of x (f32) held, 4 rows of f16 weights widened; 8
// accumulators, as many as FMA latency x pipes.
__attribute__((noinline)) static float run_x2w4(long iters) {
    DECL;
    (void)a02; (void)a12; (void)a22; (void)a32;
    for (long i = 0; i < iters; i++) {
        const float *p = xf + (i * 8 & (BUF - 64));
        const uint16_t *q = xh + (i * 8 & (BUF - 64));
        __m256 w0 = _mm256_loadu_ps(p), w1 = _mm256_loadu_ps(p + 8);
#define ROW2(i, x) { __m256 xv = (x); a##i##0 = _mm256_fmadd_ps(xv, w0, a##i##0);                \
                     a##i##1 = _mm256_fmadd_ps(xv, w1, a##i##1); }
        ROW2(0, H(q)) ROW2(1, H(q + 8)) ROW2(2, H(q + 16)) ROW2(3, H(q + 24))
    }
    SUM;
}

int main(void) {
    for (int i = 0; i < BUF + 64; i++) {
        xf[i] = 1e-6f * (i % 7);
        xh[i] = 0x1400 + (i % 5); // small normal halves
    }
    const char *names[] = {"regs", "f32", "f16", "mixed", "x3w4", "x2w4"};
    float (*fns[])(long) = {run_regs, run_f32, run_f16, run_mixed, run_x3w4, run_x2w4};
    long fmas[] = {12, 12, 12, 12, 12, 8};
    double best[6] = {0};
    float sink = 0;
    for (int pass = 0; pass < 7; pass++) {
        for (int v = 0; v < 6; v++) {
            double t = now();
            sink += fns[v](ITERS);
            double gflops = ITERS * fmas[v] * 16.0 / (now() - t) / 1e9;
            if (gflops > best[v]) best[v] = gflops;
        }
    }
    for (int v = 0; v < 6; v++)
        printf("%-6s %6.1f GFLOP/s  (%.3f of regs)\n", names[v], best[v], best[v] / best[0]);
    return sink == 12345.0f;
}
