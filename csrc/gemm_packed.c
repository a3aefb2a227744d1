/*
 * Our GEMM micro-kernel, C[M, N] += A[M, K] B[K, N], with B packed by nn_pack_b into column
 * panels of NN_NR: bp[(p K + k) NN_NR + j] = B[k][p NN_NR + j], zero past N (B given as
 * B[K][N] or, transB, as B^T[N][K] like W_hh).
 * - nn_gemm_packed: A row-major. The recurrent kernels pack W_hh once per sequence and call it
 *   at every step, where sgemm repacked W_hh on every call (15 % of the LSTM forward here).
 * - nn_gemm_offsets: A(i, k) = A[aoff[i] + akoff[k]] and C(i, j) at C + i ldc + j or, for C
 *   transposed, set to (A B)(i, j) + bias[j] at C + i + j ldc: the direct convolution
 *   (conv.c) reads its zero-padded image in place, A's rows = output positions and
 *   k = (c, kh, kw): no im2col and no outputs on the padded width.
 * - nn_gemm_gates: an LSTM, GRU or RNN step, both products of a step and the cell in one pass.
 * The micro-kernel keeps a tile of rows x (a few panels) of C in registers; each C element
 * sums its K products in k order (FMA where the level has it), so results depend on the ISA
 * level but never on the thread count. The scalar reference path (nn_set_reference) uses
 * nn_gemm in nn_gemm_packed; the convolution keeps im2col + sgemm there.
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

static int pack_bt_fast(int K, int N, const float *B, int ldb, float *bp, int Ktot, int k0);

void nn_pack_b_rows(int transB, int K, int N, const float *B, int ldb, float *bp, int Ktot, int k0) {
    const int panels = (N + NN_NR - 1) / NN_NR;
    /* B^T's full panels 16 x 16 at a time in registers where the level has AVX-512 (the scalar
     * loop took 2.5 ms for a 512 -> 512 3x3 convolution's weights, more than a product of
     * 64 4x4 images); the rest below */
    const int done = transB && !nn_get_reference() ? pack_bt_fast(K, N, B, ldb, bp, Ktot, k0) : 0;
    for (int p = done; p < panels; p++)
        for (int k = 0; k < K; k++) {
            float *dst = bp + ((size_t)p * Ktot + k0 + k) * NN_NR;
            for (int j = 0; j < NN_NR; j++) {
                int col = p * NN_NR + j;
                dst[j] = col >= N ? 0.0f : transB ? B[(size_t)col * ldb + k] : B[(size_t)k * ldb + col];
            }
        }
}

void nn_pack_b(int transB, int K, int N, const float *B, int ldb, float *bp) {
    nn_pack_b_rows(transB, K, N, B, ldb, bp, K, 0);
}

/* nn_gemm_offsets_rows' extras: C's row offsets, k's runs (NULL: k in [0, K)) */
typedef struct {
    const int *coff, *kruns;
    int nkruns;
} nn_tile_ext;

/* Tile modes, compile-time in each kernel: A's k-th element at akoff[k] (else k), C transposed. */
#define NN_AKOFF 1
#define NN_CT 2

#define NN_TILE_ZERO(R, VT, NV)                                                                    \
        VT c[R][NV];                                                                               \
        for (int i = 0; i < (R); i++)                                                              \
            for (int v = 0; v < (NV); v++) c[i][v] = (VT){0};

/* c[i][v] += sum over k < KK of A(r + i, k) B_v[k]: A's row at AA + i LDA (or AA + AOFF[i]),
 * its k-th element at k (or, MODE & NN_AKOFF, akoff[k]); B_v[k] at BV[v] + k NN_NR; B_2 goes
 * to c[i][MAP2] (2, or 3 for the GRU's separate sums). */
