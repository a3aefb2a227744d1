/*
 * Elman RNN over a whole sequence, batch-major, PyTorch's nn.RNN(batch_first=True) layout.
 *   x[N,T,D], h0[N,H] or NULL (zeros), w_ih[H,D], w_hh[H,H], b_ih[H], b_hh[H]
 *   h_t = act(x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh), hs[N,T,H] holds every h_t
 *   spans[N,2] or NULL: row n's data steps are [spans[2n], spans[2n+1]); padding steps carry
 *   the state (h_t = h_{t-1}) and pass gradients through (see nn_step_is_data)
 *   backward: dhs[N,T,H] = dLoss/dh_t (put the gradient of the last state in dhs[:,T-1])
 *             -> dx[N,T,D] (NULL to skip), dh0[N,H] (NULL to skip), dw_ih, dw_hh, db_ih, db_hh
 * Rows of the batch are independent in time, so each block of rows (fixed by N, see
 * nn_seq_block_rows) runs its whole sequence on one thread with no barrier per step. Forward,
 * where nn_gate_tiles(1) (AVX-512): each step is one nn_gemm_gates over x_t and h_{t-1} with
 * the activation in its epilogue (as in lstm.c); elsewhere the input projection for all steps
 * is one GEMM per block, each step's recurrent product one nn_gemm_packed against w_hh packed
 * once per call, then the activation. The weight gradients are one GEMM each over all N*T
 * rows afterwards.
 * Forward workspace: w_ih and w_hh packed, and b_ih + b_hh (rnn_forward_workspace_size).
 * Backward workspace: das[N,T,H] + hprev[N,T,H] + dhn[N,H] + packed w_hh.
 */
#include "nn_internal.h"

/* h = act(h) for rows [r0, r1) at step t; padding steps get the previous state. */
NN_MULTI_VOID(rnn_cells_forward, (int act, int r0, int r1, int t, int T, int H, const float *h0,
                                 const int32_t *spans, float *hs),
              (act, r0, r1, t, T, H, h0, spans, hs), {
    for (int n = r0; n < r1; n++) {
        float *h = hs + (size_t)n * T * H + (size_t)t * H;
        if (nn_step_is_data(spans, n, t)) nn_act_row(act, H, h);
        else nn_carry_row(H, h, t > 0 ? h - H : (h0 ? h0 + (size_t)n * H : NULL));
    }
})

/* das = act'(h) * (dhs + carried dh) for rows [r0, r1) at step t; dhn's rows are then zeroed
 * for data steps (the step's GEMM adds das w_hh to them) and keep the carried gradient plus
 * dhs for padding steps. */
NN_MULTI_VOID(rnn_cells_backward, (int act, int r0, int r1, int t, int T, int H, const float *hs,
                                  const float *dhs, const int32_t *spans, float *dhn, float *das),
              (act, r0, r1, t, T, H, hs, dhs, spans, dhn, das), {
    for (int n = r0; n < r1; n++) {
        size_t o = (size_t)n * T * H + (size_t)t * H;
        float *dh = dhn + (size_t)n * H;
        if (nn_step_is_data(spans, n, t)) {
            nn_dact_row(act, H, hs + o, dhs + o, dh, das + o);
            for (int j = 0; j < H; j++) dh[j] = 0.0f;
        } else {
            nn_carry_grad(H, H, dhs + o, dh, das + o);
        }
    }
})

/* The fused step's epilogue (nn_gemm_gates, NG = 1): units [u0, u0 + nc) of rows
 * r0 + [row, row + nrows) at step t, in three vectors of 16. */
struct rnn_step {
    int T, H, t, r0, act;
    const float *bias, *h0; /* bias: b_ih + b_hh */
    const int32_t *spans;
    float *hs;
};
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NN_NO_CLONES)
#include "nn_vec512.h"
__attribute__((target("avx512f"), optimize("fp-contract=fast")))
static void rnn_step_epilogue(void *ctx, int row, int nrows, int u0, int nc, const float *acc, int vw) {
    const struct rnn_step *s = ctx;
    const int H = s->H, t = s->t;
    for (int i = 0; i < nrows; i++, acc += 4 * vw) {
        const int n = s->r0 + row + i;
        float *h = s->hs + ((size_t)n * s->T + t) * H + u0;
        if (!nn_step_is_data(s->spans, n, t)) {
            nn_carry_row(nc, h, t > 0 ? h - H : (s->h0 ? s->h0 + (size_t)n * H + u0 : NULL));
            continue;
        }
        for (int v = 0; v < 3 && 16 * v < nc; v++) {
            const int lanes = nc - 16 * v < 16 ? nc - 16 * v : 16;
            const __mmask16 m = lanes == 16 ? (__mmask16)0xffff : (__mmask16)((1u << lanes) - 1);
            __m512 z = _mm512_add_ps(_mm512_maskz_loadu_ps(m, s->bias + u0 + 16 * v),
                                     _mm512_loadu_ps(acc + v * vw));
            if (s->act == NN_ACT_SIGMOID) z = v_sigmoid(z);
            else if (s->act == NN_ACT_TANH) z = v_tanh(z);
            else if (s->act == NN_ACT_RELU) z = _mm512_max_ps(z, _mm512_setzero_ps()); /* NaN -> 0 */
            _mm512_mask_storeu_ps(h + 16 * v, m, z);
        }
    }
}
#else
/* never called: nn_gate_tiles is 0 without the AVX-512 clones */
static void rnn_step_epilogue(void *ctx, int row, int nrows, int u0, int nc, const float *acc, int vw) {
    (void)ctx, (void)row, (void)nrows, (void)u0, (void)nc, (void)acc, (void)vw;
}
#endif

