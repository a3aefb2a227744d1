/*
 * Mixed-precision 2-D convolution: the products in bf16 with fp32 sums (AVX512_BF16's
 * vdpbf16ps tiles of gemm_bf16.c); the bias, the bias gradient, the sums of the weight
 * gradient's partials and col2im stay fp32. Shapes and layouts as conv2d_forward/_backward:
 *   x[N,C,H,W], w[OC,C/G,KH,KW], b[OC] or NULL, y/dy[N,OC,OH,OW]; dx, db NULL to skip.
 * Groups run one after another (each on its C/G inputs, OC/G outputs, images' strides passed
 * along); a depthwise convolution (G == C > 1) is no GEMM and stays with conv2d_forward: these
 * return NN_EBADSHAPE for it.
 *
 * Forward (any stride) and, for stride 1 with P <= K - 1, both gradients: an implicit GEMM
 * (no columns built; see "implicit GEMM" below). Other backward passes: im2col, in chunks of
 * nb whole images (conv.c's chunk_images; L = nb OH OW columns), one thread per chunk:
 *   dW_c[OC, CKK] = dy_c[OC, L] cols^T[L, CKK]   dy_c and cols packed per chunk
 *   dcols[CKK, L] = W^T[CKK, OC] dy_c[OC, L]     W^T packed once per call -> col2im
 * Operands are rounded to bf16 once, when copied or packed (round to nearest even). The weight
 * and bias gradients have one partial per chunk, summed in chunk order, so no result depends
 * on the thread count. NN_EUNSUPPORTED where the CPU lacks AVX512_BF16 (or SPARK_NN_ISA caps
 * it), except in the scalar reference mode (nn_set_reference), which runs anywhere.
 *
 * Workspace (floats; n uint16 take (n + 1) / 2 floats; every piece starts on a 64-byte
 * boundary of ws), see conv2d_bf16_workspace_size: the larger of the forward's (imp_fwd_floats)
 * and the backward's (imp_bwd_floats, or for the im2col backward: shared W^T and W^T packed, dW
 * and db partials; per thread cols, dy_c, cols^T packed, dy_c packed as rows and as columns).
 */
#include <string.h>
#include "nn_internal.h"

static size_t up16(size_t n) { return (n + 15) & ~(size_t)15; }
static size_t halves(size_t n) { return up16((n + 1) / 2); } /* floats that hold n uint16 */

typedef struct {
    int nb, nchunks, CKK, OHW, L; /* L: columns of a full chunk */
} bf_geom;

static bf_geom geom_of(const conv2d_shape *t) {
    bf_geom g;
    g.nb = nn_conv_chunk_images(t);
    g.nchunks = (t->N + g.nb - 1) / g.nb;
    g.CKK = t->C * t->KH * t->KW;
    g.OHW = t->OH * t->OW;
    g.L = g.nb * g.OHW;
    return g;
}

static size_t bwd_thread_floats(const conv2d_shape *t, const bf_geom *g) {
    return up16((size_t)g->CKK * g->L) + up16((size_t)t->OC * g->L) + halves(nn_bf16_pack_b_size(g->L, g->CKK)) +
           halves(nn_bf16_pack_a_size(t->OC, g->L)) + halves(nn_bf16_pack_b_size(t->OC, g->L));
}

static size_t bwd_shared_floats(const conv2d_shape *t, const bf_geom *g) {
    return up16((size_t)g->CKK * t->OC) + halves(nn_bf16_pack_a_size(g->CKK, t->OC)) +
           up16((size_t)g->nchunks * t->OC * g->CKK) + up16((size_t)g->nchunks * t->OC);
}


