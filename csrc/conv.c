/*
 * 2-D convolution (cross-correlation, as in PyTorch) by im2col / col2im + sgemm.
 *   x[N,C,H,W], w[OC,C,KH,KW], b[OC] or NULL, y[N,OC,OH,OW]
 *   OH = (H + 2 PH - KH) / SH + 1, OW = (W + 2 PW - KW) / SW + 1 (zero padding)
 *   backward: dy[N,OC,OH,OW] -> dx[N,C,H,W] (NULL to skip), dw[OC,C,KH,KW], db[OC] (NULL to skip)
 *
 * Groups: each group runs the code below on its C/G input and OC/G output channels in place
 * (the images' strides passed along); depthwise (G == C > 1) has its own kernel (see below).
 * Stride 1 (direct_forward, direct_backward): no im2col. On a zero-padded copy of the image,
 * column k = (c, kh, kw) of output position p = (oh, ow) is the padded image at
 * poff[p] + koff[k] (poff[p] = oh Wp + ow, koff[k] = (c Hp + kh) Wp + kw), so the micro-kernel
 * of gemm_packed.c reads it in place: y^T[p, oc] = sum_k X(p, k) w^T[k, oc], with the output
 * positions as the tile's rows and the weights packed once per call, stored transposed into
 * y[oc, p]; small planes put several images' positions in one product (direct_images), and the
 * taps that read padding are skipped (tap_classes). dw^T[k, oc] = sum_p X(p, k) dy^T[p, oc] the
 * same way, its tiles stored transposed into dw's layout, in chunks of images (dw_plan); dx is
 * the forward of dy with the flipped, transposed weights.
 * Other strides (poff[p] = oh SH Wp + ow SW): the same direct forward and dw; dx from a chunk's
 * columns (w^T dy, dy read in place) and col2im (strided_dx). Unpadded images (1x1
 * convolutions) are read in place, no copy.
 * 3x3 stride-1 layers with enough channels and output positions (nn_wino_ok): Winograd
 * F(4x4, 3x3) for the forward and dx instead (conv_winograd.c, its own workspace, nn_wino_floats).
 * Tiny layers (fewer than NN_DIRECT_MIN_CKK column rows) and the scalar reference path:
 * im2col + sgemm. Work is cut into chunks of nb whole images (nb fixed by the
 * shape alone). Each thread builds the columns of a chunk, cols[C*KH*KW, nb*OH*OW], so one
 * GEMM covers the chunk with a long inner dimension; images of NN_PER_IMAGE_OHW outputs or
 * more get one GEMM each that reads and writes y and dy in place. On both paths weight/bias gradients go
 * to one partial per chunk and are summed in chunk order, so they are deterministic and
 * independent of the thread count.
 *
 * Workspace (floats), see conv2d_workspace_size: the larger of the direct paths' needs
 * (direct_floats, direct_backward_floats) and the im2col path's:
 *   per thread: cols[CKK * nb*OHW] + buf[OC * nb*OHW]
 *   shared:     dw partials[nchunks * OC*CKK] + db partials[nchunks * OC]
 */
#include <string.h>
#include "nn_internal.h"

/* Columns per chunk aim at this many floats (a long GEMM, measured best among 64K..512K on
 * the benchmark shapes), with at least NN_CONV_MIN_CHUNKS chunks so that small layers still
 * spread over the threads. Both depend on the shape only (see common.c). */
#define NN_CONV_MIN_CHUNKS 8
#define CONV_CHUNK_FLOATS (256 * 1024)
#define NN_DIRECT_MIN_CKK 32
/* im2col path: from this many outputs per image, one GEMM per image reads and writes y and dy
 * in place (no copy through a chunk buffer) */
#define NN_PER_IMAGE_OHW 256

static int dw_shape_ok(const conv2d_shape *s);
static int tap_classes_pay(const conv2d_shape *s);

int conv2d_shape_init(conv2d_shape *s) {
    if (s->N <= 0 || s->C <= 0 || s->H <= 0 || s->W <= 0 || s->OC <= 0 || s->KH <= 0 ||
        s->KW <= 0 || s->SH <= 0 || s->SW <= 0 || s->PH < 0 || s->PW < 0 || s->G < 1 ||
        s->C % s->G || s->OC % s->G)
        return NN_EBADSHAPE;
    int eh = s->H + 2 * s->PH - s->KH, ew = s->W + 2 * s->PW - s->KW;
    if (eh < 0 || ew < 0) return NN_EBADSHAPE;
    s->OH = eh / s->SH + 1;
    s->OW = ew / s->SW + 1;
    long long ckk = (long long)(s->C / s->G) * s->KH * s->KW, ohw = (long long)s->OH * s->OW;
    if (ckk * ohw > 0x7fffffffLL || (long long)s->OC * ohw > 0x7fffffffLL ||
        (long long)s->C * s->H * s->W > 0x7fffffffLL)
        return NN_EBADSHAPE;
    if (s->G > 1 && s->G == s->C && !dw_shape_ok(s)) return NN_EBADSHAPE; /* a plane's offsets fit an int */
    return NN_OK;
}

static int chunk_images(const conv2d_shape *s) {
    size_t per = (size_t)s->C * s->KH * s->KW * s->OH * s->OW;
    int nb = per >= CONV_CHUNK_FLOATS ? 1 : (int)(CONV_CHUNK_FLOATS / per);
    int cap = (s->N + NN_CONV_MIN_CHUNKS - 1) / NN_CONV_MIN_CHUNKS;
    if (nb > cap) nb = cap;
    int nchunks = (s->N + nb - 1) / nb;
    return (s->N + nchunks - 1) / nchunks; /* even out the chunks */
}

/* Stride 1: the zero-padded image [C, Hp, Wp], one per thread. */
static size_t padded_floats(const conv2d_shape *s) {
    return (size_t)s->C * (s->H + 2 * s->PH) * (s->W + 2 * s->PW);
}

static size_t per_thread_floats(const conv2d_shape *s, int nb) {
    size_t cols = (size_t)nb * s->OH * s->OW;
    return cols * ((size_t)s->C * s->KH * s->KW + s->OC);
}


/* Columns of one image [C,H,W] into cols (leading dimension ld). */
static void im2col(const conv2d_shape *s, const float *x, float *cols, size_t ld) {
    const int H = s->H, W = s->W, OH = s->OH, OW = s->OW;
    for (int c = 0; c < s->C; c++)
        for (int kh = 0; kh < s->KH; kh++)
            for (int kw = 0; kw < s->KW; kw++) {
                float *dst = cols + (size_t)((c * s->KH + kh) * s->KW + kw) * ld;
                /* ow range whose input column is inside the image */
                int lo = s->PW - kw > 0 ? (s->PW - kw + s->SW - 1) / s->SW : 0;
                int hi = (W - 1 + s->PW - kw) / s->SW + 1; /* exclusive */
                if (W - 1 + s->PW - kw < 0) hi = 0;
                if (hi > OW) hi = OW;
                if (lo > hi) lo = hi;
                for (int oh = 0; oh < OH; oh++) {
                    float *d = dst + (size_t)oh * OW;
                    int ih = oh * s->SH - s->PH + kh;
                    if (ih < 0 || ih >= H) {
                        memset(d, 0, sizeof(float) * OW);
                        continue;
                    }
                    const float *row = x + ((size_t)c * H + ih) * W;
                    const int off = kw - s->PW; /* input column of ow is ow*SW + off */
                    for (int ow = 0; ow < lo; ow++) d[ow] = 0.0f;
                    if (s->SW == 1) {
                        if (hi > lo) memcpy(d + lo, row + lo + off, sizeof(float) * (hi - lo));
                    } else {
                        for (int ow = lo; ow < hi; ow++) d[ow] = row[ow * s->SW + off];
                    }
                    for (int ow = hi; ow < OW; ow++) d[ow] = 0.0f;
                }
            }
}

/* Adds columns back into one image dx [C,H,W] (the adjoint of im2col). */
static void col2im(const conv2d_shape *s, const float *cols, size_t ld, float *dx) {
    const int H = s->H, W = s->W, OH = s->OH, OW = s->OW;
    for (int c = 0; c < s->C; c++)
        for (int kh = 0; kh < s->KH; kh++)
            for (int kw = 0; kw < s->KW; kw++) {
                const float *src = cols + (size_t)((c * s->KH + kh) * s->KW + kw) * ld;
                int lo = s->PW - kw > 0 ? (s->PW - kw + s->SW - 1) / s->SW : 0;
                int hi = (W - 1 + s->PW - kw) / s->SW + 1;
                if (W - 1 + s->PW - kw < 0) hi = 0;
                if (hi > OW) hi = OW;
                if (lo > hi) lo = hi;
                for (int oh = 0; oh < OH; oh++) {
                    int ih = oh * s->SH - s->PH + kh;
                    if (ih < 0 || ih >= H) continue;
                    const float *sr = src + (size_t)oh * OW;
                    float *row = dx + ((size_t)c * H + ih) * W;
                    const int off = kw - s->PW;
                    for (int ow = lo; ow < hi; ow++) row[ow * s->SW + off] += sr[ow];
                }
            }
}

/* Enough column rows to beat im2col (see NN_DIRECT_MIN_CKK), and the padded image's offsets
 * fit an int. Any stride: output position p reads from poff[p] = oh SH Wp + ow SW on (strided
 * 3x3 64->128 on 32x32: 13.8 ms by im2col + sgemm, torch 8.3 ms). */
static int direct_forward_ok(const conv2d_shape *s) {
    long long padded = (long long)s->C * (s->H + 2LL * s->PH) * (s->W + 2LL * s->PW);
    return s->C * s->KH * s->KW >= NN_DIRECT_MIN_CKK && padded + 2 * NN_PACK_NR < 0x7fffffffLL;
}

/* k in blocks of TAP_CB channels, taps-major inside a block (k = (cb, kh, kw, c)): a tile's rows
 * reuse a block's planes over its taps while they are in L1 (taps-major over all channels read a
 * new plane at every k: slower than no skipping at all) */
#define TAP_CB 32
#define TAP_BLOCKS(C) (((C) + TAP_CB - 1) / TAP_CB)

/* direct_forward's images per product: small planes put several images' positions in the
 * tiles' rows (at least NN_DIRECT_MIN_ROWS), where one image's 16 positions on a 4x4 plane made
 * one tile of 14 rows and one of 2 (the weights streamed once per image). */
#define NN_DIRECT_MIN_ROWS 56
static int direct_images(const conv2d_shape *s) {
    const int OHW = s->OH * s->OW;
    int nb = OHW >= NN_DIRECT_MIN_ROWS ? 1 : (NN_DIRECT_MIN_ROWS + OHW - 1) / OHW;
    if (nb > s->N) nb = s->N;
    while (nb > 1 && (long long)nb * padded_floats(s) >= 0x7fffffffLL) nb--;
    return nb;
}

/* Floats direct_forward needs: per thread the padded copies of direct_images, then w^T packed,
 * the column offsets koff (ints), the position offsets poff and the output offsets yoff (ints),
 * the positions by class and the classes' runs (ints, see tap_classes), and where taps are
 * skipped w in their order and that order (ints). */
