/* The row-wise ops of the CPU backend.  Each loop is written so that GCC
 * vectorises it, built for several instruction sets (VMOE_VECTOR_CLONES). */
#include "ops.h"

#include <math.h>
#include <string.h>


#pragma GCC push_options
#pragma GCC optimize ("finite-math-only", "no-signed-zeros", "fp-contract=fast")

/* out, inp are (rows, dim); weight, bias are (dim).  Mean and variance are
 * summed in 16 float lanes, which vectorise without letting the compiler
 * reorder a reduction, and finished in double. */
VMOE_VECTOR_CLONES void
vmoe_layernorm_forward (float *out, const float *inp, const float *weight,
    const float *bias, int rows, int dim, float eps)
{
  for (int r = 0; r < rows; r++) {
    const float *x = inp + (size_t) r * dim;
    float *y = out + (size_t) r * dim;
    float sums[16] = { 0 }, squares[16] = { 0 };
    int i = 0;
    for (; i + 16 <= dim; i += 16)
      for (int l = 0; l < 16; l++)
        sums[l] += x[i + l];
    double sum = 0;
    for (int l = 0; l < 16; l++)
      sum += sums[l];
    for (; i < dim; i++)
      sum += x[i];
    float mean = (float) (sum / dim);
    for (i = 0; i + 16 <= dim; i += 16)
      for (int l = 0; l < 16; l++) {
        float d = x[i + l] - mean;
        squares[l] += d * d;
      }
    double var = 0;
    for (int l = 0; l < 16; l++)
      var += squares[l];
    for (; i < dim; i++) {
      float d = x[i] - mean;
      var += (double) d * d;
    }
    float rstd = (float) (1.0 / sqrt (var / dim + eps));
    for (i = 0; i < dim; i++)
      y[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
  }
}
/* erf as a rational function of x (Eigen's float erf; |error| < 5e-7 over
 * the reals, checked against libm in the op tests).  Unlike erff it has no
 * calls, so the GELU loop vectorises (libm's erff was 12% of the profile at
 * batch 8). */
static inline __attribute__ ((always_inline)) float
rational_erf (float x)
{
  x = x < -4.0f ? -4.0f : x > 4.0f ? 4.0f : x;
  float x2 = x * x;
  float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  float q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return x * p / q;
}

float
vmoe_erf (float x)
{
  return rational_erf (x);
}

/* In place on n values. */
VMOE_VECTOR_CLONES void
vmoe_gelu_forward (float *x, size_t n, VmoeActivation act)
{
  if (act == VMOE_ACT_GELU) {
    for (size_t i = 0; i < n; i++)
      x[i] = 0.5f * x[i] * (1.0f + rational_erf (x[i] * (float) M_SQRT1_2));
  } else {
    const float k = 0.7978845608028654f;   /* sqrt(2/pi) */
    for (size_t i = 0; i < n; i++) {
      float v = x[i];
      x[i] = 0.5f * v * (1.0f + tanhf (k * (v + 0.044715f * v * v * v)));
    }
  }
}

/* exp(x) for x <= 0 (softmax's shifted logits): x = n ln2 + r with n
 * rounded and r reduced in two steps (Cody and Waite, so that r keeps its
 * precision for large |x|), e^r by its Taylor series to degree 7 on
 * |r| <= ln2 / 2, 2^n put into the exponent bits.  Relative error below
 * 3e-7 (checked against libm in the op tests); no calls, so the loops that
 * use it vectorise.
 *
 * NaN must come out NaN: overflowing activations reach softmax as inf - inf,
 * and a finite result there would hide them from the session's check of the
 * logits.  Under finite-math-only the compiler may drop a NaN in the clamp
 * (maxss does), so NaN is recognised and returned through the bits.  All bit
 * arithmetic is unsigned, defined for any input. */
static inline __attribute__ ((always_inline)) float
exp_nonpositive (float x)
{
  guint32 x_bits;
  memcpy (&x_bits, &x, sizeof x_bits);
  /* A signed compare: SSE and AVX2 have no unsigned one. */
  gboolean is_nan = (gint32) (x_bits & 0x7fffffffu) > 0x7f800000;
  x = x < VMOE_EXP_MIN_X ? VMOE_EXP_MIN_X : x;
  /* Round to nearest by adding and removing 1.5 * 2^23 (|x log2 e| < 2^22):
   * roundf would be a call without SSE4.1.  The sum's low bits hold n. */
  float shifted = x * VMOE_EXP_LOG2E + 12582912.0f;
  float n = shifted - 12582912.0f;
  float r = x - n * VMOE_EXP_LN2_HIGH;
  r = r - n * VMOE_EXP_LN2_LOW;
  float p = VMOE_EXP_P0;
  p = p * r + VMOE_EXP_P1;
  p = p * r + VMOE_EXP_P2;
  p = p * r + VMOE_EXP_P3;
  p = p * r + VMOE_EXP_P4;
  p = p * r + VMOE_EXP_P5;
  p = p * (r * r) + r + 1.0f;
  guint32 shifted_bits;
  memcpy (&shifted_bits, &shifted, sizeof shifted_bits);
  guint32 scale_bits = (shifted_bits - 0x4b400000u + 127u) << 23;
  float scale;
  memcpy (&scale, &scale_bits, sizeof scale);
  float y = p * scale;
  guint32 y_bits;
  memcpy (&y_bits, &y, sizeof y_bits);
  y_bits |= 0u - (guint32) is_nan;        /* all ones is a NaN; no branch */
  memcpy (&y, &y_bits, sizeof y);
  return y;
}

float
vmoe_exp_nonpositive (float x)
{
  return exp_nonpositive (x);
}

/* x is (rows, cols), softmax along each row in place.  The sum is kept in
 * 16 lanes, like LayerNorm's: summed in order it was a chain of dependent
 * adds as long as the row, and the slowest part of attention. */
VMOE_VECTOR_CLONES void
vmoe_softmax_rows (float *x, int rows, int cols)
{
  for (int r = 0; r < rows; r++) {
    float *row = x + (size_t) r * cols;
    float max = row[0];
    for (int i = 1; i < cols; i++)
      max = row[i] > max ? row[i] : max;
    float sums[16] = { 0 };
    int i = 0;
    for (; i + 16 <= cols; i += 16)
      for (int l = 0; l < 16; l++) {
        float e = exp_nonpositive (row[i + l] - max);
        row[i + l] = e;
        sums[l] += e;
      }
    float sum = 0;
    for (int l = 0; l < 16; l++)
      sum += sums[l];
    for (; i < cols; i++) {
      row[i] = exp_nonpositive (row[i] - max);
      sum += row[i];
    }
    float inv = 1.0f / sum;
    for (i = 0; i < cols; i++)
      row[i] *= inv;
  }
}
#pragma GCC pop_options

/* The k largest of n values, largest first; ties go to the lower index. */
void
vmoe_topk (const float *values, int n, int k, int *index, float *top)
{
  for (int j = 0; j < k; j++) {
    int best = -1;
    for (int i = 0; i < n; i++) {
      gboolean taken = FALSE;
      for (int q = 0; q < j; q++)
        taken |= index[q] == i;
      if (!taken && (best < 0 || values[i] > values[best]))
        best = i;
    }
    index[j] = best;
    if (top)
      top[j] = values[best];
  }
}
