/*
 * LSTM over a whole sequence, batch-major, PyTorch's nn.LSTM(batch_first=True) layout and gate
 * order (i, f, g, o).
 *   x[N,T,D], h0[N,H] / c0[N,H] or NULL (zeros), w_ih[4H,D], w_hh[4H,H], b_ih[4H], b_hh[4H]
 *   a_t = x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh;  i,f,o = sigmoid, g = tanh of its quarters
 *   c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)
 *   spans[N,2] or NULL: row n's data steps are [spans[2n], spans[2n+1]); padding steps carry
 *   h and c unchanged, their gates are 0, and gradients pass through them (nn_step_is_data)
 *   saved for backward: hs[N,T,H], cs[N,T,H], gates[N,T,4H] (i,f,g,o after their nonlinearity)
 *   backward: dhs[N,T,H], dcT[N,H] or NULL (gradient of the last cell state)
 *             -> dx[N,T,D] (NULL to skip), dh0, dc0 (NULL to skip), dw_ih, dw_hh, db_ih, db_hh
 * Blocks of batch rows run the whole sequence independently (see rnn.c).
 * Forward, where nn_gate_tiles(4) (AVX-512): each step is one nn_gemm_gates over x_t and h_{t-1}
 * against w_ih and w_hh packed once per call, the cell update in its epilogue while the step's
 * gate sums are in registers; elsewhere the input projection is one GEMM per block, each step
 * one nn_gemm_packed, then a pass of the cells.
 * Forward workspace: w_ih and w_hh packed, and b_ih + b_hh (lstm_forward_workspace_size).
 * Backward workspace: dgates[N,T,4H] + [x_t, h_{t-1}][N,T,D+H] + dhn[N,H] + dcn[N,H] + packed
 * w_hh and w_ih + per-block bias gradients + [dw_ih, dw_hh]; dx_t = dg_t w_ih at each step,
 * while dg_t is in cache.
 */
#include <string.h>
#include "nn_internal.h"

/* One time step of one row: g holds the pre-activations a (i,f,g,o) and gets the gates. */
NN_CELL void cell_forward(int H, float *restrict g, const float *restrict cp, float *restrict c,
                          float *restrict h, const int has_prev) {
    for (int j = 0; j < H; j++) {
        float i = nn_sigmoid(g[j]), f = nn_sigmoid(g[H + j]);
        float gg = nn_tanh(g[2 * H + j]), o = nn_sigmoid(g[3 * H + j]);
        g[j] = i;
        g[H + j] = f;
        g[2 * H + j] = gg;
        g[3 * H + j] = o;
        float cv = i * gg + (has_prev ? f * cp[j] : 0.0f);
        c[j] = cv;
        h[j] = o * nn_tanh(cv);
    }
}

/* One time step of one row backward: d gets dLoss/da; dcc carries dc to step t-1, dhc is
 * zeroed for the step's GEMM to add d w_hh to it. */
NN_CELL void cell_backward(int H, const float *restrict g, const float *restrict c,
                           const float *restrict cp, const float *restrict dh_out,
                           float *restrict d, float *restrict dhc, float *restrict dcc,
                           const int has_prev) {
    for (int j = 0; j < H; j++) {
        float i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j];
        float dh = dh_out[j] + dhc[j], tc = nn_tanh(c[j]);
        float dc = dcc[j] + dh * o * (1.0f - tc * tc);
        d[j] = dc * gg * i * (1.0f - i);
        d[H + j] = (has_prev ? dc * cp[j] : 0.0f) * f * (1.0f - f);
        d[2 * H + j] = dc * i * (1.0f - gg * gg);
        d[3 * H + j] = dh * tc * o * (1.0f - o);
        dcc[j] = dc * f;
        dhc[j] = 0.0f;
    }
}

/* Cells of rows [r0, r1) at step t. */
NN_MULTI_VOID(lstm_cells_forward, (int r0, int r1, int t, int T, int H, const float *h0,
                                  const float *c0, const int32_t *spans, float *gates, float *cs,
                                  float *hs), (r0, r1, t, T, H, h0, c0, spans, gates, cs, hs), {
    const int G = 4 * H, ldg = T * G, ldh = T * H;
    for (int n = r0; n < r1; n++) {
        float *g = gates + (size_t)n * ldg + (size_t)t * G;
        float *c = cs + (size_t)n * ldh + (size_t)t * H;
        float *h = hs + (size_t)n * ldh + (size_t)t * H;
        const float *cp = t > 0 ? c - H : (c0 ? c0 + (size_t)n * H : NULL);
        if (!nn_step_is_data(spans, n, t)) {
            for (int j = 0; j < G; j++) g[j] = 0.0f;
            nn_carry_row(H, c, cp);
            nn_carry_row(H, h, t > 0 ? h - H : (h0 ? h0 + (size_t)n * H : NULL));
        } else if (cp) cell_forward(H, g, cp, c, h, 1);
        else cell_forward(H, g, NULL, c, h, 0);
    }
})

