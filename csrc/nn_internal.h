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
    return rb < 16 ? 16 : rb;
}

static inline float nn_sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

/* One element of an activation (NN_ACT_*) and of its derivative, written with the output y. */
static inline float nn_act1(int kind, float v) {
    switch (kind) {
    case NN_ACT_SIGMOID: return nn_sigmoid(v);
    case NN_ACT_TANH: return tanhf(v);
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

/* Recurrent sizes: batch N, steps T, inputs D, hidden H, G gate rows per hidden unit; every
 * GEMM dimension and leading dimension (up to N*T*G*max(D,H)) must fit an int. */
static inline int nn_seq_dims_ok(int N, int T, int D, int H, int G) {
    if (N <= 0 || T <= 0 || D <= 0 || H <= 0) return 0;
    long long rows = (long long)N * T, gh = (long long)G * H;
    return rows * gh <= 0x7fffffffLL && rows * D <= 0x7fffffffLL && gh * (D > H ? D : H) <= 0x7fffffffLL;
}

/* hprev[n,t] = hs[n,t-1], hprev[n,0] = h0[n] (or 0): rows [r0, r1) of [N,T,H]. */
static inline void nn_shift_states(int r0, int r1, int T, int H, const float *h0, const float *hs,
                                   float *hprev) {
    for (int n = r0; n < r1; n++) {
        float *dst = hprev + (size_t)n * T * H;
        const float *src = hs + (size_t)n * T * H;
        for (int j = 0; j < H; j++) dst[j] = h0 ? h0[(size_t)n * H + j] : 0.0f;
        for (size_t k = 0; k < (size_t)(T - 1) * H; k++) dst[H + k] = src[k];
    }
}

/* Sizes that must fit an int for BLAS and be positive. */
static inline int nn_dims_ok(long long a, long long b, long long c) {
    return a > 0 && b > 0 && c > 0 && a * b <= 0x7fffffffLL && b * c <= 0x7fffffffLL &&
           a * c <= 0x7fffffffLL;
}

#endif
