/*
 * Fully connected layer, PyTorch's nn.Linear layout.
 *   forward:  x[N,IN], w[OUT,IN], b[OUT] or NULL  ->  y[N,OUT] = x w^T + b
 *   backward: dy[N,OUT] -> dx[N,IN] = dy w (skipped when dx is NULL),
 *             dw[OUT,IN] = dy^T x, db[OUT] = sum_n dy (skipped when db is NULL)
 */
#include "nn_internal.h"

int dense_forward(int N, int IN, int OUT, const float *x, const float *w, const float *b,
                  float *y) {
    if (!nn_dims_ok(N, IN, OUT)) return NN_EBADSHAPE;
    if (b) {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OUT; o++) y[(size_t)n * OUT + o] = b[o];
    }
    nn_gemm_par(0, 1, N, OUT, IN, 1.0f, x, IN, w, IN, b ? 1.0f : 0.0f, y, OUT);
    return NN_OK;
}

int dense_backward(int N, int IN, int OUT, const float *x, const float *w, const float *dy,
                   float *dx, float *dw, float *db) {
    if (!nn_dims_ok(N, IN, OUT)) return NN_EBADSHAPE;
    if (dx) nn_gemm_par(0, 0, N, IN, OUT, 1.0f, dy, OUT, w, IN, 0.0f, dx, IN);
    nn_gemm_par(1, 0, OUT, IN, N, 1.0f, dy, OUT, x, IN, 0.0f, dw, IN);
    if (db) nn_colsum(N, OUT, dy, OUT, db);
    return NN_OK;
}

/* Mixed precision (bf16 operands rounded once when packed, fp32 sums; gemm_bf16.c), same
 * shapes. Workspace (floats, see dense_bf16_workspace_size), the largest of:
 *   forward:  x packed as rows [N, IN], w^T packed as columns [IN, OUT]
 *   backward: dy packed as rows [N, OUT] and w as columns [OUT, IN] (dx); dy^T [OUT, N] in
 *             fp32 and packed as rows, x packed as columns [N, IN] (dw)
 * The bias gradient is an fp32 column sum. NN_EUNSUPPORTED where the CPU lacks AVX512_BF16
 * (outside the scalar reference mode). */
static size_t halves(size_t n) { return ((n + 1) / 2 + 15) & ~(size_t)15; } /* floats holding n uint16 */

size_t dense_bf16_workspace_size(int N, int IN, int OUT) {
    if (!nn_dims_ok(N, IN, OUT)) return 0;
    size_t fwd = halves(nn_bf16_pack_a_size(N, IN)) + halves(nn_bf16_pack_b_size(IN, OUT));
    size_t bdx = halves(nn_bf16_pack_a_size(N, OUT)) + halves(nn_bf16_pack_b_size(OUT, IN));
    size_t bdw = (((size_t)OUT * N + 15) & ~(size_t)15) + halves(nn_bf16_pack_a_size(OUT, N)) +
                 halves(nn_bf16_pack_b_size(N, IN));
    size_t m = fwd > bdx ? fwd : bdx;
    return m > bdw ? m : bdw;
}

static int dense_bf16_ready(int N, int IN, int OUT, size_t ws_len) {
    if (!nn_dims_ok(N, IN, OUT)) return NN_EBADSHAPE;
    if (!nn_get_reference() && !nn_bf16_level()) return NN_EUNSUPPORTED;
    if (ws_len < dense_bf16_workspace_size(N, IN, OUT)) return NN_EWORKSPACE;
    return NN_OK;
}

int dense_forward_bf16(int N, int IN, int OUT, const float *x, const float *w, const float *b, float *y, float *ws,
                       size_t ws_len) {
    int rc = dense_bf16_ready(N, IN, OUT, ws_len);
    if (rc != NN_OK) return rc;
    uint16_t *ap = (uint16_t *)(void *)ws;
    uint16_t *bp = (uint16_t *)(void *)(ws + halves(nn_bf16_pack_a_size(N, IN)));
    nn_bf16_pack_a(N, IN, x, IN, ap);
    nn_bf16_pack_b(1, IN, OUT, w, IN, bp); /* B[i][o] = w[o][i] */
    if (b)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OUT; o++) y[(size_t)n * OUT + o] = b[o];
    return nn_gemm_bf16(N, OUT, IN, ap, bp, y, OUT, b != NULL);
}

int dense_backward_bf16(int N, int IN, int OUT, const float *x, const float *w, const float *dy, float *dx, float *dw,
                        float *db, float *ws, size_t ws_len) {
    int rc = dense_bf16_ready(N, IN, OUT, ws_len);
    if (rc != NN_OK) return rc;
    if (dx) {
        uint16_t *ap = (uint16_t *)(void *)ws;
        uint16_t *bp = (uint16_t *)(void *)(ws + halves(nn_bf16_pack_a_size(N, OUT)));
        nn_bf16_pack_a(N, OUT, dy, OUT, ap);
        nn_bf16_pack_b(0, OUT, IN, w, IN, bp);
        rc = nn_gemm_bf16(N, IN, OUT, ap, bp, dx, IN, 0);
        if (rc != NN_OK) return rc;
    }
    float *dyt = ws; /* [OUT, N] */
    uint16_t *ap = (uint16_t *)(void *)(ws + (((size_t)OUT * N + 15) & ~(size_t)15));
    uint16_t *bp = (uint16_t *)(void *)((float *)(void *)ap + halves(nn_bf16_pack_a_size(OUT, N)));
    nn_transpose_bias(N, OUT, dy, OUT, NULL, dyt, N);
    nn_bf16_pack_a(OUT, N, dyt, N, ap);
    nn_bf16_pack_b(0, N, IN, x, IN, bp);
    rc = nn_gemm_bf16(OUT, IN, N, ap, bp, dw, IN, 0);
    if (db) nn_colsum(N, OUT, dy, OUT, db);
    return rc;
}
