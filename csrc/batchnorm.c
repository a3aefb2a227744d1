/*
 * Batch normalization over the channels of x[N, C, S] (S = H*W for NCHW images, S = 1 for
 * [N, C] inputs); per channel c the M = N*S values x[n, c, s] are one batch.
 *   forward, training:  mean[c], var[c] = biased batch variance (accumulated in double),
 *                       invstd[c] = 1 / sqrt(var + eps),
 *                       y = (x - mean) * (invstd * gamma) + beta;
 *                       running_mean = (1 - momentum) running_mean + momentum mean,
 *                       running_var  = (1 - momentum) running_var + momentum var * M / (M - 1)
 *                       (PyTorch's update; M == 1 has no unbiased variance, where PyTorch
 *                       raises: running_var is left unchanged, running_mean still updated).
 *                       running_mean / running_var may be NULL (no running statistics).
 *   forward, eval:      mean = running_mean, invstd = 1 / sqrt(running_var + eps), same y;
 *                       mean[c] and invstd[c] are written for the backward pass.
 *   backward:           xhat = (x - mean) invstd, dgamma = sum dy xhat, dbeta = sum dy;
 *                       training: dx = gamma invstd / M (M dy - dbeta - xhat dgamma)
 *                       (batch statistics), eval: dx = dy gamma invstd (frozen statistics).
 *                       dx, dgamma, dbeta may each be NULL (not computed); all are written.
 * Parallel over channels (a channel's sums are one thread's, in an order fixed by the shape,
 * so results are the same bits for any thread count; channels are handed out dynamically, which
 * keeps the other threads busy when one is descheduled on a shared machine); the elementwise
 * passes of the eval forward and of a few-channel batch are split over the N*C planes.
 * Three layouts: S >= 256 goes plane by plane with 16 double lanes per channel (a training pass
 * normalizes a channel right after its sums, while it is in cache); 16 <= S < 256 the same
 * sums, each task on a block of channels, image by image (see bn_blocks_*); S < 16 (incl. [N, C])
 * sweeps rows of up to BN_COLS columns (whole channels) with one double accumulator per
 * column, vectorized across the columns, one task per BN_COLS columns (so C*S <= 256 runs on
 * one thread). All are plain C compiled for AVX-512, AVX2 and baseline (NN_MULTI), the same
 * operations at every level, so the levels agree bitwise. nn_set_reference(1) runs a
 * scalar two-pass path (mean, then centered squares; one accumulator per channel), the tests'
 * reference.
 */
#include <string.h>
#include "nn_internal.h"

#define BN_LANES 16
#define BN_COLS 256
#define BN_PAR_MIN_ELEMS 32768

/* ---------------------------------------------------------------- vectorized building blocks */

/* 16 lanes of double accumulators as four GCC vectors of 4 doubles: each level's clone runs
 * them in its own registers (ymm at AVX2 and AVX-512, xmm pairs at baseline; 8-double vectors
 * made gcc keep the AVX2 clone's accumulators in memory), the same operations per lane. */
typedef float bn_v4f __attribute__((vector_size(16), aligned(4)));
typedef double bn_v4d __attribute__((vector_size(32)));

/* v = 4 floats at p as doubles (a macro: a function taking or returning these types would warn
 * about the ABI in the baseline clone) */
#define BN_LOAD4(v, p)                                   \
    do {                                                 \
        bn_v4f f_;                                       \
        memcpy(&f_, (p), sizeof f_);                     \
        (v) = __builtin_convertvector(f_, bn_v4d);       \
    } while (0)
/* A channel's running sums, kept between calls (BN_ACC doubles): the 16 lanes of the first sum,
 * those of the second, then the two scalar tail sums. bn_acc_sums finishes them: each tail
 * sum plus its lanes in order. */
