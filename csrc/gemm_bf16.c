/*
 * bf16 GEMM with fp32 accumulation (mixed precision): C[M, N] = A[M, K] B[K, N] (+ C when
 * accumulate), A and B given in fp32 and rounded to bf16 (round to nearest even; NaN stays
 * NaN) once, when packed. A product of two bf16 is exact in fp32; the sums are fp32.
 *
 * Packed layouts (caller-owned workspaces, sizes from nn_bf16_pack_a_size / _b_size, in
 * uint16 elements), Kp = K rounded up to even, zeros past K and past N:
 *   ap[i Kp + k]                                 row i of A, k < Kp
 *   bp[((p Kp / 2 + kk) 16 + j) 2 + t]           B[2 kk + t][16 p + j]: column panels of 16,
 *                                                 each lane a pair of consecutive k
 * so one 32-bit word of A (a k pair of row i) broadcast against one zmm of bp (the same k pair
 * of 16 columns) is one AVX512_BF16 vdpbf16ps: 16 lanes += a0 b0 + a1 b1.
 *
 * nn_gemm_bf16: tiles of 8 rows x 2 panels (16 zmm accumulators, 2 loads + 8 broadcasts per 16
 * dot products), then 4, 2, 1 rows and 1 panel at the edges; OpenMP over blocks of rows, each
 * C element summed over k pairs in k order, so results do not depend on the thread count.
 * nn_bf16_level(): 1 when the CPU has AVX512_BF16, the ISA level is AVX-512 and SPARK_NN_ISA
 * does not cap it ('avx512' caps at AVX-512F without BF16); else 0, and nn_gemm_bf16 returns
 * NN_EUNSUPPORTED (no silent fp32 fallback). The scalar reference path (nn_set_reference)
 * computes the same sums in C, pair by pair (a1 b1 added first, then a0 b0, as Intel
 * documents the instruction).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "nn_internal.h"

#define BF_NR 16 /* columns per panel */

uint16_t nn_bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* a quiet NaN */
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u); /* denormal: 0, as vcvtneps2bf16 */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float bf16_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

size_t nn_bf16_pack_a_size(int M, int K) { return (size_t)M * (size_t)((K + 1) & ~1); }

size_t nn_bf16_pack_b_size(int K, int N) { return (size_t)((N + BF_NR - 1) / BF_NR) * (size_t)((K + 1) & ~1) * BF_NR; }

static void pack_a_scalar(int M, int K, const float *A, int lda, uint16_t *ap) {
    const int Kp = (K + 1) & ~1;
    const int nt = nn_threads(); /* capped after a fork, 1 in the reference mode */
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)M * K > 65536)
    for (int i = 0; i < M; i++) {
        uint16_t *dst = ap + (size_t)i * Kp;
        const float *src = A + (size_t)i * lda;
        for (int k = 0; k < K; k++) dst[k] = nn_bf16_round(src[k]);
        if (Kp > K) dst[K] = 0;
    }
}

static void pack_b_scalar(int transB, int K, int N, const float *B, int ldb, uint16_t *bp) {
    const int Kp = (K + 1) & ~1, panels = (N + BF_NR - 1) / BF_NR;
    const int nt = nn_threads(); /* capped after a fork, 1 in the reference mode */
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * K > 65536)
    for (int p = 0; p < panels; p++)
        for (int kk = 0; kk < Kp / 2; kk++) {
            uint16_t *dst = bp + ((size_t)p * (Kp / 2) + kk) * BF_NR * 2;
            for (int j = 0; j < BF_NR; j++) {
                const int col = p * BF_NR + j;
                for (int t = 0; t < 2; t++) {
                    const int k = 2 * kk + t;
                    float v = 0.0f;
                    if (k < K && col < N) v = transB ? B[(size_t)col * ldb + k] : B[(size_t)k * ldb + col];
                    dst[2 * j + t] = nn_bf16_round(v);
                }
            }
        }
}

static volatile int g_bf16 = -1;

