/*
 * Elementwise activations, forward and backward. x, y, dy, dx: n floats each; y may alias x
 * and dx may alias dy. Backward uses the forward output y: sigmoid' = y(1-y),
 * tanh' = 1-y^2, relu' = [y > 0]. The kinds after relu come after these (see below).
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

/*
 * The kinds after relu (relu6, leaky_relu, silu, gelu, gelu_tanh): branch-free loops compiled
 * for AVX-512, AVX2 and baseline (NN_MULTI_VOID; nn_isa() picks), so every level computes the
 * same bits. silu and the gelus need the forward input x in the backward pass.
 *   silu(x) = x / (1 + exp(-x)); below x = -88 (where nn_expf clamps) the product x * 0.
 *   gelu(x) = x Phi(x), Phi(x) = erfc(-x/sqrt2) / 2, with erfc(z) for z >= 0 as
 *     t exp(-z^2 + P(t)), t = 1 / (1 + z/2): Numerical Recipes' Chebyshev fit (erfcc), relative
 *     error under 1.1e-7 for every z >= 0 in exact arithmetic, so Phi keeps its relative
 *     accuracy in the left tail (1 + erf(x/sqrt2) would cancel). Phi(x > 0) = 1 - Phi(-x).
 *   gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
 * Backward: silu' = s (1 + x (1 - s)), s = sigmoid(x), 1 - s = e s with e = exp(-x);
 * gelu' = Phi(x) + x phi(x);
 * gelu_tanh' = s + 2 x s (1 - s) u'(x), s = sigmoid(2u), s (1 - s) = e / (1 + e)^2 with
 * e = exp(-2u). Terms that are below float resolution for large |x| are selected to 0 there
 * so that no inf * 0 appears for large finite x (inf and NaN inputs give what PyTorch gives:
 * NaN in, NaN out).
 */
static inline float nn_x_sigmoid(float x, float a) { /* x sigmoid(a) */
    float y = x / (1.0f + nn_expf(-a));
    return a < -88.0f ? x * 0.0f : y;
}

static inline float nn_half_erfc(float z) { /* erfc(z) / 2 for z >= 0 (or NaN) */
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    return 0.5f * t * nn_expf(p - z * z);
}

static inline float nn_phi_cdf(float x) { /* Phi(x) */
    float h = nn_half_erfc(fabsf(x) * 0.707106781186547524f);
    return x > 0.0f ? 1.0f - h : h;
}

static inline float nn_gelu_tanh_arg(float x) { /* 2u = 2 sqrt(2/pi) (x + 0.044715 x^3) */
    return 1.59576912160573071f * (x + 0.044715f * (x * x * x));
}

NN_MULTI_VOID(act_ex_forward, (int kind, long long i0, long long i1, const float *x, float *y, float alpha),
              (kind, i0, i1, x, y, alpha), {
    switch (kind) {
    case NN_ACT_RELU6:
        for (long long i = i0; i < i1; i++) {
            float v = x[i];
            v = v < 0.0f ? 0.0f : v; /* -0 and NaN pass, as in PyTorch */
            y[i] = v > 6.0f ? 6.0f : v;
        }
        break;
    case NN_ACT_LEAKY_RELU:
        for (long long i = i0; i < i1; i++) {
            float v = x[i];
            y[i] = v > 0.0f ? v : v * alpha;
        }
        break;
    case NN_ACT_SILU:
        for (long long i = i0; i < i1; i++) y[i] = nn_x_sigmoid(x[i], x[i]);
        break;
    case NN_ACT_GELU:
        for (long long i = i0; i < i1; i++) y[i] = x[i] * nn_phi_cdf(x[i]);
        break;
    case NN_ACT_GELU_TANH:
        for (long long i = i0; i < i1; i++) y[i] = nn_x_sigmoid(x[i], nn_gelu_tanh_arg(x[i]));
        break;
    default: break;
    }
})