static size_t direct_floats(const conv2d_shape *s, int nt) {
    const int CKK = s->C * s->KH * s->KW, nb = direct_images(s), OHW = s->OH * s->OW;
    return (size_t)nt * nb * padded_floats(s) + nn_packed_size(CKK, s->OC) + CKK + 2 * (size_t)nb * OHW +
           (size_t)OHW * (4 + 2 * s->KH * TAP_BLOCKS(s->C)) + 6 * (size_t)(s->OH + s->OW + 2) +
           (tap_classes_pay(s) ? (size_t)(s->OC + 1) * CKK : 0);
}

/* Taps that miss the padding. Output row o reads input rows o S + k - P of its taps k, which
 * are real rows for k in [lo, hi); the same for columns. Positions whose row and column ranges
 * are equal form a class; a class's taps are [khlo, khhi) x [kwlo, kwhi), which in the taps-major
 * k order (k = (kh KW + kw) C + c) are one run of k per kh. Skipping the other taps skips
 * products with the padding's zeros: 31 % of the work on 4x4 planes, 16 % on 8x8 (3x3,
 * padding 1). Used from TAP_CLASSES_MIN_SKIP of the work skipped. */
#define TAP_CLASSES_MIN_SKIP 0.05
/* k's channel c and tap t in the taps-major order inside blocks of TAP_CB channels */
static void tap_block_of(int C, int KK, int k, int *c, int *t) {
    const int cb = k / (TAP_CB * KK), cbn = C - cb * TAP_CB < TAP_CB ? C - cb * TAP_CB : TAP_CB;
    const int r = k - cb * TAP_CB * KK;
    *c = cb * TAP_CB + r % cbn;
    *t = r / cbn;
}
static void tap_range(int o, int S, int P, int K, int H, int *lo, int *hi) {
    const int a = P - o * S, b = H + P - o * S;
    *lo = a > 0 ? a : 0;
    *hi = b < K ? b : K;
}

static int tap_classes_pay(const conv2d_shape *s) {
    if (s->PH == 0 && s->PW == 0) return 0;
    if (s->C < 16) return 0; /* runs of C k: short runs cost more around them than they save */
    long long rows = 0, cols = 0;
    for (int o = 0; o < s->OH; o++) {
        int lo, hi;
        tap_range(o, s->SH, s->PH, s->KH, s->H, &lo, &hi);
        rows += hi > lo ? hi - lo : 0;
    }
    for (int o = 0; o < s->OW; o++) {
        int lo, hi;
        tap_range(o, s->SW, s->PW, s->KW, s->W, &lo, &hi);
        cols += hi > lo ? hi - lo : 0;
    }
    const double used = (double)rows * cols / ((double)s->OH * s->KH * s->OW * s->KW);
    return used <= 1.0 - TAP_CLASSES_MIN_SKIP;
}

/* Rows per class below which a class would run in short tiles (AVX-512's tile has 14 rows):
 * a row class whose column classes would make such classes (the corners) stays one class, with
 * the taps of all its columns. */
#define TAP_MIN_ROWS 14

/* [lo, hi) ranges of the n outputs o as classes of equal ranges (monotone in o, so each class is
 * a run of o): first[q], lo[q], hi[q] for q < the returned count; first[count] = n. */
static int tap_runs(int n, int S, int P, int K, int H, int *first, int *lo, int *hi) {
    int q = 0;
    for (int o = 0; o < n; o++) {
        int a, b;
        tap_range(o, S, P, K, H, &a, &b);
        if (q > 0 && lo[q - 1] == a && hi[q - 1] == b) continue;
        first[q] = o, lo[q] = a, hi[q] = b, q++;
    }
    first[q] = n;
    return q;
}

/* The classes of positions of a product of nb images: pos[OHW] the positions class by class,
 * and per class g: cls[3 g] its first index in pos, cls[3 g + 1] its size, cls[3 g + 2] its
 * number of runs, whose bounds are runs[2 KH TAP_BLOCKS(C) g ...]. tmp: 6 (OH + OW + 2) ints.
 * Returns the number of classes. */
static int tap_classes(const conv2d_shape *s, int nb, int *pos, int *cls, int *runs, int *tmp) {
    const int OW = s->OW, C = s->C, KW = s->KW;
    int *rf = tmp, *rlo = rf + s->OH + 1, *rhi = rlo + s->OH + 1;
    int *cf = rhi + s->OH + 1, *clo = cf + OW + 1, *chi = clo + OW + 1;
    const int nrc = tap_runs(s->OH, s->SH, s->PH, s->KH, s->H, rf, rlo, rhi);
    const int ncc = tap_runs(OW, s->SW, s->PW, KW, s->W, cf, clo, chi);
    int ng = 0, at = 0;
    for (int rq = 0; rq < nrc; rq++) {
        const int nrows = rf[rq + 1] - rf[rq];
        int merge = 0;
        for (int cq = 0; cq < ncc; cq++) merge |= nb * nrows * (cf[cq + 1] - cf[cq]) < TAP_MIN_ROWS;
        for (int cq = 0; cq < ncc; cq++) {
            const int c0 = merge ? 0 : cq, c1 = merge ? ncc : cq + 1;
            const int first = at, hlo = rlo[rq], hhi = rhi[rq];
            int wlo = clo[c0], whi = chi[c0];
            for (int q = c0; q < c1; q++) { /* the union of the columns' taps */
                wlo = clo[q] < wlo ? clo[q] : wlo;
                whi = chi[q] > whi ? chi[q] : whi;
            }
            for (int r = rf[rq]; r < rf[rq + 1]; r++)
                for (int c = cf[c0]; c < cf[c1]; c++) pos[at++] = r * OW + c;
            int nr = 0, *rg = runs + (size_t)2 * s->KH * TAP_BLOCKS(C) * ng;
            for (int cb = 0; cb < C; cb += TAP_CB) {
                const int cbn = C - cb < TAP_CB ? C - cb : TAP_CB, base = cb * s->KH * KW;
                for (int kh = hlo; kh < hhi && wlo < whi; kh++) {
                    const int k0 = base + (kh * KW + wlo) * cbn, k1 = base + (kh * KW + whi) * cbn;
                    if (nr > 0 && rg[2 * nr - 1] == k0) rg[2 * nr - 1] = k1; /* adjacent: one run */
                    else rg[2 * nr] = k0, rg[2 * nr + 1] = k1, nr++;
                }
            }
            cls[3 * ng] = first, cls[3 * ng + 1] = at - first, cls[3 * ng + 2] = nr;
            ng++;
            if (merge) break;
        }
    }
    return ng;
}

/* Column k = (c, kh, kw) of output position p = (oh, ow) sits at koff[k] + poff(p) in the
 * zero-padded image: koff[k] = (c Hp + kh) Wp + kw, poff(p) = oh SH Wp + ow SW. */
static int padded_koff_at(const conv2d_shape *s, int c, int kh, int kw) {
    return (c * (s->H + 2 * s->PH) + kh) * (s->W + 2 * s->PW) + kw;
}
static void padded_koff(const conv2d_shape *s, int *koff) {
    for (int k = 0; k < s->C * s->KH * s->KW; k++)
        koff[k] = padded_koff_at(s, k / (s->KH * s->KW), (k / s->KW) % s->KH, k % s->KW);
}
static int padded_poff(const conv2d_shape *s, int p) {
    return (p / s->OW) * s->SH * (s->W + 2 * s->PW) + p % s->OW * s->SW;
}

/* One image x[C,H,W] into the interior of its zero-padded copy xp[C,Hp,Wp] (borders stay 0). */
static void pad_image(const conv2d_shape *s, const float *x, float *xp) {
    const int Hp = s->H + 2 * s->PH, Wp = s->W + 2 * s->PW;
    for (int c = 0; c < s->C; c++)
        for (int h = 0; h < s->H; h++) {
            float *d = xp + ((size_t)c * Hp + h + s->PH) * Wp + s->PW;
            const float *r = x + ((size_t)c * s->H + h) * s->W;
            for (int w = 0; w < s->W; w++) d[w] = r[w];
        }
}

/* w[OC, CKK] as B^T packed (nn_pack_b), a panel per job */
static void pack_weights(int CKK, int OC, const float *w, float *wp, int nt) {
    const int panels = (OC + NN_PACK_NR - 1) / NN_PACK_NR;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int p = 0; p < panels; p++) {
        const int n = OC - p * NN_PACK_NR < NN_PACK_NR ? OC - p * NN_PACK_NR : NN_PACK_NR;
        nn_pack_b(1, CKK, n, w + (size_t)p * NN_PACK_NR * CKK, CKK, wp + (size_t)p * CKK * NN_PACK_NR);
    }
}

/* Forward (any stride): y^T[p, oc] = X(p, k) w^T[k, oc] with X read in place from the zero-padded
 * image (padded_koff, padded_poff) and w^T packed once; the tiles store into y[oc, p] directly. Only
 * real output positions are computed (outputs on the padded width wasted 2 PW / Wp of the
 * work: a third at 4x4 images). */
static void direct_forward(const conv2d_shape *s, const float *x, size_t xs, const float *w, const float *b,
                           float *y, size_t ys, float *ws, int nt) {
    const int OC = s->OC, C = s->C, KK = s->KH * s->KW, CKK = C * KK, OHW = s->OH * s->OW;
    int nb = direct_images(s);
    /* unpadded (1x1): the image is its own padded copy, read in place */
    const int inplace = s->PH == 0 && s->PW == 0;
    while (nb > 1 && ((long long)nb * (long long)ys >= 0x7fffffffLL ||
                      (inplace && (long long)nb * (long long)xs >= 0x7fffffffLL)))
        nb--;
    const int nchunks = (s->N + nb - 1) / nb, classes = !inplace && tap_classes_pay(s);
    const size_t pad = padded_floats(s), istep = inplace ? xs : pad;
    float *wp = ws + (size_t)nt * direct_images(s) * pad;
    int *koff = (int *)(wp + nn_packed_size(CKK, OC)), *poff = koff + CKK, *yoff = poff + (size_t)nb * OHW;
    int *pos = yoff + (size_t)nb * OHW, *cls = pos + OHW, *runs = cls + 3 * (size_t)OHW; /* tap_classes */
    int ng = 1;
    if (classes) { /* k in channel blocks, taps-major inside: koff and the packed w^T in that order */
        ng = tap_classes(s, nb, pos, cls, runs, runs + (size_t)2 * s->KH * TAP_BLOCKS(C) * OHW);
        /* w's rows in that order (contiguous reads), then packed as usual */
        float *wk = (float *)(runs + (size_t)2 * s->KH * TAP_BLOCKS(C) * OHW + 6 * (size_t)(s->OH + s->OW + 2));
        int *src = (int *)(wk + (size_t)OC * CKK); /* k's column of w */
        for (int k = 0; k < CKK; k++) {
            int c, t;
            tap_block_of(C, KK, k, &c, &t);
            koff[k] = padded_koff_at(s, c, t / s->KW, t % s->KW);
            src[k] = c * KK + t;
        }
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int oc = 0; oc < OC; oc++)
            for (int k = 0; k < CKK; k++) wk[(size_t)oc * CKK + k] = w[(size_t)oc * CKK + src[k]];
        pack_weights(CKK, OC, wk, wp, nt);
    } else {
        padded_koff(s, koff);
        pack_weights(CKK, OC, w, wp, nt);
        for (int p = 0; p < OHW; p++) pos[p] = p;
        cls[0] = 0, cls[1] = OHW, cls[2] = 0;
    }
    /* rows class by class, each class's images one after another: A's and y's offsets */
    for (int g = 0, at = 0; g < ng; g++)
        for (int j = 0; j < nb; j++)
            for (int i = 0; i < cls[3 * g + 1]; i++, at++) {
                const int p = pos[cls[3 * g] + i];
                poff[at] = j * (int)istep + padded_poff(s, p);
                yoff[at] = j * (int)ys + p;
            }
    int nti = nt > nchunks ? nchunks : nt;