#define NN_TILE_K(R, VT, NV, AA, LDA, AOFF, AKO, KK, BV, MODE, MAP2)                               \
        {                                                                                          \
            const float *ar[R];                                                                    \
            for (int i = 0; i < (R); i++)                                                          \
                ar[i] = (AOFF) ? (AA) + (AOFF)[r + i] : (AA) + (size_t)(r + i) * (LDA);            \
            _Pragma("GCC unroll 2")                                                                \
            for (int k = 0; k < (KK); k++) {                                                       \
                /* B's vectors in named variables (an array of them would live on the stack) */   \
                const size_t ko = (size_t)k * NN_NR;                                               \
                const int ak = ((MODE) & NN_AKOFF) ? (AKO)[k] : k;                                 \
                VT b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};                                         \
                memcpy(&b0, (BV)[0] + ko, sizeof b0);                                              \
                if ((NV) > 1) memcpy(&b1, (BV)[1 % (NV)] + ko, sizeof b1);                         \
                if ((NV) > 2) memcpy(&b2, (BV)[2 % (NV)] + ko, sizeof b2);                         \
                if ((NV) > 3) memcpy(&b3, (BV)[3 % (NV)] + ko, sizeof b3);                         \
                for (int i = 0; i < (R); i++) {                                                    \
                    float a = ar[i][ak];                                                           \
                    c[i][0] += a * b0;                                                             \
                    if ((NV) > 1) c[i][1 % (NV)] += a * b1;                                        \
                    if ((NV) > 2) c[i][MAP2] += a * b2;                                            \
                    if ((NV) > 3) c[i][3 % (NV)] += a * b3;                                        \
                }                                                                                  \
            }                                                                                      \
        }

/* Rows [r, r + R) x NV vectors of VW floats: the tile's NV * VW columns are C's next ones. */
#define NN_TILE(R, VT, NV, VW, MODE, CTS)                                                          \
    for (; r + (R) <= M; r += (R)) {                                                               \
        NN_TILE_ZERO(R, VT, NV)                                                                    \
        if ((MODE) & NN_CT && ext && ext->kruns) /* only k in the runs [k0, k1) */               \
            for (int ru = 0; ru < ext->nkruns; ru++) {                                             \
                const int k0 = ext->kruns[2 * ru];                                                 \
                const float *bvr[NV];                                                              \
                for (int v = 0; v < (NV); v++) bvr[v] = bv[v] + (size_t)k0 * NN_NR;                \
                NN_TILE_K(R, VT, NV, A, lda, aoff, akoff + k0, ext->kruns[2 * ru + 1] - k0, bvr,   \
                          MODE, 2 % (NV))                                                          \
            }                                                                                      \
        else                                                                                       \
            NN_TILE_K(R, VT, NV, A, lda, aoff, akoff, K, bv, MODE, 2 % (NV))                       \
        const int nc = ncols < (NV) * (VW) ? ncols : (NV) * (VW);                                  \
        if ((MODE) & NN_CT) { /* set, with the bias: one pass over K, no read of C */             \
            float tb[(R) * (NV) * (VW)];                                                           \
            for (int i = 0; i < (R); i++) memcpy(tb + i * (NV) * (VW), c[i], sizeof c[i]);         \
            const int *coff = ext ? ext->coff : NULL;                                              \
            if (coff && coff[r + (R) - 1] - coff[r] != (R) - 1) /* rows not one run */            \
                ct_store_rows(tb, R, (NV) * (VW), nc, C, coff + r, ldc, cbias);                    \
            else                                                                                   \
                CTS(tb, R, (NV) * (VW), nc, C + (coff ? coff[r] : r), ldc, cbias);                 \
        } else                                                                                     \
            for (int i = 0; i < (R); i++) {                                                        \
                float out[(NV) * (VW)];                                                            \
                memcpy(out, c[i], sizeof out);                                                     \
                for (int j = 0; j < nc; j++) C[(size_t)(r + i) * ldc + j] += out[j];               \
            }                                                                                      \
    }

