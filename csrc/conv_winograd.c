/*
 * Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray 2015): a 4x4 output tile
 * from a 6x6 input tile with 36 products per (oc, c) where direct convolution needs 144.
 *   y[n, oc, tile] = A^T [ sum_c U[oc, c] .* V[n, c, tile] ] A + b[oc]
 *   U = G w[oc, c] G^T (6x6), V = B^T d B (d: the tile's 6x6 input patch, zero outside)
 * So the 36 entries e of the 6x6 transform domain are 36 independent products
 *   M_e[t, oc] = sum_c V_e[t, c] U_e[c, oc]   (t: a tile, over a chunk's images)
 * run by gemm_packed.c's micro-kernel against U_e packed once per call.
 * Layouts (floats):
 *   xt[j][Hq][Wq][C]   a chunk's nb images, zero-padded, channels last: Hq = 4 TH + 2, Wq = 4 TW + 2
 *                      (TH = ceil(OH / 4) rows of tiles, TW columns), so a tile's patch is 36
 *                      contiguous runs of C (the transforms are vectorized along the channels)
 *   U_e[c][oc] = (G w[oc, c] G^T)[e], written in gemm_packed.c's packed layout
 *   V[e][t][c], M[e][t][oc]   a block of WINO_TB tiles (in cache between the three steps)
 * and the output transform writes each tile's 4x4 outputs (and the bias) straight into y's planes.
 * The backward's dx of such a convolution is the forward of dy with the flipped weights
 * (conv.c), so it runs here too. Each output sums in one fixed order: the same bits for any
 * thread count. The transforms' roundings add error: about 7e-6 of the outputs' scale at 64 to 128
 * channels against torch in float64, where the direct convolution's is about 1e-6. An inf or NaN
 * in the input spreads to its tiles' every output (a tile's 16 outputs all sum its 36 inputs
 * times 0 or more), where the direct path reaches only the outputs whose taps read it.
 */
#include <stdlib.h>
#include <string.h>
#include "nn_internal.h"

#define WINO_E 36 /* entries of the 6x6 transform domain */

/* Tiles per block (V and M: 36 TB (C + OC) floats, 1.2 MB at 64 channels); 32 to 128 measured
 * alike on 64 and 128 channels, 256 slower, and blocks sized to stay in L2 (16-64 tiles) gained
 * nothing either with two processes side by side. */
#define WINO_TB 64
/* Below this many output positions per call (N OH OW) the weights' transform (36 C OC floats,
 * written packed) costs about what the products save. 256 -> 256 on 8x8 planes against the
 * direct forward: batch 16 1.37x and batch 8 1.08x on one thread; batch 32 1.10x and batch 16
 * 0.94x on two. (Written unpacked and then packed, the transform took twice as long: batch 16 on
 * one thread ran 0.95x.) The rule cannot count the threads: results must not depend on them. */
#define WINO_MIN_POSITIONS 1024
/* Fewer channels than this gain little (32 -> 32 on 32x32: 1.05-1.08x) */
#define WINO_MIN_CHANNELS 48

typedef struct {
    int TH, TW, Hq, Wq, T1; /* tiles per image T1 = TH TW */
    int nb, nchunks, TB;    /* images per chunk, chunks, tiles per block */
    size_t xt, v, m;        /* per-thread floats of each buffer */
} wino_plan;

/* Chunks of nb images (at least a block's tiles, at most a thread's share), split into blocks
 * of WINO_TB tiles. A tile's outputs do not depend on the others in its block or chunk. */
static wino_plan wino_plan_of(const conv2d_shape *s, int nt) {
    wino_plan p;
    p.TH = (s->OH + 3) / 4, p.TW = (s->OW + 3) / 4;
    p.Hq = 4 * p.TH + 2, p.Wq = 4 * p.TW + 2, p.T1 = p.TH * p.TW;
    const int share = (s->N + nt - 1) / nt;
    p.nb = (WINO_TB + p.T1 - 1) / p.T1;
    if (p.nb > share) p.nb = share;
    p.nchunks = (s->N + p.nb - 1) / p.nb;
    p.TB = p.nb * p.T1 < WINO_TB ? p.nb * p.T1 : WINO_TB;
    p.xt = (size_t)p.nb * p.Hq * p.Wq * s->C;
    p.v = (size_t)WINO_E * p.TB * s->C;
    p.m = (size_t)WINO_E * p.TB * s->OC;
    return p;
}