int nn_bf16_level(void) {
    if (g_bf16 < 0) {
        int have = 0;
#if defined(__x86_64__) && defined(__GNUC__)
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx512bf16") && nn_isa() == NN_ISA_AVX512;
        /* an explicit cap at avx512 (F) or below leaves BF16 out; 'avx512bf16' or unset keeps it */
        if (!nn_isa_allows_bf16(getenv("SPARK_NN_ISA"))) have = 0;
#endif
        g_bf16 = have;
    }
    return g_bf16;
}

/* the scalar reference: C(i, j) over the packed operands, pair by pair. Not loop-vectorized:
 * GCC 12 at -O3 turned the two in-order additions per k pair into a wrong sum (21 -> 23 on a
 * 1 x 5 x 1 product; -O2 and -fno-tree-loop-vectorize give 21). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-vectorize")))
#endif
static void gemm_bf16_reference(int M, int N, int Kp, const uint16_t *ap, const uint16_t *bp, float *C, int ldc,
                                int accumulate) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            const int p = j / BF_NR, jj = j % BF_NR;
            float acc = accumulate ? C[(size_t)i * ldc + j] : 0.0f;
            for (int kk = 0; kk < Kp / 2; kk++) {
                const uint16_t *b = bp + (((size_t)p * (Kp / 2) + kk) * BF_NR + jj) * 2;
                const uint16_t *a = ap + (size_t)i * Kp + 2 * kk;
                acc += bf16_float(a[1]) * bf16_float(b[1]);
                acc += bf16_float(a[0]) * bf16_float(b[0]);
            }
            C[(size_t)i * ldc + j] = acc;
        }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NN_NO_CLONES) && __GNUC__ >= 10
#include <immintrin.h>
#include "nn_vec512.h"
#define NN_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* A tile's R x NV accumulators c into C's rows (ldc apart), the columns past ncols masked off;
 * with accumulate, added to what C holds. */
#define BF16_STORE(R, NV, accumulate)                                                              \
    for (int v = 0; v < (NV); v++) {                                                               \
        const int left = ncols - v * BF_NR;                                                        \
        if (left <= 0) break;                                                                      \
        const __mmask16 m = left >= BF_NR ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);     \
        for (int i = 0; i < (R); i++) {                                                            \
            float *dst = C + (size_t)i * ldc + v * BF_NR;                                          \
            __m512 out = c[i][v];                                                                  \
            if (accumulate) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(m, dst));               \
            _mm512_mask_storeu_ps(dst, m, out);                                                    \
        }                                                                                          \
    }

/* rows [r, r + R) x NV panels (NV = 1, 2) at column q; ncols: C's columns left from q */
#define BF16_TILE(R, NV)                                                                           \
    NN_BF16 static void tile_##R##_##NV(int Kp2, const uint32_t *a, const uint32_t *b, size_t bstride, \
                                        float *C, int ldc, int ncols, int accumulate) {            \
        __m512 c[R][NV];                                                                           \
        for (int i = 0; i < (R); i++)                                                              \
            for (int v = 0; v < (NV); v++) c[i][v] = _mm512_setzero_ps();                          \
        for (int kk = 0; kk < Kp2; kk++) {                                                         \
            __m512i b0 = _mm512_loadu_si512((const void *)(b + (size_t)kk * BF_NR));               \
            __m512i b1 = (NV) > 1 ? _mm512_loadu_si512((const void *)(b + bstride + (size_t)kk * BF_NR)) : b0; \
            for (int i = 0; i < (R); i++) {                                                        \
                __m512i av = _mm512_set1_epi32((int)a[(size_t)i * Kp2 + kk]);                      \
                c[i][0] = _mm512_dpbf16_ps(c[i][0], (__m512bh)av, (__m512bh)b0);                   \
                if ((NV) > 1) c[i][(NV) - 1] = _mm512_dpbf16_ps(c[i][(NV) - 1], (__m512bh)av, (__m512bh)b1); \
            }                                                                                      \
        }                                                                                          \
        BF16_STORE(R, NV, accumulate)                                                              \
    }
BF16_TILE(8, 2)
BF16_TILE(4, 2)
BF16_TILE(2, 2)
BF16_TILE(1, 2)
BF16_TILE(8, 1)
BF16_TILE(4, 1)
BF16_TILE(2, 1)
BF16_TILE(1, 1)

