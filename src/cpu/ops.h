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

/* The constants of softmax's exp for x <= 0 (ops.c's exp_nonpositive, and
 * the AVX-512 softmax in attention.c): the clamp that keeps 2^n a normal
 * float, log2 e, ln 2 in two parts (Cody and Waite) and Cephes' expf
 * polynomial P, exp(r) = 1 + r + r^2 P(r) on |r| <= ln2 / 2, highest
 * coefficient first. */
#define VMOE_EXP_MIN_X (-87.0f)
#define VMOE_EXP_LOG2E 1.44269504088896341f
#define VMOE_EXP_LN2_HIGH 0.693359375f
#define VMOE_EXP_LN2_LOW (-2.12194440e-4f)
#define VMOE_EXP_P0 1.9875691500e-4f
#define VMOE_EXP_P1 1.3981999507e-3f
#define VMOE_EXP_P2 8.3334519073e-3f
#define VMOE_EXP_P3 4.1665795894e-2f
#define VMOE_EXP_P4 1.6666665459e-1f
#define VMOE_EXP_P5 5.0000001201e-1f

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
