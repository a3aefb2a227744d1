/*
 * 16-lane float math for the fused recurrent steps' epilogues (lstm.c, gru.c), AVX-512 only:
 * those steps run at AVX-512 alone (nn_gate_tiles). Written with intrinsics because the cells
 * as auto-vectorized scalar code were 38 % of the fused LSTM forward, mostly five divisions
 * per unit (vdivps): here 1 / d is rcp14 refined by one Newton step (within ~1 ulp), exp the
 * same Cody-Waite reduction and Cephes polynomial as nn_expf, with FMAs and scalef.
 * Include only where the x86 clones are compiled (see NN_MULTI in nn_internal.h).
 */
#ifndef NN_VEC512_H
#define NN_VEC512_H
#include <immintrin.h>

#define NN_V512 __attribute__((target("avx512f"), optimize("fp-contract=fast"))) static inline
NN_V512 __m512 v_exp(__m512 x) {
    /* max/min with x second: a NaN x passes through, as in nn_expf */
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}
NN_V512 __m512 v_recip(__m512 d) { /* 1 / d: rcp14 and one Newton step */
    __m512 r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}
NN_V512 __m512 v_sigmoid(__m512 v) {
    return v_recip(_mm512_add_ps(_mm512_set1_ps(1.0f), v_exp(_mm512_sub_ps(_mm512_setzero_ps(), v))));
}
NN_V512 __m512 v_tanh(__m512 x) { /* as nn_tanh: (1 - e) / (1 + e), e = exp(-2|x|), series below 0.05 */
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 a = _mm512_abs_ps(x);
    __m512 e = v_exp(_mm512_mul_ps(_mm512_set1_ps(-2.0f), a));
    __m512 t = _mm512_mul_ps(_mm512_sub_ps(one, e), v_recip(_mm512_add_ps(one, e)));
    __m512 a2 = _mm512_mul_ps(a, a);
    __m512 series = _mm512_mul_ps(a, _mm512_fmadd_ps(a2, _mm512_fmadd_ps(a2, _mm512_set1_ps(0.133333333f),
                                                                        _mm512_set1_ps(-0.333333333f)), one));
    t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(0.05f), _CMP_LT_OQ), t, series);
    /* copysign: t >= 0, x's sign bit */
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t),
                                               _mm512_and_si512(_mm512_castps_si512(x),
                                                                _mm512_set1_epi32((int)0x80000000u))));
}

/* rows r[0..15] -> columns: r[j] = (r_0[j], ..., r_15[j]) */
NN_V512 void v_transpose16(__m512 *r) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* lane k: rows i..i+3 of columns 4k, 4k+1, 4k+2, 4k+3 */
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
}

#endif