typedef void (*bf16_tile_fn)(int, const uint32_t *, const uint32_t *, size_t, float *, int, int, int);

/* rows [r0, r1) of C over every panel */
static void rows_bf16(int r0, int r1, int N, int Kp2, const uint32_t *a, const uint32_t *b, float *C, int ldc,
                      int accumulate) {
    static const bf16_tile_fn two[] = {tile_8_2, tile_4_2, tile_2_2, tile_1_2};
    static const bf16_tile_fn one[] = {tile_8_1, tile_4_1, tile_2_1, tile_1_1};
    static const int rows[] = {8, 4, 2, 1};
    const int panels = (N + BF_NR - 1) / BF_NR;
    const size_t pstride = (size_t)Kp2 * BF_NR; /* 32-bit words per panel */
    for (int p = 0; p < panels;) {
        const int nv = panels - p >= 2 ? 2 : 1;
        const bf16_tile_fn *fns = nv == 2 ? two : one;
        const int q = p * BF_NR;
        int r = r0;
        for (int t = 0; t < 4; t++)
            for (; r + rows[t] <= r1; r += rows[t])
                fns[t](Kp2, a + (size_t)r * Kp2, b + (size_t)p * pstride, pstride, C + (size_t)r * ldc + q, ldc, N - q,
                       accumulate);
        p += nv;
    }
}
/* Offset tiles (nn_gemm_bf16_offsets): row i's k pair kk is the two uint16 at A + aoff[i] + akoff[kk]
 * (an unaligned 32-bit load), B in panels as above; C written. */
#define BF16_OTILE(R, NV)                                                                          \
    NN_BF16 static void otile_##R##_##NV(int Kp2, const uint16_t *A, const int *aoff, const int *akoff,          \
                                         const uint32_t *b, size_t bstride, float *C, int ldc, int ncols) {      \
        __m512 c[R][NV];                                                                           \
        const uint16_t *ar[R];                                                                     \
        for (int i = 0; i < (R); i++) {                                                            \
            ar[i] = A + aoff[i];                                                                   \
            for (int v = 0; v < (NV); v++) c[i][v] = _mm512_setzero_ps();                          \
        }                                                                                          \
        for (int kk = 0; kk < Kp2; kk++) {                                                         \
            __m512i b0 = _mm512_loadu_si512((const void *)(b + (size_t)kk * BF_NR));               \
            __m512i b1 = (NV) > 1 ? _mm512_loadu_si512((const void *)(b + bstride + (size_t)kk * BF_NR)) : b0; \
            const int o = akoff[kk];                                                               \
            for (int i = 0; i < (R); i++) {                                                        \
                uint32_t w;                                                                        \
                memcpy(&w, ar[i] + o, sizeof w);                                                   \
                __m512i av = _mm512_set1_epi32((int)w);                                            \
                c[i][0] = _mm512_dpbf16_ps(c[i][0], (__m512bh)av, (__m512bh)b0);                   \
                if ((NV) > 1) c[i][(NV) - 1] = _mm512_dpbf16_ps(c[i][(NV) - 1], (__m512bh)av, (__m512bh)b1); \
            }                                                                                      \
        }                                                                                          \
        BF16_STORE(R, NV, 0)                                                                       \
    }
BF16_OTILE(8, 2)
BF16_OTILE(4, 2)
BF16_OTILE(2, 2)
BF16_OTILE(1, 2)
BF16_OTILE(8, 1)
BF16_OTILE(4, 1)
BF16_OTILE(2, 1)
BF16_OTILE(1, 1)

typedef void (*bf16_otile_fn)(int, const uint16_t *, const int *, const int *, const uint32_t *, size_t, float *, int,
                              int);

