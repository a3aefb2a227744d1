/*
 * Softmax and softmax cross-entropy over class scores.
 *   logits[N,C], labels[N] int32 in [0,C), class_weight[C] or NULL (all ones)
 *   probs[N,C] = softmax(logits), row_loss[N] = -w[y] log p[y],
 *   dlogits[N,C] = w[y] (p - onehot(y)) (the gradient of sum(row_loss); NULL to skip)
 * Max-subtracted and computed through log-sum-exp, so large logits neither overflow nor
 * give log(0). Per-row losses (not a sum) keep the reduction order to the caller.
 */
#include "nn_internal.h"

/* p = softmax(z); returns the max m and writes log(sum exp(z - m)) */
static float softmax_row(int C, const float *z, float *p, float *log_sum) {
    float m = z[0];
    for (int c = 1; c < C; c++) m = z[c] > m ? z[c] : m;
    double s = 0.0;
    for (int c = 0; c < C; c++) {
        float e = expf(z[c] - m);
        p[c] = e;
        s += e;
    }
    float inv = (float)(1.0 / s);
    for (int c = 0; c < C; c++) p[c] *= inv;
    *log_sum = (float)log(s);
    return m;
}

int softmax_forward(int N, int C, const float *logits, float *probs) {
    if (N <= 0 || C <= 0) return NN_EBADSHAPE;
    int nt = (size_t)N * C < 65536 ? 1 : nn_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int n = 0; n < N; n++) {
        float ls;
        softmax_row(C, logits + (size_t)n * C, probs + (size_t)n * C, &ls);
    }
    return NN_OK;
}

int softmax_xent_forward_backward(int N, int C, const float *logits, const int32_t *labels,
                                  const float *class_weight, float *probs, float *row_loss,
                                  float *dlogits) {
    if (N <= 0 || C <= 0) return NN_EBADSHAPE;
    for (int n = 0; n < N; n++)
        if (labels[n] < 0 || labels[n] >= C) return NN_EBADLABEL;
    int nt = (size_t)N * C < 65536 ? 1 : nn_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * C;
        float *p = probs + (size_t)n * C;
        int y = labels[n];
        float wy = class_weight ? class_weight[y] : 1.0f;
        float ls, m = softmax_row(C, z, p, &ls);
        /* log-sum-exp minus z[y] without adding m back: exact for huge logits */
        row_loss[n] = wy * (ls - (z[y] - m));
        if (dlogits) {
            float *d = dlogits + (size_t)n * C;
            for (int c = 0; c < C; c++) d[c] = wy * p[c];
            d[y] -= wy;
        }
    }
    return NN_OK;
}