#define BN_ACC 34
static void bn_acc_sums(const double *acc, double *out) {
    double t1 = acc[32], t2 = acc[33];
    for (int i = 0; i < BN_LANES; i++) t1 += acc[i];
    for (int i = 0; i < BN_LANES; i++) t2 += acc[BN_LANES + i];
    out[0] = t1;
    out[1] = t2;
}
#define BN_ACC_LOAD(acc, a1, a2, t1, t2)                                                          \
    bn_v4d a1[4], a2[4];                                                                           \
    memcpy(a1, (acc), sizeof a1);                                                                  \
    memcpy(a2, (acc) + BN_LANES, sizeof a2);                                                       \
    double t1 = (acc)[32], t2 = (acc)[33];
#define BN_ACC_STORE(acc, a1, a2, t1, t2)                                                         \
    memcpy((acc), a1, sizeof a1);                                                                  \
    memcpy((acc) + BN_LANES, a2, sizeof a2);                                                       \
    (acc)[32] = t1;                                                                                \
    (acc)[33] = t2;

/* Channel sums over N planes of S floats, each `stride` floats after the previous, added to
 * its running sums acc: with d = x - k, {sum d, sum d^2} (k: a shift near the mean, against
 * cancellation). Lanes take elements i % 16 of each plane's first S - S % 16, a scalar sum the
 * rest. */
NN_MULTI_VOID(bn_plane_stats, (int N, size_t stride, int S, const float *x, double k, double *acc),
              (N, stride, S, x, k, acc), {
    const bn_v4d kv = {k, k, k, k};
    BN_ACC_LOAD(acc, a1, a2, t1, t2)
    const int Sv = S - S % BN_LANES;
    for (int n = 0; n < N; n++) {
        const float *p = x + (size_t)n * stride;
        for (int i = 0; i < Sv; i += BN_LANES)
            for (int q = 0; q < 4; q++) {
                bn_v4d d;
                BN_LOAD4(d, p + i + 4 * q);
                d -= kv;
                a1[q] += d;
                a2[q] += d * d;
            }
        for (int i = Sv; i < S; i++) {
            double d = (double)p[i] - k;
            t1 += d;
            t2 += d * d;
        }
    }
    BN_ACC_STORE(acc, a1, a2, t1, t2)
})

/* Backward sums of a channel, added to its running sums acc: {sum dy, sum dy (x - mean)}. */
NN_MULTI_VOID(bn_plane_grad_sums, (int N, size_t stride, int S, const float *x, const float *dy, double mean,
                                   double *acc),
              (N, stride, S, x, dy, mean, acc), {
    const bn_v4d mv = {mean, mean, mean, mean};
    BN_ACC_LOAD(acc, a1, a2, t1, t2)
    const int Sv = S - S % BN_LANES;
    for (int n = 0; n < N; n++) {
        const float *p = x + (size_t)n * stride, *g = dy + (size_t)n * stride;
        for (int i = 0; i < Sv; i += BN_LANES)
            for (int q = 0; q < 4; q++) {
                bn_v4d gv, xv;
                BN_LOAD4(gv, g + i + 4 * q);
                BN_LOAD4(xv, p + i + 4 * q);
                a1[q] += gv;
                a2[q] += gv * (xv - mv);
            }
        for (int i = Sv; i < S; i++) {
            double gv = (double)g[i];
            t1 += gv;
            t2 += gv * ((double)p[i] - mean);
        }
    }
    BN_ACC_STORE(acc, a1, a2, t1, t2)
})

/* y = (x - m) * a + b over n floats */
NN_MULTI_VOID(bn_affine, (size_t n, const float *restrict x, float m, float a, float b, float *restrict y),
              (n, x, m, a, b, y), {
    for (size_t i = 0; i < n; i++) y[i] = (x[i] - m) * a + b;
})

/* dx = (dy - k1 - (x - m) * k2) * a over n floats */
NN_MULTI_VOID(bn_dx_train, (size_t n, const float *restrict x, const float *restrict dy, float m, float k1,
                             float k2, float a, float *restrict dx),
              (n, x, dy, m, k1, k2, a, dx), {
    for (size_t i = 0; i < n; i++) dx[i] = (dy[i] - k1 - (x[i] - m) * k2) * a;
})

