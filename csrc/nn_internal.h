/* Helpers shared by the kernel files; not part of the Python-facing API. */
#ifndef SPARK_NN_INTERNAL_H
#define SPARK_NN_INTERNAL_H

#include <math.h>
#include "nn_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#define NN_THREAD_ID() omp_get_thread_num()
#define NN_THREAD_COUNT() omp_get_num_threads()
#else
#define NN_THREAD_ID() 0
#define NN_THREAD_COUNT() 1
#endif

/* Rows [*r0, *r1) of n that thread id of nt owns: contiguous, balanced, fixed by (n, nt). */
static inline void nn_split(int n, int id, int nt, int *r0, int *r1) {
    *r0 = (int)((long long)n * id / nt);
    *r1 = (int)((long long)n * (id + 1) / nt);
}

/* Batch rows per block in the recurrent kernels. A BLAS result for one row can depend on how
 * many rows the call had, so blocks are fixed by N alone (never by the thread count): results
 * are then identical for any number of threads. */
static inline int nn_seq_block_rows(int N) {
    int rb = (N + 7) / 8;
    return rb < 32 ? 32 : rb; /* sgemm per step: 57 GFLOPS at 16 rows, 93 at 32 (H=128) */
}

/* The recurrent kernels' blocks of rows: rows per block (nn_seq_block_rows), the blocks, and the
 * threads that run them (no more threads than blocks); block blk holds nn_chunk_len(N, blk, rb)
 * rows from blk rb. */
static inline int nn_seq_blocks(int N, int *rb, int *nt) {
    *rb = nn_seq_block_rows(N);
    const int nblocks = (N + *rb - 1) / *rb;
    const int threads = nn_threads();
    *nt = threads < nblocks ? threads : nblocks;
    return nblocks;
}

/* exp, sigmoid and tanh written branch-free so that loops over them auto-vectorize (glibc's
 * tanhf is a scalar call of ~20 ns). exp: Cody-Waite reduction x = n ln2 + r and the Cephes
 * degree-6 polynomial, within 2 ulp on [-87, 88]; inputs are clamped there (NaN passes
 * through). Rounding uses the 1.5*2^23 trick, so no SSE4.1 is needed. */
static inline float nn_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale;
    /* shifted as unsigned: for a NaN x, (int32_t)n is INT_MIN and a signed shift of the
     * negative sum would be undefined (UBSan); the bits are the same (y is NaN either way) */
    scale.i = (int32_t)((uint32_t)((int32_t)n + 127) << 23);
    return y * scale.f;
}

static inline float nn_sigmoid(float v) { return 1.0f / (1.0f + nn_expf(-v)); }

/* tanh(|x|) = (1 - e) / (1 + e) with e = exp(-2|x|); below 0.05 the odd Taylor series
 * avoids the cancellation in 1 - e. */
static inline float nn_tanh(float x) {
    float a = fabsf(x);
    float e = nn_expf(-2.0f * a);
    float t = (1.0f - e) / (1.0f + e);
    float a2 = a * a;
    float series = a * (1.0f + a2 * (-0.333333333f + a2 * 0.133333333f));
    t = a < 0.05f ? series : t;
    return copysignf(t, x);
}

/* One element of an activation (NN_ACT_*) and of its derivative, written with the output y. */
static inline float nn_act1(int kind, float v) {
    switch (kind) {
    case NN_ACT_SIGMOID: return nn_sigmoid(v);
    case NN_ACT_TANH: return nn_tanh(v);
    case NN_ACT_RELU: return v > 0.0f ? v : 0.0f;
    default: return v;
    }
}
static inline float nn_dact1(int kind, float y, float g) {
    switch (kind) {
    case NN_ACT_SIGMOID: return g * y * (1.0f - y);
    case NN_ACT_TANH: return g * (1.0f - y * y);
    case NN_ACT_RELU: return y > 0.0f ? g : 0.0f;
    default: return g;
    }
}