#pragma omp parallel num_threads(nti)
    {
        float *xp = ws + (size_t)NN_THREAD_ID() * nb * pad;
        if (!inplace)
            for (size_t i = 0; i < nb * pad; i++) xp[i] = 0.0f; /* borders */
#pragma omp for schedule(static)
        for (int ch = 0; ch < nchunks; ch++) {
            const int n0 = ch * nb, nc = nn_chunk_len(s->N, ch, nb);
            const float *xi = x + (size_t)n0 * xs;
            if (!inplace)
                for (int j = 0; j < nc; j++) pad_image(s, xi + (size_t)j * xs, xp + (size_t)j * pad);
            for (int g = 0; g < ng; g++) {
                const size_t r0 = (size_t)nb * cls[3 * g];
                nn_gemm_offsets_rows(nc * cls[3 * g + 1], OC, CKK, inplace ? xi : xp, poff + r0, koff, wp,
                                     y + (size_t)n0 * ys, yoff + r0, OHW, b,
                                     classes ? runs + (size_t)2 * s->KH * TAP_BLOCKS(C) * g : NULL, cls[3 * g + 2]);
            }
        }
    }
}

/* Sum of n floats in double, four lanes at a time (a single running sum is one long chain of
 * dependent adds). */
static double sum_floats(int n, const float *r) {
    double p[4] = {0.0, 0.0, 0.0, 0.0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; l++) p[l] += r[i + l];
    for (; i < n; i++) p[0] += r[i];
    return (p[0] + p[1]) + (p[2] + p[3]);
}

/* One chunk's db partial: dbp[oc] = the sum over its images n0 .. n0 + nc - 1 of dy's plane oc, in
 * double. */
static void chunk_db(const conv2d_shape *s, const float *dy, size_t ys, int n0, int nc, float *dbp) {
    const int OHW = s->OH * s->OW;
    for (int oc = 0; oc < s->OC; oc++) {
        double acc = 0.0;
        for (int j = 0; j < nc; j++) acc += sum_floats(OHW, dy + (size_t)(n0 + j) * ys + (size_t)oc * OHW);
        dbp[oc] = (float)acc;
    }
}

/* db[oc] = the sum over chunks of the partials dbp[ch][oc], in chunk order (db NULL: none). */
static void sum_db(int nchunks, int OC, const float *dbp, float *db) {
    if (!db) return;
    for (int oc = 0; oc < OC; oc++) {
        float acc = dbp[oc];
        for (int ch = 1; ch < nchunks; ch++) acc += dbp[(size_t)ch * OC + oc];
        db[oc] = acc;
    }
}

/* 1x1, stride 1, unpadded: each image's product y[OC, HW] = w[OC, C] x[C, HW] the other way
 * round from direct_forward's (y^T = x^T w^T): w's rows broadcast, the image packed along its
 * positions (nn_pack_b), y's rows stored as they are (no transposed stores), the bias set
 * first. The same products summed in the same k order as direct_forward: the same bits.
 * AVX2 and baseline only: 64x64x16x16 -> 128 on 2 threads went from 0.81x to 1.07x torch's
 * forward on AVX2; AVX-512's direct tiles (14 rows x 2 vectors) measured 1.10-1.21x torch
 * there, and this path was not measured on AVX-512. */
static int pointwise_ok(const conv2d_shape *s) {
    return s->KH == 1 && s->KW == 1 && s->SH == 1 && s->SW == 1 && s->PH == 0 && s->PW == 0 &&
           s->C >= NN_DIRECT_MIN_CKK && !nn_get_reference() && nn_isa() != NN_ISA_AVX512;
}

static size_t pointwise_floats(const conv2d_shape *s, int nt) {
    return (size_t)nt * nn_packed_size(s->C, s->OH * s->OW);
}

static void pointwise_forward(const conv2d_shape *s, const float *x, size_t xs, const float *w, const float *b,
                              float *y, size_t ys, float *ws, int nt) {
    const int HW = s->OH * s->OW, nti = nt > s->N ? s->N : nt;
#pragma omp parallel num_threads(nti)
    {
        float *bp = ws + (size_t)NN_THREAD_ID() * nn_packed_size(s->C, HW);
#pragma omp for schedule(static)
        for (int n = 0; n < s->N; n++) {
            float *yn = y + (size_t)n * ys;
            nn_pack_b(0, s->C, HW, x + (size_t)n * xs, HW, bp);
            for (int oc = 0; oc < s->OC; oc++) {
                const float v = b ? b[oc] : 0.0f;
                float *row = yn + (size_t)oc * HW;
                for (int i = 0; i < HW; i++) row[i] = v;
            }
            nn_gemm_packed(0, s->OC, HW, s->C, w, s->C, NULL, 0, bp, yn, HW);
        }
    }
}

/* One group's (or a G = 1) forward: s has G = 1, images xs floats apart in x, ys in y. */
static void forward_one(const conv2d_shape *s, const float *x, size_t xs, const float *w, const float *b,
                        float *y, size_t ys, float *ws, int nt) {
    const int nb = chunk_images(s), nchunks = (s->N + nb - 1) / nb;
    const int OC = s->OC, CKK = s->C * s->KH * s->KW, OHW = s->OH * s->OW;
    const size_t ptf = per_thread_floats(s, nb);
    if (nn_wino_ok(s)) { /* 3x3 stride 1 with enough channels and positions (conv_winograd.c) */
        nn_wino_forward(s, x, xs, w, b, y, ys, ws, nt);
        return;
    }
    /* below ~32 rows of columns (e.g. one input channel) the direct tiles' k loop is too short
     * for what each tile costs around it: conv 1->32 on 28x28 measured 0.25 / 2.0 ms
     * (forward / backward) direct against 0.20 / 0.65 ms here */
    if (pointwise_ok(s)) {
        pointwise_forward(s, x, xs, w, b, y, ys, ws, nt);
        return;
    }
    if (!nn_get_reference() && direct_forward_ok(s)) {
        direct_forward(s, x, xs, w, b, y, ys, ws, nt);
        return;
    }
    /* Large images: one GEMM per image straight into y, the bias as a row of ones under the
     * columns (conv 1->32 on 28x28: y was written twice, by the GEMM into buf and by the copy,
     * 6.4 MB each). Small ones keep one long GEMM per chunk and the copy. */
    const int per_image = OHW >= NN_PER_IMAGE_OHW;
    float *wb = ws + (size_t)nt * ptf; /* [OC, CKK + 1]: w and b (the gradients' partials' room) */
    if (per_image)
        for (int oc = 0; oc < OC; oc++) {
            memcpy(wb + (size_t)oc * (CKK + 1), w + (size_t)oc * CKK, sizeof(float) * CKK);
            wb[(size_t)oc * (CKK + 1) + CKK] = b ? b[oc] : 0.0f;
        }
    if (nt > nchunks) nt = nchunks;
#pragma omp parallel num_threads(nt)
    {
        float *cols = ws + (size_t)NN_THREAD_ID() * ptf;
        float *buf = cols + (size_t)CKK * nb * OHW;
#pragma omp for schedule(static)
        for (int ch = 0; ch < nchunks; ch++) {
            int n0 = ch * nb, nc = nn_chunk_len(s->N, ch, nb), L = nc * OHW;
            for (int j = 0; j < nc; j++) im2col(s, x + (n0 + j) * xs, cols + (size_t)j * OHW, L);
            if (per_image) { /* cols[CKK + 1, L] (the ones row in buf's room, unused here) */
                for (int i = 0; i < L; i++) cols[(size_t)CKK * L + i] = 1.0f;
                for (int j = 0; j < nc; j++)
                    nn_gemm(0, 0, OC, OHW, CKK + 1, 1.0f, wb, CKK + 1, cols + (size_t)j * OHW, L, 0.0f,
                            y + (n0 + j) * ys, OHW);
                continue;
            }
            nn_gemm(0, 0, OC, L, CKK, 1.0f, w, CKK, cols, L, 0.0f, buf, L);
            for (int j = 0; j < nc; j++)
                for (int oc = 0; oc < OC; oc++) {
                    float *dst = y + (n0 + j) * ys + (size_t)oc * OHW;
                    const float *src = buf + (size_t)oc * L + (size_t)j * OHW;
                    float bias = b ? b[oc] : 0.0f;
                    for (int p = 0; p < OHW; p++) dst[p] = src[p] + bias;
                }
        }
    }
}

/* The dx of a stride-1 convolution is the stride-1 convolution of dy, padded by K - 1 - P, with
 * w transposed (OC <-> C) and flipped: its shape. */
static conv2d_shape dx_shape(const conv2d_shape *s) {
    conv2d_shape t = {s->N, s->OC, s->OH, s->OW, s->C, s->KH, s->KW, 1, 1, s->KH - 1 - s->PH,
                      s->KW - 1 - s->PW, 0, 0, 1};
    conv2d_shape_init(&t);
    return t;
}

static int strided(const conv2d_shape *s) { return s->SH > 1 || s->SW > 1; }

/* dw's chunks. Each writes a partial dw^T[CKK, OC] that is summed afterwards: below
 * NN_DW_MIN_K positions a chunk (the K of its product) writing and summing the partials costs
 * as much as the products (512 -> 512 on 4x4 planes, batch 64: 22 chunks of 48 positions, 200 MB
 * of partials). Such shapes take chunks of at least NN_DW_MIN_K positions (or the whole batch),
 * prepared once and shared by the threads, which split each chunk's product by blocks of
 * NN_DW_ROWS rows of dw^T: the same sums for any thread count. */
#define NN_DW_MIN_K 1024
#define NN_DW_ROWS 224 /* 16 of the AVX-512 tile's 14 rows */

typedef struct {
    int nb, nchunks; /* images per chunk, chunks */
    int shared;      /* chunks shared by the threads, split by rows */
    size_t istep;    /* floats from one image to the next in the product's input */
    int inplace;     /* unpadded: the images are read in place, xs apart */
} dw_plan;

