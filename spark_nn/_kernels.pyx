# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin typed wrappers around csrc/. Arguments are checked in spark_nn/kernels.py before they
get here: every array is a C-contiguous float32 (labels and argmax int32) ndarray of the right
size, optional ones may be None. Each call releases the GIL around the C kernel."""

cimport numpy as cnp
import numpy as np
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t
from scipy.linalg.cython_blas cimport sgemm

cnp.import_array()

cdef extern from "nn_kernels.h" nogil:
    ctypedef void (*nn_sgemm_fn)(char *, char *, int *, int *, int *, float *, float *, int *,
                                 float *, int *, float *, float *, int *)
    ctypedef struct conv2d_shape:
        int N, C, H, W, OC, KH, KW, SH, SW, PH, PW, OH, OW, G
    ctypedef struct pool2d_shape:
        int N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW
    void nn_set_sgemm(nn_sgemm_fn fn)
    void nn_set_num_threads(int n)
    int nn_get_num_threads()
    int nn_isa()
    int nn_isa_cap(const char *name)
    int nn_bf16_level()
    size_t nn_bf16_pack_a_size(int M, int K)
    size_t nn_bf16_pack_b_size(int K, int N)
    void nn_bf16_pack_a(int M, int K, const float *A, int lda, uint16_t *ap)
    void nn_bf16_pack_b(int transB, int K, int N, const float *B, int ldb, uint16_t *bp)
    int nn_gemm_bf16(int M, int N, int K, const uint16_t *ap, const uint16_t *bp, float *C, int ldc,
                     int accumulate)
    void nn_set_reference(int on)
    int nn_get_reference()
    unsigned nn_fp_enter()
    void nn_fp_leave(unsigned old)
    int nn_flush_denormals(int on)
    int nn_threads()
    int nn_fork_capped()
    void nn_gemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc)
    int activation_forward(int kind, size_t n, const float *x, float *y)
    int activation_backward(int kind, size_t n, const float *y, const float *dy, float *dx)
    int activation_forward_ex(int kind, size_t n, const float *x, float *y, float alpha)
    int activation_backward_ex(int kind, size_t n, const float *x, const float *y, const float *dy,
                               float *dx, float alpha)
    int dense_forward(int N, int IN, int OUT, const float *x, const float *w, const float *b,
                      float *y)
    int dense_backward(int N, int IN, int OUT, const float *x, const float *w, const float *dy,
                       float *dx, float *dw, float *db)
    size_t dense_bf16_workspace_size(int N, int IN, int OUT)
    int dense_forward_bf16(int N, int IN, int OUT, const float *x, const float *w, const float *b,
                           float *y, float *ws, size_t ws_len)
    int dense_backward_bf16(int N, int IN, int OUT, const float *x, const float *w, const float *dy,
                            float *dx, float *dw, float *db, float *ws, size_t ws_len)
    int softmax_forward(int N, int C, const float *logits, float *probs)
    int softmax_xent_forward_backward(int N, int C, const float *logits, const int32_t *labels,
                                      const float *class_weight, float *probs, float *row_loss,
                                      float *dlogits)
    int conv2d_shape_init(conv2d_shape *s)
    size_t conv2d_workspace_size(const conv2d_shape *s, int nthreads)
    int conv2d_forward(const conv2d_shape *s, const float *x, const float *w, const float *b,
                       float *y, float *ws, size_t ws_len)
    int conv2d_backward(const conv2d_shape *s, const float *x, const float *w, const float *dy,
                        float *dx, float *dw, float *db, float *ws, size_t ws_len)
    size_t conv2d_bf16_workspace_size(const conv2d_shape *s, int nthreads)
    int conv2d_forward_bf16(const conv2d_shape *s, const float *x, const float *w, const float *b,
                            float *y, float *ws, size_t ws_len)
    int conv2d_backward_bf16(const conv2d_shape *s, const float *x, const float *w, const float *dy,
                             float *dx, float *dw, float *db, float *ws, size_t ws_len)
    int conv2d_forward_direct(const conv2d_shape *s, const float *x, const float *w,
                              const float *b, float *y)
    int pool2d_shape_init(pool2d_shape *s)
    int maxpool2d_forward(const pool2d_shape *s, const float *x, float *y, int32_t *argmax)
    int maxpool2d_backward(const pool2d_shape *s, const float *dy, const int32_t *argmax,
                           float *dx)
    int batchnorm_forward_train(int N, int C, int S, const float *x, const float *gamma,
                                const float *beta, float *running_mean, float *running_var,
                                float momentum, float eps, float *y, float *mean, float *invstd)
    int batchnorm_forward_eval(int N, int C, int S, const float *x, const float *gamma,
                               const float *beta, const float *running_mean,
                               const float *running_var, float eps, float *y, float *mean,
                               float *invstd)
    int batchnorm_backward(int training, int N, int C, int S, const float *x, const float *gamma,
                           const float *mean, const float *invstd, const float *dy, float *dx,
                           float *dgamma, float *dbeta)
    int avgpool2d_forward(const pool2d_shape *s, int count_include_pad, const float *x, float *y)
    int avgpool2d_backward(const pool2d_shape *s, int count_include_pad, const float *dy, float *dx)
    int global_avgpool_forward(int N, int C, int H, int W, const float *x, float *y)
    int global_avgpool_backward(int N, int C, int H, int W, const float *dy, float *dx)
    int adam_update(size_t n, float *p, const float *g, float *m, float *v, float step, float b1,
                    float b2, float eps, float l2, float decay)
    int adam_update_at(size_t n, const int64_t *idx, float *p, const float *g, float *m, float *v, float step,
                       float b1, float b2, float eps, float l2, float decay)
    size_t sum_squares_partials(size_t n)
    double sum_squares(size_t n, const float *x, double *partial)
    int gather_u8_scaled(int64_t n, int64_t d, const uint8_t *src, int64_t m, const int64_t *rows,
                         float scale, float *out)
    size_t rnn_forward_workspace_size(int D, int H)
    size_t rnn_backward_workspace_size(int N, int T, int H)
    int rnn_forward(int act, int N, int T, int D, int H, const float *x, const int32_t *spans, const float *h0,
                    const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh,
                    float *hs, float *ws, size_t ws_len)
    int rnn_backward(int act, int N, int T, int D, int H, const float *x, const int32_t *spans, const float *h0,
                     const float *w_ih, const float *w_hh, const float *hs, const float *dhs,
                     float *dx, float *dh0, float *dw_ih, float *dw_hh, float *db_ih,
                     float *db_hh, float *ws, size_t ws_len)
    size_t lstm_forward_workspace_size(int D, int H)
    size_t lstm_backward_workspace_size(int N, int T, int D, int H)
    int lstm_forward(int N, int T, int D, int H, const float *x, const int32_t *spans, const float *h0,
                     const float *c0, const float *w_ih, const float *w_hh, const float *b_ih,
                     const float *b_hh, float *hs, float *cs, float *gates, float *ws, size_t ws_len)
    int lstm_backward(int N, int T, int D, int H, const float *x, const int32_t *spans, const float *h0,
                      const float *c0, const float *w_ih, const float *w_hh, const float *hs,
                      const float *cs, const float *gates, const float *dhs, const float *dcT,
                      float *dx, float *dh0, float *dc0, float *dw_ih, float *dw_hh,
                      float *db_ih, float *db_hh, float *ws, size_t ws_len)
    size_t gru_forward_workspace_size(int N, int D, int H)
    size_t gru_backward_workspace_size(int N, int T, int H)
    int gru_forward(int N, int T, int D, int H, const float *x, const int32_t *spans, const float *h0,
                    const float *w_ih, const float *w_hh, const float *b_ih, const float *b_hh,
                    float *hs, float *gates, float *hn, float *ws, size_t ws_len)
    int gru_backward(int N, int T, int D, int H, const float *x, const int32_t *spans, const float *h0,
                     const float *w_ih, const float *w_hh, const float *hs, const float *gates,
                     const float *hn, const float *dhs, float *dx, float *dh0, float *dw_ih,
                     float *dw_hh, float *db_ih, float *db_hh, float *ws, size_t ws_len)

# Registering a function pointer starts no threads, so importing this module before a fork
# is safe.
nn_set_sgemm(<nn_sgemm_fn>sgemm)

cdef dict _ERRORS = {-1: "bad shape", -2: "workspace too small", -3: "no BLAS",
                     -4: "label outside [0, numClasses)", -5: "bad argument",
                     -6: "this CPU (or SPARK_NN_ISA) lacks the instructions (AVX512_BF16)"}


cdef inline float *F(object a) except? NULL:
    return NULL if a is None else <float *>cnp.PyArray_DATA(a)


cdef inline int32_t *I(object a) except? NULL:
    return NULL if a is None else <int32_t *>cnp.PyArray_DATA(a)


cdef inline void check(int rc, str op) except *:
    if rc != 0:
        raise ValueError(f"{op}: {_ERRORS.get(rc, rc)}")


def sgemm_address():
    """Address of the registered sgemm, to find the BLAS library that provides it."""
    return <size_t>sgemm


def set_num_threads(int n):
    nn_set_num_threads(n)


def get_num_threads():
    return nn_get_num_threads()


def set_reference(bint on):
    nn_set_reference(on)


def flush_denormals(bint on):
    return bool(nn_flush_denormals(on))


def get_reference():
    return bool(nn_get_reference())


def threads_now():
    return nn_threads()


def fork_capped():
    return bool(nn_fork_capped())


def gemm(bint ta, bint tb, int M, int N, int K, float alpha, A, int lda, B, int ldb, float beta,
         C, int ldc):
    cdef float *a = F(A)
    cdef float *b = F(B)
    cdef float *c = F(C)
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        nn_gemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc)
        nn_fp_leave(csr)


def act_forward(int kind, x, y):
    cdef size_t n = x.size
    cdef float *px = F(x)
    cdef float *py = F(y)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = activation_forward(kind, n, px, py)
        nn_fp_leave(csr)
    check(rc, "activation_forward")


def act_backward(int kind, y, dy, dx):
    cdef size_t n = y.size
    cdef float *py = F(y)
    cdef float *pdy = F(dy)
    cdef float *pdx = F(dx)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = activation_backward(kind, n, py, pdy, pdx)
        nn_fp_leave(csr)
    check(rc, "activation_backward")


def act_forward_ex(int kind, x, y, float alpha):
    cdef size_t n = x.size
    cdef float *px = F(x)
    cdef float *py = F(y)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = activation_forward_ex(kind, n, px, py, alpha)
        nn_fp_leave(csr)
    check(rc, "activation_forward")


def act_backward_ex(int kind, x, y, dy, dx, float alpha):
    cdef size_t n = dy.size
    cdef float *px = F(x)
    cdef float *py = F(y)
    cdef float *pdy = F(dy)
    cdef float *pdx = F(dx)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = activation_backward_ex(kind, n, px, py, pdy, pdx, alpha)
        nn_fp_leave(csr)
    check(rc, "activation_backward")


def dense_bf16_ws_size(int N, int IN, int OUT):
    return dense_bf16_workspace_size(N, IN, OUT)


def dense_fwd(int N, int IN, int OUT, x, w, b, y, ws=None):
    """ws given: bf16 operands, fp32 sums (dense_forward_bf16) in that workspace."""
    cdef float *pws = F(ws)
    cdef size_t nws = 0 if ws is None else ws.size
    cdef bint bf16 = ws is not None
    cdef float *px = F(x)
    cdef float *pw = F(w)
    cdef float *pb = F(b)
    cdef float *py = F(y)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        if bf16:
            rc = dense_forward_bf16(N, IN, OUT, px, pw, pb, py, pws, nws)
        else:
            rc = dense_forward(N, IN, OUT, px, pw, pb, py)
        nn_fp_leave(csr)
    check(rc, "dense_forward")


def dense_bwd(int N, int IN, int OUT, x, w, dy, dx, dw, db, ws=None):
    """ws given: bf16 operands, fp32 sums (dense_backward_bf16) in that workspace."""
    cdef float *pws = F(ws)
    cdef size_t nws = 0 if ws is None else ws.size
    cdef bint bf16 = ws is not None
    cdef float *px = F(x)
    cdef float *pw = F(w)
    cdef float *pdy = F(dy)
    cdef float *pdx = F(dx)
    cdef float *pdw = F(dw)
    cdef float *pdb = F(db)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        if bf16:
            rc = dense_backward_bf16(N, IN, OUT, px, pw, pdy, pdx, pdw, pdb, pws, nws)
        else:
            rc = dense_backward(N, IN, OUT, px, pw, pdy, pdx, pdw, pdb)
        nn_fp_leave(csr)
    check(rc, "dense_backward")


def softmax_fwd(int N, int C, logits, probs):
    cdef float *pz = F(logits)
    cdef float *pp = F(probs)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = softmax_forward(N, C, pz, pp)
        nn_fp_leave(csr)
    check(rc, "softmax_forward")


def softmax_xent(int N, int C, logits, labels, class_weight, probs, row_loss, dlogits):
    cdef float *pz = F(logits)
    cdef int32_t *py = I(labels)
    cdef float *pw = F(class_weight)
    cdef float *pp = F(probs)
    cdef float *pl = F(row_loss)
    cdef float *pd = F(dlogits)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = softmax_xent_forward_backward(N, C, pz, py, pw, pp, pl, pd)
        nn_fp_leave(csr)
    check(rc, "softmax_xent")


cdef conv2d_shape conv_shape(tuple dims) except *:
    cdef conv2d_shape s
    s.N, s.C, s.H, s.W, s.OC, s.KH, s.KW, s.SH, s.SW, s.PH, s.PW, s.G = dims
    check(conv2d_shape_init(&s), "conv2d")
    return s


def conv2d_out_shape(tuple dims):
    cdef conv2d_shape s = conv_shape(dims)
    return s.OH, s.OW


def conv2d_ws_size(tuple dims, int nthreads, bint bf16=False):
    cdef conv2d_shape s = conv_shape(dims)
    return conv2d_bf16_workspace_size(&s, nthreads) if bf16 else conv2d_workspace_size(&s, nthreads)


def conv2d_fwd(tuple dims, x, w, b, y, ws, bint bf16=False):
    cdef conv2d_shape s = conv_shape(dims)
    cdef float *px = F(x)
    cdef float *pw = F(w)
    cdef float *pb = F(b)
    cdef float *py = F(y)
    cdef float *pws = F(ws)
    cdef size_t n = ws.size
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        if bf16:
            rc = conv2d_forward_bf16(&s, px, pw, pb, py, pws, n)
        else:
            rc = conv2d_forward(&s, px, pw, pb, py, pws, n)
        nn_fp_leave(csr)
    check(rc, "conv2d_forward")


def conv2d_bwd(tuple dims, x, w, dy, dx, dw, db, ws, bint bf16=False):
    cdef conv2d_shape s = conv_shape(dims)
    cdef float *px = F(x)
    cdef float *pw = F(w)
    cdef float *pdy = F(dy)
    cdef float *pdx = F(dx)
    cdef float *pdw = F(dw)
    cdef float *pdb = F(db)
    cdef float *pws = F(ws)
    cdef size_t n = ws.size
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        if bf16:
            rc = conv2d_backward_bf16(&s, px, pw, pdy, pdx, pdw, pdb, pws, n)
        else:
            rc = conv2d_backward(&s, px, pw, pdy, pdx, pdw, pdb, pws, n)
        nn_fp_leave(csr)
    check(rc, "conv2d_backward")


def conv2d_direct(tuple dims, x, w, b, y):
    cdef conv2d_shape s = conv_shape(dims)
    cdef float *px = F(x)
    cdef float *pw = F(w)
    cdef float *pb = F(b)
    cdef float *py = F(y)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = conv2d_forward_direct(&s, px, pw, pb, py)
        nn_fp_leave(csr)
    check(rc, "conv2d_forward_direct")


cdef pool2d_shape pool_shape(tuple dims) except *:
    cdef pool2d_shape s
    s.N, s.C, s.H, s.W, s.KH, s.KW, s.SH, s.SW, s.PH, s.PW = dims
    check(pool2d_shape_init(&s), "maxpool2d")
    return s


def pool2d_out_shape(tuple dims):
    cdef pool2d_shape s = pool_shape(dims)
    return s.OH, s.OW


def maxpool2d_fwd(tuple dims, x, y, argmax):
    cdef pool2d_shape s = pool_shape(dims)
    cdef float *px = F(x)
    cdef float *py = F(y)
    cdef int32_t *pa = I(argmax)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = maxpool2d_forward(&s, px, py, pa)
        nn_fp_leave(csr)
    check(rc, "maxpool2d_forward")


def maxpool2d_bwd(tuple dims, dy, argmax, dx):
    cdef pool2d_shape s = pool_shape(dims)
    cdef float *pdy = F(dy)
    cdef int32_t *pa = I(argmax)
    cdef float *pdx = F(dx)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = maxpool2d_backward(&s, pdy, pa, pdx)
        nn_fp_leave(csr)
    check(rc, "maxpool2d_backward")


def avgpool2d_fwd(tuple dims, bint count_include_pad, x, y):
    cdef pool2d_shape s = pool_shape(dims)
    cdef float *px = F(x)
    cdef float *py = F(y)
    cdef int inc = count_include_pad
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = avgpool2d_forward(&s, inc, px, py)
        nn_fp_leave(csr)
    check(rc, "avgpool2d_forward")


def avgpool2d_bwd(tuple dims, bint count_include_pad, dy, dx):
    cdef pool2d_shape s = pool_shape(dims)
    cdef float *pdy = F(dy)
    cdef float *pdx = F(dx)
    cdef int inc = count_include_pad
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = avgpool2d_backward(&s, inc, pdy, pdx)
        nn_fp_leave(csr)
    check(rc, "avgpool2d_backward")


def global_avgpool_fwd(int N, int C, int H, int W, x, y):
    cdef float *px = F(x)
    cdef float *py = F(y)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = global_avgpool_forward(N, C, H, W, px, py)
        nn_fp_leave(csr)
    check(rc, "global_avgpool_forward")


def global_avgpool_bwd(int N, int C, int H, int W, dy, dx):
    cdef float *pdy = F(dy)
    cdef float *pdx = F(dx)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = global_avgpool_backward(N, C, H, W, pdy, pdx)
        nn_fp_leave(csr)
    check(rc, "global_avgpool_backward")


def batchnorm_fwd(bint training, int N, int C, int S, x, gamma, beta, running_mean, running_var,
                  float momentum, float eps, y, mean, invstd):
    cdef float *px = F(x)
    cdef float *pg = F(gamma)
    cdef float *pb = F(beta)
    cdef float *prm = F(running_mean)
    cdef float *prv = F(running_var)
    cdef float *py = F(y)
    cdef float *pm = F(mean)
    cdef float *pi = F(invstd)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        if training:
            rc = batchnorm_forward_train(N, C, S, px, pg, pb, prm, prv, momentum, eps, py, pm, pi)
        else:
            rc = batchnorm_forward_eval(N, C, S, px, pg, pb, prm, prv, eps, py, pm, pi)
        nn_fp_leave(csr)
    check(rc, "batchnorm_forward")


def batchnorm_bwd(bint training, int N, int C, int S, x, gamma, mean, invstd, dy, dx, dgamma,
                  dbeta):
    cdef float *px = F(x)
    cdef float *pg = F(gamma)
    cdef float *pm = F(mean)
    cdef float *pi = F(invstd)
    cdef float *pdy = F(dy)
    cdef float *pdx = F(dx)
    cdef float *pdg = F(dgamma)
    cdef float *pdb = F(dbeta)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = batchnorm_backward(training, N, C, S, px, pg, pm, pi, pdy, pdx, pdg, pdb)
        nn_fp_leave(csr)
    check(rc, "batchnorm_backward")


def rnn_ws_size(int N, int T, int D, int H):
    return rnn_forward_workspace_size(D, H), rnn_backward_workspace_size(N, T, H)


def rnn_fwd(int act, int N, int T, int D, int H, x, spans, h0, w_ih, w_hh, b_ih, b_hh, hs, ws):
    cdef float *px = F(x)
    cdef int32_t *psp = I(spans)
    cdef float *ph0 = F(h0)
    cdef float *pwi = F(w_ih)
    cdef float *pwh = F(w_hh)
    cdef float *pbi = F(b_ih)
    cdef float *pbh = F(b_hh)
    cdef float *phs = F(hs)
    cdef float *pws = F(ws)
    cdef size_t n = ws.size
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = rnn_forward(act, N, T, D, H, px, psp, ph0, pwi, pwh, pbi, pbh, phs, pws, n)
        nn_fp_leave(csr)
    check(rc, "rnn_forward")


def rnn_bwd(int act, int N, int T, int D, int H, x, spans, h0, w_ih, w_hh, hs, dhs, dx, dh0, dw_ih,
            dw_hh, db_ih, db_hh, ws):
    cdef float *px = F(x)
    cdef int32_t *psp = I(spans)
    cdef float *ph0 = F(h0)
    cdef float *pwi = F(w_ih)
    cdef float *pwh = F(w_hh)
    cdef float *phs = F(hs)
    cdef float *pdhs = F(dhs)
    cdef float *pdx = F(dx)
    cdef float *pdh0 = F(dh0)
    cdef float *pdwi = F(dw_ih)
    cdef float *pdwh = F(dw_hh)
    cdef float *pdbi = F(db_ih)
    cdef float *pdbh = F(db_hh)
    cdef float *pws = F(ws)
    cdef size_t n = ws.size
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = rnn_backward(act, N, T, D, H, px, psp, ph0, pwi, pwh, phs, pdhs, pdx, pdh0, pdwi, pdwh,
                          pdbi, pdbh, pws, n)
        nn_fp_leave(csr)
    check(rc, "rnn_backward")


def lstm_ws_size(int N, int T, int D, int H):
    return lstm_forward_workspace_size(D, H), lstm_backward_workspace_size(N, T, D, H)


def lstm_fwd(int N, int T, int D, int H, x, spans, h0, c0, w_ih, w_hh, b_ih, b_hh, hs, cs, gates, ws):
    cdef float *px = F(x)
    cdef int32_t *psp = I(spans)
    cdef float *ph0 = F(h0)
    cdef float *pc0 = F(c0)
    cdef float *pwi = F(w_ih)
    cdef float *pwh = F(w_hh)
    cdef float *pbi = F(b_ih)
    cdef float *pbh = F(b_hh)
    cdef float *phs = F(hs)
    cdef float *pcs = F(cs)
    cdef float *pg = F(gates)
    cdef float *pws = F(ws)
    cdef size_t n = ws.size
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = lstm_forward(N, T, D, H, px, psp, ph0, pc0, pwi, pwh, pbi, pbh, phs, pcs, pg, pws, n)
        nn_fp_leave(csr)
    check(rc, "lstm_forward")


def lstm_bwd(int N, int T, int D, int H, x, spans, h0, c0, w_ih, w_hh, hs, cs, gates, dhs, dcT, dx,
             dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, ws):
    cdef float *px = F(x)
    cdef int32_t *psp = I(spans)
    cdef float *ph0 = F(h0)
    cdef float *pc0 = F(c0)
    cdef float *pwi = F(w_ih)
    cdef float *pwh = F(w_hh)
    cdef float *phs = F(hs)
    cdef float *pcs = F(cs)
    cdef float *pg = F(gates)
    cdef float *pdhs = F(dhs)
    cdef float *pdcT = F(dcT)
    cdef float *pdx = F(dx)
    cdef float *pdh0 = F(dh0)
    cdef float *pdc0 = F(dc0)
    cdef float *pdwi = F(dw_ih)
    cdef float *pdwh = F(dw_hh)
    cdef float *pdbi = F(db_ih)
    cdef float *pdbh = F(db_hh)
    cdef float *pws = F(ws)
    cdef size_t n = ws.size
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = lstm_backward(N, T, D, H, px, psp, ph0, pc0, pwi, pwh, phs, pcs, pg, pdhs, pdcT, pdx,
                           pdh0, pdc0, pdwi, pdwh, pdbi, pdbh, pws, n)
        nn_fp_leave(csr)
    check(rc, "lstm_backward")


def gru_ws_size(int N, int T, int D, int H):
    return gru_forward_workspace_size(N, D, H), gru_backward_workspace_size(N, T, H)


def gru_fwd(int N, int T, int D, int H, x, spans, h0, w_ih, w_hh, b_ih, b_hh, hs, gates, hn, ws):
    cdef float *px = F(x)
    cdef int32_t *psp = I(spans)
    cdef float *ph0 = F(h0)
    cdef float *pwi = F(w_ih)
    cdef float *pwh = F(w_hh)
    cdef float *pbi = F(b_ih)
    cdef float *pbh = F(b_hh)
    cdef float *phs = F(hs)
    cdef float *pg = F(gates)
    cdef float *phn = F(hn)
    cdef float *pws = F(ws)
    cdef size_t n = ws.size
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = gru_forward(N, T, D, H, px, psp, ph0, pwi, pwh, pbi, pbh, phs, pg, phn, pws, n)
        nn_fp_leave(csr)
    check(rc, "gru_forward")


def gru_bwd(int N, int T, int D, int H, x, spans, h0, w_ih, w_hh, hs, gates, hn, dhs, dx, dh0, dw_ih,
            dw_hh, db_ih, db_hh, ws):
    cdef float *px = F(x)
    cdef int32_t *psp = I(spans)
    cdef float *ph0 = F(h0)
    cdef float *pwi = F(w_ih)
    cdef float *pwh = F(w_hh)
    cdef float *phs = F(hs)
    cdef float *pg = F(gates)
    cdef float *phn = F(hn)
    cdef float *pdhs = F(dhs)
    cdef float *pdx = F(dx)
    cdef float *pdh0 = F(dh0)
    cdef float *pdwi = F(dw_ih)
    cdef float *pdwh = F(dw_hh)
    cdef float *pdbi = F(db_ih)
    cdef float *pdbh = F(db_hh)
    cdef float *pws = F(ws)
    cdef size_t n = ws.size
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = gru_backward(N, T, D, H, px, psp, ph0, pwi, pwh, phs, pg, phn, pdhs, pdx, pdh0, pdwi,
                          pdwh, pdbi, pdbh, pws, n)
        nn_fp_leave(csr)
    check(rc, "gru_backward")


def adam_upd(p, g, m, v, float step, float b1, float b2, float eps, float l2, float decay):
    cdef float *pp = F(p)
    cdef float *pg = F(g)
    cdef float *pm = F(m)
    cdef float *pv = F(v)
    cdef size_t n = p.size
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = adam_update(n, pp, pg, pm, pv, step, b1, b2, eps, l2, decay)
        nn_fp_leave(csr)
    check(rc, "adam_update")


def adam_upd_at(idx, p, g, m, v, float step, float b1, float b2, float eps, float l2, float decay):
    cdef const int64_t *pi = <const int64_t *>cnp.PyArray_DATA(idx)
    cdef float *pp = F(p)
    cdef float *pg = F(g)
    cdef float *pm = F(m)
    cdef float *pv = F(v)
    cdef size_t n = idx.size
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = adam_update_at(n, pi, pp, pg, pm, pv, step, b1, b2, eps, l2, decay)
        nn_fp_leave(csr)
    check(rc, "adam_update_at")


def sum_sq(x):
    """Sum of squares of a C-contiguous float32 array, in double."""
    cdef size_t n = x.size
    partial = np.empty(max(<size_t>1, sum_squares_partials(n)), dtype=np.float64)
    cdef float *px = F(x)
    cdef double *pp = <double *>cnp.PyArray_DATA(partial)
    cdef double s
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        s = sum_squares(n, px, pp)
        nn_fp_leave(csr)
    return s


def gather_u8(src, rows, float scale, out):
    """out[i] = src[rows[i]] / scale (rows None: the first out.shape[0] rows): src a C-contiguous
    uint8 array of n rows, rows int64, out float32 with d = src's row size per row."""
    cdef int64_t n = src.shape[0]
    cdef int64_t m = out.shape[0]
    cdef int64_t d = src.size // n if n else 0
    cdef const uint8_t *ps = <const uint8_t *>cnp.PyArray_DATA(src)
    cdef const int64_t *pr = NULL if rows is None else <const int64_t *>cnp.PyArray_DATA(rows)
    cdef float *po = F(out)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        rc = gather_u8_scaled(n, d, ps, m, pr, scale, po)
        nn_fp_leave(csr)
    check(rc, "gather_u8_scaled")