/* Cell updates are always inlined with a constant has_prev, so the previous-state load is
 * either unconditional or gone: a conditional load would keep the loop from vectorizing. */
#define NN_CELL static inline __attribute__((always_inline))

/* Elementwise loops over a block of rows are compiled for AVX-512, AVX2 and baseline x86-64,
 * and nn_isa() picks one at run time (SPARK_NN_ISA caps it), so a portable wheel runs 16- or
 * 8-wide where the CPU can and the lower paths stay testable on any machine. -std=c99 keeps
 * floating-point contraction off, so every version computes bitwise the same results.
 * NN_MULTI_VOID(name, (params), (args), { body }) defines name_avx512, name_avx2, name_base
 * and a static dispatcher name. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NN_NO_CLONES)
#define NN_MULTI_VOID(name, params, args, ...)                                                  \
    __attribute__((target("avx512f"))) static void name##_avx512 params __VA_ARGS__           \
    __attribute__((target("avx2"))) static void name##_avx2 params __VA_ARGS__                \
    static void name##_base params __VA_ARGS__                                                \
    static void name params {                                                                  \
        int isa_ = nn_isa();                                                                   \
        if (isa_ == NN_ISA_AVX512) name##_avx512 args;                                         \
        else if (isa_ == NN_ISA_AVX2) name##_avx2 args;                                        \
        else name##_base args;                                                                 \
    }
#define NN_MULTI(ret, name, params, args, ...)                                                  \
    __attribute__((target("avx512f"))) static ret name##_avx512 params __VA_ARGS__            \
    __attribute__((target("avx2"))) static ret name##_avx2 params __VA_ARGS__                 \
    static ret name##_base params __VA_ARGS__                                                 \
    static ret name params {                                                                   \
        int isa_ = nn_isa();                                                                   \
        return isa_ == NN_ISA_AVX512 ? name##_avx512 args                                      \
               : isa_ == NN_ISA_AVX2 ? name##_avx2 args : name##_base args;                   \
    }
#else
#define NN_MULTI_VOID(name, params, args, ...) static void name params __VA_ARGS__
#define NN_MULTI(ret, name, params, args, ...) static ret name params __VA_ARGS__
#endif

NN_CELL void nn_act_row_k(int n, float *restrict x, const int kind) {
    for (int j = 0; j < n; j++) x[j] = nn_act1(kind, x[j]);
}
NN_CELL void nn_dact_row_k(int n, const float *restrict y, const float *restrict g1,
                           const float *restrict g2, float *restrict out, const int kind) {
    for (int j = 0; j < n; j++) out[j] = nn_dact1(kind, y[j], g1[j] + g2[j]);
}
/* x = act(x) over one row, and out = act'(y) * (g1 + g2), with a loop per kind. */
static inline void nn_act_row(int kind, int n, float *x) {
    switch (kind) {
    case NN_ACT_SIGMOID: nn_act_row_k(n, x, NN_ACT_SIGMOID); break;
    case NN_ACT_TANH: nn_act_row_k(n, x, NN_ACT_TANH); break;
    case NN_ACT_RELU: nn_act_row_k(n, x, NN_ACT_RELU); break;
    default: break;
    }
}
static inline void nn_dact_row(int kind, int n, const float *y, const float *g1, const float *g2,
                               float *out) {
    switch (kind) {
    case NN_ACT_SIGMOID: nn_dact_row_k(n, y, g1, g2, out, NN_ACT_SIGMOID); break;
    case NN_ACT_TANH: nn_dact_row_k(n, y, g1, g2, out, NN_ACT_TANH); break;
    case NN_ACT_RELU: nn_dact_row_k(n, y, g1, g2, out, NN_ACT_RELU); break;
    default: nn_dact_row_k(n, y, g1, g2, out, NN_ACT_IDENTITY); break;
    }
}

