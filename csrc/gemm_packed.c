/*
 * Our GEMM micro-kernel, C[M, N] (ldc) += A[M, K] B[K, N], with B in one of two forms:
 * - packed by nn_pack_b into column panels of NN_NR: bp[(p K + k) NN_NR + j] =
 *   B[k][p NN_NR + j], zero past N (B given as B[K][N] or, transB, as B^T[N][K] like W_hh).
 *   The recurrent kernels pack W_hh once per sequence and call nn_gemm_packed at every step,
 *   where sgemm repacked W_hh on every call (15 % of the LSTM forward here);
 * - read in place, row k of B at base + boff[k] (nn_gemm_offset_rows): the direct convolution's
 *   padded image (conv.c); A's rows may also sit at offsets (nn_gemm_offset_a).
 * The micro-kernel keeps a tile of rows x NN_NR (or 2 NN_NR) columns of C in registers; each C
 * element sums its K products in k order (FMA where the level has it), so results depend on
 * the ISA level but never on the thread count. The scalar reference path (nn_set_reference)
 * uses nn_gemm in nn_gemm_packed; the convolution keeps im2col + sgemm there.
 */
#include <string.h>
#include "nn_internal.h"

#define NN_NR NN_PACK_NR

/* Vector types of each level's native width: GCC splits wider ones badly (into scalars)
 * where the global target lacks them. NN_NR = 16 floats = NV vectors of each type. */
typedef float nn_v16 __attribute__((vector_size(64)));
typedef float nn_v8 __attribute__((vector_size(32)));
typedef float nn_v4 __attribute__((vector_size(16)));

size_t nn_packed_size(int K, int N) { return (size_t)((N + NN_NR - 1) / NN_NR) * K * NN_NR; }

void nn_pack_b(int transB, int K, int N, const float *B, int ldb, float *bp) {
    const int panels = (N + NN_NR - 1) / NN_NR;
    for (int p = 0; p < panels; p++)
        for (int k = 0; k < K; k++) {
            float *dst = bp + ((size_t)p * K + k) * NN_NR;
            for (int j = 0; j < NN_NR; j++) {
                int col = p * NN_NR + j;
                dst[j] = col >= N ? 0.0f : transB ? B[(size_t)col * ldb + k] : B[(size_t)k * ldb + col];
            }
        }
}

/* NN_TILE(R, VT, NV, WID): rows [r, r + R) of one panel, R rows x WID columns (NV vectors of
 * type VT per row) of C in registers; packed panels are NN_NR wide (WID = NN_NR). */