NN_MULTI_VOID(act_ex_backward, (int kind, long long i0, long long i1, const float *x, const float *y,
                                const float *dy, float *dx, float alpha),
              (kind, i0, i1, x, y, dy, dx, alpha), {
    switch (kind) {
    case NN_ACT_RELU6: /* 0 < x < 6, from y (NaN: 0, as PyTorch) */
        for (long long i = i0; i < i1; i++) {
            float g = dy[i], v = y[i];
            dx[i] = (v > 0.0f) & (v < 6.0f) ? g : 0.0f;
        }
        break;
    case NN_ACT_LEAKY_RELU: /* from x when given; from y (same sign as x for alpha >= 0) else */
        {
            const float *v = x ? x : y;
            for (long long i = i0; i < i1; i++) {
                float g = dy[i];
                dx[i] = v[i] > 0.0f ? g : g * alpha;
            }
        }
        break;
    case NN_ACT_SILU:
        for (long long i = i0; i < i1; i++) {
            float v = x[i];
            float e = nn_expf(-v);
            float s = 1.0f / (1.0f + e);
            float oms = e * s; /* 1 - s without cancellation; 0 above 87, where nn_expf clamps */
            s = v < -88.0f ? 0.0f : s;
            oms = v > 87.0f ? 0.0f : oms;
            dx[i] = dy[i] * s * (1.0f + v * oms);
        }
        break;
    case NN_ACT_GELU:
        for (long long i = i0; i < i1; i++) {
            float v = x[i];
            float pdf = 0.398942280401432678f * nn_expf(-0.5f * (v * v));
            pdf = fabsf(v) > 13.0f ? 0.0f : pdf; /* below 1e-37 there */
            dx[i] = dy[i] * (nn_phi_cdf(v) + v * pdf);
        }
        break;
    case NN_ACT_GELU_TANH:
        for (long long i = i0; i < i1; i++) {
            float v = x[i];
            float e = nn_expf(-nn_gelu_tanh_arg(v));
            float s = 1.0f / (1.0f + e);
            float q = e / ((1.0f + e) * (1.0f + e));
            float du = 1.59576912160573071f * (1.0f + 0.134145f * (v * v));
            float term = v * q * du;
            term = fabsf(v) > 20.0f ? v * 0.0f : term; /* s (1 - s) < 1e-37 there */
            s = nn_gelu_tanh_arg(v) < -88.0f ? 0.0f : s;
            dx[i] = dy[i] * (s + term);
        }
        break;
    default: break;
    }
})

/* Elements [i0, i1) of n that thread id of nt owns. */
static void split_ll(long long n, int id, int nt, long long *i0, long long *i1) {
    *i0 = n / nt * id + (id < n % nt ? id : n % nt);
    *i1 = *i0 + n / nt + (id < n % nt);
}

int activation_forward_ex(int kind, size_t n, const float *x, float *y, float alpha) {
    if (kind < NN_ACT_IDENTITY || kind > NN_ACT_GELU_TANH) return NN_EBADARG;
    if (kind <= NN_ACT_RELU) return activation_forward(kind, n, x, y);
    int nt = n < NN_PAR_MIN_ELEMS / 4 ? 1 : nn_threads();
    long long len = (long long)n;
#pragma omp parallel num_threads(nt)
    {
        long long i0, i1;
        split_ll(len, NN_THREAD_ID(), NN_THREAD_COUNT(), &i0, &i1);
        act_ex_forward(kind, i0, i1, x, y, alpha);
    }
    return NN_OK;
}

int activation_backward_ex(int kind, size_t n, const float *x, const float *y, const float *dy, float *dx,
                           float alpha) {
    if (kind < NN_ACT_IDENTITY || kind > NN_ACT_GELU_TANH) return NN_EBADARG;
    if (kind >= NN_ACT_SILU || (kind == NN_ACT_LEAKY_RELU && alpha < 0.0f) ? !x
        : kind == NN_ACT_LEAKY_RELU ? !x && !y : !y)
        return NN_EBADARG;
    if (kind <= NN_ACT_RELU) return activation_backward(kind, n, y, dy, dx);
    int nt = n < NN_PAR_MIN_ELEMS / 4 ? 1 : nn_threads();
    long long len = (long long)n;
#pragma omp parallel num_threads(nt)
    {
        long long i0, i1;
        split_ll(len, NN_THREAD_ID(), NN_THREAD_COUNT(), &i0, &i1);
        act_ex_backward(kind, i0, i1, x, y, dy, dx, alpha);
    }
    return NN_OK;
}