/* The step's GEMM epilogue (nn_gemm_gates): units [u0, u0 + nc) of row r0 + row at step t. */
struct lstm_step {
    int T, H, t, r0;
    const float *bias, *h0, *c0; /* bias: b_ih + b_hh */
    const int32_t *spans;
    float *gates, *cs, *hs;
};
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NN_NO_CLONES)
#include "nn_vec512.h"
/* Row n, units [u0, u0 + nc) at step t if the step is padding: gates 0, the state carried.
 * Returns 0 for a data step. */
static int lstm_step_padding(const struct lstm_step *s, int n, int u0, int nc) {
    if (nn_step_is_data(s->spans, n, s->t)) return 0;
    const int H = s->H, t = s->t;
    const size_t at = (size_t)n * s->T + t;
    float *g = s->gates + at * 4 * H + u0, *c = s->cs + at * H + u0, *h = s->hs + at * H + u0;
    for (int q = 0; q < 4; q++)
        for (int j = 0; j < nc; j++) g[q * H + j] = 0.0f;
    nn_carry_row(nc, c, t > 0 ? c - H : (s->c0 ? s->c0 + (size_t)n * H + u0 : NULL));
    nn_carry_row(nc, h, t > 0 ? h - H : (s->h0 ? s->h0 + (size_t)n * H + u0 : NULL));
    return 1;
}

__attribute__((target("avx512f"), optimize("fp-contract=fast")))
static void lstm_step_epilogue(void *ctx, int row, int nrows, int u0, int nc, const float *acc, int vw) {
    const struct lstm_step *s = ctx;
    const int H = s->H, t = s->t;
    const __mmask16 m = nc >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nc) - 1);
    const float *b = s->bias + u0;
    const __m512 bi = _mm512_maskz_loadu_ps(m, b), bf = _mm512_maskz_loadu_ps(m, b + H);
    const __m512 bg = _mm512_maskz_loadu_ps(m, b + 2 * H), bo = _mm512_maskz_loadu_ps(m, b + 3 * H);
    for (int i = 0; i < nrows; i++, acc += 4 * vw) {
        const int n = s->r0 + row + i;
        if (lstm_step_padding(s, n, u0, nc)) continue;
        const size_t at = (size_t)n * s->T + t;
        float *g = s->gates + at * 4 * H + u0, *c = s->cs + at * H + u0, *h = s->hs + at * H + u0;
        const float *cp = t > 0 ? c - H : (s->c0 ? s->c0 + (size_t)n * H + u0 : NULL);
        __m512 ig = v_sigmoid(_mm512_add_ps(bi, _mm512_loadu_ps(acc)));
        __m512 fg = v_sigmoid(_mm512_add_ps(bf, _mm512_loadu_ps(acc + vw)));
        __m512 gg = v_tanh(_mm512_add_ps(bg, _mm512_loadu_ps(acc + 2 * vw)));
        __m512 og = v_sigmoid(_mm512_add_ps(bo, _mm512_loadu_ps(acc + 3 * vw)));
        __m512 cv = _mm512_mul_ps(ig, gg);
        if (cp) cv = _mm512_fmadd_ps(fg, _mm512_maskz_loadu_ps(m, cp), cv);
        _mm512_mask_storeu_ps(g, m, ig);
        _mm512_mask_storeu_ps(g + H, m, fg);
        _mm512_mask_storeu_ps(g + 2 * H, m, gg);
        _mm512_mask_storeu_ps(g + 3 * H, m, og);
        _mm512_mask_storeu_ps(c, m, cv);
        _mm512_mask_storeu_ps(h, m, _mm512_mul_ps(og, v_tanh(cv)));
    }
}
#else
/* never called: nn_gate_tiles is 0 without the AVX-512 clones */
static void lstm_step_epilogue(void *ctx, int row, int nrows, int u0, int nc, const float *acc, int vw) {
    (void)ctx, (void)row, (void)nrows, (void)u0, (void)nc, (void)acc, (void)vw;
}
#endif

/* Cells of rows [r0, r1) at step t, backward; dg gets dLoss/da, dhn/dcn carry to t-1, and the
 * block's bias gradient dbb[G] adds the step's dg (one pass less over dg than a column sum). */