/* Transposed stores: C[i + j ldc] = tb[i][j] + bias[j] (bias NULL: tb[i][j]) for i < R rows,
 * j < nc of the W columns of the tile tb[R][W]. A column of C is a run of R floats, so the
 * tile is transposed in registers and each run stored at once (scalar stores took 6-9 % of
 * the convolution's time). */
static void ct_store_scalar(const float *tb, int R, int W, int nc, float *C, int ldc, const float *bias) {
    for (int i = 0; i < R; i++)
        for (int j = 0; j < nc; j++) C[(size_t)i + (size_t)j * ldc] = tb[i * W + j] + (bias ? bias[j] : 0.0f);
}

/* The same with row i at C + coff[i] (a tile whose rows are not one run: two images' outputs). */
static void ct_store_rows(const float *tb, int R, int W, int nc, float *C, const int *coff, int ldc,
                          const float *bias) {
    for (int i = 0; i < R; i++)
        for (int j = 0; j < nc; j++) C[(size_t)coff[i] + (size_t)j * ldc] = tb[i * W + j] + (bias ? bias[j] : 0.0f);
}

/* Rows [0, M) of NV * VW columns (NV * VW / NN_NR panels, pstride apart), in tiles of BIG
 * rows (as many accumulators as the level's registers hold), then 4, 2, 1. */
#define NN_PANEL_BODY(BIG, VT, NV, VW, MODE, CTS)                                                  \
    {                                                                                              \
        const float *bv[NV];                                                                       \
        for (int v = 0; v < (NV); v++)                                                             \
            bv[v] = bp + (size_t)(v / (NN_NR / (VW))) * pstride + (v % (NN_NR / (VW))) * (VW);     \
        int r = 0;                                                                                 \
        NN_TILE(BIG, VT, NV, VW, MODE, CTS)                                                        \
        NN_TILE(4, VT, NV, VW, MODE, CTS)                                                          \
        NN_TILE(2, VT, NV, VW, MODE, CTS)                                                          \
        NN_TILE(1, VT, NV, VW, MODE, CTS)                                                          \
    }

#define NN_PANEL_PARAMS                                                                            \
    (int M, int K, const float *A, int lda, const int *aoff, const int *akoff, const float *bp,    \
     size_t pstride, float *C, int ldc, const nn_tile_ext *ext, const float *cbias, int ncols)
#define NN_PANEL_ARGS (M, K, A, lda, aoff, akoff, bp, pstride, C, ldc, ext, cbias, ncols)

/* NN_PANELS(name, ATTR, ..., CTS): name(mode, ...) over the three modes used: plain, A's k at
 * offsets with C transposed (convolution forward, stored by CTS), A's k at offsets (weight
 * gradient). */
#define NN_PANELS(name, ATTR, BIG, VT, NV, VW, CTS)                                                \
    ATTR static void name##_m0 NN_PANEL_PARAMS NN_PANEL_BODY(BIG, VT, NV, VW, 0, CTS)              \
    ATTR static void name##_m1 NN_PANEL_PARAMS NN_PANEL_BODY(BIG, VT, NV, VW, NN_AKOFF | NN_CT, CTS) \
    ATTR static void name##_m2 NN_PANEL_PARAMS NN_PANEL_BODY(BIG, VT, NV, VW, NN_AKOFF, CTS)       \
    static void name(int mode, int M, int K, const float *A, int lda, const int *aoff,             \
                     const int *akoff, const float *bp, size_t pstride, float *C, int ldc,         \
                     const nn_tile_ext *ext, const float *cbias, int ncols) {                             \
        if (mode == 0) name##_m0 NN_PANEL_ARGS;                                                    \
        else if (mode == (NN_AKOFF | NN_CT)) name##_m1 NN_PANEL_ARGS;                              \
        else name##_m2 NN_PANEL_ARGS;                                                              \
    }