static dw_plan dw_plan_of(const conv2d_shape *s, size_t xs) {
    const long long OHW = (long long)s->OH * s->OW, pad = (long long)padded_floats(s);
    dw_plan p = {chunk_images(s), 0, 0, 0, 0};
    if (p.nb * OHW < NN_DW_MIN_K) {
        long long nb = (NN_DW_MIN_K + OHW - 1) / OHW;
        if (nb > s->N) nb = s->N;
        const long long nch = (s->N + nb - 1) / nb;
        nb = (s->N + nch - 1) / nch;
        if (nb * pad < 0x7fffffffLL) p.nb = (int)nb, p.shared = 1;
    }
    p.nchunks = (s->N + p.nb - 1) / p.nb;
    p.inplace = s->PH == 0 && s->PW == 0 && (long long)p.nb * (long long)xs < 0x7fffffffLL;
    p.istep = p.inplace ? xs : (size_t)pad;
    return p;
}

static int direct_backward_ok(const conv2d_shape *s) {
    if (!direct_forward_ok(s)) return 0;
    if ((long long)chunk_images(s) * (long long)padded_floats(s) >= 0x7fffffffLL) return 0;
    if (strided(s)) return 1; /* dx: sgemm and col2im per image */
    if (!(s->PH <= s->KH - 1 && s->PW <= s->KW - 1)) return 0;
    conv2d_shape t = dx_shape(s); /* dx is a direct forward too */
    return direct_forward_ok(&t);
}

/* dx of a strided convolution: the columns of a chunk of nb images, cols[k, j OHW + p] =
 * sum_oc w[oc, k] dy_j[oc, p], then col2im per image. The product reads dy in place (a tile's rows
 * are positions, p -> j ys + p, its k the channels oc -> oc OHW) against w packed once, and stores
 * its tiles transposed into cols: a chunk's positions make one long product, where one sgemm per
 * image had only OH OW columns (16 at 4x4 outputs; 256 -> 512, 3x3/2 on 8x8: dx 19.4 ms, the
 * forward 7). Each dx sums in one order whatever the chunking and the thread count. */
static size_t strided_dx_floats(const conv2d_shape *s, int nt) {
    const int CKK = s->C * s->KH * s->KW, OHW = s->OH * s->OW, nb = chunk_images(s);
    return nn_packed_size(s->OC, CKK) + (size_t)nt * CKK * nb * OHW + (size_t)nb * OHW + s->OC;
}

static void strided_dx(const conv2d_shape *s, const float *w, const float *dy, size_t ys, float *dx, size_t xs,
                       float *ws, int nt) {
    const int OC = s->OC, CKK = s->C * s->KH * s->KW, OHW = s->OH * s->OW;
    const int nb = (long long)chunk_images(s) * (long long)ys < 0x7fffffffLL ? chunk_images(s) : 1;
    const int nchunks = (s->N + nb - 1) / nb;
    const size_t xsz = (size_t)s->C * s->H * s->W, ptf = (size_t)CKK * nb * OHW;
    float *wp = ws, *cols0 = wp + nn_packed_size(OC, CKK);
    int *poff = (int *)(cols0 + (size_t)nt * ptf), *ocoff = poff + nb * OHW;
    nn_pack_b(0, OC, CKK, w, CKK, wp); /* B[oc][k] = w[oc, k] */
    for (int j = 0; j < nb; j++)
        for (int p = 0; p < OHW; p++) poff[j * OHW + p] = j * (int)ys + p;
    for (int oc = 0; oc < OC; oc++) ocoff[oc] = oc * OHW;
    int ntc = nt > nchunks ? nchunks : nt;
#pragma omp parallel num_threads(ntc)
    {
        float *cols = cols0 + (size_t)NN_THREAD_ID() * ptf;
#pragma omp for schedule(static)
        for (int ch = 0; ch < nchunks; ch++) {
            const int n0 = ch * nb, nc = nn_chunk_len(s->N, ch, nb), L = nc * OHW;
            nn_gemm_offsets(L, CKK, OC, dy + (size_t)n0 * ys, poff, ocoff, wp, cols, L, 1, NULL);
            for (int j = 0; j < nc; j++) {
                float *dxi = dx + (size_t)(n0 + j) * xs;
                memset(dxi, 0, sizeof(float) * xsz);
                col2im(s, cols + (size_t)j * OHW, L, dxi);
            }
        }
    }
}

/* The Winograd path's workspace where it runs (nn_wino_ok), else 0 */
static size_t wino_floats(const conv2d_shape *s, int nt) { return nn_wino_ok(s) ? nn_wino_floats(s, nt) : 0; }

/* direct_backward's floats: per thread a chunk's padded images and dy^T packed (panels over
 * OC); per chunk dw and db partials; the offsets (ints); then, reusing it all, the flipped weights and
 * direct_forward's workspace for dx. */
static size_t direct_backward_floats(const conv2d_shape *s, int nt) {
    const size_t ckk = (size_t)s->C * s->KH * s->KW, ohw = (size_t)s->OH * s->OW;
    const dw_plan p = dw_plan_of(s, (size_t)s->C * s->H * s->W);
    const size_t dyps = nn_packed_size(p.nb * (int)ohw, s->OC);
    const size_t images = p.shared ? (size_t)s->N * padded_floats(s) + p.nchunks * dyps
                                   : (size_t)nt * (p.nb * padded_floats(s) + dyps);
    size_t grads = images + (size_t)p.nchunks * (ckk * s->OC + s->OC) + ckk + p.nb * ohw;
    size_t dx;
    if (strided(s)) {
        dx = strided_dx_floats(s, nt);
    } else {
        conv2d_shape t = dx_shape(s);
        size_t f = direct_floats(&t, nt);
        const size_t wf = wino_floats(&t, nt);
        if (wf > f) f = wf;
        dx = (size_t)s->OC * ckk + f;
    }
    return grads > dx ? grads : dx;
}

static size_t workspace_one(const conv2d_shape *s, int nthreads) {
    int nb = chunk_images(s);
    int nchunks = (s->N + nb - 1) / nb;
    if (nthreads < 1) nthreads = 1;
    size_t gemm = (size_t)nthreads * per_thread_floats(s, nb) +
                  (size_t)nchunks * s->OC * ((size_t)s->C * s->KH * s->KW + 1);
    size_t direct = direct_forward_ok(s) ? direct_floats(s, nthreads) : 0;
    const size_t wf = wino_floats(s, nthreads), pf = pointwise_ok(s) ? pointwise_floats(s, nthreads) : 0;
    if (wf > direct) direct = wf;
    if (pf > direct) direct = pf;
    if (direct_backward_ok(s)) {
        size_t bwd = direct_backward_floats(s, nthreads);
        if (bwd > direct) direct = bwd;
    }
    return gemm > direct ? gemm : direct;
}

/* dw[oc][k] = sum over chunks of the partials dwt[ch][k][oc]: added into the first in chunk
 * order (contiguous, vectorized), then one transpose (nn_transpose_bias); db[oc] likewise from
 * dbp[ch][oc] (db NULL: skipped). One summation order for any thread count. (The bf16 path's:
 * the fp32 tiles store their partials transposed already.) */
void nn_conv_sum_chunks_transposed(int nchunks, int CKK, int OC, float *dwt, const float *dbp, float *dw, float *db,
                                   int nt) {
    const size_t nw = (size_t)OC * CKK;
    int nt_red = nw * nchunks < 65536 ? 1 : nt;
#pragma omp parallel num_threads(nt_red)
    {
        int e0, e1;
        nn_split((int)nw, NN_THREAD_ID(), NN_THREAD_COUNT(), &e0, &e1);
        for (int ch = 1; ch < nchunks; ch++) {
            const float *src = dwt + (size_t)ch * nw;
            for (int e = e0; e < e1; e++) dwt[e] += src[e];
        }
#pragma omp barrier
        /* transposed in blocks of 16 output channels (16 x 16 in registers where bf16 runs: the
         * scalar loop took 4 ms of 512 -> 512's backward on 4x4) */
        const int nblk = (OC + 15) / 16;
        int b0, b1;
        nn_split(nblk, NN_THREAD_ID(), NN_THREAD_COUNT(), &b0, &b1);
        if (b1 > b0) {
            const int c0 = 16 * b0, c1 = 16 * b1 < OC ? 16 * b1 : OC;
            nn_transpose_bias(CKK, c1 - c0, dwt + c0, OC, NULL, dw + (size_t)c0 * CKK, CKK);
        }
    }
    sum_db(nchunks, OC, dbp, db);
}

/* dw[e] = the sum over chunks of the partials part[ch][e], in chunk order (part == dw: one chunk
 * wrote dw itself), and db from dbp likewise (sum_db). */
void nn_conv_sum_partials(int nchunks, size_t nw, const float *part, float *dw, int OC, const float *dbp, float *db,
                          int nt) {
    sum_db(nchunks, OC, dbp, db);
    if (nchunks == 1 && part == dw) return;
    int nt_red = nw * nchunks < 65536 ? 1 : nt;
#pragma omp parallel for schedule(static) num_threads(nt_red)
    for (long long e = 0; e < (long long)nw; e++) {
        float acc = part[e];
        for (int ch = 1; ch < nchunks; ch++) acc += part[(size_t)ch * nw + e];
        dw[e] = acc;
    }
}

/* The weights of dx as a forward of dy: wt[c][oc][KK - 1 - kk] = w[oc][c][kk] (transposed, the
 * taps flipped). */
void nn_conv_flip_weights(int OC, int C, int KK, const float *w, float *wt) {
    /* in blocks of 16 x 16 (oc, c), both sides' lines in L1 (oc by oc, the writes jumped OC KK
     * floats each: 2.2 ms for a 512 -> 512 3x3 convolution), blocks of c in parallel */
    const int cblocks = (C + 15) / 16;
#pragma omp parallel for schedule(static) num_threads(nn_threads())
    for (int cb = 0; cb < cblocks; cb++)
        for (int o0 = 0; o0 < OC; o0 += 16)
            for (int c = cb * 16; c < C && c < cb * 16 + 16; c++)
                for (int oc = o0; oc < OC && oc < o0 + 16; oc++)
                    for (int kk = 0; kk < KK; kk++)
                        wt[((size_t)c * OC + oc) * KK + (KK - 1 - kk)] = w[((size_t)oc * C + c) * KK + kk];
}

/* Stride-1 backward without im2col. dw^T[k, oc] = sum_p X(p, k) dy^T[p, oc] over the positions
 * of a chunk of images at once (their padded copies side by side, one product per chunk: the
 * tiles sum a whole chunk in registers), X read in place as in direct_forward and dy^T packed;
 * one partial per chunk, summed in chunk order (deterministic for any thread count). dx: a
 * direct forward of dy with the flipped, transposed weights. */