static void gemm_offsets_avx512(int M, int N, int Kp2, const uint16_t *A, const int *aoff, const int *akoff,
                                const uint32_t *b, float *C, int ldc) {
    static const bf16_otile_fn two[] = {otile_8_2, otile_4_2, otile_2_2, otile_1_2};
    static const bf16_otile_fn one[] = {otile_8_1, otile_4_1, otile_2_1, otile_1_1};
    static const int rows[] = {8, 4, 2, 1};
    const int panels = (N + BF_NR - 1) / BF_NR;
    const size_t pstride = (size_t)Kp2 * BF_NR;
    for (int p = 0; p < panels;) {
        const int nv = panels - p >= 2 ? 2 : 1;
        const bf16_otile_fn *fns = nv == 2 ? two : one;
        const int q = p * BF_NR;
        int r = 0;
        for (int t = 0; t < 4; t++)
            for (; r + rows[t] <= M; r += rows[t])
                fns[t](Kp2, A, aoff + r, akoff, b + (size_t)p * pstride, pstride, C + (size_t)r * ldc + q, ldc, N - q);
        p += nv;
    }
}

NN_BF16 static void pair_rows_avx512(int n, const float *lo, const float *hi, uint32_t *dst);
NN_BF16 static void row_avx512(int n, const float *src, uint16_t *dst);

/* Packing with vcvtne2ps2bf16 / vcvtneps2bf16 (the same rounding as nn_bf16_round): A's rows 32
 * values at a time; B's k pairs as 32-bit words lo | hi << 16, 16 columns at a time (a column
 * run of B^T transposed through registers, 16 x 16 words). */
NN_BF16 static void pack_a_avx512(int M, int K, const float *A, int lda, uint16_t *ap) {
    const int Kp = (K + 1) & ~1;
    const int nt = nn_threads(); /* capped after a fork, 1 in the reference mode */
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)M * K > 65536)
    for (int i = 0; i < M; i++) {
        uint16_t *dst = ap + (size_t)i * Kp;
        const float *src = A + (size_t)i * lda;
        int k = 0;
        for (; k + 32 <= K; k += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + k + 16), _mm512_loadu_ps(src + k));
            _mm512_storeu_si512((void *)(dst + k), (__m512i)v);
        }
        for (; k < K; k++) dst[k] = nn_bf16_round(src[k]);
        if (Kp > K) dst[K] = 0;
    }
}

NN_BF16 static inline __m512i pair_words(__m512 lo, __m512 hi) {
    __m512i l = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
    __m512i h = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
    return _mm512_or_si512(l, _mm512_slli_epi32(h, 16));
}

NN_BF16 static void transpose16_words(__m512i *r) {
    __m512 f[16];
    for (int i = 0; i < 16; i++) f[i] = _mm512_castsi512_ps(r[i]);
    v_transpose16(f);
    for (int i = 0; i < 16; i++) r[i] = _mm512_castps_si512(f[i]);
}

NN_BF16 static void pack_b_avx512(int transB, int K, int N, const float *B, int ldb, uint16_t *bp) {
    const int Kp = (K + 1) & ~1, Kp2 = Kp / 2, panels = (N + BF_NR - 1) / BF_NR;
    const int nt = nn_threads(); /* capped after a fork, 1 in the reference mode */
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)N * K > 65536)
    for (int p = 0; p < panels; p++) {
        uint32_t *dst = (uint32_t *)(void *)(bp + (size_t)p * Kp2 * BF_NR * 2);
        const int q = p * BF_NR, nc = N - q < BF_NR ? N - q : BF_NR;
        const __mmask16 m = nc == BF_NR ? (__mmask16)0xffff : (__mmask16)((1u << nc) - 1);
        if (!transB) { /* rows 2kk, 2kk + 1 of B: 16 columns each */
            for (int kk = 0; kk < Kp2; kk++) {
                const int k = 2 * kk;
                __m512 lo = _mm512_maskz_loadu_ps(m, B + (size_t)k * ldb + q);
                __m512 hi = k + 1 < K ? _mm512_maskz_loadu_ps(m, B + (size_t)(k + 1) * ldb + q) : _mm512_setzero_ps();
                _mm512_storeu_si512((void *)(dst + (size_t)kk * BF_NR), pair_words(lo, hi));
            }
        } else { /* B^T's rows are B's columns: 16 columns x 16 k pairs, transposed */
            int kk = 0;
            for (; 2 * (kk + 16) <= K; kk += 16) {
                __m512i r[16];
                for (int j = 0; j < 16; j++) {
                    if (j < nc) {
                        const float *c = B + (size_t)(q + j) * ldb + 2 * kk;
                        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(c + 16), _mm512_loadu_ps(c));
                        r[j] = (__m512i)v; /* word w = (k 2w, k 2w + 1) of column j */
                    } else
                        r[j] = _mm512_setzero_si512();
                }
                transpose16_words(r); /* r[w] = word w of columns 0..15 */
                for (int w = 0; w < 16; w++) _mm512_storeu_si512((void *)(dst + (size_t)(kk + w) * BF_NR), r[w]);
            }
            for (; kk < Kp2; kk++)
                for (int j = 0; j < BF_NR; j++) {
                    const int k = 2 * kk, col = q + j;
                    uint16_t lo = col < N && k < K ? nn_bf16_round(B[(size_t)col * ldb + k]) : 0;
                    uint16_t hi = col < N && k + 1 < K ? nn_bf16_round(B[(size_t)col * ldb + k + 1]) : 0;
                    dst[(size_t)kk * BF_NR + j] = (uint32_t)lo | (uint32_t)hi << 16;
                }
        }
    }
}
NN_BF16 static void pair_rows_avx512(int n, const float *lo, const float *hi, uint32_t *dst) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_si512((void *)(dst + i),
                            pair_words(_mm512_loadu_ps(lo + i), hi ? _mm512_loadu_ps(hi + i) : _mm512_setzero_ps()));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512i w = pair_words(_mm512_maskz_loadu_ps(m, lo + i), hi ? _mm512_maskz_loadu_ps(m, hi + i) : _mm512_setzero_ps());
        _mm512_mask_storeu_epi32((void *)(dst + i), m, w);
    }
}