/* Gate tiles: for recurrent cells whose update needs each hidden unit's gate sums together,
 * over two products at once: x_t W_ih^T + h_{t-1} W_hh^T. Each W[NG H, K] is packed per gate
 * (nn_pack_gates): gate g's panel of units [u, u + NN_NR) at wp + (g P + u / NN_NR) K NN_NR,
 * P = panels per gate. A tile holds R rows x 4 vectors of VW units, runs the K1 steps of the
 * first product and the K2 of the second into the same registers and hands the tile's sums
 * to the epilogue, which finishes the cell for those units. LSTM (NG = 4): the gates i, f, g,
 * o of the same units, both products summed. GRU (NG = 3): r and z summed over both products,
 * n kept apart, x_t's in vector 2 and h_{t-1}'s in vector 3 (n = tanh(x W_n + r (h U_n + b))).
 * Elman RNN (NG = 1): three consecutive blocks of units, both products summed. */
#define NN_GATE_NV(NG) ((NG) == 1 ? 3 : (NG)) /* B vectors per k */
#define NN_GATE_TILE(R, VT, NG, VW)                                                                \
    for (; r + (R) <= M; r += (R)) {                                                               \
        NN_TILE_ZERO(R, VT, 4)                                                                     \
        NN_TILE_K(R, VT, NN_GATE_NV(NG), A1, lda1, noff, noff, K1, bv1, 0, 2)                      \
        NN_TILE_K(R, VT, NN_GATE_NV(NG), A2, lda2, noff, noff, K2, bv2, 0, (NG) == 3 ? 3 : 2)      \
        float acc[(R) * 4 * (VW)];                                                                 \
        memcpy(acc, c, sizeof acc);                                                                \
        epi(ctx, r, R, u0, nc, acc, VW);                                                           \
    }
#define NN_GATES_BODY(BIG, VT, NG, VW)                                                             \
    {                                                                                              \
        const int *noff = NULL, *akoff = NULL;                                                     \
        (void)akoff;                                                                               \
        const int P = (H + NN_NR - 1) / NN_NR, step = (NG) == 1 ? 3 * (VW) : (VW);                 \
        for (int u0 = 0; u0 < H; u0 += step) {                                                     \
            const int nc = H - u0 < step ? H - u0 : step;                                          \
            const float *bv1[NN_GATE_NV(NG)], *bv2[NN_GATE_NV(NG)];                                \
            for (int g = 0; g < NN_GATE_NV(NG); g++) {                                             \
                int q = u0 / NN_NR + g; /* RNN: past the last panel only for unused lanes */       \
                size_t at = ((NG) == 1 ? (size_t)(q < P ? q : P - 1)                               \
                                       : (size_t)g * P + u0 / NN_NR) * NN_NR;                      \
                bv1[g] = wp1 + at * K1 + u0 % NN_NR;                                               \
                bv2[g] = wp2 + at * K2 + u0 % NN_NR;                                               \
            }                                                                                      \
            int r = 0;                                                                             \
            NN_GATE_TILE(BIG, VT, NG, VW)                                                          \
            NN_GATE_TILE(2, VT, NG, VW)                                                            \
            NN_GATE_TILE(1, VT, NG, VW)                                                            \
        }                                                                                          \
    }
#define NN_GATES_PARAMS                                                                            \
    (int M, int H, int K1, const float *A1, int lda1, const float *wp1, int K2, const float *A2,   \
     int lda2, const float *wp2, nn_gate_epilogue epi, void *ctx)

/* panels(mode, np, ...): C[:, 0:ncols] += A B over up to np panels (np * NN_NR columns);
 * returns how many panels this level's tile for np took. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NN_NO_CLONES)
/* contraction on here (-std=c99 turns it off elsewhere): mul + add -> FMA. AVX-512 has two
 * loads per cycle for its two FMAs: a tile of 8 rows x one zmm (9 loads per 8 FMAs) is bound
 * by its loads; 8 rows x three zmm (11 per 24) measured best here (LSTM backward step 6.2 ->
 * 5.6 ms), ahead of 8 x 2, 12 x 2 and 6 x 4. The convolution's long products take 14 rows x
 * two zmm (conv 32->64 forward 1.42 -> 1.28 ms against 8 x 3, 1.36 at 12 x 2). AVX2: 6 rows x
 * two ymm (12 of its 16 registers; 8 loads per 12 FMAs). */