/* One group's backward by im2col (t has G = 1): images xs floats apart in x and dx, ys in dy. */
static void backward_one(const conv2d_shape *t, const float *x, size_t xs, const float *w, const float *dy,
                         size_t ys, float *dx, float *dw, float *db, float *ws, int nt) {
    const bf_geom g = geom_of(t);
    const int OC = t->OC, CKK = g.CKK, OHW = g.OHW;
    const size_t xsz = (size_t)t->C * t->H * t->W, nw = (size_t)OC * CKK;
    float *wt = ws; /* [CKK, OC] */
    uint16_t *apt = (uint16_t *)(void *)(wt + up16((size_t)CKK * OC));
    float *dwp = (float *)(void *)apt + halves(nn_bf16_pack_a_size(CKK, OC)); /* [nchunks, OC CKK] */
    float *dbp = dwp + up16((size_t)g.nchunks * nw);                           /* [nchunks, OC] */
    float *base = dbp + up16((size_t)g.nchunks * OC);
    const size_t ptf = bwd_thread_floats(t, &g);
    if (dx) {
        for (int oc = 0; oc < OC; oc++)
            for (int k = 0; k < CKK; k++) wt[(size_t)k * OC + oc] = w[(size_t)oc * CKK + k];
        nn_bf16_pack_a(CKK, OC, wt, OC, apt);
    }
    int ntc = nt > g.nchunks ? g.nchunks : nt;
#pragma omp parallel num_threads(ntc)
    {
        float *cols = base + (size_t)NN_THREAD_ID() * ptf;
        float *buf = cols + up16((size_t)CKK * g.L);
        uint16_t *bpc = (uint16_t *)(void *)(buf + up16((size_t)OC * g.L));
        uint16_t *apd = (uint16_t *)(void *)((float *)(void *)bpc + halves(nn_bf16_pack_b_size(g.L, CKK)));
        uint16_t *bpd = (uint16_t *)(void *)((float *)(void *)apd + halves(nn_bf16_pack_a_size(OC, g.L)));
#pragma omp for schedule(static)
        for (int ch = 0; ch < g.nchunks; ch++) {
            const int n0 = ch * g.nb, nc = nn_chunk_len(t->N, ch, g.nb), L = nc * OHW;
            for (int j = 0; j < nc; j++) {
                nn_conv_im2col(t, x + (size_t)(n0 + j) * xs, cols + (size_t)j * OHW, L);
                for (int oc = 0; oc < OC; oc++)
                    memcpy(buf + (size_t)oc * L + (size_t)j * OHW, dy + (size_t)(n0 + j) * ys + (size_t)oc * OHW,
                           sizeof(float) * OHW);
            }
            nn_bf16_pack_a(OC, L, buf, L, apd);
            nn_bf16_pack_b(1, L, CKK, cols, L, bpc); /* B[l][k] = cols[k][l] */
            nn_gemm_bf16(OC, CKK, L, apd, bpc, dwp + (size_t)ch * nw, CKK, 0);
            nn_conv_chunk_db(t, dy, ys, n0, nc, dbp + (size_t)ch * OC);
            if (dx) { /* cols are packed: their room takes dcols */
                nn_bf16_pack_b(0, OC, L, buf, L, bpd);
                nn_gemm_bf16(CKK, L, OC, apt, bpd, cols, L, 0);
                for (int j = 0; j < nc; j++) {
                    float *dxi = dx + (size_t)(n0 + j) * xs;
                    memset(dxi, 0, sizeof(float) * xsz);
                    nn_conv_col2im(t, cols + (size_t)j * OHW, L, dxi);
                }
            }
        }
    }
    nn_conv_sum_partials(g.nchunks, nw, dwp, dw, OC, dbp, db, nt);
}

/* ---------------------------------------------------------------- implicit GEMM
 * Forward (any stride): y^T[p, oc] = sum over k pairs of X'(p, kk) W'(kk, oc), no columns built.
 * Each image is copied once into a zero-padded bf16 copy with channels interleaved in pairs,
 * one 32-bit word per (channel pair cc, padded row, padded column): word (cc Hp + h) Wp + w
 * holds channels 2cc and 2cc + 1 (0 past C). A k pair kk = (kh KW + kw) Cp2 + cc is then one
 * word at akoff[kk] + aoff[p], akoff[kk] = cc Hp Wp + kh Wp + kw, aoff[p] = oh SH Wp + ow SW,
 * and the weights are packed once per call in the same k order; the tiles store y^T, which is
 * transposed into y with the bias.
 * Weight gradient (stride 1): dW^T[k, oc] = sum over position pairs of X(k, pp) dy^T(pp, oc),
 * k = (c, kh, kw) read in place from a chunk's plain bf16 padded copies: a position pair
 * (ow, ow + 1) of one row is two adjacent values, at aoff[k] + akoff[pp]. The positions run on a
 * grid of even width OWe (an odd OW gets one more column, whose dy is 0), so the pairs never
 * straddle a row. One partial per chunk, summed in chunk order.
 * Input gradient (stride 1, P <= K - 1): the forward of dy padded by K - 1 - P with the
 * flipped, transposed weights (conv.c's dx_shape). */
typedef struct {
    int Cp2, Hp, Wp, KK, Kp2; /* channel pairs, padded plane, taps, k pairs */
    size_t plane;             /* Hp Wp */
} imp_geom;