size_t rnn_forward_workspace_size(int D, int H) {
    return nn_gates_packed_size(1, D, H) + nn_gates_packed_size(1, H, H) + (size_t)H;
}

size_t rnn_backward_workspace_size(int N, int T, int H) {
    return (size_t)N * H * (2 * (size_t)T + 1) + nn_packed_size(H, H);
}

int rnn_forward(int act, int N, int T, int D, int H, const float *x, const int32_t *spans,
                const float *h0,
                const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh,
                float *hs, float *ws, size_t ws_len) {
    if (!nn_seq_dims_ok(N, T, D, H, 1)) return NN_EBADSHAPE;
    if (act < NN_ACT_IDENTITY || act > NN_ACT_RELU) return NN_EBADARG;
    if (ws_len < rnn_forward_workspace_size(D, H)) return NN_EWORKSPACE;
    /* AVX-512: w_ih and w_hh packed for the fused steps; else w_hh for nn_gemm_packed */
    const int fused = nn_gate_tiles(1);
    float *wpi = ws, *wph = wpi + nn_gates_packed_size(1, D, H), *bias = wph + nn_gates_packed_size(1, H, H);
    for (int j = 0; j < H; j++) bias[j] = b_ih[j] + b_hh[j];
    if (fused) nn_pack_gates(1, D, H, w_ih, D, wpi);
    if (!nn_get_reference()) nn_pack_b(1, H, H, w_hh, H, wph); /* the same layout as one gate */
    int rb, nt;
    const int nblocks = nn_seq_blocks(N, &rb, &nt);
    const int ld = T * H;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int blk = 0; blk < nblocks; blk++) {
        const int r0 = blk * rb, r1 = r0 + nn_chunk_len(N, blk, rb);
        const int nr = r1 - r0;
        if (nr > 0 && fused) { /* each step one pass, the activation in the epilogue (see lstm.c) */
            struct rnn_step st = {T, H, 0, r0, act, bias, h0, spans, hs};
            nn_gate_steps(1, nr, T, D, H, x + (size_t)r0 * T * D, hs + (size_t)r0 * ld,
                          h0 ? h0 + (size_t)r0 * H : NULL, wpi, wph, rnn_step_epilogue, &st, &st.t);
        } else if (nr > 0) { /* the input projection for all steps, then step by step */
            float *hr = hs + (size_t)r0 * ld;
            nn_seq_input_projection(nr * T, H, D, x + (size_t)r0 * T * D, w_ih, bias, hr);
            for (int t = 0; t < T; t++) {
                nn_seq_recurrent_product(t, nr, H, H, hr, ld, h0 ? h0 + (size_t)r0 * H : NULL, w_hh, wph,
                                         hr + (size_t)t * H, ld);
                rnn_cells_forward(act, r0, r1, t, T, H, h0, spans, hs);
            }
        }
    }
    return NN_OK;
}

int rnn_backward(int act, int N, int T, int D, int H, const float *x, const int32_t *spans,
                 const float *h0,
                 const float *w_ih, const float *w_hh, const float *hs, const float *dhs,
                 float *dx, float *dh0, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh,
                 float *ws, size_t ws_len) {
    if (!nn_seq_dims_ok(N, T, D, H, 1)) return NN_EBADSHAPE;
    if (act < NN_ACT_IDENTITY || act > NN_ACT_RELU) return NN_EBADARG;
    if (ws_len < rnn_backward_workspace_size(N, T, H)) return NN_EWORKSPACE;
    float *das = ws, *hprev = das + (size_t)N * T * H, *dhn = hprev + (size_t)N * T * H;
    float *wp = dhn + (size_t)N * H; /* w_hh packed once for every step's GEMM */
    nn_pack_b(0, H, H, w_hh, H, wp);
    int rb, nt;
    const int nblocks = nn_seq_blocks(N, &rb, &nt);
    const int ld = T * H;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int blk = 0; blk < nblocks; blk++) {
        const int r0 = blk * rb, r1 = r0 + nn_chunk_len(N, blk, rb);
        const int nr = r1 - r0;
        for (size_t k = (size_t)r0 * H; k < (size_t)r1 * H; k++) dhn[k] = 0.0f;
        for (int t = T - 1; t >= 0 && nr > 0; t--) {
            rnn_cells_backward(act, r0, r1, t, T, H, hs, dhs, spans, dhn, das);
            nn_gemm_packed(0, nr, H, H, das + (size_t)r0 * ld + (size_t)t * H, ld, w_hh, H, wp,
                           dhn + (size_t)r0 * H, H);
        }
        if (dh0)
            for (size_t k = (size_t)r0 * H; k < (size_t)r1 * H; k++) dh0[k] = dhn[k];
        nn_shift_states(r0, r1, T, H, h0, hs, hprev, H);
    }
    const int rows = N * T;
    nn_gemm_par(1, 0, H, D, rows, 1.0f, das, H, x, D, 0.0f, dw_ih, D);
    nn_gemm_par(1, 0, H, H, rows, 1.0f, das, H, hprev, H, 0.0f, dw_hh, H);
    nn_colsum(rows, H, das, H, db_ih);
    for (int j = 0; j < H; j++) db_hh[j] = db_ih[j];
    if (dx) nn_gemm_par(0, 0, rows, D, H, 1.0f, das, H, w_ih, D, 0.0f, dx, D);
    return NN_OK;
}
