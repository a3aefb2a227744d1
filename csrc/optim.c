/*
 * Optimizer updates over the flat parameter vector in one pass: p, g, m, v hold n floats.
 * adam_update, Adam with the bias correction folded into step = lr sqrt(1-b2^t) / (1-b1^t):
 *   g' = g + l2 p;  m = b1 m + (1-b1) g';  v = b2 v + ((1-b2) g') g';  p = decay p;
 *   p -= (step m) / (sqrt(v) + eps)
 * l2: L2 weight decay added to the gradient (Adam), decay: 1 - lr wd (AdamW), else 1.
 * The float operations are numpy's in optimizers.py, in the same order and without
 * contraction (-std=c99), so the two give the same bits; numpy's several passes over
 * megabytes of state became the time of a step for large embeddings.
 */
#include "nn_internal.h"

/* Below a million entries one thread does a pass in well under a millisecond, and a thread
 * team costs more than it saves: on the Spark driver, where the executors' workers and the JVM
 * hold the cores, a 105k-parameter SGD step measured 6.5 ms with two threads, 0.13 ms with one. */
#define NN_OPT_PAR_MIN (1u << 20)
#define NN_SQ_BLOCK 16384

static int opt_threads(size_t n) { return n < NN_OPT_PAR_MIN ? 1 : nn_threads(); }

/* This thread's share [*a, *b) of n entries, in blocks of 1024 (inside a parallel region);
 * 0 when it has none. */
static int opt_share(size_t n, size_t *a, size_t *b) {
    int r0, r1;
    nn_split((int)((n + 1023) / 1024), NN_THREAD_ID(), NN_THREAD_COUNT(), &r0, &r1);
    *a = (size_t)r0 * 1024;
    *b = (size_t)r1 * 1024 < n ? (size_t)r1 * 1024 : n;
    return *a < *b;
}

NN_MULTI_VOID(adam_range, (size_t a, size_t b, float *p, const float *g, float *m, float *v, float step,
                          float b1, float b2, float eps, float l2, float decay),
              (a, b, p, g, m, v, step, b1, b2, eps, l2, decay), {
    const float c1 = 1.0f - b1, c2 = 1.0f - b2;
    if (l2 != 0.0f) {
        for (size_t i = a; i < b; i++) {
            float gi = g[i] + l2 * p[i];
            float mi = m[i] * b1 + c1 * gi, vi = v[i] * b2 + c2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = p[i] * decay - step * mi / (sqrtf(vi) + eps);
        }
    } else {
        for (size_t i = a; i < b; i++) {
            float gi = g[i];
            float mi = m[i] * b1 + c1 * gi, vi = v[i] * b2 + c2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = p[i] * decay - step * mi / (sqrtf(vi) + eps);
        }
    }
})

int adam_update(size_t n, float *p, const float *g, float *m, float *v, float step, float b1, float b2,
                float eps, float l2, float decay) {
#pragma omp parallel num_threads(opt_threads(n))
    {
        size_t a, b;
        if (opt_share(n, &a, &b)) adam_range(a, b, p, g, m, v, step, b1, b2, eps, l2, decay);
    }
    return NN_OK;
}

/* Lazy Adam: the same update at the entries idx[0..n) of p, m, v (sorted, distinct), with
 * g[i] the gradient at p[idx[i]]; the other entries do not change. The same float operations
 * as adam_range, so an entry gets the bits that the dense update gives it. */
NN_MULTI_VOID(adam_at_range, (size_t a, size_t b, const int64_t *idx, float *p, const float *g, float *m,
                              float *v, float step, float b1, float b2, float eps, float l2, float decay),
              (a, b, idx, p, g, m, v, step, b1, b2, eps, l2, decay), {
    const float c1 = 1.0f - b1, c2 = 1.0f - b2;
    for (size_t i = a; i < b; i++) {
        const int64_t j = idx[i];
        float gi = l2 != 0.0f ? g[i] + l2 * p[j] : g[i];
        float mi = m[j] * b1 + c1 * gi, vi = v[j] * b2 + c2 * gi * gi;
        m[j] = mi;
        v[j] = vi;
        p[j] = p[j] * decay - step * mi / (sqrtf(vi) + eps);
    }
})

int adam_update_at(size_t n, const int64_t *idx, float *p, const float *g, float *m, float *v, float step,
                   float b1, float b2, float eps, float l2, float decay) {
#pragma omp parallel num_threads(opt_threads(n))
    {
        size_t a, b;
        if (opt_share(n, &a, &b)) adam_at_range(a, b, idx, p, g, m, v, step, b1, b2, eps, l2, decay);
    }
    return NN_OK;
}

/* Sum of squares of x[n] in double, for gradient-norm clipping. Blocks of NN_SQ_BLOCK
 * elements (fixed by n) each sum into 8 lanes in a fixed order; the blocks' sums land in
 * partial[(n + NN_SQ_BLOCK - 1) / NN_SQ_BLOCK] and are added in block order, so the result
 * does not depend on the thread count. */
NN_MULTI(double, sq_block, (const float *x, size_t a, size_t b), (x, a, b), {
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = a;
    for (; i + 8 <= b; i += 8)
        for (int k = 0; k < 8; k++) lane[k] += (double)x[i + k] * (double)x[i + k];
    double s = 0.0;
    for (; i < b; i++) s += (double)x[i] * (double)x[i];
    for (int k = 0; k < 8; k++) s += lane[k];
    return s;
})

size_t sum_squares_partials(size_t n) { return (n + NN_SQ_BLOCK - 1) / NN_SQ_BLOCK; }

double sum_squares(size_t n, const float *x, double *partial) {
    const long long nb = (long long)sum_squares_partials(n);
#pragma omp parallel for schedule(static) num_threads(opt_threads(n))
    for (long long blk = 0; blk < nb; blk++) {
        size_t a = (size_t)blk * NN_SQ_BLOCK, b = a + NN_SQ_BLOCK < n ? a + NN_SQ_BLOCK : n;
        partial[blk] = sq_block(x, a, b);
    }
    double s = 0.0;
    for (long long blk = 0; blk < nb; blk++) s += partial[blk];
    return s;
}
