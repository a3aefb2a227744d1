/*
 * Elementwise activations, forward and backward. x, y, dy, dx: n floats each; y may alias x
 * and dx may alias dy. Backward uses the forward output y: sigmoid' = y(1-y),
 * tanh' = 1-y^2, relu' = [y > 0].
 */
#include "nn_internal.h"

#define NN_PAR_MIN_ELEMS 32768

/* One loop per kind (the switch outside), so each loop vectorizes. */
#define NN_ELEMENTWISE(nt, len, body)                                   \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")       \
    for (long long i = 0; i < len; i++) body

int activation_forward(int kind, size_t n, const float *x, float *y) {
    if (kind < NN_ACT_IDENTITY || kind > NN_ACT_RELU) return NN_EBADARG;
    int nt = n < NN_PAR_MIN_ELEMS ? 1 : nn_threads();
    long long len = (long long)n;
    switch (kind) {
    case NN_ACT_SIGMOID: NN_ELEMENTWISE(nt, len, { y[i] = nn_sigmoid(x[i]); }) break;
    case NN_ACT_TANH: NN_ELEMENTWISE(nt, len, { y[i] = nn_tanh(x[i]); }) break;
    case NN_ACT_RELU: NN_ELEMENTWISE(nt, len, { y[i] = x[i] > 0.0f ? x[i] : 0.0f; }) break;
    default: NN_ELEMENTWISE(nt, len, { y[i] = x[i]; }) break;
    }
    return NN_OK;
}

int activation_backward(int kind, size_t n, const float *y, const float *dy, float *dx) {
    if (kind < NN_ACT_IDENTITY || kind > NN_ACT_RELU) return NN_EBADARG;
    int nt = n < NN_PAR_MIN_ELEMS ? 1 : nn_threads();
    long long len = (long long)n;
    switch (kind) {
    case NN_ACT_SIGMOID: NN_ELEMENTWISE(nt, len, { dx[i] = dy[i] * y[i] * (1.0f - y[i]); }) break;
    case NN_ACT_TANH: NN_ELEMENTWISE(nt, len, { dx[i] = dy[i] * (1.0f - y[i] * y[i]); }) break;
    case NN_ACT_RELU: /* load dy unconditionally: a conditional load does not vectorize */
        NN_ELEMENTWISE(nt, len, { float g = dy[i]; dx[i] = y[i] > 0.0f ? g : 0.0f; }) break;
    default: NN_ELEMENTWISE(nt, len, { dx[i] = dy[i]; }) break;
    }
    return NN_OK;
}
