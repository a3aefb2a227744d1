/*
 * The pooling family: 2-D max-pooling (here), then 2-D average pooling and global average
 * pooling (below).
 * 2-D max-pooling.
 *   forward:  x[N,C,H,W] -> y[N,C,OH,OW], argmax[N,C,OH,OW] (int32, ih*W+iw in the input plane)
 *   backward: dy[N,C,OH,OW], argmax -> dx[N,C,H,W] (written whole: zeros + scattered dy)
 *   OH = (H + 2 PH - KH) / SH + 1 (floor, as PyTorch's default), padding counts as -inf;
 *   PH <= KH/2 and PW <= KW/2 so no window is all padding.
 * Parallel over the N*C planes; each plane is owned by one thread, so the scatter in the
 * backward pass has no races and ties keep the first maximum (row-major), as PyTorch does.
 * The 2x2/2 window has a vectorized path (AVX-512, AVX2, baseline by nn_isa()); the general
 * loop is the reference (nn_set_reference) and serves every other window.
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

/* The common 2x2 window, stride 2, no padding, in blocks of outputs: whole planes at a time
 * when a plane has at most POOL_TAB outputs (the digits net's 4x4 and 2x2 outputs fill a
 * vector only across planes), else runs of output rows of one plane. A table made once per
 * call holds each output's window (its top-left input offset from the block's first input,
 * and its argmax base within its plane), so a vector of 16 (AVX-512) or 8 (AVX2) outputs
 * gathers its four candidates across rows and planes alike. Candidates are taken in row-major
 * order, a later one only when greater, or NaN over a number: the first maximum wins and NaN
 * propagates, as in the general path and PyTorch; every level computes the same bits. */
#define POOL_TAB 1024

typedef struct {
    int n;                 /* outputs per block */
    int planes, rows;      /* a block: `planes` whole planes, or `rows` output rows of one plane */
    int32_t tab[POOL_TAB]; /* window's top-left input, from the block's first input */
    int32_t arg[POOL_TAB]; /* the same within its plane, from the block's first row */
} pool_blocks;

/* 0 when no block layout fits (an output row wider than the table): the general path runs */
static int pool_blocks_init(const pool2d_shape *s, pool_blocks *b) {
    const int plane_out = s->OH * s->OW;
    if (s->OW > POOL_TAB) return 0;
    b->planes = plane_out <= POOL_TAB ? POOL_TAB / plane_out : 0;
    b->rows = b->planes ? s->OH : POOL_TAB / s->OW;
    if (b->planes > s->N * s->C) b->planes = s->N * s->C;
    const int nplanes = b->planes ? b->planes : 1;
    int j = 0;
    for (int p = 0; p < nplanes; p++)
        for (int oh = 0; oh < b->rows; oh++)
            for (int ow = 0; ow < s->OW; ow++, j++) {
                b->arg[j] = 2 * oh * s->W + 2 * ow;
                b->tab[j] = p * s->H * s->W + b->arg[j];
            }
    b->n = j;
    return 1;
}

#define NN_POOL_TAKE(value, index)                                   \
    v = (value);                                                     \
    take = (v > best) | ((v != v) & (best == best));                 \
    best = take ? v : best;                                          \
    bi = take ? (index) : bi;

