/*
 * Fully connected layer, PyTorch's nn.Linear layout.
 *   forward:  x[N,IN], w[OUT,IN], b[OUT] or NULL  ->  y[N,OUT] = x w^T + b
 *   backward: dy[N,OUT] -> dx[N,IN] = dy w (skipped when dx is NULL),
 *             dw[OUT,IN] = dy^T x, db[OUT] = sum_n dy (skipped when db is NULL)
 */
#include "nn_internal.h"

int dense_forward(int N, int IN, int OUT, const float *x, const float *w, const float *b,
                  float *y) {
    if (!nn_dims_ok(N, IN, OUT)) return NN_EBADSHAPE;
    if (b) {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OUT; o++) y[(size_t)n * OUT + o] = b[o];
    }
    nn_gemm_par(0, 1, N, OUT, IN, 1.0f, x, IN, w, IN, b ? 1.0f : 0.0f, y, OUT);
    return NN_OK;
}

int dense_backward(int N, int IN, int OUT, const float *x, const float *w, const float *dy,
                   float *dx, float *dw, float *db) {
    if (!nn_dims_ok(N, IN, OUT)) return NN_EBADSHAPE;
    if (dx) nn_gemm_par(0, 0, N, IN, OUT, 1.0f, dy, OUT, w, IN, 0.0f, dx, IN);
    nn_gemm_par(1, 0, OUT, IN, N, 1.0f, dy, OUT, x, IN, 0.0f, dw, IN);
    if (db) nn_colsum(N, OUT, dy, OUT, db);
    return NN_OK;
}
