/*
 * Elementwise activations, forward and backward. x, y, dy, dx: n floats each; y may alias x
 * and dx may alias dy. Backward uses the forward output y: sigmoid' = y(1-y),
 * tanh' = 1-y^2, relu' = [y > 0].
 */
#include "nn_internal.h"

#define NN_PAR_MIN_ELEMS 32768

int activation_forward(int kind, size_t n, const float *x, float *y) {
    if (kind < NN_ACT_IDENTITY || kind > NN_ACT_RELU) return NN_EBADARG;
    int nt = n < NN_PAR_MIN_ELEMS ? 1 : nn_threads();
    long long len = (long long)n;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long long i = 0; i < len; i++) {
        y[i] = nn_act1(kind, x[i]);
    }
    return NN_OK;
}

int activation_backward(int kind, size_t n, const float *y, const float *dy, float *dx) {
    if (kind < NN_ACT_IDENTITY || kind > NN_ACT_RELU) return NN_EBADARG;
    int nt = n < NN_PAR_MIN_ELEMS ? 1 : nn_threads();
    long long len = (long long)n;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long long i = 0; i < len; i++) {
        dx[i] = nn_dact1(kind, y[i], dy[i]);
    }
    return NN_OK;
}
