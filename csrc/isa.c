/*
 * Instruction-set level of the vectorized loops: 0 baseline x86-64 (SSE2), 1 AVX2, 2 AVX-512F;
 * the highest the CPU has, capped by SPARK_NN_ISA ('avx512', 'avx2', 'baseline') so that the
 * lower paths can be tested and benchmarked on a machine that has more. Read once, on first
 * use. Every level computes bitwise the same results (no contraction, same operation order).
 */
#include <stdlib.h>
#include <string.h>
#include "nn_internal.h"

static volatile int g_isa = -1;

static int cpu_level(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return NN_ISA_AVX512;
    if (__builtin_cpu_supports("avx2")) return NN_ISA_AVX2;
#endif
    return NN_ISA_BASELINE;
}

int nn_isa_cap(const char *raw) {
    char name[16];
    size_t i = 0, len = raw ? strlen(raw) : 0;
    while (len && (raw[len - 1] == ' ' || raw[len - 1] == '\n')) len--;
    while (len && *raw == ' ') raw++, len--;
    if (len == 0) return NN_ISA_AVX512;
    if (len >= sizeof name) return -1;
    for (i = 0; i < len; i++) name[i] = (char)(raw[i] >= 'A' && raw[i] <= 'Z' ? raw[i] + 32 : raw[i]);
    name[len] = 0;
    if (!strcmp(name, "avx512") || !strcmp(name, "avx512f") || !strcmp(name, "avx512bf16")) return NN_ISA_AVX512;
    if (!strcmp(name, "avx2")) return NN_ISA_AVX2;
    if (!strcmp(name, "baseline") || !strcmp(name, "sse2") || !strcmp(name, "none")) return NN_ISA_BASELINE;
    return -1;
}

int nn_isa(void) {
    if (g_isa < 0) {
        int level = cpu_level(), cap = nn_isa_cap(getenv("SPARK_NN_ISA"));
        /* unknown names cap nothing here; the Python layer refuses them at import */
        g_isa = cap >= 0 && cap < level ? cap : level;
    }
    return g_isa;
}

/* Whether a SPARK_NN_ISA value leaves AVX512_BF16 in: unset, empty or 'avx512bf16' (every other
 * known level caps below it; gemm_bf16.c checks the CPU). */
int nn_isa_allows_bf16(const char *raw) {
    if (!raw) return 1;
    while (*raw == ' ') raw++;
    if (!*raw || *raw == '\n') return 1;
    char name[16];
    size_t len = strlen(raw), i;
    while (len && (raw[len - 1] == ' ' || raw[len - 1] == '\n')) len--;
    if (len >= sizeof name) return 0;
    for (i = 0; i < len; i++) name[i] = (char)(raw[i] >= 'A' && raw[i] <= 'Z' ? raw[i] + 32 : raw[i]);
    name[len] = 0;
    return !strcmp(name, "avx512bf16");
}
