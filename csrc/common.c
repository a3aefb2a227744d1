/*
 * BLAS registration, thread control and the row-major GEMM every kernel uses.
 *
 * Threading model: our OpenMP threads do all parallel work and call single-threaded sgemm
 * inside their regions (the Python layer pins the BLAS library behind the registered pointer
 * to one thread), so OpenMP x BLAS never multiplies. Work is always cut into blocks fixed by
 * the shape, never by the thread count, so results are bitwise the same for any thread count.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "nn_internal.h"

static nn_sgemm_fn g_sgemm = NULL;
static int g_threads = 0; /* 0: not chosen yet; resolved on first use */
static int g_reference = 0;
/* GNU libgomp cannot start a team of more than one thread in a child forked after the parent
 * ran such a team (the child waits forever for the parent's pool threads). So a child forked
 * after parallel work runs every kernel on one thread; a child forked before any (PySpark's
 * daemon forks workers that never ran a kernel before) keeps its threads. */
static volatile int g_parallel_used = 0, g_fork_capped = 0;

static void atfork_child(void) {
    if (g_parallel_used || g_fork_capped) g_fork_capped = 1;
}

void nn_set_sgemm(nn_sgemm_fn fn) {
    static int registered = 0;
    g_sgemm = fn;
    if (!registered) {
        pthread_atfork(NULL, NULL, atfork_child);
        registered = 1;
    }
}

int nn_fork_capped(void) { return g_fork_capped; }

void nn_set_num_threads(int n) { g_threads = n < 1 ? 1 : n; }

int nn_get_num_threads(void) {
    if (g_threads < 1) {
        const char *env = getenv("OMP_NUM_THREADS");
        int n = env ? atoi(env) : 0;
#ifdef _OPENMP
        if (n < 1) n = omp_get_num_procs();
#endif
        g_threads = n < 1 ? 1 : n;
    }
    return g_threads;
}

/* Denormal floats (below 1.2e-38) take a microcode assist on x86 at every operation: in the
 * backward pass of a recurrent net, gradients decaying through the steps made a tenth of one
 * layer's values denormal and the layer 4x slower. So every kernel runs with FTZ/DAZ (treat
 * them as zero), as oneDNN runs its primitives: nn_fp_enter sets it in the calling thread
 * and nn_fp_leave restores that thread's own setting, so Python and numpy there keep IEEE
 * behaviour; the OpenMP pool's threads, which run nothing but kernels, keep it (threads
 * started inside a kernel inherit it from the caller). SPARK_NN_DENORMALS=keep turns it off. */
static volatile int g_flush = -1; /* -1: not read from the environment yet */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define NN_FTZ_DAZ 0x8040u /* MXCSR: FTZ (bit 15) | DAZ (bit 6) */
static unsigned csr_get(void) { return _mm_getcsr(); }
static void csr_set(unsigned v) { _mm_setcsr(v); }
#define NN_HAS_FTZ 1
#else
#define NN_FTZ_DAZ 0u
static unsigned csr_get(void) { return 0; }
static void csr_set(unsigned v) { (void)v; }
#define NN_HAS_FTZ 0
#endif

static int flush_wanted(void) {
    if (g_flush < 0) {
        const char *env = getenv("SPARK_NN_DENORMALS");
        g_flush = !(env && strcmp(env, "keep") == 0);
    }
    return g_flush;
}

unsigned nn_fp_enter(void) {
    unsigned old = csr_get();
    if (flush_wanted()) csr_set(old | NN_FTZ_DAZ);
    return old;
}

void nn_fp_leave(unsigned old) { csr_set(old); }

int nn_flush_denormals(int on) {
    g_flush = on ? 1 : 0;
    unsigned old = csr_get();
    int nt = nn_threads();
#pragma omp parallel num_threads(nt)
    {
        unsigned v = csr_get();
        csr_set(on ? (v | NN_FTZ_DAZ) : (v & ~NN_FTZ_DAZ));
    }
    csr_set(old);
    return NN_HAS_FTZ;
}