static void direct_backward(const conv2d_shape *s, const float *x, size_t xs, const float *w, const float *dy,
                            size_t ys, float *dx, float *dw, float *db, float *ws, int nt) {
    const int OC = s->OC, C = s->C, CKK = C * s->KH * s->KW, OHW = s->OH * s->OW;
    const dw_plan pl = dw_plan_of(s, xs);
    const int nb = pl.nb, nchunks = pl.nchunks, inplace = pl.inplace;
    const size_t pad = padded_floats(s), dyps = nn_packed_size(nb * OHW, OC);
    /* shared: all images padded, then each chunk's dy^T packed; else per thread one chunk's */
    const size_t images = pl.shared ? (size_t)s->N * pad + nchunks * dyps : (size_t)nt * (nb * pad + dyps);
    /* the tiles store dw's partials transposed, [nchunks, OC, CKK] (dw's own layout, no
     * transposition after: 4 ms of 16 for 512 -> 512 on 4x4); one chunk writes dw itself */
    float *dwt = nchunks == 1 ? dw : ws + images;
    float *dbp = ws + images + (size_t)nchunks * CKK * OC; /* [nchunks, OC] */
    int *koff = (int *)(dbp + (size_t)nchunks * OC), *poff = koff + CKK; /* poff[nb * OHW] */
    padded_koff(s, koff);
    for (int j = 0; j < nb; j++) /* image j's positions in its padded copy, j istep further on */
        for (int p = 0; p < OHW; p++) poff[j * OHW + p] = j * (int)pl.istep + padded_poff(s, p);
    if (pl.shared) {
        float *xp = ws, *dyp = ws + (size_t)s->N * pad;
        const int nrb = (CKK + NN_DW_ROWS - 1) / NN_DW_ROWS;
#pragma omp parallel num_threads(nt)
        {
#pragma omp for schedule(static)
            for (int n = 0; n < s->N; n++) {
                const int ch = n / nb, j = n - ch * nb, nc = nn_chunk_len(s->N, ch, nb);
                if (!inplace) {
                    memset(xp + (size_t)n * pad, 0, sizeof(float) * pad); /* borders */
                    pad_image(s, x + (size_t)n * xs, xp + (size_t)n * pad);
                }
                nn_pack_b_rows(1, OHW, OC, dy + (size_t)n * ys, OHW, dyp + ch * dyps, nc * OHW, j * OHW);
            }
#pragma omp for schedule(static) nowait
            for (int ch = 0; ch < nchunks; ch++)
                chunk_db(s, dy, ys, ch * nb, nn_chunk_len(s->N, ch, nb), dbp + (size_t)ch * OC);
#pragma omp for schedule(static)
            for (int job = 0; job < nchunks * nrb; job++) {
                const int ch = job / nrb, r0 = job % nrb * NN_DW_ROWS;
                const int m = CKK - r0 < NN_DW_ROWS ? CKK - r0 : NN_DW_ROWS;
                const int n0 = ch * nb, nc = nn_chunk_len(s->N, ch, nb);
                nn_gemm_offsets(m, OC, nc * OHW, inplace ? x + (size_t)n0 * xs : xp + (size_t)n0 * pad, koff + r0,
                                poff, dyp + ch * dyps, dwt + (size_t)ch * CKK * OC + r0, CKK, 1, NULL);
            }
        }
    } else {
        const size_t ptf = nb * pad + dyps;
        int ntc = nt > nchunks ? nchunks : nt;
#pragma omp parallel num_threads(ntc)
        {
            float *xp = ws + (size_t)NN_THREAD_ID() * ptf, *dyp = xp + nb * pad;
            if (!inplace)
                for (size_t i = 0; i < nb * pad; i++) xp[i] = 0.0f; /* borders */
#pragma omp for schedule(static)
            for (int ch = 0; ch < nchunks; ch++) {
                const int n0 = ch * nb, nc = nn_chunk_len(s->N, ch, nb);
                for (int j = 0; j < nc; j++) {
                    const float *dyi = dy + (size_t)(n0 + j) * ys;
                    if (!inplace) pad_image(s, x + (size_t)(n0 + j) * xs, xp + j * pad);
                    nn_pack_b_rows(1, OHW, OC, dyi, OHW, dyp, nc * OHW, j * OHW); /* dy^T[p, oc] */
                }
                nn_gemm_offsets(CKK, OC, nc * OHW, inplace ? x + (size_t)n0 * xs : xp, koff, poff, dyp,
                                dwt + (size_t)ch * CKK * OC, CKK, 1, NULL);
                chunk_db(s, dy, ys, n0, nc, dbp + (size_t)ch * OC);
            }
        }
    }
    nn_conv_sum_partials(nchunks, (size_t)OC * CKK, dwt, dw, OC, dbp, db, nt);
    if (dx && strided(s)) { /* the workspace is free again: columns of a chunk, then col2im */
        strided_dx(s, w, dy, ys, dx, xs, ws, nt);
    } else if (dx) { /* the workspace is free again: flipped, transposed w, then a direct forward */
        const conv2d_shape t = dx_shape(s);
        const int KK = s->KH * s->KW;
        float *wt = ws;
        nn_conv_flip_weights(OC, C, KK, w, wt);
        if (nn_wino_ok(&t))
            nn_wino_forward(&t, dy, ys, wt, NULL, dx, xs, wt + (size_t)OC * C * KK, nt);
        else
            direct_forward(&t, dy, ys, wt, NULL, dx, xs, wt + (size_t)OC * C * KK, nt);
    }
}

/* One group's (or a G = 1) backward: s has G = 1, images xs floats apart in x and dx, ys in dy. */
static void backward_one(const conv2d_shape *s, const float *x, size_t xs, const float *w, const float *dy,
                         size_t ys, float *dx, float *dw, float *db, float *ws, int nt) {
    const int nb = chunk_images(s), nchunks = (s->N + nb - 1) / nb;
    const int OC = s->OC, CKK = s->C * s->KH * s->KW, OHW = s->OH * s->OW;
    const size_t xsz = (size_t)s->C * s->H * s->W; /* one image of dx */
    const size_t ptf = per_thread_floats(s, nb);
    if (!nn_get_reference() && direct_backward_ok(s)) {
        direct_backward(s, x, xs, w, dy, ys, dx, dw, db, ws, nt);
        return;
    }
    float *dwp = ws + (size_t)nt * ptf;           /* [nchunks, OC*CKK] */
    float *dbp = dwp + (size_t)nchunks * OC * CKK; /* [nchunks, OC] */
    int nt_chunks = nt > nchunks ? nchunks : nt;
#pragma omp parallel num_threads(nt_chunks)
    {
        float *cols = ws + (size_t)NN_THREAD_ID() * ptf;
        float *buf = cols + (size_t)CKK * nb * OHW;
#pragma omp for schedule(static)
        for (int ch = 0; ch < nchunks; ch++) {
            int n0 = ch * nb, nc = nn_chunk_len(s->N, ch, nb), L = nc * OHW;
            chunk_db(s, dy, ys, n0, nc, dbp + (size_t)ch * OC);
            if (OHW >= NN_PER_IMAGE_OHW) { /* per image, dy read in place (as the forward) */
                float *part = dwp + (size_t)ch * OC * CKK;
                for (int j = 0; j < nc; j++) {
                    const float *dyi = dy + (n0 + j) * ys;
                    float *cj = cols + (size_t)j * OHW;
                    im2col(s, x + (n0 + j) * xs, cj, L);
                    nn_gemm(0, 1, OC, CKK, OHW, 1.0f, dyi, OHW, cj, L, j ? 1.0f : 0.0f, part, CKK);
                    if (dx) { /* the image's columns are free again */
                        nn_gemm(1, 0, CKK, OHW, OC, 1.0f, w, CKK, dyi, OHW, 0.0f, cj, L);
                        float *dxi = dx + (n0 + j) * xs;
                        memset(dxi, 0, sizeof(float) * xsz);
                        col2im(s, cj, L, dxi);
                    }
                }
                continue;
            }
            for (int j = 0; j < nc; j++) {
                im2col(s, x + (n0 + j) * xs, cols + (size_t)j * OHW, L);
                for (int oc = 0; oc < OC; oc++)
                    memcpy(buf + (size_t)oc * L + (size_t)j * OHW, dy + (n0 + j) * ys + (size_t)oc * OHW,
                           sizeof(float) * OHW);
            }
            nn_gemm(0, 1, OC, CKK, L, 1.0f, buf, L, cols, L, 0.0f, dwp + (size_t)ch * OC * CKK, CKK);
            if (dx) {
                nn_gemm(1, 0, CKK, L, OC, 1.0f, w, CKK, buf, L, 0.0f, cols, L);
                for (int j = 0; j < nc; j++) {
                    float *dxi = dx + (n0 + j) * xs;
                    memset(dxi, 0, sizeof(float) * xsz);
                    col2im(s, cols + (size_t)j * OHW, L, dxi);
                }
            }
        }
    }
    nn_conv_sum_partials(nchunks, (size_t)OC * CKK, dwp, dw, OC, dbp, db, nt);
}

/* ---------------------------------------------------------------- depthwise (G == C > 1)
 * Each input plane is copied once into a zero-padded, phase-split buffer: stride (SH, SW) cuts
 * the padded plane [Hp, Wp] into SH SW phase planes of Hq x Wq (phase (a, b) holds the padded
 * plane's rows a, a + SH, ... and columns b, b + SW, ...), so every tap (kh, kw) of every output
 * reads one contiguous run: output q = oh Wq + ow (ow < OW; the Wq - OW others are discarded)
 * reads tap t at P[off[t] + q], off[t] = phase(kh % SH, kw % SW) + (kh / SH) Wq + kw / SW.
 *   forward: y[oh, ow] = b + sum_t w[t] P[off[t] + oh Wq + ow], vectorized along ow, eight
 *            rows at a time, stored in place (dw_rows: the discarded columns are not computed);
 *   dx:      phase plane (a, b) of the padded dx gets sum over the taps of that phase of
 *            w[t] dy_flat[e - d[t]] (d[t] = (kh / SH) Wq + kw / SW; dy_flat zero outside the
 *            outputs and on the discarded columns): the same kernel with negative offsets;
 *   dw:      dw[t] = sum_n sum_q dy_flat[q] P[off[t] + q] in DW_B lanes (dw_dots), summed in
 *            lane order at the end; db likewise.
 * Forward is parallel over the N C planes; backward over channels, each thread looping over N
 * for its channels, so dw and db have one fixed summation order for any thread count. Every
 * ISA level sums each output in the same order without contraction: the same bits. P's zeros
 * (padding, the discarded columns, the tail) are written once per thread: every plane's copy
 * writes the same interior positions. The scalar reference path (nn_set_reference) is the
 * direct loop with float64 sums. */
#define DW_B 32 /* outputs per block: lanes of the dw partial sums at every level */
#define DW_SLACK 16 /* floats after P: a row's last, partial vector reads whole vectors */

typedef struct {
    int M;        /* output channels per input channel */
    int Hq, Wq;   /* phase plane */
    size_t PS;    /* floats per phase plane, Hq Wq */
    int L, Lp;    /* flat outputs OH Wq, rounded up to DW_B */
    int PSp;      /* PS rounded up to DW_B */
    int front;    /* dx: zeros before each flat dy plane (the largest tap shift) */
    int seg;      /* dx: floats per flat dy plane, front + max(PSp, Lp) */
    size_t pt;    /* the phase-split plane: SH SW PS + Lp (the last block's reads) + DW_SLACK */
    size_t per_thread; /* floats */
} dw_geom;