/* SPARK_NN_WINOGRAD=0 turns it off (the direct convolution instead), for comparisons. */
int nn_wino_ok(const conv2d_shape *s) {
    const char *e = getenv("SPARK_NN_WINOGRAD");
    if (e && strcmp(e, "0") == 0) return 0;
    if (nn_get_reference() || s->G != 1 || s->KH != 3 || s->KW != 3 || s->SH != 1 || s->SW != 1) return 0;
    if (s->C < WINO_MIN_CHANNELS || s->OC < WINO_MIN_CHANNELS || s->OH < 8 || s->OW < 8) return 0;
    if ((long long)s->N * s->OH * s->OW < WINO_MIN_POSITIONS) return 0;
    const wino_plan p = wino_plan_of(s, 1); /* the largest chunk */
    return (long long)p.xt < 0x7fffffffLL;
}

size_t nn_wino_floats(const conv2d_shape *s, int nt) {
    if (nt < 1) nt = 1;
    const wino_plan p = wino_plan_of(s, nt);
    const size_t u = WINO_E * nn_packed_size(s->C, s->OC);
    return u + (size_t)nt * (p.xt + p.v + p.m);
}

#define WINO_CB 16
/* the input copy's planes at a time (16 streams of rows) */
#define WINO_PLANES 16
/* G's rows on (g0, g1, g2): g0 / 4, -(g0 + g1 + g2) / 6, -(g0 - g1 + g2) / 6,
 * (g0 + 2 g1 + 4 g2) / 24, (g0 - 2 g1 + 4 g2) / 24, g2 */
#define WINO_G(o, st, g0, g1, g2)                                                               \
    do {                                                                                        \
        const float p_ = (g0) + (g2), q_ = (g0) + 4.0f * (g2), r_ = 2.0f * (g1);                \
        (o)[0] = 0.25f * (g0);                                                                  \
        (o)[(st)] = -(p_ + (g1)) / 6.0f;                                                        \
        (o)[2 * (st)] = -(p_ - (g1)) / 6.0f;                                                    \
        (o)[3 * (st)] = (q_ + r_) / 24.0f;                                                      \
        (o)[4 * (st)] = (q_ - r_) / 24.0f;                                                      \
        (o)[5 * (st)] = (g2);                                                                   \
    } while (0)

/* One panel of NN_PACK_NR output channels (n of them real, the rest zero) of every U_e, written
 * in gemm_packed.c's packed layout: U_e[c][oc] at up + e psz + c NN_PACK_NR + oc (up at the
 * panel's start in U_0), from w's rows of C 3x3 kernels at w. */
NN_MULTI_VOID(wino_weights_panel, (int C, int n, const float *restrict w, float *restrict up, size_t psz),
              (C, n, w, up, psz), {
    float g[9][NN_PACK_NR], t[6][3][NN_PACK_NR];
    for (int c = 0; c < C; c++) {
        for (int k = 0; k < 9; k++)
            for (int j = 0; j < NN_PACK_NR; j++) g[k][j] = j < n ? w[((size_t)j * C + c) * 9 + k] : 0.0f;
        for (int q = 0; q < 3; q++)
            for (int j = 0; j < NN_PACK_NR; j++)
                WINO_G(&t[0][q][j], 3 * NN_PACK_NR, g[q][j], g[3 + q][j], g[6 + q][j]);
        for (int i = 0; i < 6; i++)
            for (int j = 0; j < NN_PACK_NR; j++)
                WINO_G(up + (size_t)i * 6 * psz + (size_t)c * NN_PACK_NR + j, psz, t[i][0][j], t[i][1][j],
                       t[i][2][j]);
    }
})

/* U_e = (G w G^T)_e for every e, packed (nn_pack_b's layout, psz floats each) */
static void wino_weights(int OC, int C, const float *w, float *up, size_t psz, int nt) {
    const int panels = (OC + NN_PACK_NR - 1) / NN_PACK_NR;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int p = 0; p < panels; p++) {
        const int n = OC - p * NN_PACK_NR < NN_PACK_NR ? OC - p * NN_PACK_NR : NN_PACK_NR;
        wino_weights_panel(C, n, w + (size_t)p * NN_PACK_NR * C * 9, up + (size_t)p * C * NN_PACK_NR, psz);
    }
}

