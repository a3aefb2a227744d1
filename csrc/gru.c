/*
 * GRU over a whole sequence, batch-major, PyTorch's nn.GRU(batch_first=True) layout and gate
 * order (r, z, n).
 *   x[N,T,D], h0[N,H] or NULL (zeros), w_ih[3H,D], w_hh[3H,H], b_ih[3H], b_hh[3H]
 *   gx = x_t w_ih^T + b_ih, gh = h_{t-1} w_hh^T + b_hh (each split r|z|n)
 *   r = sigmoid(gx_r + gh_r), z = sigmoid(gx_z + gh_z), n = tanh(gx_n + r * gh_n)
 *   h_t = (1 - z) n + z h_{t-1}
 *   spans[N,2] or NULL: row n's data steps are [spans[2n], spans[2n+1]); padding steps carry
 *   h unchanged, their gates are 0, and gradients pass through them (nn_step_is_data)
 *   saved for backward: hs[N,T,H], gates[N,T,3H] (r, z, n), hn[N,T,H] (= gh_n)
 *   backward: dhs[N,T,H] -> dx[N,T,D] (NULL to skip), dh0 (NULL to skip), dw_ih, dw_hh,
 *             db_ih, db_hh
 * Blocks of batch rows run the whole sequence independently (see rnn.c).
 * Forward, where nn_gate_tiles(3) (AVX-512): each step is one nn_gemm_gates over x_t and h_{t-1}
 * with the cell in its epilogue (as in lstm.c); elsewhere the input projection is one GEMM per
 * block, each step one nn_gemm_packed, then a pass of the cells.
 * Forward workspace: gh[N,3H] + w_ih and w_hh packed + b_ih + b_hh of r and z.
 * Backward workspace: dgx[N,T,3H] + dgh[N,T,3H] + hprev[N,T,H] + dhn[N,H] + packed w_hh.
 */
#include <string.h>
#include "nn_internal.h"

/* One time step of one row: g holds gx (r,z,n) and gets the gates; gh = h_{t-1} w_hh^T + b_hh. */
NN_CELL void cell_forward(int H, float *restrict g, const float *restrict gh,
                          const float *restrict hp, float *restrict h, float *restrict hnt,
                          const int has_prev) {
    for (int j = 0; j < H; j++) {
        float r = nn_sigmoid(g[j] + gh[j]);
        float z = nn_sigmoid(g[H + j] + gh[H + j]);
        float nv = nn_tanh(g[2 * H + j] + r * gh[2 * H + j]);
        g[j] = r;
        g[H + j] = z;
        g[2 * H + j] = nv;
        hnt[j] = gh[2 * H + j];
        h[j] = (1.0f - z) * nv + (has_prev ? z * hp[j] : 0.0f);
    }
}

/* One time step of one row backward: ax/ah get dLoss/dgx and dLoss/dgh; dhc carries dh. */
NN_CELL void cell_backward(int H, const float *restrict g, const float *restrict hn,
                           const float *restrict hp, const float *restrict dh_out,
                           float *restrict ax, float *restrict ah, float *restrict dhc,
                           const int has_prev) {
    for (int j = 0; j < H; j++) {
        float r = g[j], z = g[H + j], nv = g[2 * H + j];
        float dh = dh_out[j] + dhc[j];
        float hpj = has_prev ? hp[j] : 0.0f;
        float dan = dh * (1.0f - z) * (1.0f - nv * nv);
        float dar = dan * hn[j] * r * (1.0f - r);
        float daz = dh * (hpj - nv) * z * (1.0f - z);
        ax[j] = dar;
        ax[H + j] = daz;
        ax[2 * H + j] = dan;
        ah[j] = dar;
        ah[H + j] = daz;
        ah[2 * H + j] = dan * r;
        dhc[j] = dh * z;
    }
}