/* dx = dy * a over n floats */
NN_MULTI_VOID(bn_dx_eval, (size_t n, const float *restrict dy, float a, float *restrict dx), (n, dy, a, dx), {
    for (size_t i = 0; i < n; i++) dx[i] = dy[i] * a;
})

/* Narrow layout: columns [0, cols) of N rows, each `stride` floats after the previous. */
NN_MULTI_VOID(bn_cols_stats, (int N, size_t stride, int cols, const float *x, const double *k, double *s1,
                              double *s2),
              (N, stride, cols, x, k, s1, s2), {
    for (int j = 0; j < cols; j++) s1[j] = s2[j] = 0.0;
    for (int n = 0; n < N; n++) {
        const float *p = x + (size_t)n * stride;
        for (int j = 0; j < cols; j++) {
            double d = (double)p[j] - k[j];
            s1[j] += d;
            s2[j] += d * d;
        }
    }
})

NN_MULTI_VOID(bn_cols_grad_sums, (int N, size_t stride, int cols, const float *x, const float *dy,
                                  const double *m, double *s1, double *s2),
              (N, stride, cols, x, dy, m, s1, s2), {
    for (int j = 0; j < cols; j++) s1[j] = s2[j] = 0.0;
    for (int n = 0; n < N; n++) {
        const float *p = x + (size_t)n * stride, *g = dy + (size_t)n * stride;
        for (int j = 0; j < cols; j++) {
            double gv = (double)g[j];
            s1[j] += gv;
            s2[j] += gv * ((double)p[j] - m[j]);
        }
    }
})

NN_MULTI_VOID(bn_cols_affine, (int N, size_t stride, int cols, const float *x, const float *m, const float *a,
                               const float *b, float *y),
              (N, stride, cols, x, m, a, b, y), {
    for (int n = 0; n < N; n++) {
        const float *restrict p = x + (size_t)n * stride;
        float *restrict q = y + (size_t)n * stride;
        for (int j = 0; j < cols; j++) q[j] = (p[j] - m[j]) * a[j] + b[j];
    }
})

NN_MULTI_VOID(bn_cols_dx, (int N, size_t stride, int cols, const float *x, const float *dy, const float *m,
                           const float *k1, const float *k2, const float *a, int training, float *dx),
              (N, stride, cols, x, dy, m, k1, k2, a, training, dx), {
    for (int n = 0; n < N; n++) {
        const float *restrict p = x + (size_t)n * stride, *restrict g = dy + (size_t)n * stride;
        float *restrict q = dx + (size_t)n * stride;
        if (training)
            for (int j = 0; j < cols; j++) q[j] = (g[j] - k1[j] - (p[j] - m[j]) * k2[j]) * a[j];
        else
            for (int j = 0; j < cols; j++) q[j] = g[j] * a[j];
    }
})

/* ---------------------------------------------------------------- per-channel scalars */

static int bn_dims_ok(int N, int C, int S) { return N > 0 && C > 0 && S > 0; }

/* From the centered sums (shift k) of M values: mean, invstd and the running statistics. */
static void bn_finish_stats(int c, double M, double k, double s1, double s2, float momentum, float eps,
                            float *running_mean, float *running_var, float *mean, float *invstd) {
    double mu = s1 / M, var = s2 / M - mu * mu;
    if (var < 0.0) var = 0.0;
    mean[c] = (float)(k + mu);
    invstd[c] = (float)(1.0 / sqrt(var + (double)eps));
    const double mo = momentum;
    if (running_mean) running_mean[c] = (float)((1.0 - mo) * running_mean[c] + mo * (k + mu));
    if (running_var && M > 1.0) running_var[c] = (float)((1.0 - mo) * running_var[c] + mo * var * M / (M - 1.0));
}