NN_MULTI_VOID(lstm_cells_backward, (int r0, int r1, int t, int T, int H, const float *c0,
                                   const int32_t *spans, const float *gates, const float *cs,
                                   const float *dhs, float *dg, float *dhn, float *dcn, float *dbb),
              (r0, r1, t, T, H, c0, spans, gates, cs, dhs, dg, dhn, dcn, dbb), {
    const int G = 4 * H, ldg = T * G, ldh = T * H;
    for (int n = r0; n < r1; n++) {
        const float *g = gates + (size_t)n * ldg + (size_t)t * G;
        const float *c = cs + (size_t)n * ldh + (size_t)t * H;
        const float *dh_out = dhs + (size_t)n * ldh + (size_t)t * H;
        const float *cp = t > 0 ? c - H : (c0 ? c0 + (size_t)n * H : NULL);
        float *d = dg + (size_t)n * ldg + (size_t)t * G;
        float *dhc = dhn + (size_t)n * H, *dcc = dcn + (size_t)n * H;
        if (!nn_step_is_data(spans, n, t)) {
            nn_carry_grad(H, G, dh_out, dhc, d);
            continue;
        }
        if (cp) cell_backward(H, g, c, cp, dh_out, d, dhc, dcc, 1);
        else cell_backward(H, g, c, NULL, dh_out, d, dhc, dcc, 0);
        for (int j = 0; j < G; j++) dbb[j] += d[j];
    }
})

size_t lstm_forward_workspace_size(int D, int H) {
    return nn_gates_packed_size(4, D, H) + nn_gates_packed_size(4, H, H) + 4 * (size_t)H;
}

size_t lstm_backward_workspace_size(int N, int T, int D, int H) {
    const int rb = nn_seq_block_rows(N), nblocks = (N + rb - 1) / rb;
    return (size_t)N * T * (4 * (size_t)H + D + H) + 2 * (size_t)N * H + nn_packed_size(4 * H, H) +
           nn_packed_size(4 * H, D) + (size_t)nblocks * 4 * H + 4 * (size_t)H * (D + H);
}

int lstm_forward(int N, int T, int D, int H, const float *x, const int32_t *spans,
                 const float *h0, const float *c0,
                 const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh,
                 float *hs, float *cs, float *gates, float *ws, size_t ws_len) {
    if (!nn_seq_dims_ok(N, T, D, H, 4)) return NN_EBADSHAPE;
    if (ws_len < lstm_forward_workspace_size(D, H)) return NN_EWORKSPACE;
    const int G = 4 * H, ldg = T * G, ldh = T * H;
    int rb, nt;
    const int nblocks = nn_seq_blocks(N, &rb, &nt);
    /* AVX-512: w_ih and w_hh packed per gate for the fused steps; else w_hh for nn_gemm_packed */
    const int fused = nn_gate_tiles(4);
    float *wpi = ws, *wph = wpi + nn_gates_packed_size(4, D, H), *bias = wph + nn_gates_packed_size(4, H, H);
    for (int j = 0; j < G; j++) bias[j] = b_ih[j] + b_hh[j];
    if (fused) {
        nn_pack_gates(4, D, H, w_ih, D, wpi);
        nn_pack_gates(4, H, H, w_hh, H, wph);
    } else if (!nn_get_reference())
        nn_pack_b(1, H, G, w_hh, H, wph);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int blk = 0; blk < nblocks; blk++) {
        const int r0 = blk * rb, r1 = r0 + nn_chunk_len(N, blk, rb);
        const int nr = r1 - r0;
        if (nr > 0 && fused) {
            /* each step one pass: x_t w_ih^T + h_{t-1} w_hh^T in registers, the cells in the
             * epilogue; the input projection as one sgemm over all steps wrote and reread 4H
             * floats per row and step through memory (a block's gates outgrow the L2 cache) */
            struct lstm_step s = {T, H, 0, r0, bias, h0, c0, spans, gates, cs, hs};
            nn_gate_steps(4, nr, T, D, H, x + (size_t)r0 * T * D, hs + (size_t)r0 * ldh,
                          h0 ? h0 + (size_t)r0 * H : NULL, wpi, wph, lstm_step_epilogue, &s, &s.t);
        } else if (nr > 0) { /* the input projection for all steps, then step by step */
            float *gr = gates + (size_t)r0 * ldg;
            nn_seq_input_projection(nr * T, G, D, x + (size_t)r0 * T * D, w_ih, bias, gr);
            for (int t = 0; t < T; t++) {
                nn_seq_recurrent_product(t, nr, G, H, hs + (size_t)r0 * ldh, ldh, h0 ? h0 + (size_t)r0 * H : NULL,
                                         w_hh, wph, gr + (size_t)t * G, ldg);
                lstm_cells_forward(r0, r1, t, T, H, h0, c0, spans, gates, cs, hs);
            }
        }
    }
    return NN_OK;
}