#define NN_TILE(R, VT, NV, WID)                                                                    \
    for (; r + (R) <= M; r += (R)) {                                                               \
        VT c[R][NV];                                                                               \
        const float *ar[R]; /* A's rows: A + i lda, or A + aoff[i] */                              \
        for (int i = 0; i < (R); i++) {                                                            \
            ar[i] = aoff ? A + aoff[r + i] : A + (size_t)(r + i) * lda;                            \
            for (int v = 0; v < (NV); v++) c[i][v] = (VT){0};                                      \
        }                                                                                          \
        for (int k = 0; k < K; k++) {                                                              \
            /* the panel row in named vectors (an array of them would live on the stack) */       \
            const float *brow = boff ? bp + boff[k] : bp + (size_t)k * NN_NR;                      \
            VT b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};                                             \
            memcpy(&b0, brow, sizeof b0);                                                          \
            if ((NV) > 1) memcpy(&b1, brow + (WID) / (NV), sizeof b1);                             \
            if ((NV) > 2) {                                                                        \
                memcpy(&b2, brow + 2 * (WID) / (NV), sizeof b2);                                   \
                memcpy(&b3, brow + 3 * (WID) / (NV), sizeof b3);                                   \
            }                                                                                      \
            for (int i = 0; i < (R); i++) {                                                        \
                float a = ar[i][k];                                                                \
                c[i][0] += a * b0;                                                                 \
                if ((NV) > 1) c[i][1 % (NV)] += a * b1;                                            \
                if ((NV) > 2) {                                                                    \
                    c[i][2 % (NV)] += a * b2;                                                      \
                    c[i][3 % (NV)] += a * b3;                                                      \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (int i = 0; i < (R); i++) {                                                            \
            float out[WID];                                                                        \
            memcpy(out, c[i], sizeof out);                                                         \
            for (int j = 0; j < ncols; j++) C[(size_t)(r + i) * ldc + j] += out[j];                \
        }                                                                                          \
    }

/* Rows [0, M) of one panel: C[:, 0:ncols] += A bp_panel, in tiles of BIG rows (as many
 * accumulators as the level's registers hold), then 4, 2, 1. */
#define NN_PANEL_BODY(BIG, VT, NV, WID)                                                            \
    {                                                                                              \
        int r = 0;                                                                                 \
        NN_TILE(BIG, VT, NV, WID)                                                                  \
        NN_TILE(4, VT, NV, WID)                                                                    \
        NN_TILE(2, VT, NV, WID)                                                                    \
        NN_TILE(1, VT, NV, WID)                                                                    \
    }

/* A's row i: A + i lda, or A + aoff[i]; B's row k of the panel: bp + k NN_NR (packed), or
 * bp + boff[k] (rows of one array). */
#define NN_PANEL_PARAMS                                                                            \
    (int M, int K, const float *A, int lda, const int *aoff, const float *bp, const int *boff, float *C,  \
     int ldc, int ncols)

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NN_NO_CLONES)
/* contraction on here (-std=c99 turns it off elsewhere): mul + add -> FMA. AVX-512: 8 rows x
 * one zmm; AVX2: 6 rows x two ymm (12 of its 16 registers). */
__attribute__((target("avx512f"), optimize("fp-contract=fast"))) static void panel_avx512 NN_PANEL_PARAMS
NN_PANEL_BODY(8, nn_v16, 1, NN_NR)
__attribute__((target("avx2,fma"), optimize("fp-contract=fast"))) static void panel_avx2 NN_PANEL_PARAMS
NN_PANEL_BODY(6, nn_v8, 2, NN_NR)
static void panel_base NN_PANEL_PARAMS NN_PANEL_BODY(2, nn_v4, 4, NN_NR)
static void panel NN_PANEL_PARAMS {
    int isa = nn_isa();
    if (isa == NN_ISA_AVX512) panel_avx512(M, K, A, lda, aoff, bp, boff, C, ldc, ncols);
    else if (isa == NN_ISA_AVX2) panel_avx2(M, K, A, lda, aoff, bp, boff, C, ldc, ncols);
    else panel_base(M, K, A, lda, aoff, bp, boff, C, ldc, ncols);
}
/* Wide panels for B read in place (boff), AVX-512 only: twice the columns, so each broadcast
 * of A feeds two zmm (8 rows x 2 = 16 accumulators; conv 32->64 forward 2.0 -> 1.6 ms). AVX2
 * has too few registers for it (3 rows x four ymm measured 45 % slower than its 6 x 2). */
__attribute__((target("avx512f"), optimize("fp-contract=fast"))) static void wide_avx512 NN_PANEL_PARAMS
NN_PANEL_BODY(8, nn_v16, 2, 2 * NN_NR)
/* 2 NN_NR columns from bp + boff[k]; 0 when this level has no wide panel. */
static int wide_panel NN_PANEL_PARAMS {
    if (nn_isa() != NN_ISA_AVX512) return 0;
    wide_avx512(M, K, A, lda, aoff, bp, boff, C, ldc, ncols);
    return 1;
}
#else
static void panel NN_PANEL_PARAMS NN_PANEL_BODY(2, nn_v4, 4, NN_NR)
static int wide_panel NN_PANEL_PARAMS {
    (void)M, (void)K, (void)A, (void)lda, (void)aoff, (void)bp, (void)boff, (void)C, (void)ldc, (void)ncols;
    return 0;
}
#endif

void nn_gemm_packed(int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    const float *bp, float *C, int ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    if (nn_get_reference()) { /* the scalar reference path reads B as given */
        nn_gemm(0, transB, M, N, K, 1.0f, A, lda, B, ldb, 1.0f, C, ldc);
        return;
    }
    for (int p = 0; p * NN_NR < N; p++) {
        int ncols = N - p * NN_NR < NN_NR ? N - p * NN_NR : NN_NR;
        panel(M, K, A, lda, NULL, bp + (size_t)p * K * NN_NR, NULL, C + p * NN_NR, ldc, ncols);
    }
}

void nn_gemm_offset_a(int M, int N, int K, const float *A, const int *aoff, const float *bp, float *C,
                      int ldc) {
    for (int p = 0; p * NN_NR < N; p++) {
        int ncols = N - p * NN_NR < NN_NR ? N - p * NN_NR : NN_NR;
        panel(M, K, A, 0, aoff, bp + (size_t)p * K * NN_NR, NULL, C + p * NN_NR, ldc, ncols);
    }
}

void nn_gemm_offset_rows(int M, int N, int K, const float *A, int lda, const float *base, const int *boff,
                         float *C, int ldc) {
    int q = 0;
    while (N - q > NN_NR && wide_panel(M, K, A, lda, NULL, base + q, boff, C + q, ldc,
                                       N - q < 2 * NN_NR ? N - q : 2 * NN_NR))
        q += 2 * NN_NR;
    for (; q < N; q += NN_NR) {
        int ncols = N - q < NN_NR ? N - q : NN_NR;
        panel(M, K, A, lda, NULL, base + q, boff, C + q, ldc, ncols);
    }
}