/* n outputs of a block: x its first input, y and am its first output, aoff added to arg */
static void pool_2x2_block_base(int n, const int32_t *tab, const int32_t *arg, int32_t aoff, const float *x,
                                int W, float *restrict y, int32_t *restrict am) {
    for (int j = 0; j < n; j++) {
        const float *r0 = x + tab[j];
        float best = r0[0], v;
        int32_t i0 = arg[j] + aoff, bi = i0, take;
        NN_POOL_TAKE(r0[1], i0 + 1)
        NN_POOL_TAKE(r0[W], i0 + W)
        NN_POOL_TAKE(r0[W + 1], i0 + W + 1)
        y[j] = best;
        am[j] = bi;
    }
}
#undef NN_POOL_TAKE

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NN_NO_CLONES)
#include <immintrin.h>
#define NN_POOL_CLONES 1
__attribute__((target("avx512f"))) static void pool_2x2_block_avx512(int n, const int32_t *tab, const int32_t *arg,
                                                                     int32_t aoff, const float *x, int W,
                                                                     float *y, int32_t *am) {
    const __m512 zero = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) {
        const __mmask16 m = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        const __m512i t = _mm512_maskz_loadu_epi32(m, tab + j);
        const __m512i a = _mm512_add_epi32(_mm512_maskz_loadu_epi32(m, arg + j), _mm512_set1_epi32(aoff));
        __m512 best = _mm512_mask_i32gather_ps(zero, m, t, x, 4);
        __m512i bi = a;
        const int d[3] = {1, W, W + 1};
        for (int c = 0; c < 3; c++) {
            const __m512i dv = _mm512_set1_epi32(d[c]);
            const __m512 v = _mm512_mask_i32gather_ps(zero, m, _mm512_add_epi32(t, dv), x, 4);
            const __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) |
                                   (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q));
            best = _mm512_mask_mov_ps(best, take, v);
            bi = _mm512_mask_mov_epi32(bi, take, _mm512_add_epi32(a, dv));
        }
        _mm512_mask_storeu_ps(y + j, m, best);
        _mm512_mask_storeu_epi32(am + j, m, bi);
    }
}
__attribute__((target("avx2"))) static void pool_2x2_block_avx2(int n, const int32_t *tab, const int32_t *arg,
                                                                int32_t aoff, const float *x, int W, float *y,
                                                                int32_t *am) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < n; j += 8) {
        const __m256i mi = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - j), lanes);
        const __m256 m = _mm256_castsi256_ps(mi);
        const __m256i t = _mm256_maskload_epi32(tab + j, mi);
        const __m256i a = _mm256_add_epi32(_mm256_maskload_epi32(arg + j, mi), _mm256_set1_epi32(aoff));
        __m256 best = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, t, m, 4);
        __m256 bi = _mm256_castsi256_ps(a);
        const int d[3] = {1, W, W + 1};
        for (int c = 0; c < 3; c++) {
            const __m256i dv = _mm256_set1_epi32(d[c]);
            const __m256 v = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, _mm256_add_epi32(t, dv), m, 4);
            const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ),
                                             _mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q),
                                                           _mm256_cmp_ps(best, best, _CMP_ORD_Q)));
            best = _mm256_blendv_ps(best, v, take);
            bi = _mm256_blendv_ps(bi, _mm256_castsi256_ps(_mm256_add_epi32(a, dv)), take);
        }
        _mm256_maskstore_ps(y + j, mi, best);
        _mm256_maskstore_epi32(am + j, mi, _mm256_castps_si256(bi));
    }
}
#endif

static void pool_2x2_block(int n, const int32_t *tab, const int32_t *arg, int32_t aoff, const float *x, int W,
                           float *y, int32_t *am) {
#ifdef NN_POOL_CLONES
    const int isa = nn_isa();
    if (isa == NN_ISA_AVX512) return pool_2x2_block_avx512(n, tab, arg, aoff, x, W, y, am);
    if (isa == NN_ISA_AVX2) return pool_2x2_block_avx2(n, tab, arg, aoff, x, W, y, am);
#endif
    pool_2x2_block_base(n, tab, arg, aoff, x, W, y, am);
}

