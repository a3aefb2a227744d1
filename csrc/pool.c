/*
 * 2-D max-pooling.
 *   forward:  x[N,C,H,W] -> y[N,C,OH,OW], argmax[N,C,OH,OW] (int32, ih*W+iw in the input plane)
 *   backward: dy[N,C,OH,OW], argmax -> dx[N,C,H,W] (written whole: zeros + scattered dy)
 *   OH = (H + 2 PH - KH) / SH + 1 (floor, as PyTorch's default), padding counts as -inf;
 *   PH <= KH/2 and PW <= KW/2 so no window is all padding.
 * Parallel over the N*C planes; each plane is owned by one thread, so the scatter in the
 * backward pass has no races and ties keep the first maximum (row-major), as PyTorch does.
 */
#include <string.h>
#include "nn_internal.h"

int pool2d_shape_init(pool2d_shape *s) {
    if (s->N <= 0 || s->C <= 0 || s->H <= 0 || s->W <= 0 || s->KH <= 0 || s->KW <= 0 ||
        s->SH <= 0 || s->SW <= 0 || s->PH < 0 || s->PW < 0 || 2 * s->PH > s->KH ||
        2 * s->PW > s->KW)
        return NN_EBADSHAPE;
    int eh = s->H + 2 * s->PH - s->KH, ew = s->W + 2 * s->PW - s->KW;
    if (eh < 0 || ew < 0) return NN_EBADSHAPE;
    s->OH = eh / s->SH + 1;
    s->OW = ew / s->SW + 1;
    if ((long long)s->H * s->W > 0x7fffffffLL) return NN_EBADSHAPE;
    return NN_OK;
}

static int shape_ok(const pool2d_shape *s) {
    pool2d_shape t = *s;
    return pool2d_shape_init(&t) == NN_OK && t.OH == s->OH && t.OW == s->OW;
}

/* The common 2x2 window, stride 2, no padding: branch-free selects over four unconditional
 * loads so the loop over a row vectorizes. Same tie and NaN rules as the general path. */
static void pool_2x2_row(int OW, const float *restrict r0, const float *restrict r1, int32_t base,
                         int W, float *restrict yr, int32_t *restrict ar) {
    for (int ow = 0; ow < OW; ow++) {
        float best = r0[2 * ow], v;
        int32_t i0 = base + 2 * ow, bi = i0, take;
#define NN_POOL_TAKE(value, index)                                   \
    v = (value);                                                     \
    take = (v > best) | ((v != v) & (best == best));                 \
    best = take ? v : best;                                          \
    bi = take ? (index) : bi;
        NN_POOL_TAKE(r0[2 * ow + 1], i0 + 1)
        NN_POOL_TAKE(r1[2 * ow], i0 + W)
        NN_POOL_TAKE(r1[2 * ow + 1], i0 + W + 1)
#undef NN_POOL_TAKE
        yr[ow] = best;
        ar[ow] = bi;
    }
}

int maxpool2d_forward(const pool2d_shape *s, const float *x, float *y, int32_t *argmax) {
    if (!shape_ok(s)) return NN_EBADSHAPE;
    if (s->KH == 2 && s->KW == 2 && s->SH == 2 && s->SW == 2 && s->PH == 0 && s->PW == 0) {
        const long long planes = (long long)s->N * s->C;
        const size_t in_sz = (size_t)s->H * s->W, out_sz = (size_t)s->OH * s->OW;
        int nt = planes * in_sz < 32768 ? 1 : nn_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
        for (long long p = 0; p < planes; p++)
            for (int oh = 0; oh < s->OH; oh++) {
                const float *r0 = x + p * in_sz + (size_t)(2 * oh) * s->W;
                pool_2x2_row(s->OW, r0, r0 + s->W, 2 * oh * s->W, s->W, y + p * out_sz + (size_t)oh * s->OW,
                             argmax + p * out_sz + (size_t)oh * s->OW);
            }
        return NN_OK;
    }
    const long long planes = (long long)s->N * s->C;
    const size_t in_sz = (size_t)s->H * s->W, out_sz = (size_t)s->OH * s->OW;
    int nt = planes * in_sz < 32768 ? 1 : nn_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
    for (long long p = 0; p < planes; p++) {
        const float *xp = x + p * in_sz;
        float *yp = y + p * out_sz;
        int32_t *ap = argmax + p * out_sz;
        for (int oh = 0; oh < s->OH; oh++) {
            int h0 = oh * s->SH - s->PH, h1 = h0 + s->KH;
            if (h0 < 0) h0 = 0;
            if (h1 > s->H) h1 = s->H;
            for (int ow = 0; ow < s->OW; ow++) {
                int w0 = ow * s->SW - s->PW, w1 = w0 + s->KW;
                if (w0 < 0) w0 = 0;
                if (w1 > s->W) w1 = s->W;
                float best = -INFINITY;
                int32_t bi = h0 * s->W + w0;
                for (int ih = h0; ih < h1; ih++)
                    for (int iw = w0; iw < w1; iw++) {
                        float v = xp[(size_t)ih * s->W + iw];
                        /* NaN wins, so it propagates like in PyTorch */
                        if (v > best || (v != v && best == best)) {
                            best = v;
                            bi = ih * s->W + iw;
                        }
                    }
                yp[(size_t)oh * s->OW + ow] = best;
                ap[(size_t)oh * s->OW + ow] = bi;
            }
        }
    }
    return NN_OK;
}

int maxpool2d_backward(const pool2d_shape *s, const float *dy, const int32_t *argmax, float *dx) {
    if (!shape_ok(s)) return NN_EBADSHAPE;
    const long long planes = (long long)s->N * s->C;
    const size_t in_sz = (size_t)s->H * s->W, out_sz = (size_t)s->OH * s->OW;
    int bad = 0;
    int nt = planes * in_sz < 32768 ? 1 : nn_threads();
#pragma omp parallel for schedule(static) num_threads(nt) reduction(| : bad)
    for (long long p = 0; p < planes; p++) {
        float *dxp = dx + p * in_sz;
        const float *dyp = dy + p * out_sz;
        const int32_t *ap = argmax + p * out_sz;
        memset(dxp, 0, sizeof(float) * in_sz);
        for (size_t o = 0; o < out_sz; o++) {
            int32_t i = ap[o];
            if (i < 0 || (size_t)i >= in_sz) {
                bad = 1;
                continue;
            }
            dxp[i] += dyp[o];
        }
    }
    return bad ? NN_EBADARG : NN_OK;
}