void nn_set_reference(int on) { g_reference = on ? 1 : 0; }
int nn_get_reference(void) { return g_reference; }
int nn_threads(void) {
    if (g_reference || g_fork_capped) return 1;
    int n = nn_get_num_threads();
    if (n > 1) g_parallel_used = 1;
    return n;
}

static void gemm_scalar(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                float a = tA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = tB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += (double)a * b;
            }
            float *c = &C[(size_t)i * ldc + j];
            *c = (float)(alpha * acc + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
    }
}

void nn_gemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* BLAS leaves C untouched for K == 0 only when beta == 1 */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    if (g_reference || g_sgemm == NULL) {
        gemm_scalar(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T. */
    char ta = tB ? 'T' : 'N', tb = tA ? 'T' : 'N';
    g_sgemm(&ta, &tb, &N, &M, &K, &alpha, (float *)B, &ldb, (float *)A, &lda, &beta, C, &ldc);
}

/* nn_gemm_par cuts C into blocks of rows fixed by M alone, whatever the thread count (see
 * nn_seq_block_rows for why), and spreads the blocks over the threads: a quarter of M (at
 * least NN_GEMM_ROW_BLOCK rows, a multiple of 16), since every block's call repacks B: the
 * recurrent weight gradients (M = 4H, K = N*T) spent 18 % of the LSTM backward repacking at
 * 64-row blocks. */
#define NN_GEMM_ROW_BLOCK 64
static int gemm_block_rows(int M) {
    int b = ((M + 3) / 4 + 15) / 16 * 16;
    return b < NN_GEMM_ROW_BLOCK ? NN_GEMM_ROW_BLOCK : b;
}
/* Below this many multiply-adds per thread a parallel region costs more than it saves. */
#define NN_GEMM_PAR_MIN (1 << 17)

void nn_gemm_par(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    const int rb = gemm_block_rows(M), nblocks = (M + rb - 1) / rb;
    int nt = nn_threads();
    double work = (double)M * N * (K > 0 ? K : 1);
    if (nt > (int)(work / NN_GEMM_PAR_MIN)) nt = (int)(work / NN_GEMM_PAR_MIN);
    if (nt > nblocks) nt = nblocks;
    if (nt < 1) nt = 1;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int blk = 0; blk < nblocks; blk++) {
        int r0 = blk * rb;
        int rows = M - r0 < rb ? M - r0 : rb;
        const float *Ar = tA ? A + r0 : A + (size_t)r0 * lda;
        nn_gemm(tA, tB, rows, N, K, alpha, Ar, lda, B, ldb, beta, C + (size_t)r0 * ldc, ldc);
    }
}

void nn_seq_input_projection(int rows, int G, int D, const float *x, const float *w_ih, const float *bias,
                             float *out) {
    for (size_t i = 0; i < (size_t)rows; i++)
        for (int j = 0; j < G; j++) out[i * G + j] = bias[j];
    nn_gemm(0, 1, rows, G, D, 1.0f, x, D, w_ih, D, 1.0f, out, G);
}

void nn_seq_recurrent_product(int t, int nr, int G, int H, const float *hs, int ldh, const float *h0,
                              const float *w_hh, const float *wph, float *out, int ldo) {
    if (t > 0)
        nn_gemm_packed(1, nr, G, H, hs + (size_t)(t - 1) * H, ldh, w_hh, H, wph, out, ldo);
    else if (h0)
        nn_gemm_packed(1, nr, G, H, h0, H, w_hh, H, wph, out, ldo);
}

void nn_colsum(int R, int Ccols, const float *A, int lda, float *out) {
    int nt = nn_threads();
    if ((double)R * Ccols < 65536.0) nt = 1;
#pragma omp parallel num_threads(nt)
    {
        int c0, c1;
        nn_split(Ccols, NN_THREAD_ID(), NN_THREAD_COUNT(), &c0, &c1);
        for (int j = c0; j < c1; j++) out[j] = 0.0f;
        for (int i = 0; i < R; i++) {
            const float *a = A + (size_t)i * lda;
            for (int j = c0; j < c1; j++) out[j] += a[j];
        }
    }
}