static imp_geom imp_of(const conv2d_shape *t) {
    imp_geom g;
    g.Cp2 = (t->C + 1) / 2;
    g.Hp = t->H + 2 * t->PH;
    g.Wp = t->W + 2 * t->PW;
    g.plane = (size_t)g.Hp * g.Wp;
    g.KK = t->KH * t->KW;
    g.Kp2 = g.KK * g.Cp2;
    return g;
}

static size_t imp_fwd_floats(const conv2d_shape *t, int nt) {
    const imp_geom g = imp_of(t);
    const size_t ohw = (size_t)t->OH * t->OW;
    return up16((size_t)2 * g.Kp2 * t->OC) + halves(nn_bf16_pack_b_size(2 * g.Kp2, t->OC)) + up16(ohw) +
           up16((size_t)g.Kp2) + (size_t)nt * (up16((size_t)g.Cp2 * g.plane) + up16(ohw * t->OC));
}

/* the offsets (uint16 units) of a padded copy, and of a chunk's copies side by side, fit an int */
static int imp_fits(const conv2d_shape *t) {
    const imp_geom g = imp_of(t);
    return 2LL * (g.Cp2 + 1) * (long long)g.plane < 0x7fffffffLL;
}

static bf_geom imp_dw_geom(const conv2d_shape *t);

static int imp_bwd_ok(const conv2d_shape *t) {
    if (!(t->SH == 1 && t->SW == 1 && t->PH <= t->KH - 1 && t->PW <= t->KW - 1)) return 0;
    const conv2d_shape d = nn_conv_dx_shape(t);
    return imp_fits(&d) && (long long)imp_dw_geom(t).nb * t->C * (long long)imp_of(t).plane + 64 < 0x7fffffffLL;
}

/* The implicit weight gradient's chunks: conv.c's, but at most BF16_PARTIAL_FLOATS of partials
 * (an even number of chunks, at least 2): a layer of many channels on small planes (ResNet's
 * 512 -> 512 on 4x4: 2.4M weights, 22 chunks of 3 images) spent more on writing and summing
 * its partials than on its products. Fixed by the shape alone, as the sums' order must be. */
#define BF16_PARTIAL_FLOATS (8u << 20)
static bf_geom imp_dw_geom(const conv2d_shape *t) {
    bf_geom g = geom_of(t);
    const size_t nw = (size_t)g.CKK * t->OC;
    int most = (int)(BF16_PARTIAL_FLOATS / (nw ? nw : 1));
    most = most < 2 ? 2 : most & ~1;
    if (g.nchunks > most) {
        g.nb = (t->N + most - 1) / most;
        g.nchunks = (t->N + g.nb - 1) / g.nb;
        g.L = g.nb * g.OHW;
    }
    return g;
}

static size_t imp_dw_floats(const conv2d_shape *t, int nt) {
    const imp_geom g = imp_of(t);
    const bf_geom b = imp_dw_geom(t);
    const size_t qe = (size_t)t->OH * (t->OW + (t->OW & 1)), pad = (size_t)t->C * g.plane;
    const size_t ckk = (size_t)b.CKK;
    return up16((size_t)b.nchunks * ckk * t->OC) + up16((size_t)b.nchunks * t->OC) + up16(ckk) + up16(b.nb * qe / 2) +
           (size_t)nt * (halves(b.nb * pad + 64) + up16((size_t)t->OC * b.nb * qe) +
                         halves(nn_bf16_pack_b_size((int)(b.nb * qe), t->OC)));
}

static size_t imp_bwd_floats(const conv2d_shape *t, int nt) {
    const conv2d_shape d = nn_conv_dx_shape(t);
    size_t dw = imp_dw_floats(t, nt), dx = up16((size_t)t->C * t->OC * t->KH * t->KW) + imp_fwd_floats(&d, nt);
    return dw > dx ? dw : dx;
}