NN_BF16 static void row_avx512(int n, const float *src, uint16_t *dst) {
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
        _mm512_storeu_si512((void *)(dst + i), (__m512i)v);
    }
    for (; i < n; i += 16) { /* the last (up to) 31, 16 at a time, masked */
        const int m = n - i < 16 ? n - i : 16;
        const __mmask16 k = (__mmask16)((1u << m) - 1);
        __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(k, src + i));
        _mm256_mask_storeu_epi16((void *)(dst + i), k, h);
    }
}
/* dst[c][p] = src[p][c] (+ bias[c]) in 16 x 16 blocks through registers, masked at the edges */
NN_BF16 static void transpose_bias_avx512(int P, int Cn, const float *src, int lds, const float *bias, float *dst,
                                          int ldd) {
    for (int p0 = 0; p0 < P; p0 += 16) {
        const int q = P - p0 < 16 ? P - p0 : 16;
        const __mmask16 pm = (__mmask16)((1u << q) - 1);
        for (int c0 = 0; c0 < Cn; c0 += 16) {
            const int m = Cn - c0 < 16 ? Cn - c0 : 16;
            const __mmask16 cm = (__mmask16)((1u << m) - 1);
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < q ? _mm512_maskz_loadu_ps(cm, src + (size_t)(p0 + i) * lds + c0) : _mm512_setzero_ps();
            v_transpose16(r);
            for (int j = 0; j < m; j++) {
                __m512 v = bias ? _mm512_add_ps(r[j], _mm512_set1_ps(bias[c0 + j])) : r[j];
                _mm512_mask_storeu_ps(dst + (size_t)(c0 + j) * ldd + p0, pm, v);
            }
        }
    }
}
#define NN_HAVE_BF16 1
#endif

void nn_bf16_pack_a(int M, int K, const float *A, int lda, uint16_t *ap) {
#ifdef NN_HAVE_BF16
    if (!nn_get_reference() && nn_bf16_level()) {
        pack_a_avx512(M, K, A, lda, ap);
        return;
    }
#endif
    pack_a_scalar(M, K, A, lda, ap);
}

void nn_bf16_pack_b(int transB, int K, int N, const float *B, int ldb, uint16_t *bp) {
#ifdef NN_HAVE_BF16
    if (!nn_get_reference() && nn_bf16_level()) {
        pack_b_avx512(transB, K, N, B, ldb, bp);
        return;
    }
#endif
    pack_b_scalar(transB, K, N, B, ldb, bp);
}

