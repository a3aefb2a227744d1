/*
 * spark_nn native kernels: float32, C99 + OpenMP, no Python.
 *
 * Conventions shared by every file in csrc/:
 *   - all arrays are dense, row-major (C order) float32 unless stated;
 *   - images are NCHW; sequences are batch-major [N, T, D] (PyTorch's batch_first=True);
 *   - weights use PyTorch's layouts and gate orders so they can be compared and imported;
 *   - the caller owns every buffer, including workspaces whose size is returned by the
 *     matching *_workspace_size function; kernels never allocate;
 *   - every entry point checks its sizes and returns NN_EBADSHAPE / NN_EWORKSPACE instead
 *     of touching memory it was not given;
 *   - weight gradients are written (not accumulated).
 * GEMM goes through a function pointer to the Fortran sgemm that the Python layer registers
 * (scipy.linalg.cython_blas), so this code needs no BLAS at build time.
 */
#ifndef SPARK_NN_KERNELS_H
#define SPARK_NN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define NN_OK 0
#define NN_EBADSHAPE (-1)
#define NN_EWORKSPACE (-2)
#define NN_ENOBLAS (-3)
#define NN_EBADLABEL (-4)
#define NN_EBADARG (-5)

/* Fortran BLAS sgemm, as exported by scipy.linalg.cython_blas. */
typedef void (*nn_sgemm_fn)(char *transa, char *transb, int *m, int *n, int *k, float *alpha,
                            float *a, int *lda, float *b, int *ldb, float *beta, float *c,
                            int *ldc);

/* ---- common.c: BLAS registration, threads, reference mode ---- */
void nn_set_sgemm(nn_sgemm_fn fn);
void nn_set_num_threads(int n);
int nn_get_num_threads(void);
/* Reference mode: GEMM by plain scalar loops and one thread; the tests compare against it. */
/* Vector instruction level in use (isa.c): the CPU's best, capped by $SPARK_NN_ISA. */
#define NN_ISA_BASELINE 0
#define NN_ISA_AVX2 1
#define NN_ISA_AVX512 2
int nn_isa(void);
int nn_isa_cap(const char *name); /* level of a SPARK_NN_ISA value, -1 if unknown */
int nn_isa_allows_bf16(const char *name); /* 1: the SPARK_NN_ISA value leaves AVX512_BF16 in */

/* bf16 GEMM with fp32 sums (gemm_bf16.c): pack A (rows) and B (column panels of 16, k pairs)
 * once, rounded to bf16 (nearest even), into caller-owned uint16 workspaces of the _size()s;
 * then C[M, N] = A B (+ C when accumulate). nn_bf16_level(): 1 where AVX512_BF16 is usable;
 * else nn_gemm_bf16 returns NN_EUNSUPPORTED (the reference path, nn_set_reference, runs
 * anywhere). */
#define NN_EUNSUPPORTED (-6)
uint16_t nn_bf16_round(float f);
int nn_bf16_level(void);
size_t nn_bf16_pack_a_size(int M, int K);
size_t nn_bf16_pack_b_size(int K, int N);
void nn_bf16_pack_a(int M, int K, const float *A, int lda, uint16_t *ap);
void nn_bf16_pack_b(int transB, int K, int N, const float *B, int ldb, uint16_t *bp);
int nn_gemm_bf16(int M, int N, int K, const uint16_t *ap, const uint16_t *bp, float *C, int ldc, int accumulate);

void nn_set_reference(int on);
int nn_get_reference(void);
/* Kernels run with denormals flushed to zero (FTZ/DAZ; see common.c): a caller brackets each
 * kernel call with old = nn_fp_enter() ... nn_fp_leave(old). nn_flush_denormals(0) turns it
 * off (also in the OpenMP threads); returns 1 where the CPU has the switch. */
unsigned nn_fp_enter(void);
void nn_fp_leave(unsigned old);
int nn_flush_denormals(int on);
/* Threads a kernel will use right now (1 in reference mode and in a forked child of a process
 * that ran multi-threaded kernels: see common.c). */
int nn_threads(void);
int nn_fork_capped(void);