/* Recurrent sizes: batch N, steps T, inputs D, hidden H, G gate rows per hidden unit; every
 * GEMM dimension and leading dimension (up to N*T*G*max(D,H)) must fit an int. */
static inline int nn_seq_dims_ok(int N, int T, int D, int H, int G) {
    if (N <= 0 || T <= 0 || D <= 0 || H <= 0) return 0;
    long long rows = (long long)N * T, gh = (long long)G * H;
    return rows * gh <= 0x7fffffffLL && rows * D <= 0x7fffffffLL && gh * (D > H ? D : H) <= 0x7fffffffLL;
}

/* Per-row spans of data steps: spans[2n] <= t < spans[2n+1] (NULL: every step is data). Steps
 * outside a row's span are padding: the state is carried through them unchanged (pre-padding
 * leaves h0 until the first token, post-padding leaves the last token's state at step T-1),
 * and no gradient reaches the weights or x from them, as with PyTorch's packed sequences. */
static inline int nn_step_is_data(const int32_t *spans, int n, int t) {
    return !spans || (t >= spans[2 * n] && t < spans[2 * n + 1]);
}

/* dst = prev (one state row), or zeros when there is no previous state. */
static inline void nn_carry_row(int H, float *dst, const float *prev) {
    for (int j = 0; j < H; j++) dst[j] = prev ? prev[j] : 0.0f;
}

/* Backward through a padding step: no gradient to the step's pre-activations (da, width G),
 * the state's gradient dhc passes to step t-1 with the step's own output gradient added. */
static inline void nn_carry_grad(int H, int G, const float *dh_out, float *dhc, float *da) {
    for (int j = 0; j < G; j++) da[j] = 0.0f;
    for (int j = 0; j < H; j++) dhc[j] += dh_out[j];
}

/* hprev[n,t] = hs[n,t-1], hprev[n,0] = h0[n] (or 0): rows [r0, r1) of [N,T,H], each state
 * ldp floats after the previous one (H: packed; more: beside other columns). */
static inline void nn_shift_states(int r0, int r1, int T, int H, const float *h0, const float *hs,
                                   float *hprev, int ldp) {
    for (int n = r0; n < r1; n++)
        for (int t = 0; t < T; t++) {
            float *dst = hprev + ((size_t)n * T + t) * ldp;
            const float *src = t > 0 ? hs + ((size_t)n * T + t - 1) * H : h0 ? h0 + (size_t)n * H : NULL;
            for (int j = 0; j < H; j++) dst[j] = src ? src[j] : 0.0f;
        }
}

/* conv.c's pieces that conv_bf16.c shares: im2col / col2im of one image (columns ld apart),
 * images per chunk, one group's shape, the shape check, whether G == C > 1 (depthwise). */
void nn_conv_im2col(const conv2d_shape *s, const float *x, float *cols, size_t ld);
void nn_conv_col2im(const conv2d_shape *s, const float *cols, size_t ld, float *dx);
int nn_conv_chunk_images(const conv2d_shape *s);
/* the items (images, rows) in chunk ch of N, nb per chunk (the last chunk may be short) */
static inline int nn_chunk_len(int N, int ch, int nb) { return N - ch * nb < nb ? N - ch * nb : nb; }
conv2d_shape nn_conv_group_shape(const conv2d_shape *s);
/* f run on each group (s's G) in turn: t has G = 1, images xs apart in x (dx), ys in y (dy) */
typedef void (*conv_group_forward)(const conv2d_shape *t, const float *x, size_t xs, const float *w, const float *b,
                                   float *y, size_t ys, float *ws, int nt);
typedef void (*conv_group_backward)(const conv2d_shape *t, const float *x, size_t xs, const float *w, const float *dy,
                                    size_t ys, float *dx, float *dw, float *db, float *ws, int nt);
void nn_conv_each_group_forward(const conv2d_shape *s, conv_group_forward f, const float *x, const float *w,
                                const float *b, float *y, float *ws, int nt);