static int dw_geom_init(const conv2d_shape *s, dw_geom *g) {
    const int KK = s->KH * s->KW, Hp = s->H + 2 * s->PH, Wp = s->W + 2 * s->PW;
    g->M = s->OC / s->C;
    g->Wq = (Wp + s->SW - 1) / s->SW;
    g->Hq = (Hp + s->SH - 1) / s->SH;
    long long ps = (long long)g->Hq * g->Wq, l = (long long)s->OH * g->Wq;
    long long lp = (l + DW_B - 1) / DW_B * DW_B, psp = (ps + DW_B - 1) / DW_B * DW_B;
    long long front = (long long)((s->KH - 1) / s->SH) * g->Wq + (s->KW - 1) / s->SW;
    long long seg = front + (psp > lp ? psp : lp);
    long long pt = (long long)s->SH * s->SW * ps + lp + DW_SLACK;
    if (pt + seg > 0x7fffffffLL || (long long)g->M * seg > 0x7fffffffLL) return 0;
    g->PS = (size_t)ps;
    g->L = (int)l;
    g->Lp = (int)lp;
    g->PSp = (int)psp;
    g->front = (int)front;
    g->seg = (int)seg;
    g->pt = (size_t)pt;
    /* P, y block / dP, flat dy planes, dw and db lanes, dx's tap offsets (ints) and weights,
     * tap counts per phase (ints) */
    const long long dpf = (long long)s->SH * s->SW * psp; /* dx's phase planes */
    g->per_thread = g->pt + (size_t)(dpf > lp ? dpf : lp) + (size_t)g->M * seg + (size_t)g->M * KK * DW_B +
                    (size_t)g->M * DW_B + 2 * (size_t)g->M * KK + (size_t)s->SH * s->SW + 1;
    return 1;
}

static int dw_shape_ok(const conv2d_shape *s) {
    dw_geom g;
    return dw_geom_init(s, &g);
}

/* shared: the taps' offsets off[KK] and shifts d[KK] (ints) */
static size_t dw_workspace(const conv2d_shape *s, int nt) {
    dw_geom g;
    if (!dw_geom_init(s, &g)) return (size_t)-1;
    return (size_t)nt * g.per_thread + 2 * (size_t)s->KH * s->KW;
}

typedef float dw_v16 __attribute__((vector_size(64)));
typedef float dw_v8 __attribute__((vector_size(32)));
typedef float dw_v4 __attribute__((vector_size(16)));
typedef int dw_i4 __attribute__((vector_size(16)));

/* out[q] = bias + sum_t w[t] src[off[t] + q] for q < n (a multiple of DW_B), in t order; NB
 * blocks at a time (NB NV independent sums: one sum's adds wait on each other) */
#define DW_TAPS_BODY(VT, VW, NB)                                                                   \
    {                                                                                              \
        enum { NV = DW_B / (VW), NA = (NB) * NV };                                                 \
        int q = 0;                                                                                 \
        for (; q + (NB) * DW_B <= n; q += (NB) * DW_B) DW_TAPS_AT(VT, VW, NA)                      \
        for (; q < n; q += DW_B) DW_TAPS_AT(VT, VW, NV)                                            \
    }
/* out[q ..] for NACC vectors of VW from q */
#define DW_TAPS_AT(VT, VW, NACC)                                                                   \
    {                                                                                              \
        VT acc[NACC];                                                                              \
        for (int v = 0; v < (NACC); v++) {                                                         \
            acc[v] = (VT){0};                                                                      \
            acc[v] += bias;                                                                        \
        }                                                                                          \
        for (int t = 0; t < ntaps; t++) {                                                          \
            const float *p = src + off[t] + q;                                                     \
            const float wt = w[t];                                                                 \
            for (int v = 0; v < (NACC); v++) {                                                     \
                VT a;                                                                              \
                memcpy(&a, p + v * (VW), sizeof a);                                                \
                acc[v] += wt * a;                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (int v = 0; v < (NACC); v++) memcpy(out + q + v * (VW), &acc[v], sizeof acc[v]);       \
    }

/* lanes[t][j] += sum over blocks q of g[q + j] src[off[t] + q + j], j < DW_B, q < n: three
 * taps per pass over g (independent sums to hide the adds' latency, g loaded once) */
#define DW_DOTS_BODY(VT, VW)                                                                       \
    {                                                                                              \
        enum { NV = DW_B / (VW) };                                                                 \
        int t = 0;                                                                                 \
        for (; t + 3 <= ntaps; t += 3) {                                                           \
            VT a0[NV], a1[NV], a2[NV];                                                             \
            float *l = lanes + (size_t)t * DW_B;                                                   \
            for (int v = 0; v < NV; v++) {                                                         \
                memcpy(&a0[v], l + v * (VW), sizeof a0[v]);                                        \
                memcpy(&a1[v], l + DW_B + v * (VW), sizeof a1[v]);                                 \
                memcpy(&a2[v], l + 2 * DW_B + v * (VW), sizeof a2[v]);                             \
            }                                                                                      \
            const float *p0 = src + off[t], *p1 = src + off[t + 1], *p2 = src + off[t + 2];        \
            for (int q = 0; q < n; q += DW_B)                                                      \
                for (int v = 0; v < NV; v++) {                                                     \
                    VT b, x0, x1, x2;                                                              \
                    memcpy(&b, g + q + v * (VW), sizeof b);                                        \
                    memcpy(&x0, p0 + q + v * (VW), sizeof x0);                                     \
                    memcpy(&x1, p1 + q + v * (VW), sizeof x1);                                     \
                    memcpy(&x2, p2 + q + v * (VW), sizeof x2);                                     \
                    a0[v] += b * x0;                                                               \
                    a1[v] += b * x1;                                                               \
                    a2[v] += b * x2;                                                               \
                }                                                                                  \
            for (int v = 0; v < NV; v++) {                                                         \
                memcpy(l + v * (VW), &a0[v], sizeof a0[v]);                                        \
                memcpy(l + DW_B + v * (VW), &a1[v], sizeof a1[v]);                                 \
                memcpy(l + 2 * DW_B + v * (VW), &a2[v], sizeof a2[v]);                             \
            }                                                                                      \
        }                                                                                          \
        for (; t < ntaps; t++) {                                                                   \
            VT acc[NV];                                                                            \
            float *l = lanes + (size_t)t * DW_B;                                                   \
            for (int v = 0; v < NV; v++) memcpy(&acc[v], l + v * (VW), sizeof acc[v]);             \
            const float *p = src + off[t];                                                         \
            for (int q = 0; q < n; q += DW_B)                                                      \
                for (int v = 0; v < NV; v++) {                                                     \
                    VT a, b;                                                                       \
                    memcpy(&a, p + q + v * (VW), sizeof a);                                        \
                    memcpy(&b, g + q + v * (VW), sizeof b);                                        \
                    acc[v] += b * a;                                                               \
                }                                                                                  \
            for (int v = 0; v < NV; v++) memcpy(l + v * (VW), &acc[v], sizeof acc[v]);             \
        }                                                                                          \
    }

/* out[oh OW + ow] = bias + sum_t w[t] src[off[t] + oh Wq + ow] for oh < OH, ow < OW, in t
 * order (the sums of DW_TAPS_BODY, stored in place): one vector of columns of NR rows at a time;
 * a row's last, partial vector is computed whole (it reads into DW_SLACK) and stored in part */
#define DW_ROWS_BODY(VT, VW)                                                                       \
    {                                                                                              \
        for (int j = 0; j < OW; j += (VW)) {                                                       \
            const int nl = OW - j < (VW) ? OW - j : (VW);                                          \
            int oh = 0;                                                                            \
            for (; oh + 8 <= OH; oh += 8) DW_ROWS_AT(VT, VW, 8)                                    \
            for (; oh + 4 <= OH; oh += 4) DW_ROWS_AT(VT, VW, 4)                                    \
            for (; oh < OH; oh++) DW_ROWS_AT(VT, VW, 1)                                            \
        }                                                                                          \
    }
#define DW_ROWS_AT(VT, VW, NR)                                                                     \
    {                                                                                              \
        VT acc[NR];                                                                                \
        for (int r = 0; r < (NR); r++) {                                                           \
            acc[r] = (VT){0};                                                                      \
            acc[r] += bias;                                                                        \
        }                                                                                          \
        const float *s0 = src + (size_t)oh * Wq + j;                                               \
        for (int t = 0; t < ntaps; t++) {                                                          \
            const float *p = s0 + off[t];                                                          \
            const float wt = w[t];                                                                 \
            for (int r = 0; r < (NR); r++) {                                                       \
                VT a;                                                                              \
                memcpy(&a, p + (size_t)r * Wq, sizeof a);                                          \
                acc[r] += wt * a;                                                                  \
            }                                                                                      \
        }                                                                                          \
        float *o = out + (size_t)oh * OW + j;                                                      \
        for (int r = 0; r < (NR); r++) {                                                           \
            if (nl == (VW))                                                                        \
                memcpy(o + (size_t)r * OW, &acc[r], sizeof acc[r]);                                \
            else                                                                                   \
                for (int l = 0; l < nl; l++) o[(size_t)r * OW + l] = acc[r][l];                    \
        }                                                                                          \
    }

#define DW_TAPS_PARAMS (int ntaps, const int *off, const float *w, float bias, const float *src, int n, float *out)
#define DW_TAPS_ARGS (ntaps, off, w, bias, src, n, out)
#define DW_DOTS_PARAMS (int ntaps, const int *off, const float *src, const float *g, int n, float *lanes)
#define DW_DOTS_ARGS (ntaps, off, src, g, n, lanes)
#define DW_ROWS_PARAMS (int ntaps, const int *off, const float *w, float bias, const float *src, int Wq, int OH, int OW, float *out)
#define DW_ROWS_ARGS (ntaps, off, w, bias, src, Wq, OH, OW, out)

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NN_NO_CLONES)
#define DW_CLONES 1
__attribute__((target("avx512f"))) static void dw_taps_avx512 DW_TAPS_PARAMS DW_TAPS_BODY(dw_v16, 16, 4)
__attribute__((target("avx512f"))) static void dw_dots_avx512 DW_DOTS_PARAMS DW_DOTS_BODY(dw_v16, 16)
__attribute__((target("avx512f"))) static void dw_rows_avx512 DW_ROWS_PARAMS DW_ROWS_BODY(dw_v16, 16)
__attribute__((target("avx2"))) static void dw_taps_avx2 DW_TAPS_PARAMS DW_TAPS_BODY(dw_v8, 8, 2)
__attribute__((target("avx2"))) static void dw_dots_avx2 DW_DOTS_PARAMS DW_DOTS_BODY(dw_v8, 8)
__attribute__((target("avx2"))) static void dw_rows_avx2 DW_ROWS_PARAMS DW_ROWS_BODY(dw_v8, 8)
#endif
static void dw_taps_base DW_TAPS_PARAMS DW_TAPS_BODY(dw_v4, 4, 1)
static void dw_dots_base DW_DOTS_PARAMS DW_DOTS_BODY(dw_v4, 4)
static void dw_rows_base DW_ROWS_PARAMS DW_ROWS_BODY(dw_v4, 4)

static void dw_taps DW_TAPS_PARAMS {
#ifdef DW_CLONES
    const int isa = nn_isa();
    if (isa == NN_ISA_AVX512) { dw_taps_avx512 DW_TAPS_ARGS; return; }
    if (isa == NN_ISA_AVX2) { dw_taps_avx2 DW_TAPS_ARGS; return; }
#endif
    dw_taps_base DW_TAPS_ARGS;
}

static void dw_dots DW_DOTS_PARAMS {
#ifdef DW_CLONES
    const int isa = nn_isa();
    if (isa == NN_ISA_AVX512) { dw_dots_avx512 DW_DOTS_ARGS; return; }
    if (isa == NN_ISA_AVX2) { dw_dots_avx2 DW_DOTS_ARGS; return; }
#endif
    dw_dots_base DW_DOTS_ARGS;
}

static void dw_rows DW_ROWS_PARAMS {
#ifdef DW_CLONES
    const int isa = nn_isa();
    if (isa == NN_ISA_AVX512) { dw_rows_avx512 DW_ROWS_ARGS; return; }
    if (isa == NN_ISA_AVX2) { dw_rows_avx2 DW_ROWS_ARGS; return; }
#endif
    dw_rows_base DW_ROWS_ARGS;
}

/* n floats, for the short rows of small planes: a libc memcpy call per 16-float row cost
 * about as much as the row's convolution */
static inline void dw_copy(float *restrict dst, const float *restrict src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        float t[8];
        memcpy(t, src + i, sizeof t);
        memcpy(dst + i, t, sizeof t);
    }
    for (; i < n; i++) dst[i] = src[i];
}