/* Cells of rows [r0, r1) at step t; ghr holds their gh rows. */
NN_MULTI_VOID(gru_cells_forward, (int r0, int r1, int t, int T, int H, const float *h0,
                                 const int32_t *spans, const float *ghr, float *gates, float *hs,
                                 float *hn), (r0, r1, t, T, H, h0, spans, ghr, gates, hs, hn), {
    const int G = 3 * H, ldg = T * G, ldh = T * H;
    for (int n = r0; n < r1; n++) {
        float *g = gates + (size_t)n * ldg + (size_t)t * G;
        const float *gh = ghr + (size_t)(n - r0) * G;
        float *h = hs + (size_t)n * ldh + (size_t)t * H;
        float *hnt = hn + (size_t)n * ldh + (size_t)t * H;
        const float *hp = t > 0 ? h - H : (h0 ? h0 + (size_t)n * H : NULL);
        if (!nn_step_is_data(spans, n, t)) {
            for (int j = 0; j < G; j++) g[j] = 0.0f;
            for (int j = 0; j < H; j++) hnt[j] = 0.0f;
            nn_carry_row(H, h, hp);
        } else if (hp) cell_forward(H, g, gh, hp, h, hnt, 1);
        else cell_forward(H, g, gh, NULL, h, hnt, 0);
    }
})

/* Cells of rows [r0, r1) at step t, backward. */
NN_MULTI_VOID(gru_cells_backward, (int r0, int r1, int t, int T, int H, const float *h0,
                                  const int32_t *spans, const float *hs, const float *gates,
                                  const float *hn, const float *dhs, float *dgx, float *dgh,
                                  float *dhn),
              (r0, r1, t, T, H, h0, spans, hs, gates, hn, dhs, dgx, dgh, dhn), {
    const int G = 3 * H, ldg = T * G, ldh = T * H;
    for (int n = r0; n < r1; n++) {
        size_t og = (size_t)n * ldg + (size_t)t * G, oh = (size_t)n * ldh + (size_t)t * H;
        const float *hp = t > 0 ? hs + oh - H : (h0 ? h0 + (size_t)n * H : NULL);
        float *dhc = dhn + (size_t)n * H;
        if (!nn_step_is_data(spans, n, t)) {
            nn_carry_grad(H, G, dhs + oh, dhc, dgx + og);
            for (int j = 0; j < G; j++) dgh[og + j] = 0.0f;
        } else if (hp) cell_backward(H, gates + og, hn + oh, hp, dhs + oh, dgx + og, dgh + og, dhc, 1);
        else cell_backward(H, gates + og, hn + oh, NULL, dhs + oh, dgx + og, dgh + og, dhc, 0);
    }
})

/* The fused step's epilogue (nn_gemm_gates, NG = 3): units [u0, u0 + nc) of rows
 * r0 + [row, row + nrows) at step t. */