#define NN_FMA_512 __attribute__((target("avx512f"), optimize("fp-contract=fast")))
#define NN_FMA_256 __attribute__((target("avx2,fma"), optimize("fp-contract=fast")))
#include <immintrin.h>
#include "nn_vec512.h"
__attribute__((target("avx512f"), noinline))
static void ct_store_avx512(const float *tb, int R, int W, int nc, float *C, int ldc, const float *bias) {
    const __mmask16 m = (__mmask16)((1u << R) - 1); /* R <= 16 */
    for (int j0 = 0; j0 < nc; j0 += 16) {
        __m512 r[16];
        for (int i = 0; i < 16; i++) r[i] = i < R ? _mm512_loadu_ps(tb + i * W + j0) : _mm512_setzero_ps();
        v_transpose16(r);
        for (int j = 0; j < 16 && j0 + j < nc; j++)
            _mm512_mask_storeu_ps(C + (size_t)(j0 + j) * ldc, m,
                                  bias ? _mm512_add_ps(r[j], _mm512_set1_ps(bias[j0 + j])) : r[j]);
    }
}
__attribute__((target("avx2"), noinline))
static void ct_store_avx2(const float *tb, int R, int W, int nc, float *C, int ldc, const float *bias) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(R), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int j0 = 0; j0 < nc; j0 += 8) { /* R <= 8: one 8 x 8 transpose per 8 columns */
        __m256 r[8], t[8];
        for (int i = 0; i < 8; i++) r[i] = i < R ? _mm256_loadu_ps(tb + i * W + j0) : _mm256_setzero_ps();
        for (int i = 0; i < 8; i += 2) {
            t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
            r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
            r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
            r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
            r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
        }
        for (int i = 0; i < 4; i++) {
            t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
            t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
        }
        for (int j = 0; j < 8 && j0 + j < nc; j++)
            _mm256_maskstore_ps(C + (size_t)(j0 + j) * ldc, m,
                                bias ? _mm256_add_ps(t[j], _mm256_set1_ps(bias[j0 + j])) : t[j]);
    }
}
/* panels [0, N / 16) of B^T packed; returns how many */
__attribute__((target("avx512f"), noinline))
static int pack_bt_avx512(int K, int N, const float *B, int ldb, float *bp, int Ktot, int k0) {
    const int full = N / NN_NR;
    for (int p = 0; p < full; p++) {
        const float *src = B + (size_t)p * NN_NR * ldb;
        float *dst = bp + ((size_t)p * Ktot + k0) * NN_NR;
        int k = 0;
        for (; k + 16 <= K; k += 16) {
            __m512 r[16];
            for (int j = 0; j < 16; j++) r[j] = _mm512_loadu_ps(src + (size_t)j * ldb + k);
            v_transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + (size_t)(k + i) * NN_NR, r[i]);
        }
        for (; k < K; k++)
            for (int j = 0; j < NN_NR; j++) dst[(size_t)k * NN_NR + j] = src[(size_t)j * ldb + k];
    }
    return full;
}
static int pack_bt_fast(int K, int N, const float *B, int ldb, float *bp, int Ktot, int k0) {
    return nn_isa() == NN_ISA_AVX512 ? pack_bt_avx512(K, N, B, ldb, bp, Ktot, k0) : 0;
}
NN_PANELS(panel3_avx512, NN_FMA_512, 8, nn_v16, 3, 16, ct_store_avx512)
NN_PANELS(panel2_avx512, NN_FMA_512, 8, nn_v16, 2, 16, ct_store_avx512)
NN_PANELS(panel1_avx512, NN_FMA_512, 8, nn_v16, 1, 16, ct_store_avx512)
NN_PANELS(tall2_avx512, NN_FMA_512, 14, nn_v16, 2, 16, ct_store_avx512)
NN_PANELS(tall1_avx512, NN_FMA_512, 12, nn_v16, 1, 16, ct_store_avx512)
NN_PANELS(panel_avx2, NN_FMA_256, 6, nn_v8, 2, 8, ct_store_avx2)
NN_PANELS(panel_base, , 2, nn_v4, 4, 4, ct_store_scalar)
#define NN_PANELS_CALL(fn) fn(mode, M, K, A, lda, aoff, akoff, bp, pstride, C, ldc, ext, cbias, ncols)
static int panels(int mode, int np, int M, int K, const float *A, int lda, const int *aoff,
                  const int *akoff, const float *bp, size_t pstride, float *C, int ldc,
                  const nn_tile_ext *ext, const float *cbias, int ncols) {
    int isa = nn_isa();
    if (isa == NN_ISA_AVX512 && mode != 0) { /* convolution: 14 rows x 2 zmm (28 accumulators) */
        if (np >= 2) return NN_PANELS_CALL(tall2_avx512), 2;
        return NN_PANELS_CALL(tall1_avx512), 1;
    }
    if (isa == NN_ISA_AVX512) {
        if (np >= 3 && np != 4) return NN_PANELS_CALL(panel3_avx512), 3;
        if (np >= 2) return NN_PANELS_CALL(panel2_avx512), 2;
        return NN_PANELS_CALL(panel1_avx512), 1;
    }
    if (isa == NN_ISA_AVX2) return NN_PANELS_CALL(panel_avx2), 1;
    return NN_PANELS_CALL(panel_base), 1;
}