/* Backward per-channel factors from sum dy (s1) and sum dy (x - mean) (s2). */
static void bn_grad_factors(int training, double M, double s1, double s2, float g, float is, float *k1, float *k2,
                            float *a) {
    *a = g * is;
    *k1 = training ? (float)(s1 / M) : 0.0f;
    *k2 = training ? (float)(s2 / M * (double)is * (double)is) : 0.0f;
}

static int bn_threads(int N, int C, int S) {
    return (size_t)N * C * S < BN_PAR_MIN_ELEMS ? 1 : nn_threads();
}

/* Channels per task of the narrow layout, and whether a training pass fuses its elementwise
 * work into the per-channel loop (enough channels to balance the threads) */
static int bn_cols_per_task(int S) { return S >= BN_COLS ? 1 : BN_COLS / S; }
static int bn_fuse(int C, int nt) { return nt == 1 || C % nt == 0 || C >= 4 * nt; }

/* y over planes [p0, p1) of N*C (eval forward and unfused training forward) */
static void bn_apply_planes(int C, int S, long long planes, int nt, const float *x, const float *gamma,
                            const float *beta, const float *mean, const float *invstd, float *y) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long long p = 0; p < planes; p++) {
        const int c = (int)(p % C);
        bn_affine((size_t)S, x + p * S, mean[c], invstd[c] * gamma[c], beta[c], y + p * S);
    }
}

/* ---------------------------------------------------------------- reference (scalar) path */

static void bn_ref_forward(int training, int N, int C, int S, const float *x, const float *gamma,
                           const float *beta, float *running_mean, float *running_var, float momentum, float eps,
                           float *y, float *mean, float *invstd) {
    const size_t CS = (size_t)C * S;
    const double M = (double)N * S;
    for (int c = 0; c < C; c++) {
        if (training) {
            double s = 0.0, q = 0.0;
            for (int n = 0; n < N; n++)
                for (int i = 0; i < S; i++) s += x[n * CS + (size_t)c * S + i];
            const double mu = s / M;
            for (int n = 0; n < N; n++)
                for (int i = 0; i < S; i++) {
                    double d = x[n * CS + (size_t)c * S + i] - mu;
                    q += d * d;
                }
            bn_finish_stats(c, M, mu, 0.0, q, momentum, eps, running_mean, running_var, mean, invstd);
        } else {
            mean[c] = running_mean[c];
            invstd[c] = (float)(1.0 / sqrt((double)running_var[c] + (double)eps));
        }
        const float m = mean[c], a = invstd[c] * gamma[c], b = beta[c];
        for (int n = 0; n < N; n++)
            for (int i = 0; i < S; i++) {
                size_t o = n * CS + (size_t)c * S + i;
                y[o] = (x[o] - m) * a + b;
            }
    }
}

static void bn_ref_backward(int training, int N, int C, int S, const float *x, const float *gamma,
                            const float *mean, const float *invstd, const float *dy, float *dx, float *dgamma,
                            float *dbeta) {
    const size_t CS = (size_t)C * S;
    const double M = (double)N * S;
    for (int c = 0; c < C; c++) {
        double s1 = 0.0, s2 = 0.0;
        if (training || dgamma || dbeta)
            for (int n = 0; n < N; n++)
                for (int i = 0; i < S; i++) {
                    size_t o = n * CS + (size_t)c * S + i;
                    s1 += dy[o];
                    s2 += (double)dy[o] * ((double)x[o] - mean[c]);
                }
        if (dgamma) dgamma[c] = (float)(s2 * invstd[c]);
        if (dbeta) dbeta[c] = (float)s1;
        if (!dx) continue;
        float k1, k2, a;
        bn_grad_factors(training, M, s1, s2, gamma[c], invstd[c], &k1, &k2, &a);
        for (int n = 0; n < N; n++)
            for (int i = 0; i < S; i++) {
                size_t o = n * CS + (size_t)c * S + i;
                dx[o] = training ? (dy[o] - k1 - (x[o] - mean[c]) * k2) * a : dy[o] * a;
            }
    }
}

