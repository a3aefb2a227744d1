/*
 * Minibatches from compact blocks: 8-bit images stay uint8 in the resident blocks (a quarter
 * of float32's bytes on disk and in the page cache) and become float32 here, in the same pass
 * as the gather of the minibatch's rows.
 *
 * gather_u8_scaled: out[i, :] = (float)src[rows[i], :] / scale, i < m (rows NULL: rows 0..m-1)
 *   src  uint8 [n, d] row-major (a memory map of a block: only the rows read are paged in)
 *   rows int64 [m], each in [0, n)
 *   out  float32 [m, d]
 * The division is IEEE's correctly rounded one, as numpy's x.astype(float32) / float32(scale),
 * so a uint8 block gives a minibatch the same bits a float32 block made that way would.
 */
#include "nn_internal.h"

#define NN_CONVERT_PAR_MIN 262144

NN_MULTI_VOID(u8_row_scaled, (const uint8_t *restrict s, int64_t d, float scale, float *restrict o),
              (s, d, scale, o), {
    for (int64_t j = 0; j < d; j++) o[j] = (float)s[j] / scale;
})

int gather_u8_scaled(int64_t n, int64_t d, const uint8_t *src, int64_t m, const int64_t *rows, float scale,
                     float *out) {
    if (n < 0 || d < 0 || m < 0 || !(scale > 0.0f)) return NN_EBADSHAPE;
    if (rows) {
        for (int64_t i = 0; i < m; i++)
            if (rows[i] < 0 || rows[i] >= n) return NN_EBADARG;
    } else if (m > n) {
        return NN_EBADSHAPE;
    }
    int nt = m * d < NN_CONVERT_PAR_MIN ? 1 : nn_threads();
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < m; i++) {
        int64_t r = rows ? rows[i] : i;
        u8_row_scaled(src + r * d, d, scale, out + i * d);
    }
    return NN_OK;
}