/* e[k] = x[2k], o[k] = x[2k + 1] for 2k (+ 1) < n: four of each per shuffle (data movement
 * only, the same at every level) */
static inline void dw_split2(float *restrict e, float *restrict o, const float *restrict x, int n) {
    int k = 0;
    for (; 2 * k + 8 <= n; k += 4) {
        dw_v4 a, b;
        memcpy(&a, x + 2 * k, sizeof a);
        memcpy(&b, x + 2 * k + 4, sizeof b);
        const dw_v4 ev = __builtin_shuffle(a, b, (dw_i4){0, 2, 4, 6}), ov = __builtin_shuffle(a, b, (dw_i4){1, 3, 5, 7});
        memcpy(e + k, &ev, sizeof ev);
        memcpy(o + k, &ov, sizeof ov);
    }
    for (; 2 * k < n; k++) {
        e[k] = x[2 * k];
        if (2 * k + 1 < n) o[k] = x[2 * k + 1];
    }
}

/* the inverse: x[2k] = e[k], x[2k + 1] = o[k] */
static inline void dw_merge2(float *restrict x, const float *restrict e, const float *restrict o, int n) {
    int k = 0;
    for (; 2 * k + 8 <= n; k += 4) {
        dw_v4 a, b;
        memcpy(&a, e + k, sizeof a);
        memcpy(&b, o + k, sizeof b);
        const dw_v4 lo = __builtin_shuffle(a, b, (dw_i4){0, 4, 1, 5}), hi = __builtin_shuffle(a, b, (dw_i4){2, 6, 3, 7});
        memcpy(x + 2 * k, &lo, sizeof lo);
        memcpy(x + 2 * k + 4, &hi, sizeof hi);
    }
    for (; 2 * k < n; k++) {
        x[2 * k] = e[k];
        if (2 * k + 1 < n) x[2 * k + 1] = o[k];
    }
}

static inline void dw_prefetch(const float *p, size_t n) {
    for (size_t i = 0; i < n; i += 16) __builtin_prefetch(p + i, 0, 3);
}

/* tap t = kh KW + kw: its phase plane's offset plus its shift (off), and the shift alone (d) */
static void dw_offsets(const conv2d_shape *s, const dw_geom *g, int *off, int *d) {
    for (int kh = 0; kh < s->KH; kh++)
        for (int kw = 0; kw < s->KW; kw++) {
            const int t = kh * s->KW + kw, ph = (kh % s->SH) * s->SW + kw % s->SW;
            d[t] = (kh / s->SH) * g->Wq + kw / s->SW;
            off[t] = (int)(ph * g->PS) + d[t];
        }
}

/* The plane x[H, W] into the interior of the zero-padded, phase-split buffer P[pt] (its zeros
 * written once, by the caller); padded row ip = ih + PH is row i of phase row a, ip = i SH + a */
static void dw_fill(const conv2d_shape *s, const dw_geom *g, const float *x, float *P) {
    int a = s->PH % s->SH, i = s->PH / s->SH;
    for (int ih = 0; ih < s->H; ih++, i += (a = a + 1 < s->SH ? a + 1 : 0) == 0) {
        float *row = P + (size_t)a * s->SW * g->PS + (size_t)i * g->Wq;
        const float *xr = x + (size_t)ih * s->W;
        if (s->SW == 1) {
            dw_copy(row + s->PW, xr, s->W);
            continue;
        }
        if (s->SW == 2) { /* even inputs to phase PW % 2, odd ones to the other */
            dw_split2(row + (s->PW % 2) * g->PS + s->PW / 2, row + ((s->PW + 1) % 2) * g->PS + (s->PW + 1) / 2,
                      xr, s->W);
            continue;
        }
        for (int b = 0; b < s->SW; b++) { /* phase b: padded columns j SW + b, inputs j SW + b - PW */
            float *dst = row + (size_t)b * g->PS;
            int j = b >= s->PW ? 0 : (s->PW - b + s->SW - 1) / s->SW;
            if (s->SW == 2)
                for (int iw = 2 * j + b - s->PW; iw < s->W; j++, iw += 2) dst[j] = xr[iw];
            else
                for (int iw = j * s->SW + b - s->PW; iw < s->W; j++, iw += s->SW) dst[j] = xr[iw];
        }
    }
}

static void dw_forward(const conv2d_shape *s, const dw_geom *g, const float *x, const float *w, const float *b,
                       float *y, float *ws, int nt) {
    const int KK = s->KH * s->KW, C = s->C, M = g->M, OHW = s->OH * s->OW;
    const size_t xs = (size_t)s->H * s->W;
    int *off = (int *)(ws + (size_t)nt * g->per_thread), *d = off + KK;
    dw_offsets(s, g, off, d);
    const int planes = s->N * C, ntp = nt > planes ? planes : nt;
#pragma omp parallel num_threads(ntp)
    {
        float *P = ws + (size_t)NN_THREAD_ID() * g->per_thread;
        memset(P, 0, sizeof(float) * g->pt);
#pragma omp for schedule(static)
        for (int pl = 0; pl < planes; pl++) {
            const int n = pl / C, c = pl % C;
            if (pl + 1 < planes) dw_prefetch(x + (size_t)(pl + 1) * xs, xs);
            dw_fill(s, g, x + (size_t)pl * xs, P);
            for (int m = 0; m < M; m++) {
                const int oc = c * M + m;
                dw_rows(KK, off, w + (size_t)oc * KK, b ? b[oc] : 0.0f, P, g->Wq, s->OH, s->OW,
                        y + ((size_t)n * s->OC + oc) * OHW);
            }
        }
    }
}

static void dw_backward(const conv2d_shape *s, const dw_geom *g, const float *x, const float *w, const float *dy,
                        float *dx, float *dw, float *db, float *ws, int nt) {
    const int KK = s->KH * s->KW, C = s->C, M = g->M, OHW = s->OH * s->OW, NPH = s->SH * s->SW;
    const size_t xs = (size_t)s->H * s->W;
    int *off = (int *)(ws + (size_t)nt * g->per_thread), *d = off + KK;
    dw_offsets(s, g, off, d);
    const int ntc = nt > C ? C : nt;
#pragma omp parallel num_threads(ntc)
    {
        float *P = ws + (size_t)NN_THREAD_ID() * g->per_thread;
        float *dP = P + g->pt;
        const size_t dpf = (size_t)NPH * g->PSp;
        float *gf = dP + (dpf > (size_t)g->Lp ? dpf : (size_t)g->Lp); /* M flat dy planes, seg apart */
        float *lw = gf + (size_t)M * g->seg;               /* [M KK][DW_B] */
        float *lb = lw + (size_t)M * KK * DW_B;            /* [M][DW_B] */
        float *tw = lb + (size_t)M * DW_B;                 /* dx's tap weights by phase */
        int *toff = (int *)(tw + (size_t)M * KK);          /* and offsets */
        int *tcnt = toff + (size_t)M * KK;                 /* first tap of each phase, NPH + 1 */
        memset(P, 0, sizeof(float) * g->pt);
#pragma omp for schedule(static)
        for (int c = 0; c < C; c++) {
            memset(lw, 0, sizeof(float) * (size_t)M * KK * DW_B);
            memset(lb, 0, sizeof(float) * (size_t)M * DW_B);
            memset(gf, 0, sizeof(float) * (size_t)M * g->seg); /* fronts, discarded columns, tails */
            if (dx) { /* taps of each phase: (m, kh, kw) order, reading flat dy plane m */
                int k = 0;
                for (int ph = 0; ph < NPH; ph++) {
                    tcnt[ph] = k;
                    for (int m = 0; m < M; m++)
                        for (int t = 0; t < KK; t++) {
                            const int kh = t / s->KW, kw = t % s->KW;
                            if ((kh % s->SH) * s->SW + kw % s->SW != ph) continue;
                            tw[k] = w[((size_t)c * M + m) * KK + t];
                            toff[k++] = m * g->seg + g->front - d[t];
                        }
                }
                tcnt[NPH] = k;
            }
            for (int n = 0; n < s->N; n++) {
                const size_t pl = (size_t)n * C + c;
                if (n + 1 < s->N) { /* the next image's planes are C planes further on: beyond
                                     * what the hardware prefetcher follows */
                    dw_prefetch(x + (pl + C) * xs, xs);
                    for (int m = 0; m < M; m++) dw_prefetch(dy + ((size_t)(n + 1) * s->OC + (size_t)c * M + m) * OHW, OHW);
                }
                for (int m = 0; m < M; m++) {
                    const float *dyo = dy + ((size_t)n * s->OC + (size_t)c * M + m) * OHW;
                    float *gm = gf + (size_t)m * g->seg + g->front;
                    for (int oh = 0; oh < s->OH; oh++) dw_copy(gm + (size_t)oh * g->Wq, dyo + (size_t)oh * s->OW, s->OW);
                    for (int q = 0; q < g->Lp; q += DW_B)
                        for (int j = 0; j < DW_B; j++) lb[m * DW_B + j] += gm[q + j];
                }
                dw_fill(s, g, x + pl * xs, P);
                for (int m = 0; m < M; m++)
                    dw_dots(KK, off, P, gf + (size_t)m * g->seg + g->front, g->Lp, lw + (size_t)m * KK * DW_B);
                if (!dx) continue;
                float *dxo = dx + pl * xs;
                for (int ph = 0; ph < NPH; ph++) /* every phase plane of the padded dx */
                    dw_taps(tcnt[ph + 1] - tcnt[ph], toff + tcnt[ph], tw + tcnt[ph], 0.0f, gf, g->PSp,
                            dP + (size_t)ph * g->PSp);
                /* dx's rows, contiguous: row ih is padded row ip = ih + PH = i SH + a; its
                 * column iw = padded column jp = iw + PW = j SW + b sits in phase plane (a, b) */
                for (int ih = 0, ip = s->PH; ih < s->H; ih++, ip++) {
                    const int a = ip % s->SH;
                    const float *src = dP + (size_t)a * s->SW * g->PSp + (size_t)(ip / s->SH) * g->Wq;
                    float *dst = dxo + (size_t)ih * s->W;
                    if (s->SW == 1)
                        dw_copy(dst, src + s->PW, s->W);
                    else if (s->SW == 2)
                        dw_merge2(dst, src + (s->PW % 2) * g->PSp + s->PW / 2,
                                  src + ((s->PW + 1) % 2) * g->PSp + (s->PW + 1) / 2, s->W);
                    else
                        for (int iw = 0, jp = s->PW; iw < s->W; iw++, jp++)
                            dst[iw] = src[(size_t)(jp % s->SW) * g->PSp + jp / s->SW];
                }
            }
            for (int m = 0; m < M; m++) {
                const int oc = c * M + m;
                for (int t = 0; t < KK; t++) {
                    const float *l = lw + ((size_t)m * KK + t) * DW_B;
                    float acc = 0.0f;
                    for (int j = 0; j < DW_B; j++) acc += l[j];
                    dw[(size_t)oc * KK + t] = acc;
                }
                if (db) {
                    float acc = 0.0f;
                    for (int j = 0; j < DW_B; j++) acc += lb[m * DW_B + j];
                    db[oc] = acc;
                }
            }
        }
    }
}