/* One tile: d at the patch's top left in xt (rows rs floats apart, columns C apart), V_e's row
 * at v + e es. B^T's rows: 4 d0 - 5 d2 + d4, (d3 + d4) - 4 (d1 + d2), (d4 - d3) + 4 (d1 - d2),
 * (d4 - d2) + 2 (d3 - d1), (d4 - d2) - 2 (d3 - d1), 4 d1 - 5 d3 + d5. */
#define WINO_BT(o, st, d0, d1, d2, d3, d4, d5)                                                  \
    do {                                                                                        \
        (o)[0] = 4.0f * (d0) - 5.0f * (d2) + (d4);                                              \
        (o)[(st)] = ((d3) + (d4)) - 4.0f * ((d1) + (d2));                                       \
        (o)[2 * (st)] = ((d4) - (d3)) + 4.0f * ((d1) - (d2));                                   \
        (o)[3 * (st)] = ((d4) - (d2)) + 2.0f * ((d3) - (d1));                                   \
        (o)[4 * (st)] = ((d4) - (d2)) - 2.0f * ((d3) - (d1));                                   \
        (o)[5 * (st)] = 4.0f * (d1) - 5.0f * (d3) + (d5);                                       \
    } while (0)

NN_MULTI_VOID(wino_in, (int C, const float *restrict d, size_t rs, float *restrict v, size_t es),
              (C, d, rs, v, es), {
    float t[6][6][WINO_CB];
    for (int c0 = 0; c0 < C; c0 += WINO_CB) {
        const int n = C - c0 < WINO_CB ? C - c0 : WINO_CB;
        for (int i = 0; i < 6; i++) {
            const float *r = d + i * rs + c0;
            for (int c = 0; c < n; c++) {
                const float d0 = r[c], d1 = r[C + c], d2 = r[2 * C + c], d3 = r[3 * C + c],
                            d4 = r[4 * C + c], d5 = r[5 * C + c];
                WINO_BT(&t[i][0][c], WINO_CB, d0, d1, d2, d3, d4, d5);
            }
        }
        for (int j = 0; j < 6; j++)
            for (int c = 0; c < n; c++) {
                const float d0 = t[0][j][c], d1 = t[1][j][c], d2 = t[2][j][c], d3 = t[3][j][c],
                            d4 = t[4][j][c], d5 = t[5][j][c];
                WINO_BT(v + (size_t)j * es + c0 + c, 6 * es, d0, d1, d2, d3, d4, d5);
            }
    }
})

/* A^T's rows: m0 + m1 + m2 + m3 + m4, (m1 - m2) + 2 (m3 - m4), (m1 + m2) + 4 (m3 + m4),
 * (m1 - m2) + 8 (m3 - m4) + m5 */
#define WINO_AT(o, st, m0, m1, m2, m3, m4, m5)                                                  \
    do {                                                                                        \
        const float a_ = (m1) + (m2), s_ = (m1) - (m2), b_ = (m3) + (m4), d_ = (m3) - (m4);     \
        (o)[0] = (m0) + a_ + b_;                                                                \
        (o)[(st)] = s_ + 2.0f * d_;                                                             \
        (o)[2 * (st)] = a_ + 4.0f * b_;                                                         \
        (o)[3 * (st)] = s_ + 8.0f * d_ + (m5);                                                  \
    } while (0)

/* One tile's outputs: M_e's row at m + e es (OC floats); the tile's ra x rb outputs (fewer than 4
 * at the planes' right and bottom edges) go to y (its top left in plane 0; planes ps floats apart,
 * rows ow) with the bias (NULL: none) */