static void imp_forward(const conv2d_shape *t, const float *x, size_t xs, const float *w, const float *b, float *y,
                        size_t ys, float *ws, int nt) {
    const imp_geom g = imp_of(t);
    const int OC = t->OC, C = t->C, OHW = t->OH * t->OW, K2 = 2 * g.Kp2;
    float *wr = ws; /* [OC, K2]: column 2 kk + h = channel 2 cc + h of tap kk / Cp2 */
    uint16_t *bw = (uint16_t *)(void *)(wr + up16((size_t)K2 * OC));
    int *aoff = (int *)(void *)((float *)(void *)bw + halves(nn_bf16_pack_b_size(K2, OC)));
    int *akoff = aoff + up16((size_t)OHW);
    float *base = (float *)(void *)(akoff + up16((size_t)g.Kp2));
    const size_t ptf = up16((size_t)g.Cp2 * g.plane) + up16((size_t)OHW * OC);
    for (int tap = 0; tap < g.KK; tap++)
        for (int cc = 0; cc < g.Cp2; cc++) /* uint16 units: two per word */
            akoff[tap * g.Cp2 + cc] = 2 * (int)((size_t)cc * g.plane + (size_t)(tap / t->KW) * g.Wp + tap % t->KW);
    for (int p = 0; p < OHW; p++) aoff[p] = 2 * ((p / t->OW) * t->SH * g.Wp + (p % t->OW) * t->SW);
    /* w's rows in that order (reads within a row; the columns' order, oc inner, read a line per
     * value), then packed as B^T (16 x 16 in registers) */
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int oc = 0; oc < OC; oc++) {
        const float *wo = w + (size_t)oc * C * g.KK;
        float *row = wr + (size_t)oc * K2;
        for (int tap = 0; tap < g.KK; tap++)
            for (int c = 0; c < 2 * g.Cp2; c++) row[2 * tap * g.Cp2 + c] = c < C ? wo[(size_t)c * g.KK + tap] : 0.0f;
    }
    nn_bf16_pack_b(1, K2, OC, wr, K2, bw);
    const int nti = nt > t->N ? t->N : nt;
#pragma omp parallel num_threads(nti)
    {
        uint32_t *xp = (uint32_t *)(void *)(base + (size_t)NN_THREAD_ID() * ptf);
        float *yt = (float *)(void *)xp + up16((size_t)g.Cp2 * g.plane); /* [OHW, OC] */
        memset(xp, 0, sizeof(uint32_t) * (size_t)g.Cp2 * g.plane);     /* borders */
#pragma omp for schedule(static)
        for (int n = 0; n < t->N; n++) {
            const float *xi = x + (size_t)n * xs;
            for (int cc = 0; cc < g.Cp2; cc++)
                for (int h = 0; h < t->H; h++) {
                    const float *lo = xi + ((size_t)(2 * cc) * t->H + h) * t->W;
                    const float *hi = 2 * cc + 1 < C ? lo + (size_t)t->H * t->W : NULL;
                    nn_bf16_pair_rows(t->W, lo, hi, xp + ((size_t)cc * g.Hp + h + t->PH) * g.Wp + t->PW);
                }
            nn_gemm_bf16_offsets(OHW, OC, g.Kp2, (const uint16_t *)(const void *)xp, aoff, akoff, bw, yt, OC);
            nn_transpose_bias(OHW, OC, yt, OC, b, y + (size_t)n * ys, OHW);
        }
    }
}

