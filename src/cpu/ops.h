/* The CPU backend's row-wise ops: LayerNorm, GELU, softmax, top-k, and the
 * exp and erf they are built on.  Exposed for the op-level tests. */
#ifndef VMOE_CPU_OPS_H
#define VMOE_CPU_OPS_H

#include "vmoe-private.h"

/* Element-wise loops are built for AVX-512, AVX2 and the baseline and the
 * best is picked at load time (GCC's function multi-versioning). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VMOE_VECTOR_CLONES __attribute__ ((target_clones ("avx512f", "avx2", "default")))
#else
#define VMOE_VECTOR_CLONES
#endif

/* Whether the compiler has the AVX512_BF16 intrinsics (GCC 10, clang 9);
 * code built with them checks the CPU at run time. */
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 9) \
    || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10))
#define VMOE_HAVE_BF16_INTRINSICS 1
#endif

/* out, inp are (rows, dim); weight, bias are (dim). */
void vmoe_layernorm_forward (float *out, const float *inp, const float *weight,
    const float *bias, int rows, int dim, float eps);
/* In place on n values. */
void vmoe_gelu_forward (float *x, size_t n, VmoeActivation act);
/* The erf that the erf GELU uses (a rational approximation). */
float vmoe_erf (float x);
/* The exp that softmax uses, for x <= 0 (a polynomial). */
float vmoe_exp_nonpositive (float x);
/* x is (rows, cols), softmax along each row in place. */
void vmoe_softmax_rows (float *x, int rows, int cols);
/* The k largest of n values, largest first; ties go to the lower index. */
void vmoe_topk (const float *values, int n, int k, int *index, float *top);

#endif