void nn_conv_each_group_backward(const conv2d_shape *s, conv_group_backward f, const float *x, const float *w,
                                 const float *dy, float *dx, float *dw, float *db, float *ws, int nt);
int nn_conv_shape_ok(const conv2d_shape *s);
int nn_conv_is_depthwise(const conv2d_shape *s);
/* one chunk's db partial (images n0 .. n0 + nc - 1), and the chunks' dw and db partials summed */
void nn_conv_chunk_db(const conv2d_shape *s, const float *dy, size_t ys, int n0, int nc, float *dbp);
void nn_conv_sum_partials(int nchunks, size_t nw, const float *part, float *dw, int OC, const float *dbp, float *db,
                          int nt);
/* dw[oc][k] = sum in chunk order of dwt[ch][k][oc] (dwt overwritten), db[oc] of dbp[ch][oc] */
void nn_conv_sum_chunks_transposed(int nchunks, int CKK, int OC, float *dwt, const float *dbp, float *dw, float *db,
                                   int nt);
/* wt[c][oc][KK - 1 - kk] = w[oc][c][kk] */
void nn_conv_flip_weights(int OC, int C, int KK, const float *w, float *wt);

/* gemm_bf16.c, for the convolutions: dst[i] = bf16(lo[i]) | bf16(hi[i]) << 16 (hi NULL: 0);
 * dst[i] = bf16(src[i]); C[M, N] = A' B on the calling thread, with row i's k pair kk of A' the
 * two uint16 at A + aoff[i] + akoff[kk] and B packed by nn_bf16_pack_b (Kp2 k pairs). */
void nn_bf16_pair_rows(int n, const float *lo, const float *hi, uint32_t *dst);
void nn_bf16_row(int n, const float *src, uint16_t *dst);
int nn_gemm_bf16_offsets(int M, int N, int Kp2, const uint16_t *A, const int *aoff, const int *akoff,
                         const uint16_t *bp, float *C, int ldc);
conv2d_shape nn_conv_dx_shape(const conv2d_shape *s);
/* conv_winograd.c: F(4x4, 3x3) for 3x3 stride-1 convolutions where it pays (nn_wino_ok) */
int nn_wino_ok(const conv2d_shape *s);
size_t nn_wino_floats(const conv2d_shape *s, int nt);
void nn_wino_forward(const conv2d_shape *s, const float *x, size_t xs, const float *w, const float *b, float *y,
                     size_t ys, float *ws, int nt);
/* dst[c][p] = src[p][c] + bias[c] (bias NULL: 0), p < P, c < Cn, rows lds / ldd apart (vectorized
 * where the bf16 kernels run) */
void nn_transpose_bias(int P, int Cn, const float *src, int lds, const float *bias, float *dst, int ldd);

/* gemm_packed.c: C[M,N] += A[M,K] op(B), op(B) = B^T for B[N][K] (transB) or B[K][N], with B
 * packed once by nn_pack_b(transB, K, N, B, ldb, bp) into nn_packed_size(K, N) floats; the
 * reference path reads B itself. */
#define NN_PACK_NR 16 /* columns per packed panel */
size_t nn_packed_size(int K, int N);
void nn_pack_b(int transB, int K, int N, const float *B, int ldb, float *bp);
/* B's K rows as rows [k0, k0 + K) of a packed matrix of Ktot rows (nn_packed_size(Ktot, N)). */
void nn_pack_b_rows(int transB, int K, int N, const float *B, int ldb, float *bp, int Ktot, int k0);
void nn_gemm_packed(int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    const float *bp, float *C, int ldc);
/* The recurrent kernels' unfused forward (levels without the gate tiles), for a block's nr rows:
 * - nn_seq_input_projection: out[i][j] = bias[j] + x_i . w_ih[j] for all rows * steps (rows
 *   of G, contiguous; x's rows D apart);
 * - nn_seq_recurrent_product: out += h_{t-1} w_hh^T, h_{t-1} at hs + (t - 1) H (rows ldh apart),
 *   or h0 (rows H apart; nothing when NULL) at t = 0; w_hh packed in wph (nn_pack_b, transB). */