/* ---------------------------------------------------------------- narrow layout (S < 16) */

static void bn_cols_forward(int training, int N, int C, int S, int nt, const float *x, const float *gamma,
                            const float *beta, float *running_mean, float *running_var, float momentum, float eps,
                            float *y, float *mean, float *invstd) {
    const int cpt = bn_cols_per_task(S), tasks = (C + cpt - 1) / cpt;
    const size_t CS = (size_t)C * S;
    const double M = (double)N * S;
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int t = 0; t < tasks; t++) {
        const int c0 = t * cpt, c1 = c0 + cpt < C ? c0 + cpt : C, cols = (c1 - c0) * S;
        double k[BN_COLS], s1[BN_COLS], s2[BN_COLS];
        float m[BN_COLS], a[BN_COLS], b[BN_COLS];
        if (training) {
            for (int c = c0; c < c1; c++)
                for (int i = 0; i < S; i++) k[(c - c0) * S + i] = x[(size_t)c * S];
            bn_cols_stats(N, CS, cols, x + (size_t)c0 * S, k, s1, s2);
            for (int c = c0; c < c1; c++) {
                double t1 = 0.0, t2 = 0.0;
                for (int i = 0; i < S; i++) {
                    t1 += s1[(c - c0) * S + i];
                    t2 += s2[(c - c0) * S + i];
                }
                bn_finish_stats(c, M, x[(size_t)c * S], t1, t2, momentum, eps, running_mean, running_var, mean,
                                invstd);
            }
        } else {
            for (int c = c0; c < c1; c++) {
                mean[c] = running_mean[c];
                invstd[c] = (float)(1.0 / sqrt((double)running_var[c] + (double)eps));
            }
        }
        for (int c = c0; c < c1; c++)
            for (int i = 0; i < S; i++) {
                int j = (c - c0) * S + i;
                m[j] = mean[c];
                a[j] = invstd[c] * gamma[c];
                b[j] = beta[c];
            }
        bn_cols_affine(N, CS, cols, x + (size_t)c0 * S, m, a, b, y + (size_t)c0 * S);
    }
}

static void bn_cols_backward(int training, int N, int C, int S, int nt, const float *x, const float *gamma,
                             const float *mean, const float *invstd, const float *dy, float *dx, float *dgamma,
                             float *dbeta) {
    const int cpt = bn_cols_per_task(S), tasks = (C + cpt - 1) / cpt;
    const size_t CS = (size_t)C * S;
    const double M = (double)N * S;
    const int sums = training || dgamma || dbeta;
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int t = 0; t < tasks; t++) {
        const int c0 = t * cpt, c1 = c0 + cpt < C ? c0 + cpt : C, cols = (c1 - c0) * S;
        double md[BN_COLS], s1[BN_COLS], s2[BN_COLS];
        float m[BN_COLS], k1[BN_COLS], k2[BN_COLS], a[BN_COLS];
        if (sums) {
            for (int j = 0; j < cols; j++) md[j] = mean[c0 + j / S];
            bn_cols_grad_sums(N, CS, cols, x + (size_t)c0 * S, dy + (size_t)c0 * S, md, s1, s2);
        }
        for (int c = c0; c < c1; c++) {
            double t1 = 0.0, t2 = 0.0;
            if (sums)
                for (int i = 0; i < S; i++) {
                    t1 += s1[(c - c0) * S + i];
                    t2 += s2[(c - c0) * S + i];
                }
            if (dgamma) dgamma[c] = (float)(t2 * invstd[c]);
            if (dbeta) dbeta[c] = (float)t1;
            float f1, f2, fa;
            bn_grad_factors(training, M, t1, t2, gamma[c], invstd[c], &f1, &f2, &fa);
            for (int i = 0; i < S; i++) {
                int j = (c - c0) * S + i;
                m[j] = mean[c];
                k1[j] = f1;
                k2[j] = f2;
                a[j] = fa;
            }
        }
        if (dx)
            bn_cols_dx(N, CS, cols, x + (size_t)c0 * S, dy + (size_t)c0 * S, m, k1, k2, a, training,
                       dx + (size_t)c0 * S);
    }
}