/* AVX-512 only: 6 rows x 4 zmm (24 accumulators, 10 loads per 24 FMAs; the RNN's 8 x 3). AVX2's
 * 16 registers hold 3 rows x 4 ymm; measured, that tile plus the cells in its epilogue took
 * the LSTM forward from 3.9 to 4.5 ms, so AVX2 keeps the input projection as one sgemm, the
 * steps on its 6 x 2 panels and the cells as a pass of their own. */
NN_FMA_512 static void gates4_avx512 NN_GATES_PARAMS NN_GATES_BODY(6, nn_v16, 4, 16)
NN_FMA_512 static void gates3_avx512 NN_GATES_PARAMS NN_GATES_BODY(6, nn_v16, 3, 16)
NN_FMA_512 static void gates1_avx512 NN_GATES_PARAMS NN_GATES_BODY(8, nn_v16, 1, 16)
#define NN_HAVE_GATE_TILES 1
#else
static int pack_bt_fast(int K, int N, const float *B, int ldb, float *bp, int Ktot, int k0) {
    (void)K, (void)N, (void)B, (void)ldb, (void)bp, (void)Ktot, (void)k0;
    return 0;
}
NN_PANELS(panel_base, , 2, nn_v4, 4, 4, ct_store_scalar)
static int panels(int mode, int np, int M, int K, const float *A, int lda, const int *aoff,
                  const int *akoff, const float *bp, size_t pstride, float *C, int ldc,
                  const nn_tile_ext *ext, const float *cbias, int ncols) {
    (void)np;
    return panel_base(mode, M, K, A, lda, aoff, akoff, bp, pstride, C, ldc, ext, cbias, ncols), 1;
}
#endif

/* C[M, 0:N] += A B over B's packed panels. */
static void gemm_panels(int mode, int M, int N, int K, const float *A, int lda, const int *aoff,
                        const int *akoff, const float *bp, float *C, int ldc, const nn_tile_ext *ext,
                        const float *cbias) {
    const int np = (N + NN_NR - 1) / NN_NR;
    for (int p = 0; p < np;) {
        const int q = p * NN_NR;
        float *Cq = mode & NN_CT ? C + (size_t)q * ldc : C + q;
        p += panels(mode, np - p, M, K, A, lda, aoff, akoff, bp + (size_t)p * K * NN_NR,
                    (size_t)K * NN_NR, Cq, ldc, ext, cbias ? cbias + q : NULL, N - q);
    }
}