int nn_gemm_bf16(int M, int N, int K, const uint16_t *ap, const uint16_t *bp, float *C, int ldc, int accumulate) {
    if (M < 0 || N < 0 || K < 0 || ldc < N) return NN_EBADSHAPE;
    if (M == 0 || N == 0) return NN_OK;
    const int Kp = (K + 1) & ~1;
    if (nn_get_reference()) {
        gemm_bf16_reference(M, N, Kp, ap, bp, C, ldc, accumulate);
        return NN_OK;
    }
#ifdef NN_HAVE_BF16
    if (!nn_bf16_level()) return NN_EUNSUPPORTED;
    const uint32_t *a = (const uint32_t *)(const void *)ap, *b = (const uint32_t *)(const void *)bp;
    const int block = 64, blocks = (M + block - 1) / block;
    const int nt = nn_threads(); /* capped after a fork, 1 in the reference mode */
#pragma omp parallel for num_threads(nt) schedule(static) if ((size_t)M * N * K > 262144)
    for (int blk = 0; blk < blocks; blk++) {
        const int r0 = blk * block, r1 = r0 + block < M ? r0 + block : M;
        rows_bf16(r0, r1, N, Kp / 2, a, b, C, ldc, accumulate);
    }
    return NN_OK;
#else
    (void)Kp;
    return NN_EUNSUPPORTED;
#endif
}

void nn_bf16_pair_rows(int n, const float *lo, const float *hi, uint32_t *dst) {
#ifdef NN_HAVE_BF16
    if (!nn_get_reference() && nn_bf16_level()) {
        pair_rows_avx512(n, lo, hi, dst);
        return;
    }
#endif
    for (int i = 0; i < n; i++) dst[i] = (uint32_t)nn_bf16_round(lo[i]) | (uint32_t)(hi ? nn_bf16_round(hi[i]) : 0) << 16;
}

void nn_bf16_row(int n, const float *src, uint16_t *dst) {
#ifdef NN_HAVE_BF16
    if (!nn_get_reference() && nn_bf16_level()) {
        row_avx512(n, src, dst);
        return;
    }
#endif
    for (int i = 0; i < n; i++) dst[i] = nn_bf16_round(src[i]);
}

/* the scalar reference of the offset product: pair by pair, as gemm_bf16_reference */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-vectorize")))
#endif
static void gemm_offsets_reference(int M, int N, int Kp2, const uint16_t *A, const int *aoff, const int *akoff,
                                   const uint16_t *bp, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            const int p = j / BF_NR, jj = j % BF_NR;
            float acc = 0.0f;
            for (int kk = 0; kk < Kp2; kk++) {
                const uint16_t *b = bp + (((size_t)p * Kp2 + kk) * BF_NR + jj) * 2;
                const uint16_t *a = A + aoff[i] + akoff[kk];
                acc += bf16_float(a[1]) * bf16_float(b[1]);
                acc += bf16_float(a[0]) * bf16_float(b[0]);
            }
            C[(size_t)i * ldc + j] = acc;
        }
}

int nn_gemm_bf16_offsets(int M, int N, int Kp2, const uint16_t *A, const int *aoff, const int *akoff,
                         const uint16_t *bp, float *C, int ldc) {
    if (M <= 0 || N <= 0) return NN_OK;
    if (nn_get_reference()) {
        gemm_offsets_reference(M, N, Kp2, A, aoff, akoff, bp, C, ldc);
        return NN_OK;
    }
#ifdef NN_HAVE_BF16
    if (!nn_bf16_level()) return NN_EUNSUPPORTED;
    gemm_offsets_avx512(M, N, Kp2, A, aoff, akoff, (const uint32_t *)(const void *)bp, C, ldc);
    return NN_OK;
#else
    return NN_EUNSUPPORTED;
#endif
}

void nn_transpose_bias(int P, int Cn, const float *src, int lds, const float *bias, float *dst, int ldd) {
#ifdef NN_HAVE_BF16
    if (!nn_get_reference() && nn_bf16_level()) {
        transpose_bias_avx512(P, Cn, src, lds, bias, dst, ldd);
        return;
    }
#endif
    for (int c = 0; c < Cn; c++) {
        const float b = bias ? bias[c] : 0.0f;
        for (int p = 0; p < P; p++) dst[(size_t)c * ldd + p] = src[(size_t)p * lds + c] + b;
    }
}