def isa_level():
    """Vector instruction level the kernels use: 0 baseline x86-64, 1 AVX2, 2 AVX-512F."""
    return nn_isa()


def isa_cap_level(str name):
    """Level a SPARK_NN_ISA value names, -1 for an unknown name."""
    b = name.encode()
    return nn_isa_cap(b)


def bf16_level():
    """1 where the bf16 kernels can run (AVX512_BF16, not capped by SPARK_NN_ISA), else 0."""
    return nn_bf16_level()


def gemm_bf16(a, b, c, int trans_b, int accumulate):
    """c[M, N] = bf16(a) bf16(b) (+ c when accumulate), fp32 sums: a (M, K), b (K, N) or, trans_b,
    (N, K), c (M, N), all C-contiguous float32. Packs both operands (rounded to bf16) into
    workspaces of its own, then runs csrc/gemm_bf16.c."""
    cdef int M = a.shape[0], K = a.shape[1]
    cdef int N = c.shape[1]
    cdef int ldb = b.shape[1]
    ap = np.empty(nn_bf16_pack_a_size(M, K), dtype=np.uint16)
    bp = np.empty(nn_bf16_pack_b_size(K, N), dtype=np.uint16)
    cdef const float *pa = F(a)
    cdef const float *pb = F(b)
    cdef float *pc = F(c)
    cdef uint16_t *pap = <uint16_t *>cnp.PyArray_DATA(ap)
    cdef uint16_t *pbp = <uint16_t *>cnp.PyArray_DATA(bp)
    cdef int rc
    cdef unsigned csr
    with nogil:
        csr = nn_fp_enter()
        nn_bf16_pack_a(M, K, pa, K, pap)
        nn_bf16_pack_b(trans_b, K, N, pb, ldb, pbp)
        rc = nn_gemm_bf16(M, N, K, pap, pbp, pc, N, accumulate)
        nn_fp_leave(csr)
    check(rc, "gemm_bf16")