/* ---------------------------------------------------------------- blocks of channels (16 <= S < BN_BLOCK_MAX_S)
 * Small planes: a channel's N planes of S floats lie C S floats apart (64 KB at 256 channels of
 * 8x8), so one channel at a time read a few hundred bytes per image, all on the same few cache
 * sets, and the pass after the sums found little of the channel in cache (BatchNorm 64x256x8x8
 * forward and backward at 0.86x torch's). Here a task takes a block of channels, contiguous in
 * each image, and goes through the images once for the sums and once for y or dx. Each
 * channel's sums are the same operations in the same order as the plane-by-plane path's (their
 * running sums kept in acc between planes): the same bits, for any block size. */
#define BN_BLOCK_MAX_S 256
#define BN_BLOCK 16

/* channels per task: up to BN_BLOCK, at least 4 tasks per thread where there are enough channels */
static int bn_block(int C, int nt) {
    int cb = C / (4 * nt);
    return cb < 1 ? 1 : cb > BN_BLOCK ? BN_BLOCK : cb;
}

static void bn_blocks_forward_train(int N, int C, int S, int nt, const float *x, const float *gamma,
                                    const float *beta, float *running_mean, float *running_var, float momentum,
                                    float eps, float *y, float *mean, float *invstd) {
    const size_t CS = (size_t)C * S;
    const double M = (double)N * S;
    const int cb = bn_block(C, nt), nblk = (C + cb - 1) / cb;
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int blk = 0; blk < nblk; blk++) {
        const int c0 = blk * cb, nc = C - c0 < cb ? C - c0 : cb;
        double acc[BN_BLOCK * BN_ACC];
        memset(acc, 0, sizeof(double) * (size_t)nc * BN_ACC);
        for (int n = 0; n < N; n++)
            for (int j = 0; j < nc; j++) {
                const size_t c = (size_t)(c0 + j);
                bn_plane_stats(1, CS, S, x + n * CS + c * S, (double)x[c * S], acc + (size_t)j * BN_ACC);
            }
        float a[BN_BLOCK];
        for (int j = 0; j < nc; j++) {
            const int c = c0 + j;
            double s[2];
            bn_acc_sums(acc + (size_t)j * BN_ACC, s);
            bn_finish_stats(c, M, (double)x[(size_t)c * S], s[0], s[1], momentum, eps, running_mean, running_var,
                            mean, invstd);
            a[j] = invstd[c] * gamma[c];
        }
        for (int n = 0; n < N; n++)
            for (int j = 0; j < nc; j++) {
                const int c = c0 + j;
                const size_t o = n * CS + (size_t)c * S;
                bn_affine((size_t)S, x + o, mean[c], a[j], beta[c], y + o);
            }
    }
}