int maxpool2d_forward(const pool2d_shape *s, const float *x, float *y, int32_t *argmax) {
    if (!shape_ok(s)) return NN_EBADSHAPE;
    const long long planes = (long long)s->N * s->C;
    const size_t in_sz = (size_t)s->H * s->W, out_sz = (size_t)s->OH * s->OW;
    int nt = planes * in_sz < 32768 ? 1 : nn_threads();
    pool_blocks b;
    if (s->KH == 2 && s->KW == 2 && s->SH == 2 && s->SW == 2 && s->PH == 0 && s->PW == 0 &&
        !nn_get_reference() && pool_blocks_init(s, &b)) {
        const int per_plane = b.planes ? 1 : (s->OH + b.rows - 1) / b.rows;
        const long long nblocks = b.planes ? (planes + b.planes - 1) / b.planes : planes * per_plane;
#pragma omp parallel for schedule(static) num_threads(nt)
        for (long long k = 0; k < nblocks; k++) {
            long long p0 = b.planes ? k * b.planes : k / per_plane;
            int oh0 = b.planes ? 0 : (int)(k % per_plane) * b.rows, n = b.n;
            if (b.planes && p0 + b.planes > planes) n = (int)(planes - p0) * (int)out_sz;
            if (!b.planes && oh0 + b.rows > s->OH) n = (s->OH - oh0) * s->OW;
            pool_2x2_block(n, b.tab, b.arg, 2 * oh0 * s->W, x + p0 * in_sz + (size_t)2 * oh0 * s->W, s->W,
                           y + p0 * out_sz + (size_t)oh0 * s->OW, argmax + p0 * out_sz + (size_t)oh0 * s->OW);
        }
        return NN_OK;
    }
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

/*
 * 2-D average pooling (PyTorch's AvgPool2d with ceil_mode=False): y = sum of the window's
 * inputs / divisor, the divisor KH*KW with count_include_pad (the padding counts as zeros;
 * with the floor output size no window reaches past the padding) or the number of the
 * window's inputs inside the image. Parallel over the N*C planes.
 * Forward: the general loop (reference path) sums each window row-major from 0. The fast path
 * does the same sums in the same order for the columns whose windows lie inside the image
 * (interior columns), as rows of partial sums that vectorize over the output row (stride 1, 2
 * and any stride compiled apart), and uses the general loop for the border columns: both
 * paths, and every ISA level, give the same bits.
 * Backward: the reference scatters dy / divisor output by output; the fast path scatters a row
 * of them per window tap (kh, kw) over the interior columns (another order of the sums, fixed
 * by the shape: deterministic, and the same bits at every ISA level).
 */
static inline void avg_window(int o, int S, int P, int K, int L, int *a, int *b) {
    int s0 = o * S - P, e = s0 + K;
    *a = s0 < 0 ? 0 : s0;
    *b = e > L ? L : e;
}

static inline float avg_divisor(const pool2d_shape *s, int inc, int h0, int h1, int w0, int w1) {
    return inc ? (float)(s->KH * s->KW) : (float)((h1 - h0) * (w1 - w0));
}

/* interior columns [*a, *b): ow SW - PW >= 0 and ow SW - PW + KW <= W */
static void avg_interior(const pool2d_shape *s, int *a, int *b) {
    int e = s->W + s->PW - s->KW;
    int hi = e < 0 ? 0 : e / s->SW + 1, lo = (s->PW + s->SW - 1) / s->SW;
    if (hi > s->OW) hi = s->OW;
    *a = lo < hi ? lo : hi;
    *b = hi;
}

static inline void avg_fwd_one(const pool2d_shape *s, int inc, const float *xp, float *yr, int h0, int h1,
                               int ow) {
    int w0, w1;
    avg_window(ow, s->SW, s->PW, s->KW, s->W, &w0, &w1);
    float sum = 0.0f;
    for (int ih = h0; ih < h1; ih++)
        for (int iw = w0; iw < w1; iw++) sum += xp[(size_t)ih * s->W + iw];
    yr[ow] = sum / avg_divisor(s, inc, h0, h1, w0, w1);
}

static void avg_fwd_plane_ref(const pool2d_shape *s, int inc, const float *xp, float *yp) {
    for (int oh = 0; oh < s->OH; oh++) {
        int h0, h1;
        avg_window(oh, s->SH, s->PH, s->KH, s->H, &h0, &h1);
        for (int ow = 0; ow < s->OW; ow++) avg_fwd_one(s, inc, xp, yp + (size_t)oh * s->OW, h0, h1, ow);
    }
}

NN_CELL void avg_fwd_plane_k(const pool2d_shape *s, int inc, int owa, int owb, const float *restrict xp,
                             float *restrict yp, const int SW) {
    const int m = owb - owa, KW = s->KW;
    for (int oh = 0; oh < s->OH; oh++) {
        int h0, h1;
        avg_window(oh, s->SH, s->PH, s->KH, s->H, &h0, &h1);
        float *yr = yp + (size_t)oh * s->OW;
        if (m > 0) {
            float *restrict acc = yr + owa;
            for (int j = 0; j < m; j++) acc[j] = 0.0f;
            for (int ih = h0; ih < h1; ih++) {
                const float *restrict xr = xp + (size_t)ih * s->W + (owa * SW - s->PW);
                for (int kw = 0; kw < KW; kw++)
                    for (int j = 0; j < m; j++) acc[j] += xr[kw + j * SW];
            }
            const float d = inc ? (float)(s->KH * KW) : (float)((h1 - h0) * KW);
            for (int j = 0; j < m; j++) acc[j] = acc[j] / d;
        }
        for (int ow = 0; ow < owa; ow++) avg_fwd_one(s, inc, xp, yr, h0, h1, ow);
        for (int ow = owb; ow < s->OW; ow++) avg_fwd_one(s, inc, xp, yr, h0, h1, ow);
    }
}

NN_MULTI_VOID(avg_fwd_planes, (const pool2d_shape *s, int inc, long long p0, long long p1, const float *x,
                               float *y), (s, inc, p0, p1, x, y), {
    const size_t in_sz = (size_t)s->H * s->W, out_sz = (size_t)s->OH * s->OW;
    int owa, owb;
    avg_interior(s, &owa, &owb);
    for (long long p = p0; p < p1; p++) {
        const float *xp = x + p * in_sz;
        float *yp = y + p * out_sz;
        if (s->SW == 1) avg_fwd_plane_k(s, inc, owa, owb, xp, yp, 1);
        else if (s->SW == 2) avg_fwd_plane_k(s, inc, owa, owb, xp, yp, 2);
        else avg_fwd_plane_k(s, inc, owa, owb, xp, yp, s->SW);
    }
})

static int avg_threads(const pool2d_shape *s) {
    return (long long)s->N * s->C * s->H * s->W < 32768 ? 1 : nn_threads();
}

int avgpool2d_forward(const pool2d_shape *s, int count_include_pad, const float *x, float *y) {
    if (!shape_ok(s)) return NN_EBADSHAPE;
    const long long planes = (long long)s->N * s->C;
    const size_t in_sz = (size_t)s->H * s->W, out_sz = (size_t)s->OH * s->OW;
    const int inc = count_include_pad != 0, ref = nn_get_reference();
    int nt = avg_threads(s);
#pragma omp parallel num_threads(nt)
    {
        long long p0 = planes * NN_THREAD_ID() / NN_THREAD_COUNT();
        long long p1 = planes * (NN_THREAD_ID() + 1) / NN_THREAD_COUNT();
        if (ref)
            for (long long p = p0; p < p1; p++) avg_fwd_plane_ref(s, inc, x + p * in_sz, y + p * out_sz);
        else
            avg_fwd_planes(s, inc, p0, p1, x, y);
    }
    return NN_OK;
}

static inline void avg_bwd_one(const pool2d_shape *s, int inc, const float *dyr, float *dxp, int h0, int h1,
                               int ow) {
    int w0, w1;
    avg_window(ow, s->SW, s->PW, s->KW, s->W, &w0, &w1);
    const float g = dyr[ow] / avg_divisor(s, inc, h0, h1, w0, w1);
    for (int ih = h0; ih < h1; ih++)
        for (int iw = w0; iw < w1; iw++) dxp[(size_t)ih * s->W + iw] += g;
}

static void avg_bwd_plane_ref(const pool2d_shape *s, int inc, const float *dyp, float *dxp) {
    memset(dxp, 0, sizeof(float) * (size_t)s->H * s->W);
    for (int oh = 0; oh < s->OH; oh++) {
        int h0, h1;
        avg_window(oh, s->SH, s->PH, s->KH, s->H, &h0, &h1);
        for (int ow = 0; ow < s->OW; ow++) avg_bwd_one(s, inc, dyp + (size_t)oh * s->OW, dxp, h0, h1, ow);
    }
}

#define AVG_CHUNK 256 /* interior outputs of a row scattered per pass (their dy / divisor on the stack) */

NN_CELL void avg_bwd_plane_k(const pool2d_shape *s, int inc, int owa, int owb, const float *restrict dyp,
                             float *restrict dxp, const int SW) {
    const int KW = s->KW;
    float g[AVG_CHUNK];
    memset(dxp, 0, sizeof(float) * (size_t)s->H * s->W);
    for (int oh = 0; oh < s->OH; oh++) {
        int h0, h1;
        avg_window(oh, s->SH, s->PH, s->KH, s->H, &h0, &h1);
        const float *dyr = dyp + (size_t)oh * s->OW;
        const float d = inc ? (float)(s->KH * KW) : (float)((h1 - h0) * KW);
        for (int c0 = owa; c0 < owb; c0 += AVG_CHUNK) {
            const int m = owb - c0 < AVG_CHUNK ? owb - c0 : AVG_CHUNK;
            for (int j = 0; j < m; j++) g[j] = dyr[c0 + j] / d;
            for (int ih = h0; ih < h1; ih++) {
                float *restrict dr = dxp + (size_t)ih * s->W + (c0 * SW - s->PW);
                if (SW == 2 && KW == 2) { /* 2x2/2: one pass writes both taps of a row */
                    for (int j = 0; j < m; j++) {
                        dr[2 * j] += g[j];
                        dr[2 * j + 1] += g[j];
                    }
                    continue;
                }
                for (int kw = 0; kw < KW; kw++)
                    for (int j = 0; j < m; j++) dr[kw + j * SW] += g[j];
            }
        }
        for (int ow = 0; ow < owa; ow++) avg_bwd_one(s, inc, dyr, dxp, h0, h1, ow);
        for (int ow = owb; ow < s->OW; ow++) avg_bwd_one(s, inc, dyr, dxp, h0, h1, ow);
    }
}

NN_MULTI_VOID(avg_bwd_planes, (const pool2d_shape *s, int inc, long long p0, long long p1, const float *dy,
                               float *dx), (s, inc, p0, p1, dy, dx), {
    const size_t in_sz = (size_t)s->H * s->W, out_sz = (size_t)s->OH * s->OW;
    int owa, owb;
    avg_interior(s, &owa, &owb);
    for (long long p = p0; p < p1; p++) {
        const float *dyp = dy + p * out_sz;
        float *dxp = dx + p * in_sz;
        if (s->SW == 1) avg_bwd_plane_k(s, inc, owa, owb, dyp, dxp, 1);
        else if (s->SW == 2) avg_bwd_plane_k(s, inc, owa, owb, dyp, dxp, 2);
        else avg_bwd_plane_k(s, inc, owa, owb, dyp, dxp, s->SW);
    }
})

int avgpool2d_backward(const pool2d_shape *s, int count_include_pad, const float *dy, float *dx) {
    if (!shape_ok(s)) return NN_EBADSHAPE;
    const long long planes = (long long)s->N * s->C;
    const size_t in_sz = (size_t)s->H * s->W, out_sz = (size_t)s->OH * s->OW;
    const int inc = count_include_pad != 0, ref = nn_get_reference();
    int nt = avg_threads(s);
#pragma omp parallel num_threads(nt)
    {
        long long p0 = planes * NN_THREAD_ID() / NN_THREAD_COUNT();
        long long p1 = planes * (NN_THREAD_ID() + 1) / NN_THREAD_COUNT();
        if (ref)
            for (long long p = p0; p < p1; p++) avg_bwd_plane_ref(s, inc, dy + p * out_sz, dx + p * in_sz);
        else
            avg_bwd_planes(s, inc, p0, p1, dy, dx);
    }
    return NN_OK;
}

/*
 * Global average pooling. Forward sums a plane in 16 interleaved partial sums (element j goes
 * to sum j mod 16), folded pairwise (8, 4, 2, 1) at the end, then divides by H W: a fixed order,
 * so the result does not depend on the thread count, and the loop vectorizes (one AVX-512
 * vector, two AVX2, four SSE vectors of partial sums) with the same bits at every level. The
 * reference path sums each plane in order in double.
 */
#define GAP_LANES 16 /* the fold below is written for 16 */

NN_MULTI_VOID(gap_fwd_planes, (long long p0, long long p1, size_t hw, const float *x, float *y),
              (p0, p1, hw, x, y), {
    for (long long p = p0; p < p1; p++) {
        const float *restrict xp = x + p * hw;
        float acc[GAP_LANES];
        for (int l = 0; l < GAP_LANES; l++) acc[l] = 0.0f;
        size_t j = 0;
        for (; j + GAP_LANES <= hw; j += GAP_LANES)
            for (int l = 0; l < GAP_LANES; l++) acc[l] += xp[j + l];
        if (j < hw) { /* the tail, zero-padded: adding +0 changes no partial sum (none is -0) */
            float tail[GAP_LANES];
            for (int l = 0; l < GAP_LANES; l++) tail[l] = 0.0f;
            memcpy(tail, xp + j, sizeof(float) * (hw - j));
            for (int l = 0; l < GAP_LANES; l++) acc[l] += tail[l];
        }
        for (int l = 0; l < 8; l++) acc[l] += acc[l + 8]; /* the fold, unrolled (fixed trip counts) */
        for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
        for (int l = 0; l < 2; l++) acc[l] += acc[l + 2];
        acc[0] += acc[1];
        y[p] = acc[0] / (float)hw;
    }
})

static int gap_dims_ok(int N, int C, int H, int W) {
    return N > 0 && C > 0 && H > 0 && W > 0;
}

int global_avgpool_forward(int N, int C, int H, int W, const float *x, float *y) {
    if (!gap_dims_ok(N, C, H, W)) return NN_EBADSHAPE;
    const long long planes = (long long)N * C;
    const size_t hw = (size_t)H * W;
    const int ref = nn_get_reference();
    int nt = (double)planes * hw < 32768 ? 1 : nn_threads();
#pragma omp parallel num_threads(nt)
    {
        long long p0 = planes * NN_THREAD_ID() / NN_THREAD_COUNT();
        long long p1 = planes * (NN_THREAD_ID() + 1) / NN_THREAD_COUNT();
        if (ref) {
            for (long long p = p0; p < p1; p++) {
                double sum = 0.0;
                for (size_t j = 0; j < hw; j++) sum += x[p * hw + j];
                y[p] = (float)(sum / (double)hw);
            }
        } else {
            gap_fwd_planes(p0, p1, hw, x, y);
        }
    }
    return NN_OK;
}

NN_MULTI_VOID(gap_bwd_planes, (long long p0, long long p1, size_t hw, const float *dy, float *dx),
              (p0, p1, hw, dy, dx), {
    for (long long p = p0; p < p1; p++) {
        const float g = dy[p] / (float)hw;
        float *restrict dxp = dx + p * hw;
        for (size_t j = 0; j < hw; j++) dxp[j] = g;
    }
})

int global_avgpool_backward(int N, int C, int H, int W, const float *dy, float *dx) {
    if (!gap_dims_ok(N, C, H, W)) return NN_EBADSHAPE;
    const long long planes = (long long)N * C;
    const size_t hw = (size_t)H * W;
    int nt = (double)planes * hw < 32768 ? 1 : nn_threads();
#pragma omp parallel num_threads(nt)
    {
        long long p0 = planes * NN_THREAD_ID() / NN_THREAD_COUNT();
        long long p1 = planes * (NN_THREAD_ID() + 1) / NN_THREAD_COUNT();
        gap_bwd_planes(p0, p1, hw, dy, dx);
    }
    return NN_OK;
}