NN_MULTI_VOID(wino_out, (int OC, const float *restrict m, size_t es, float *restrict y, size_t ps, int ow, int ra,
                         int rb, const float *restrict bias),
              (OC, m, es, y, ps, ow, ra, rb, bias), {
    float t[6][4][WINO_CB], o[4][4][WINO_CB];
    for (int k0 = 0; k0 < OC; k0 += WINO_CB) {
        const int n = OC - k0 < WINO_CB ? OC - k0 : WINO_CB;
        for (int i = 0; i < 6; i++) {
            const float *r = m + (size_t)i * 6 * es + k0;
            for (int k = 0; k < n; k++)
                WINO_AT(&t[i][0][k], WINO_CB, r[k], r[es + k], r[2 * es + k], r[3 * es + k], r[4 * es + k],
                        r[5 * es + k]);
        }
        for (int j = 0; j < 4; j++)
            for (int k = 0; k < n; k++)
                WINO_AT(&o[0][j][k], 4 * WINO_CB, t[0][j][k], t[1][j][k], t[2][j][k], t[3][j][k], t[4][j][k],
                        t[5][j][k]);
        for (int k = 0; k < n; k++) {
            const float bk = bias ? bias[k0 + k] : 0.0f;
            float *yk = y + (size_t)(k0 + k) * ps;
            for (int a = 0; a < ra; a++)
                for (int b = 0; b < rb; b++) yk[a * ow + b] = o[a][b][k] + bk;
        }
    }
})

/* Forward of a 3x3 stride-1 convolution (nn_wino_ok): images xs floats apart in x, ys in y. */
void nn_wino_forward(const conv2d_shape *s, const float *x, size_t xs, const float *w, const float *b, float *y,
                     size_t ys, float *ws, int nt) {
    const int C = s->C, OC = s->OC, H = s->H, W = s->W, OHW = s->OH * s->OW;
    const wino_plan p = wino_plan_of(s, nt);
    const size_t psz = nn_packed_size(C, OC);
    float *up = ws, *thr = up + WINO_E * psz;
    wino_weights(OC, C, w, up, psz, nt);
    const int ntc = nt > p.nchunks ? p.nchunks : nt;
    const size_t rs = (size_t)p.Wq * C;
#pragma omp parallel num_threads(ntc)
    {
        float *xt = thr + (size_t)NN_THREAD_ID() * (p.xt + p.v + p.m);
        float *V = xt + p.xt, *M = V + p.v;
        memset(xt, 0, sizeof(float) * p.xt); /* the borders stay zero */
#pragma omp for schedule(static)
        for (int ch = 0; ch < p.nchunks; ch++) {
            const int n0 = ch * p.nb, nc = nn_chunk_len(s->N, ch, p.nb), nt_ = nc * p.T1;
            /* WINO_PLANES planes at a time, row by row (all C planes row by row was slower) */
            for (int j = 0; j < nc; j++)
                for (int c0 = 0; c0 < C; c0 += WINO_PLANES)
                    for (int h = 0; h < H; h++)
                        nn_transpose_bias(C - c0 < WINO_PLANES ? C - c0 : WINO_PLANES, W,
                                          x + (size_t)(n0 + j) * xs + ((size_t)c0 * H + h) * W, H * W, NULL,
                                          xt + (((size_t)j * p.Hq + h + s->PH) * p.Wq + s->PW) * C + c0, C);
            for (int t0 = 0; t0 < nt_; t0 += p.TB) {
                const int tb = nt_ - t0 < p.TB ? nt_ - t0 : p.TB;
                for (int t = 0; t < tb; t++) {
                    const int j = (t0 + t) / p.T1, q = (t0 + t) % p.T1, th = q / p.TW, tw = q % p.TW;
                    wino_in(C, xt + ((size_t)j * p.Hq + 4 * th) * rs + (size_t)4 * tw * C, rs, V + (size_t)t * C,
                            (size_t)tb * C);
                }
                memset(M, 0, sizeof(float) * WINO_E * tb * OC);
                for (int e = 0; e < WINO_E; e++)
                    nn_gemm_packed(1, tb, OC, C, V + (size_t)e * tb * C, C, NULL, C, up + e * psz, /* B: packed only */
                                   M + (size_t)e * tb * OC, OC);
                for (int t = 0; t < tb; t++) {
                    const int j = (t0 + t) / p.T1, q = (t0 + t) % p.T1, oh = q / p.TW * 4, ow = q % p.TW * 4;
                    const int ra = s->OH - oh < 4 ? s->OH - oh : 4, rb = s->OW - ow < 4 ? s->OW - ow : 4;
                    wino_out(OC, M + (size_t)t * OC, (size_t)tb * OC, y + (size_t)(n0 + j) * ys + (size_t)oh * s->OW + ow,
                             OHW, s->OW, ra, rb, b);
                }
            }
        }
    }
}