static void bn_blocks_backward(int training, int sums, int N, int C, int S, int nt, const float *x,
                               const float *gamma, const float *mean, const float *invstd, const float *dy, float *dx,
                               float *dgamma, float *dbeta) {
    const size_t CS = (size_t)C * S;
    const double M = (double)N * S;
    const int cb = bn_block(C, nt), nblk = (C + cb - 1) / cb;
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int blk = 0; blk < nblk; blk++) {
        const int c0 = blk * cb, nc = C - c0 < cb ? C - c0 : cb;
        double acc[BN_BLOCK * BN_ACC];
        memset(acc, 0, sizeof(double) * (size_t)nc * BN_ACC);
        if (sums)
            for (int n = 0; n < N; n++)
                for (int j = 0; j < nc; j++) {
                    const size_t o = n * CS + (size_t)(c0 + j) * S;
                    bn_plane_grad_sums(1, CS, S, x + o, dy + o, (double)mean[c0 + j], acc + (size_t)j * BN_ACC);
                }
        float k1[BN_BLOCK], k2[BN_BLOCK], a[BN_BLOCK];
        for (int j = 0; j < nc; j++) {
            const int c = c0 + j;
            double s[2] = {0.0, 0.0};
            if (sums) bn_acc_sums(acc + (size_t)j * BN_ACC, s);
            if (dgamma) dgamma[c] = (float)(s[1] * invstd[c]);
            if (dbeta) dbeta[c] = (float)s[0];
            bn_grad_factors(training, M, s[0], s[1], gamma[c], invstd[c], &k1[j], &k2[j], &a[j]);
        }
        if (dx)
            for (int n = 0; n < N; n++)
                for (int j = 0; j < nc; j++) {
                    const int c = c0 + j;
                    const size_t o = n * CS + (size_t)c * S;
                    if (training) bn_dx_train((size_t)S, x + o, dy + o, mean[c], k1[j], k2[j], a[j], dx + o);
                    else bn_dx_eval((size_t)S, dy + o, a[j], dx + o);
                }
    }
}

/* ---------------------------------------------------------------- entry points */

int batchnorm_forward_train(int N, int C, int S, const float *x, const float *gamma, const float *beta,
                            float *running_mean, float *running_var, float momentum, float eps, float *y,
                            float *mean, float *invstd) {
    if (!bn_dims_ok(N, C, S)) return NN_EBADSHAPE;
    if (!x || !gamma || !beta || !y || !mean || !invstd || !(eps >= 0.0f)) return NN_EBADARG;
    if (nn_get_reference()) {
        bn_ref_forward(1, N, C, S, x, gamma, beta, running_mean, running_var, momentum, eps, y, mean, invstd);
        return NN_OK;
    }
    const int nt = bn_threads(N, C, S);
    if (S < BN_LANES) {
        bn_cols_forward(1, N, C, S, nt, x, gamma, beta, running_mean, running_var, momentum, eps, y, mean, invstd);
        return NN_OK;
    }
    const size_t CS = (size_t)C * S;
    const double M = (double)N * S;
    if (S < BN_BLOCK_MAX_S) {
        bn_blocks_forward_train(N, C, S, nt, x, gamma, beta, running_mean, running_var, momentum, eps, y, mean,
                                invstd);
        return NN_OK;
    }
    const int fuse = bn_fuse(C, nt);
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int c = 0; c < C; c++) {
        const float *xc = x + (size_t)c * S;
        double acc[BN_ACC] = {0}, s[2];
        bn_plane_stats(N, CS, S, xc, (double)xc[0], acc);
        bn_acc_sums(acc, s);
        bn_finish_stats(c, M, (double)xc[0], s[0], s[1], momentum, eps, running_mean, running_var, mean, invstd);
        if (fuse) {
            const float m = mean[c], a = invstd[c] * gamma[c], b = beta[c];
            for (int n = 0; n < N; n++) bn_affine((size_t)S, xc + n * CS, m, a, b, y + n * CS + (size_t)c * S);
        }
    }
    if (!fuse) bn_apply_planes(C, S, (long long)N * C, nt, x, gamma, beta, mean, invstd, y);
    return NN_OK;
}

int batchnorm_forward_eval(int N, int C, int S, const float *x, const float *gamma, const float *beta,
                           const float *running_mean, const float *running_var, float eps, float *y, float *mean,
                           float *invstd) {
    if (!bn_dims_ok(N, C, S)) return NN_EBADSHAPE;
    if (!x || !gamma || !beta || !running_mean || !running_var || !y || !mean || !invstd || !(eps >= 0.0f))
        return NN_EBADARG;
    if (nn_get_reference()) {
        bn_ref_forward(0, N, C, S, x, gamma, beta, (float *)running_mean, (float *)running_var, 0.0f, eps, y,
                       mean, invstd);
        return NN_OK;
    }
    const int nt = bn_threads(N, C, S);
    if (S < BN_LANES) {
        bn_cols_forward(0, N, C, S, nt, x, gamma, beta, (float *)running_mean, (float *)running_var, 0.0f, eps,
                        y, mean, invstd);
        return NN_OK;
    }
    for (int c = 0; c < C; c++) {
        mean[c] = running_mean[c];
        invstd[c] = (float)(1.0 / sqrt((double)running_var[c] + (double)eps));
    }
    bn_apply_planes(C, S, (long long)N * C, nt, x, gamma, beta, mean, invstd, y);
    return NN_OK;
}