/* Row-major C[M,N] = alpha * op(A) op(B) + beta * C on the calling thread. */
void nn_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);
/* Same, rows of C split across the OpenMP threads when the product is large enough. */
void nn_gemm_par(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* out[j] = sum_i A[i, j] for an R x Ccols row-major matrix with leading dimension lda. */
void nn_colsum(int R, int Ccols, const float *A, int lda, float *out);

/* ---- activation.c ---- */
#define NN_ACT_IDENTITY 0
#define NN_ACT_SIGMOID 1
#define NN_ACT_TANH 2
#define NN_ACT_RELU 3
int activation_forward(int kind, size_t n, const float *x, float *y);
/* dx = dy * f'(x), written in terms of the forward output y (valid for all kinds above). */
int activation_backward(int kind, size_t n, const float *y, const float *dy, float *dx);
/* Kinds that only the _ex entry points take (the recurrent kernels keep the four above):
 * relu6 min(max(x, 0), 6); leaky_relu x > 0 ? x : alpha x; silu x sigmoid(x);
 * gelu x Phi(x) (exact, erf form); gelu_tanh 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
#define NN_ACT_RELU6 4
#define NN_ACT_LEAKY_RELU 5
#define NN_ACT_SILU 6
#define NN_ACT_GELU 7
#define NN_ACT_GELU_TANH 8
/* Any kind; alpha is leaky_relu's negative slope (ignored by the others). */
int activation_forward_ex(int kind, size_t n, const float *x, float *y, float alpha);
/* Any kind: x (the forward input) may be NULL except for silu, gelu, gelu_tanh, and for
 * leaky_relu with alpha < 0; y may be NULL for those that read x. NN_EBADARG when a needed
 * one is missing. With x given, leaky_relu's derivative is read from x, else from y. */
int activation_backward_ex(int kind, size_t n, const float *x, const float *y, const float *dy, float *dx,
                           float alpha);

/* ---- dense.c: x[N,IN], w[OUT,IN], b[OUT], y[N,OUT] ---- */
int dense_forward(int N, int IN, int OUT, const float *x, const float *w, const float *b,
                  float *y);
int dense_backward(int N, int IN, int OUT, const float *x, const float *w, const float *dy,
                   float *dx, float *dw, float *db);

/* Mixed precision (bf16 operands, fp32 sums; see dense.c): the same products, a workspace of
 * dense_bf16_workspace_size floats; NN_EUNSUPPORTED without AVX512_BF16 (nn_bf16_level). */
size_t dense_bf16_workspace_size(int N, int IN, int OUT);
int dense_forward_bf16(int N, int IN, int OUT, const float *x, const float *w, const float *b, float *y, float *ws,
                       size_t ws_len);
int dense_backward_bf16(int N, int IN, int OUT, const float *x, const float *w, const float *dy, float *dx, float *dw,
                        float *db, float *ws, size_t ws_len);

/* ---- loss.c: logits[N,C], labels[N] int32, class_weight[C] or NULL ---- */
int softmax_forward(int N, int C, const float *logits, float *probs);
int softmax_xent_forward_backward(int N, int C, const float *logits, const int32_t *labels,
                                  const float *class_weight, float *probs, float *row_loss,
                                  float *dlogits);

/* ---- conv.c: x[N,C,H,W], w[OC,C/G,KH,KW], b[OC], y[N,OC,OH,OW] (G groups, as PyTorch's
 *      groups: output channels [g OC/G, (g+1) OC/G) see input channels [g C/G, (g+1) C/G));
 *      G == C > 1 is a depthwise convolution (a direct kernel, no im2col) ---- */
typedef struct {
    int N, C, H, W, OC, KH, KW, SH, SW, PH, PW, OH, OW, G;
} conv2d_shape;
/* Fills OH/OW from the rest; returns NN_EBADSHAPE when the output would be empty or G < 1
 * does not divide both C and OC. */
int conv2d_shape_init(conv2d_shape *s);
size_t conv2d_workspace_size(const conv2d_shape *s, int nthreads);
int conv2d_forward(const conv2d_shape *s, const float *x, const float *w, const float *b,
                   float *y, float *ws, size_t ws_len);
int conv2d_backward(const conv2d_shape *s, const float *x, const float *w, const float *dy,
                    float *dx, float *dw, float *db, float *ws, size_t ws_len);
/* Mixed precision (conv_bf16.c): the im2col products as bf16 GEMMs with fp32 sums, a
 * workspace of conv2d_bf16_workspace_size floats; NN_EBADSHAPE for a depthwise convolution
 * (no GEMM: it stays fp32), NN_EUNSUPPORTED without AVX512_BF16 (nn_bf16_level). */
size_t conv2d_bf16_workspace_size(const conv2d_shape *s, int nthreads);
int conv2d_forward_bf16(const conv2d_shape *s, const float *x, const float *w, const float *b, float *y, float *ws,
                        size_t ws_len);
int conv2d_backward_bf16(const conv2d_shape *s, const float *x, const float *w, const float *dy, float *dx, float *dw,
                         float *db, float *ws, size_t ws_len);
/* Direct 7-loop convolution: the scalar reference for tests. */
int conv2d_forward_direct(const conv2d_shape *s, const float *x, const float *w, const float *b,
                          float *y);

/* ---- pool.c: x[N,C,H,W] -> y[N,C,OH,OW], argmax[N,C,OH,OW] = h*W+w in the input plane ---- */
typedef struct {
    int N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW;
} pool2d_shape;
int pool2d_shape_init(pool2d_shape *s);
int maxpool2d_forward(const pool2d_shape *s, const float *x, float *y, int32_t *argmax);
int maxpool2d_backward(const pool2d_shape *s, const float *dy, const int32_t *argmax, float *dx);
/* Average pooling (PyTorch's AvgPool2d, floor output size): y = window sum / divisor, divisor
 * KH*KW with count_include_pad (padding counts as zeros), else the window's inputs inside the
 * image. Backward writes dx whole. */
int avgpool2d_forward(const pool2d_shape *s, int count_include_pad, const float *x, float *y);
int avgpool2d_backward(const pool2d_shape *s, int count_include_pad, const float *dy, float *dx);
/* Global average pooling: y[N,C] = mean of each plane of x[N,C,H,W]; dx[N,C,H,W] = dy / (H W). */
int global_avgpool_forward(int N, int C, int H, int W, const float *x, float *y);
int global_avgpool_backward(int N, int C, int H, int W, const float *dy, float *dx);

/* ---- batchnorm.c: x[N,C,S] row-major (S = H*W for NCHW images, S = 1 for [N,C] inputs),
 *      y, dy, dx like x; gamma[C], beta[C], running_mean[C], running_var[C]; saved mean[C],
 *      invstd[C] = 1/sqrt(var + eps). Statistics per channel over its N*S values, summed in
 *      double. Training updates running_mean/var in place as PyTorch does (running_var with the
 *      unbiased variance; left unchanged when N*S == 1, where PyTorch raises; either may be
 *      NULL: not tracked). Eval reads running stats only and writes mean/invstd from them.
 *      Backward: training = batch-statistics gradient, else frozen statistics
 *      (dx = dy gamma invstd); each of dx, dgamma, dbeta may be NULL (not computed). ---- */
int batchnorm_forward_train(int N, int C, int S, const float *x, const float *gamma, const float *beta,
                            float *running_mean, float *running_var, float momentum, float eps, float *y,
                            float *mean, float *invstd);
int batchnorm_forward_eval(int N, int C, int S, const float *x, const float *gamma, const float *beta,
                           const float *running_mean, const float *running_var, float eps, float *y, float *mean,
                           float *invstd);
int batchnorm_backward(int training, int N, int C, int S, const float *x, const float *gamma, const float *mean,
                       const float *invstd, const float *dy, float *dx, float *dgamma, float *dbeta);

/* ---- optim.c: one pass over the flat parameter vector p[n], gradient g, Adam moments m, v */
int adam_update(size_t n, float *p, const float *g, float *m, float *v, float step, float b1, float b2,
                float eps, float l2, float decay);
/* the same at the sorted, distinct entries idx[n] of p, m, v only; g[i] is the gradient at idx[i] */
int adam_update_at(size_t n, const int64_t *idx, float *p, const float *g, float *m, float *v, float step,
                   float b1, float b2, float eps, float l2, float decay);
/* sum of x[i]^2 in double, independent of the thread count; partial: sum_squares_partials(n) */
size_t sum_squares_partials(size_t n);
double sum_squares(size_t n, const float *x, double *partial);

/* ---- convert.c: minibatch rows of a uint8 block as float32, out[i,:] = src[rows[i],:] / scale;
 *      src[n,d] uint8, rows[m] int64 or NULL (rows 0..m-1), out[m,d]; NN_EBADARG: a row out of range */
int gather_u8_scaled(int64_t n, int64_t d, const uint8_t *src, int64_t m, const int64_t *rows, float scale,
                     float *out);

/* Recurrent kernels take spans[N,2] (int32) or NULL: row n's data steps are
 * [spans[2n], spans[2n+1]); the other steps are padding, which carries the state unchanged and
 * passes gradients through (PyTorch's packed sequences, with pre- or post-padding). */

/* ---- rnn.c: x[N,T,D], h0[N,H] or NULL (zeros), w_ih[H,D], w_hh[H,H], b_ih[H], b_hh[H],
 *      hs[N,T,H] = all hidden states; dhs[N,T,H] = dLoss/dhs ---- */
size_t rnn_forward_workspace_size(int D, int H);
size_t rnn_backward_workspace_size(int N, int T, int H);
int rnn_forward(int act, int N, int T, int D, int H, const float *x, const int32_t *spans,
                const float *h0,
                const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh,
                float *hs, float *ws, size_t ws_len);
int rnn_backward(int act, int N, int T, int D, int H, const float *x, const int32_t *spans,
                 const float *h0,
                 const float *w_ih, const float *w_hh, const float *hs, const float *dhs,
                 float *dx, float *dh0, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh,
                 float *ws, size_t ws_len);

/* ---- lstm.c: gates i,f,g,o (PyTorch order); w_ih[4H,D], w_hh[4H,H], b_ih[4H], b_hh[4H];
 *      saves hs[N,T,H], cs[N,T,H], gates[N,T,4H] (after their nonlinearities) ---- */
size_t lstm_forward_workspace_size(int D, int H);
size_t lstm_backward_workspace_size(int N, int T, int D, int H);
int lstm_forward(int N, int T, int D, int H, const float *x, const int32_t *spans,
                 const float *h0, const float *c0,
                 const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh,
                 float *hs, float *cs, float *gates, float *ws, size_t ws_len);
int lstm_backward(int N, int T, int D, int H, const float *x, const int32_t *spans,
                  const float *h0, const float *c0,
                  const float *w_ih, const float *w_hh, const float *hs, const float *cs,
                  const float *gates, const float *dhs, const float *dcT, float *dx, float *dh0,
                  float *dc0, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh, float *ws,
                  size_t ws_len);

/* ---- gru.c: gates r,z,n (PyTorch order, n = tanh(Wx + b_in + r*(W_hn h + b_hn)));
 *      w_ih[3H,D], w_hh[3H,H], b_ih[3H], b_hh[3H];
 *      saves hs[N,T,H], gates[N,T,3H] (r,z,n activated), hn[N,T,H] = W_hn h + b_hn ---- */
size_t gru_forward_workspace_size(int N, int D, int H);
size_t gru_backward_workspace_size(int N, int T, int H);
int gru_forward(int N, int T, int D, int H, const float *x, const int32_t *spans,
                const float *h0, const float *w_ih,
                const float *w_hh, const float *b_ih, const float *b_hh, float *hs, float *gates,
                float *hn, float *ws, size_t ws_len);
int gru_backward(int N, int T, int D, int H, const float *x, const int32_t *spans,
                 const float *h0, const float *w_ih,
                 const float *w_hh, const float *hs, const float *gates, const float *hn,
                 const float *dhs, float *dx, float *dh0, float *dw_ih, float *dw_hh,
                 float *db_ih, float *db_hh, float *ws, size_t ws_len);

#endif