struct gru_step {
    int T, H, t, r0;
    const float *brz, *b_ih, *b_hh, *h0; /* brz: b_ih + b_hh for r and z */
    const int32_t *spans;
    float *gates, *hs, *hn;
};
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NN_NO_CLONES)
#include "nn_vec512.h"
__attribute__((target("avx512f"), optimize("fp-contract=fast")))
static void gru_step_epilogue(void *ctx, int row, int nrows, int u0, int nc, const float *acc, int vw) {
    const struct gru_step *s = ctx;
    const int H = s->H, t = s->t;
    const __mmask16 m = nc >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nc) - 1);
    const __m512 br = _mm512_maskz_loadu_ps(m, s->brz + u0), bz = _mm512_maskz_loadu_ps(m, s->brz + H + u0);
    const __m512 bxn = _mm512_maskz_loadu_ps(m, s->b_ih + 2 * H + u0);
    const __m512 bhn = _mm512_maskz_loadu_ps(m, s->b_hh + 2 * H + u0);
    for (int i = 0; i < nrows; i++, acc += 4 * vw) {
        const int n = s->r0 + row + i;
        const size_t at = (size_t)n * s->T + t;
        float *g = s->gates + at * 3 * H + u0, *h = s->hs + at * H + u0, *hnt = s->hn + at * H + u0;
        const float *hp = t > 0 ? h - H : (s->h0 ? s->h0 + (size_t)n * H + u0 : NULL);
        if (!nn_step_is_data(s->spans, n, t)) { /* padding: gates 0, h carried */
            for (int q = 0; q < 3; q++)
                for (int j = 0; j < nc; j++) g[q * H + j] = 0.0f;
            for (int j = 0; j < nc; j++) hnt[j] = 0.0f;
            nn_carry_row(nc, h, hp);
            continue;
        }
        __m512 r = v_sigmoid(_mm512_add_ps(br, _mm512_loadu_ps(acc)));
        __m512 z = v_sigmoid(_mm512_add_ps(bz, _mm512_loadu_ps(acc + vw)));
        __m512 ghn = _mm512_add_ps(bhn, _mm512_loadu_ps(acc + 3 * vw));
        __m512 nv = v_tanh(_mm512_fmadd_ps(r, ghn, _mm512_add_ps(bxn, _mm512_loadu_ps(acc + 2 * vw))));
        __m512 hv = _mm512_mul_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), z), nv);
        if (hp) hv = _mm512_fmadd_ps(z, _mm512_maskz_loadu_ps(m, hp), hv);
        _mm512_mask_storeu_ps(g, m, r);
        _mm512_mask_storeu_ps(g + H, m, z);
        _mm512_mask_storeu_ps(g + 2 * H, m, nv);
        _mm512_mask_storeu_ps(hnt, m, ghn);
        _mm512_mask_storeu_ps(h, m, hv);
    }
}
#else
/* never called: nn_gate_tiles is 0 without the AVX-512 clones */
static void gru_step_epilogue(void *ctx, int row, int nrows, int u0, int nc, const float *acc, int vw) {
    (void)ctx, (void)row, (void)nrows, (void)u0, (void)nc, (void)acc, (void)vw;
}
#endif

size_t gru_forward_workspace_size(int N, int D, int H) {
    return (size_t)N * 3 * H + nn_gates_packed_size(3, D, H) + nn_gates_packed_size(3, H, H) + 2 * (size_t)H;
}

size_t gru_backward_workspace_size(int N, int T, int H) {
    return (size_t)N * H * (7 * (size_t)T + 1) + nn_packed_size(3 * H, H);
}

int gru_forward(int N, int T, int D, int H, const float *x, const int32_t *spans,
                const float *h0, const float *w_ih,
                const float *w_hh, const float *b_ih, const float *b_hh, float *hs, float *gates,
                float *hn, float *ws, size_t ws_len) {
    if (!nn_seq_dims_ok(N, T, D, H, 3)) return NN_EBADSHAPE;
    if (ws_len < gru_forward_workspace_size(N, D, H)) return NN_EWORKSPACE;
    const int G = 3 * H, ldg = T * G, ldh = T * H;
    int rb, nt;
    const int nblocks = nn_seq_blocks(N, &rb, &nt);
    /* AVX-512: w_ih and w_hh packed per gate for the fused steps; else w_hh for nn_gemm_packed */
    const int fused = nn_gate_tiles(3);
    float *wpi = ws + (size_t)N * G, *wph = wpi + nn_gates_packed_size(3, D, H);
    float *brz = wph + nn_gates_packed_size(3, H, H);
    for (int j = 0; j < 2 * H; j++) brz[j] = b_ih[j] + b_hh[j];
    if (fused) {
        nn_pack_gates(3, D, H, w_ih, D, wpi);
        nn_pack_gates(3, H, H, w_hh, H, wph);
    } else if (!nn_get_reference())
        nn_pack_b(1, H, G, w_hh, H, wph);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int blk = 0; blk < nblocks; blk++) {
        const int r0 = blk * rb, r1 = r0 + nn_chunk_len(N, blk, rb);
        const int nr = r1 - r0;
        if (nr > 0 && fused) { /* each step one pass, the cells in the epilogue (see lstm.c) */
            struct gru_step st = {T, H, 0, r0, brz, b_ih, b_hh, h0, spans, gates, hs, hn};
            nn_gate_steps(3, nr, T, D, H, x + (size_t)r0 * T * D, hs + (size_t)r0 * ldh,
                          h0 ? h0 + (size_t)r0 * H : NULL, wpi, wph, gru_step_epilogue, &st, &st.t);
        } else if (nr > 0) { /* the input projection for all steps, then step by step */
            float *gr = gates + (size_t)r0 * ldg, *ghr = ws + (size_t)r0 * G;
            nn_seq_input_projection(nr * T, G, D, x + (size_t)r0 * T * D, w_ih, b_ih, gr);
            for (int t = 0; t < T; t++) {
                for (int n = 0; n < nr; n++)
                    for (int j = 0; j < G; j++) ghr[(size_t)n * G + j] = b_hh[j];
                nn_seq_recurrent_product(t, nr, G, H, hs + (size_t)r0 * ldh, ldh, h0 ? h0 + (size_t)r0 * H : NULL,
                                         w_hh, wph, ghr, G);
                gru_cells_forward(r0, r1, t, T, H, h0, spans, ghr, gates, hs, hn);
            }
        }
    }
    return NN_OK;
}