int batchnorm_backward(int training, int N, int C, int S, const float *x, const float *gamma, const float *mean,
                       const float *invstd, const float *dy, float *dx, float *dgamma, float *dbeta) {
    if (!bn_dims_ok(N, C, S)) return NN_EBADSHAPE;
    if (!x || !gamma || !mean || !invstd || !dy) return NN_EBADARG;
    training = training != 0;
    if (!dx && !dgamma && !dbeta) return NN_OK;
    if (nn_get_reference()) {
        bn_ref_backward(training, N, C, S, x, gamma, mean, invstd, dy, dx, dgamma, dbeta);
        return NN_OK;
    }
    const int nt = bn_threads(N, C, S);
    if (S < BN_LANES) {
        bn_cols_backward(training, N, C, S, nt, x, gamma, mean, invstd, dy, dx, dgamma, dbeta);
        return NN_OK;
    }
    const size_t CS = (size_t)C * S;
    const double M = (double)N * S;
    const int sums = training || dgamma || dbeta;
    if (S < BN_BLOCK_MAX_S) {
        bn_blocks_backward(training, sums, N, C, S, nt, x, gamma, mean, invstd, dy, dx, dgamma, dbeta);
        return NN_OK;
    }
    const int fuse = bn_fuse(C, nt);
    /* channels in chunks: per channel the sums and dx's factors (and, fused, dx itself); a
     * chunk of few channels then writes dx split over its planes */
    float k1[BN_COLS], k2[BN_COLS], a[BN_COLS];
    for (int c0 = 0; c0 < C; c0 += BN_COLS) {
        const int cn = C - c0 < BN_COLS ? C - c0 : BN_COLS;
#pragma omp parallel for schedule(dynamic) num_threads(nt)
        for (int j = 0; j < cn; j++) {
            const int c = c0 + j;
            const size_t off = (size_t)c * S;
            double acc[BN_ACC] = {0}, s[2] = {0.0, 0.0};
            if (sums) {
                bn_plane_grad_sums(N, CS, S, x + off, dy + off, (double)mean[c], acc);
                bn_acc_sums(acc, s);
            }
            if (dgamma) dgamma[c] = (float)(s[1] * invstd[c]);
            if (dbeta) dbeta[c] = (float)s[0];
            bn_grad_factors(training, M, s[0], s[1], gamma[c], invstd[c], &k1[j], &k2[j], &a[j]);
            if (dx && fuse)
                for (int n = 0; n < N; n++) {
                    const size_t o = off + n * CS;
                    if (training) bn_dx_train((size_t)S, x + o, dy + o, mean[c], k1[j], k2[j], a[j], dx + o);
                    else bn_dx_eval((size_t)S, dy + o, a[j], dx + o);
                }
        }
        if (dx && !fuse) {
            const long long planes = (long long)N * cn;
#pragma omp parallel for schedule(static) num_threads(nt)
            for (long long p = 0; p < planes; p++) {
                const int j = (int)(p % cn), c = c0 + j;
                const size_t o = (size_t)(p / cn) * CS + (size_t)c * S;
                if (training) bn_dx_train((size_t)S, x + o, dy + o, mean[c], k1[j], k2[j], a[j], dx + o);
                else bn_dx_eval((size_t)S, dy + o, a[j], dx + o);
            }
        }
    }
    return NN_OK;
}