void nn_gemm_packed(int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    const float *bp, float *C, int ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    if (nn_get_reference()) { /* the scalar reference path reads B as given */
        nn_gemm(0, transB, M, N, K, 1.0f, A, lda, B, ldb, 1.0f, C, ldc);
        return;
    }
    gemm_panels(0, M, N, K, A, lda, NULL, NULL, bp, C, ldc, NULL, NULL);
}

void nn_gemm_offsets(int M, int N, int K, const float *A, const int *aoff, const int *akoff,
                     const float *bp, float *C, int ldc, int ct, const float *bias) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    gemm_panels(ct ? NN_AKOFF | NN_CT : NN_AKOFF, M, N, K, A, 0, aoff, akoff, bp, C, ldc, NULL, bias);
}

void nn_gemm_offsets_rows(int M, int N, int K, const float *A, const int *aoff, const int *akoff,
                          const float *bp, float *C, const int *coff, int ldc, const float *bias,
                          const int *kruns, int nkruns) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    const nn_tile_ext ext = {coff, kruns, nkruns};
    gemm_panels(NN_AKOFF | NN_CT, M, N, K, A, 0, aoff, akoff, bp, C, ldc, &ext, bias);
}

size_t nn_gates_packed_size(int NG, int K, int H) { return (size_t)NG * nn_packed_size(K, H); }

void nn_pack_gates(int NG, int K, int H, const float *W, int ldw, float *wp) {
    for (int g = 0; g < NG; g++)
        nn_pack_b(1, K, H, W + (size_t)g * H * ldw, ldw, wp + (size_t)g * nn_packed_size(K, H));
}

int nn_gate_tiles(int NG) {
#ifdef NN_HAVE_GATE_TILES
    return (NG == 4 || NG == 3 || NG == 1) && nn_isa() == NN_ISA_AVX512 && !nn_get_reference();
#else
    (void)NG;
    return 0;
#endif
}

void nn_gemm_gates(int NG, int M, int H, int K1, const float *A1, int lda1, const float *wp1, int K2,
                   const float *A2, int lda2, const float *wp2, nn_gate_epilogue epi, void *ctx) {
#ifdef NN_HAVE_GATE_TILES
    if (M <= 0 || H <= 0 || K1 < 0 || K2 < 0) return;
    if (NG == 4) gates4_avx512(M, H, K1, A1, lda1, wp1, K2, A2, lda2, wp2, epi, ctx);
    else if (NG == 3) gates3_avx512(M, H, K1, A1, lda1, wp1, K2, A2, lda2, wp2, epi, ctx);
    else if (NG == 1) gates1_avx512(M, H, K1, A1, lda1, wp1, K2, A2, lda2, wp2, epi, ctx);
#else
    (void)NG, (void)M, (void)H, (void)K1, (void)A1, (void)lda1, (void)wp1, (void)K2, (void)A2;
    (void)lda2, (void)wp2, (void)epi, (void)ctx;
#endif
}

void nn_gate_steps(int NG, int nr, int T, int D, int H, const float *xr, const float *hr,
                   const float *h0r, const float *wpi, const float *wph, nn_gate_epilogue epi, void *ctx,
                   int *step) {
    for (int t = 0; t < T; t++) {
        const float *hp = t > 0 ? hr + (size_t)(t - 1) * H : h0r;
        *step = t;
        nn_gemm_gates(NG, nr, H, D, xr + (size_t)t * D, T * D, wpi, hp ? H : 0, hp ? hp : xr,
                      t > 0 ? T * H : H, wph, epi, ctx);
    }
}