void nn_seq_input_projection(int rows, int G, int D, const float *x, const float *w_ih, const float *bias,
                             float *out);
void nn_seq_recurrent_product(int t, int nr, int G, int H, const float *hs, int ldh, const float *h0,
                              const float *w_hh, const float *wph, float *out, int ldo);
/* A B with A(i, k) = A[aoff[i] + akoff[k]] and B[K,N] packed (nn_pack_b): C(i, j) at
 * C + i ldc + j gets += (A B)(i, j); with ct, C(i, j) at C + i + j ldc is set to
 * (A B)(i, j) + bias[j] (bias NULL: 0). */
void nn_gemm_offsets(int M, int N, int K, const float *A, const int *aoff, const int *akoff,
                     const float *bp, float *C, int ldc, int ct, const float *bias);
/* The ct form with row i of C at C + coff[i] (coff strictly increasing; rows one apart store as
 * a run), summing only the k in the nkruns runs [kruns[2 r], kruns[2 r + 1]) (kruns NULL: all K):
 * the rows of several images' outputs in one product, and the taps that miss the padding. */
void nn_gemm_offsets_rows(int M, int N, int K, const float *A, const int *aoff, const int *akoff,
                          const float *bp, float *C, const int *coff, int ldc, const float *bias,
                          const int *kruns, int nkruns);

/* Recurrent steps with the cell in the GEMM's epilogue (nn_gemm_gates): rows [0, M) of
 * A1[M, K1] (lda1) W1^T and A2[M, K2] (lda2) W2^T (x_t W_ih^T, h_{t-1} W_hh^T), each W[NG H, K]
 * packed per gate by nn_pack_gates into nn_gates_packed_size(NG, K, H) floats, where
 * nn_gate_tiles(NG) says so (K2 = 0 skips the second product). For rows [row, row + nrows) and
 * units [u0, u0 + nc), epi gets four sums per unit as acc[(4 i + v) vw + j]: NG = 4 (LSTM) the
 * gates i, f, g, o of both products; NG = 3 (GRU) r, z of both, n of x_t, n of h_{t-1};
 * NG = 1 (RNN) units u0 + 16 v + j, v < 3, of both; and finishes those units' cell update. */
typedef void (*nn_gate_epilogue)(void *ctx, int row, int nrows, int u0, int nc, const float *acc,
                                 int vw);
int nn_gate_tiles(int NG); /* 1 where this level has them (AVX-512, not the reference path) */
size_t nn_gates_packed_size(int NG, int K, int H);
void nn_pack_gates(int NG, int K, int H, const float *W, int ldw, float *wp);
void nn_gemm_gates(int NG, int M, int H, int K1, const float *A1, int lda1, const float *wp1, int K2,
                   const float *A2, int lda2, const float *wp2, nn_gate_epilogue epi, void *ctx);
/* A block's whole sequence of fused steps: rows xr[nr, T, D] of x, hr[nr, T, H] of the states
 * (written by epi), initial states h0r[nr, H] or NULL; *step (the epilogue's context) is set
 * to t before step t. */
void nn_gate_steps(int NG, int nr, int T, int D, int H, const float *xr, const float *hr,
                   const float *h0r, const float *wpi, const float *wph, nn_gate_epilogue epi, void *ctx,
                   int *step);

/* Sizes that must fit an int for BLAS and be positive. */
static inline int nn_dims_ok(long long a, long long b, long long c) {
    return a > 0 && b > 0 && c > 0 && a * b <= 0x7fffffffLL && b * c <= 0x7fffffffLL &&
           a * c <= 0x7fffffffLL;
}

#endif