int gru_backward(int N, int T, int D, int H, const float *x, const int32_t *spans,
                 const float *h0, const float *w_ih,
                 const float *w_hh, const float *hs, const float *gates, const float *hn,
                 const float *dhs, float *dx, float *dh0, float *dw_ih, float *dw_hh,
                 float *db_ih, float *db_hh, float *ws, size_t ws_len) {
    if (!nn_seq_dims_ok(N, T, D, H, 3)) return NN_EBADSHAPE;
    if (ws_len < gru_backward_workspace_size(N, T, H)) return NN_EWORKSPACE;
    const int G = 3 * H, ldg = T * G;
    float *dgx = ws, *dgh = dgx + (size_t)N * T * G, *hprev = dgh + (size_t)N * T * G;
    float *dhn = hprev + (size_t)N * T * H;
    float *wp = dhn + (size_t)N * H; /* w_hh packed once for every step's GEMM */
    nn_pack_b(0, G, H, w_hh, H, wp);
    int rb, nt;
    const int nblocks = nn_seq_blocks(N, &rb, &nt);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int blk = 0; blk < nblocks; blk++) {
        const int r0 = blk * rb, r1 = r0 + nn_chunk_len(N, blk, rb);
        const int nr = r1 - r0;
        if (nr > 0) memset(dhn + (size_t)r0 * H, 0, sizeof(float) * nr * H);
        for (int t = T - 1; t >= 0 && nr > 0; t--) {
            gru_cells_backward(r0, r1, t, T, H, h0, spans, hs, gates, hn, dhs, dgx, dgh, dhn);
            nn_gemm_packed(0, nr, H, G, dgh + (size_t)r0 * ldg + (size_t)t * G, ldg, w_hh, H, wp,
                           dhn + (size_t)r0 * H, H);
        }
        if (dh0)
            for (size_t k = (size_t)r0 * H; k < (size_t)r1 * H; k++) dh0[k] = dhn[k];
        nn_shift_states(r0, r1, T, H, h0, hs, hprev, H);
    }
    const int rows = N * T;
    nn_gemm_par(1, 0, G, D, rows, 1.0f, dgx, G, x, D, 0.0f, dw_ih, D);
    nn_gemm_par(1, 0, G, H, rows, 1.0f, dgh, G, hprev, H, 0.0f, dw_hh, H);
    nn_colsum(rows, G, dgx, G, db_ih);
    nn_colsum(rows, G, dgh, G, db_hh);
    if (dx) nn_gemm_par(0, 0, rows, D, G, 1.0f, dgx, G, w_ih, D, 0.0f, dx, D);
    return NN_OK;
}