static void imp_backward(const conv2d_shape *t, const float *x, size_t xs, const float *w, const float *dy, size_t ys,
                         float *dx, float *dw, float *db, float *ws, int nt) {
    const imp_geom g = imp_of(t);
    const bf_geom bg = imp_dw_geom(t);
    const int OC = t->OC, C = t->C, CKK = bg.CKK, OH = t->OH, OW = t->OW, OWe = OW + (OW & 1);
    const int qe = OH * OWe, qe2 = qe / 2;
    const size_t pad = (size_t)C * g.plane, nw = (size_t)OC * CKK;
    float *dwt = ws;                                    /* [nchunks, CKK, OC] */
    float *dbp = dwt + up16((size_t)bg.nchunks * nw);   /* [nchunks, OC] */
    int *aoff = (int *)(void *)(dbp + up16((size_t)bg.nchunks * OC));
    int *akoff = aoff + up16((size_t)CKK);
    float *base = (float *)(void *)(akoff + up16((size_t)bg.nb * qe2));
    const size_t xbf = halves(bg.nb * pad + 64), dyf = up16((size_t)OC * bg.nb * qe);
    const size_t ptf = xbf + dyf + halves(nn_bf16_pack_b_size(bg.nb * qe, OC));
    for (int k = 0; k < CKK; k++) {
        const int c = k / g.KK, kh = (k / t->KW) % t->KH, kw = k % t->KW;
        aoff[k] = (c * g.Hp + kh) * g.Wp + kw;
    }
    for (int pp = 0; pp < bg.nb * qe2; pp++) {
        const int j = pp / qe2, r = pp % qe2;
        akoff[pp] = (int)(j * pad) + (r / (OWe / 2)) * g.Wp + 2 * (r % (OWe / 2));
    }
    int ntc = nt > bg.nchunks ? bg.nchunks : nt;
#pragma omp parallel num_threads(ntc)
    {
        uint16_t *xb = (uint16_t *)(void *)(base + (size_t)NN_THREAD_ID() * ptf);
        float *dye = base + (size_t)NN_THREAD_ID() * ptf + xbf; /* [OC, nc qe] */
        uint16_t *bpd = (uint16_t *)(void *)(dye + dyf);
        /* borders, and the slack the last odd column reads past the last image: zeros, or
         * finite values of earlier chunks (their dy is 0) */
        memset(xb, 0, sizeof(uint16_t) * (bg.nb * pad + 64));
#pragma omp for schedule(static)
        for (int ch = 0; ch < bg.nchunks; ch++) {
            const int n0 = ch * bg.nb, nc = nn_chunk_len(t->N, ch, bg.nb), L = nc * qe;
            for (int j = 0; j < nc; j++) {
                const float *xi = x + (size_t)(n0 + j) * xs, *dyi = dy + (size_t)(n0 + j) * ys;
                for (int c = 0; c < C; c++)
                    for (int h = 0; h < t->H; h++)
                        nn_bf16_row(t->W, xi + ((size_t)c * t->H + h) * t->W,
                                    xb + j * pad + ((size_t)c * g.Hp + h + t->PH) * g.Wp + t->PW);
                for (int oc = 0; oc < OC; oc++)
                    for (int oh = 0; oh < OH; oh++) {
                        float *d = dye + (size_t)oc * L + (size_t)j * qe + (size_t)oh * OWe;
                        memcpy(d, dyi + ((size_t)oc * OH + oh) * OW, sizeof(float) * OW);
                        if (OWe > OW) d[OW] = 0.0f;
                    }
            }
            nn_bf16_pack_b(1, L, OC, dye, L, bpd); /* B[q][oc] = dye[oc][q] */
            nn_gemm_bf16_offsets(CKK, OC, nc * qe2, xb, aoff, akoff, bpd, dwt + (size_t)ch * nw, OC);
            nn_conv_chunk_db(t, dy, ys, n0, nc, dbp + (size_t)ch * OC);
        }
    }
    nn_conv_sum_chunks_transposed(bg.nchunks, CKK, OC, dwt, dbp, dw, db, nt);
    if (dx) { /* the workspace is free again */
        const conv2d_shape d = nn_conv_dx_shape(t);
        const int KK = g.KK;
        float *wt = ws; /* [C, OC, KH, KW], flipped */
        nn_conv_flip_weights(OC, C, KK, w, wt);
        imp_forward(&d, dy, ys, wt, NULL, dx, xs, wt + up16((size_t)C * OC * KK), nt);
    }
}

size_t conv2d_bf16_workspace_size(const conv2d_shape *s, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (!nn_conv_shape_ok(s) || nn_conv_is_depthwise(s)) return 0;
    const conv2d_shape t = nn_conv_group_shape(s);
    const bf_geom g = geom_of(&t);
    size_t fwd = imp_fwd_floats(&t, nthreads);
    size_t bwd = imp_bwd_ok(&t) ? imp_bwd_floats(&t, nthreads)
                                : bwd_shared_floats(&t, &g) + (size_t)nthreads * bwd_thread_floats(&t, &g);
    return fwd > bwd ? fwd : bwd;
}

static int bf16_ready(const conv2d_shape *s, size_t ws_len, int nt) {
    if (!nn_conv_shape_ok(s) || nn_conv_is_depthwise(s)) return NN_EBADSHAPE;
    const conv2d_shape t = nn_conv_group_shape(s);
    if (!imp_fits(&t)) return NN_EBADSHAPE; /* images of over 2^30 values */
    if (!nn_get_reference() && !nn_bf16_level()) return NN_EUNSUPPORTED;
    if (ws_len < conv2d_bf16_workspace_size(s, nt)) return NN_EWORKSPACE;
    return NN_OK;
}

int conv2d_forward_bf16(const conv2d_shape *s, const float *x, const float *w, const float *b, float *y, float *ws,
                        size_t ws_len) {
    const int nt = nn_threads();
    const int rc = bf16_ready(s, ws_len, nt);
    if (rc != NN_OK) return rc;
    nn_conv_each_group_forward(s, imp_forward, x, w, b, y, ws, nt);
    return NN_OK;
}

int conv2d_backward_bf16(const conv2d_shape *s, const float *x, const float *w, const float *dy, float *dx, float *dw,
                         float *db, float *ws, size_t ws_len) {
    const int nt = nn_threads();
    const int rc = bf16_ready(s, ws_len, nt);
    if (rc != NN_OK) return rc;
    const conv2d_shape t = nn_conv_group_shape(s);
    nn_conv_each_group_backward(s, imp_bwd_ok(&t) ? imp_backward : backward_one, x, w, dy, dx, dw, db, ws, nt);
    return NN_OK;
}