int lstm_backward(int N, int T, int D, int H, const float *x, const int32_t *spans,
                  const float *h0, const float *c0,
                  const float *w_ih, const float *w_hh, const float *hs, const float *cs,
                  const float *gates, const float *dhs, const float *dcT, float *dx, float *dh0,
                  float *dc0, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh, float *ws,
                  size_t ws_len) {
    if (!nn_seq_dims_ok(N, T, D, H, 4)) return NN_EBADSHAPE;
    if (ws_len < lstm_backward_workspace_size(N, T, D, H)) return NN_EWORKSPACE;
    const int G = 4 * H, ldg = T * G;
    int rb, nt;
    const int nblocks = nn_seq_blocks(N, &rb, &nt);
    const int DH = D + H;
    float *dg = ws, *xh = dg + (size_t)N * T * G; /* xh[N,T,D+H] = [x_t, h_{t-1}] */
    float *dhn = xh + (size_t)N * T * DH, *dcn = dhn + (size_t)N * H;
    /* w_hh and w_ih packed once for every step's products: dh_{t-1} and dx_t = dg_t w */
    float *wph = dcn + (size_t)N * H, *wpi = wph + nn_packed_size(G, H);
    float *dbb = wpi + nn_packed_size(G, D); /* [nblocks, G] bias gradient partials */
    float *dwc = dbb + (size_t)nblocks * G;   /* [G, D+H] = [dw_ih, dw_hh] */
    nn_pack_b(0, G, H, w_hh, H, wph);
    if (dx) nn_pack_b(0, G, D, w_ih, D, wpi);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int blk = 0; blk < nblocks; blk++) {
        const int r0 = blk * rb, r1 = r0 + nn_chunk_len(N, blk, rb);
        const int nr = r1 - r0;
        float *db_blk = dbb + (size_t)blk * G;
        memset(db_blk, 0, sizeof(float) * G);
        if (nr > 0) {
            size_t a = (size_t)r0 * H, len = (size_t)nr * H;
            memset(dhn + a, 0, sizeof(float) * len);
            if (dcT) memcpy(dcn + a, dcT + a, sizeof(float) * len);
            else memset(dcn + a, 0, sizeof(float) * len);
            if (dx) memset(dx + (size_t)r0 * T * D, 0, sizeof(float) * nr * T * D);
        }
        for (int t = T - 1; t >= 0 && nr > 0; t--) {
            lstm_cells_backward(r0, r1, t, T, H, c0, spans, gates, cs, dhs, dg, dhn, dcn, db_blk);
            const float *dgt = dg + (size_t)r0 * ldg + (size_t)t * G; /* still in cache */
            nn_gemm_packed(0, nr, H, G, dgt, ldg, w_hh, H, wph, dhn + (size_t)r0 * H, H);
            if (dx) nn_gemm_packed(0, nr, D, G, dgt, ldg, w_ih, D, wpi, dx + ((size_t)r0 * T + t) * D, T * D);
        }
        for (size_t k = (size_t)r0 * H; k < (size_t)r1 * H; k++) {
            if (dh0) dh0[k] = dhn[k];
            if (dc0) dc0[k] = dcn[k];
        }
        for (size_t i = (size_t)r0 * T; i < (size_t)r1 * T; i++)
            memcpy(xh + i * DH, x + i * D, sizeof(float) * D);
        nn_shift_states(r0, r1, T, H, h0, hs, xh + D, DH);
    }
    /* both weight gradients in one GEMM: dg^T is packed once instead of twice */
    nn_gemm_par(1, 0, G, DH, N * T, 1.0f, dg, G, xh, DH, 0.0f, dwc, DH);
    for (int j = 0; j < G; j++) {
        memcpy(dw_ih + (size_t)j * D, dwc + (size_t)j * DH, sizeof(float) * D);
        memcpy(dw_hh + (size_t)j * H, dwc + (size_t)j * DH + D, sizeof(float) * H);
    }
    for (int j = 0; j < G; j++) { /* blocks in order: the same sums for any thread count */
        float acc = 0.0f;
        for (int blk = 0; blk < nblocks; blk++) acc += dbb[(size_t)blk * G + j];
        db_ih[j] = acc;
        db_hh[j] = acc;
    }
    return NN_OK;
}