/* The scalar reference: the direct loops, float64 sums, one thread. */
static void dw_forward_ref(const conv2d_shape *s, const float *x, const float *w, const float *b, float *y) {
    const int M = s->OC / s->C, KK = s->KH * s->KW;
    for (int n = 0; n < s->N; n++)
        for (int oc = 0; oc < s->OC; oc++) {
            const float *xp = x + ((size_t)n * s->C + oc / M) * s->H * s->W, *wp = w + (size_t)oc * KK;
            for (int oh = 0; oh < s->OH; oh++)
                for (int ow = 0; ow < s->OW; ow++) {
                    double acc = b ? b[oc] : 0.0;
                    for (int kh = 0; kh < s->KH; kh++)
                        for (int kw = 0; kw < s->KW; kw++) {
                            int ih = oh * s->SH - s->PH + kh, iw = ow * s->SW - s->PW + kw;
                            if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W) continue;
                            acc += (double)xp[(size_t)ih * s->W + iw] * wp[kh * s->KW + kw];
                        }
                    y[(((size_t)n * s->OC + oc) * s->OH + oh) * s->OW + ow] = (float)acc;
                }
        }
}

static void dw_backward_ref(const conv2d_shape *s, const float *x, const float *w, const float *dy, float *dx,
                            float *dw, float *db) {
    const int M = s->OC / s->C, KK = s->KH * s->KW;
    const size_t xs = (size_t)s->H * s->W, ys = (size_t)s->OH * s->OW;
    if (dx) memset(dx, 0, sizeof(float) * s->N * s->C * xs);
    for (int oc = 0; oc < s->OC; oc++) {
        double bacc = 0.0;
        for (int t = 0; t < KK; t++) {
            const int kh = t / s->KW, kw = t % s->KW;
            double acc = 0.0;
            for (int n = 0; n < s->N; n++) {
                const float *xp = x + ((size_t)n * s->C + oc / M) * xs, *g = dy + ((size_t)n * s->OC + oc) * ys;
                float *dxp = dx ? dx + ((size_t)n * s->C + oc / M) * xs : NULL;
                for (int oh = 0; oh < s->OH; oh++)
                    for (int ow = 0; ow < s->OW; ow++) {
                        const float gv = g[(size_t)oh * s->OW + ow];
                        if (t == 0) bacc += gv;
                        int ih = oh * s->SH - s->PH + kh, iw = ow * s->SW - s->PW + kw;
                        if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W) continue;
                        acc += (double)gv * xp[(size_t)ih * s->W + iw];
                        if (dxp) dxp[(size_t)ih * s->W + iw] += gv * w[(size_t)oc * KK + t];
                    }
            }
            dw[(size_t)oc * KK + t] = (float)acc;
        }
        if (db) db[oc] = (float)bacc;
    }
}

/* ---------------------------------------------------------------- entry points */

static int is_depthwise(const conv2d_shape *s) { return s->G > 1 && s->G == s->C; }

/* One group's shape: C / G inputs, OC / G outputs. */
static conv2d_shape group_shape(const conv2d_shape *s) {
    conv2d_shape t = *s;
    t.C /= s->G;
    t.OC /= s->G;
    t.G = 1;
    return t;
}

/* One group's shape t; images xs (x, dx) and ys (y, dy) floats apart; group g's channels start
 * g xg into x, g yg into y and g wg into the weights. */
typedef struct {
    conv2d_shape t;
    size_t xs, ys, xg, yg, wg;
} group_strides;

static group_strides group_strides_of(const conv2d_shape *s) {
    group_strides q;
    q.t = group_shape(s);
    q.xs = (size_t)s->C * s->H * s->W, q.ys = (size_t)s->OC * s->OH * s->OW;
    q.xg = (size_t)q.t.C * s->H * s->W, q.yg = (size_t)q.t.OC * s->OH * s->OW;
    q.wg = (size_t)q.t.OC * q.t.C * s->KH * s->KW;
    return q;
}

/* f on each group in turn, in one workspace */
void nn_conv_each_group_forward(const conv2d_shape *s, conv_group_forward f, const float *x, const float *w,
                                const float *b, float *y, float *ws, int nt) {
    const group_strides q = group_strides_of(s);
    for (int g = 0; g < s->G; g++)
        f(&q.t, x + g * q.xg, q.xs, w + g * q.wg, b ? b + (size_t)g * q.t.OC : NULL, y + g * q.yg, q.ys, ws, nt);
}
void nn_conv_each_group_backward(const conv2d_shape *s, conv_group_backward f, const float *x, const float *w,
                                 const float *dy, float *dx, float *dw, float *db, float *ws, int nt) {
    const group_strides q = group_strides_of(s);
    for (int g = 0; g < s->G; g++)
        f(&q.t, x + g * q.xg, q.xs, w + g * q.wg, dy + g * q.yg, q.ys, dx ? dx + g * q.xg : NULL, dw + g * q.wg,
          db ? db + (size_t)g * q.t.OC : NULL, ws, nt);
}

static int shape_ok(const conv2d_shape *s) {
    conv2d_shape t = *s;
    return conv2d_shape_init(&t) == NN_OK && t.OH == s->OH && t.OW == s->OW;
}

size_t conv2d_workspace_size(const conv2d_shape *s, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (!shape_ok(s)) return 0;
    if (is_depthwise(s)) return dw_workspace(s, nthreads);
    conv2d_shape t = group_shape(s); /* the groups run one after another in one workspace */
    return workspace_one(&t, nthreads);
}

int conv2d_forward(const conv2d_shape *s, const float *x, const float *w, const float *b,
                   float *y, float *ws, size_t ws_len) {
    if (!shape_ok(s)) return NN_EBADSHAPE;
    int nt = nn_threads();
    if (is_depthwise(s) && nn_get_reference()) {
        dw_forward_ref(s, x, w, b, y);
        return NN_OK;
    }
    if (ws_len < conv2d_workspace_size(s, nt)) return NN_EWORKSPACE;
    if (is_depthwise(s)) {
        dw_geom g;
        dw_geom_init(s, &g);
        dw_forward(s, &g, x, w, b, y, ws, nt);
        return NN_OK;
    }
    nn_conv_each_group_forward(s, forward_one, x, w, b, y, ws, nt);
    return NN_OK;
}

int conv2d_backward(const conv2d_shape *s, const float *x, const float *w, const float *dy,
                    float *dx, float *dw, float *db, float *ws, size_t ws_len) {
    if (!shape_ok(s)) return NN_EBADSHAPE;
    int nt = nn_threads();
    if (is_depthwise(s) && nn_get_reference()) {
        dw_backward_ref(s, x, w, dy, dx, dw, db);
        return NN_OK;
    }
    if (ws_len < conv2d_workspace_size(s, nt)) return NN_EWORKSPACE;
    if (is_depthwise(s)) {
        dw_geom g;
        dw_geom_init(s, &g);
        dw_backward(s, &g, x, w, dy, dx, dw, db, ws, nt);
        return NN_OK;
    }
    nn_conv_each_group_backward(s, backward_one, x, w, dy, dx, dw, db, ws, nt);
    return NN_OK;
}

int conv2d_forward_direct(const conv2d_shape *s, const float *x, const float *w, const float *b,
                          float *y) {
    if (!shape_ok(s)) return NN_EBADSHAPE;
    const int Cg = s->C / s->G, OCg = s->OC / s->G;
    for (int n = 0; n < s->N; n++)
        for (int oc = 0; oc < s->OC; oc++)
            for (int oh = 0; oh < s->OH; oh++)
                for (int ow = 0; ow < s->OW; ow++) {
                    double acc = b ? b[oc] : 0.0;
                    for (int c = 0; c < Cg; c++)
                        for (int kh = 0; kh < s->KH; kh++)
                            for (int kw = 0; kw < s->KW; kw++) {
                                int ih = oh * s->SH - s->PH + kh, iw = ow * s->SW - s->PW + kw;
                                if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W) continue;
                                const int ci = oc / OCg * Cg + c;
                                acc += (double)x[(((size_t)n * s->C + ci) * s->H + ih) * s->W + iw] *
                                       w[(((size_t)oc * Cg + c) * s->KH + kh) * s->KW + kw];
                            }
                    y[(((size_t)n * s->OC + oc) * s->OH + oh) * s->OW + ow] = (float)acc;
                }
    return NN_OK;
}

/* ---------------------------------------------------------------- for conv_bf16.c */
void nn_conv_im2col(const conv2d_shape *s, const float *x, float *cols, size_t ld) { im2col(s, x, cols, ld); }
void nn_conv_col2im(const conv2d_shape *s, const float *cols, size_t ld, float *dx) { col2im(s, cols, ld, dx); }
int nn_conv_chunk_images(const conv2d_shape *s) { return chunk_images(s); }
conv2d_shape nn_conv_group_shape(const conv2d_shape *s) { return group_shape(s); }
int nn_conv_shape_ok(const conv2d_shape *s) { return shape_ok(s); }
int nn_conv_is_depthwise(const conv2d_shape *s) { return is_depthwise(s); }
void nn_conv_chunk_db(const conv2d_shape *s, const float *dy, size_t ys, int n0, int nc, float *dbp) {
    chunk_db(s, dy, ys, n0, nc, dbp);
}
conv2d_shape nn_conv_dx_shape(const conv2d_shape *s) { return dx_shape(s); }
