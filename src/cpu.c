/* The CPU backend.  The forward pass reads top to bottom like docs/design.md's
 * "Forward pass".  The backend runs its own threads (workers.c) and calls
 * OpenBLAS single-threaded from each: the token rows of the batch are split
 * into one slice per thread, and each thread runs everything that is row by
 * row (LayerNorm, the linear layers, GELU, residuals, a whole dense MLP) on
 * its slice without waiting for the others; they meet only where a row needs
 * other rows (attention, routing).  MoE layers gather the rows each expert
 * owns so that each expert runs one GEMM per slice per call.
 *
 * Why not OpenBLAS's own threads: they spin between calls, so anything that
 * runs between two sgemm calls on threads of ours competed with them for the
 * cores (attention ran at half its speed), and OpenBLAS's splitting and
 * syncing cost more than the products at these sizes. */
#include "cpu.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

struct VmoeCpu {
  VmoeModel *model;
  VmoeRoutingParams routing;
  int reserved;               /* images the workspace holds */
  VmoeWorkers *workers;
  int tokens, dim, hidden_dim;

  float *x;                   /* [N, T, D] residual stream */
  float *z;                   /* [N, T, D] LayerNorm output */
  float *qkv;                 /* [N, T, 3D] */
  float *attn;                /* [N, T, D] */
  float *hidden;              /* [N*T*k, M] MLP hidden */
  float *attention_scratch;   /* vmoe_attention_scratch_len () */
  float *patches;             /* [N*Np, C*P*P]: shares hidden's memory (the
                                 embedding is done before any MLP runs) */
  float *gather_in, *gather_out;  /* [N*T*k, D] rows of one expert */
  float *router_probs;        /* [N*T, E] (image routing: [N, E]) */
  float *router_input;        /* [N, D] */
  float *pooled;              /* [N, D] */
  int *rows;                  /* [N*T*k] gathered row indices */
  float *row_weights;         /* [N*T*k] */
  int *choice;                /* [N*T*k] token routing choices */
  float *choice_p;            /* [N*T*k] */
  int *assigned;              /* [N*T*k] expert, or -1 if dropped */
  int *order;                 /* [T] */
};

/* ---------------------------------------------------------------- ops */

/* Element-wise loops are built for AVX-512, AVX2 and the baseline and the
 * best is picked at load time (GCC's function multi-versioning). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VMOE_VECTOR_CLONES __attribute__ ((target_clones ("avx512f", "avx2", "default")))
#else
#define VMOE_VECTOR_CLONES
#endif

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
  x = x < -87.0f ? -87.0f : x;            /* 2^n stays a normal float */
  /* Round to nearest by adding and removing 1.5 * 2^23 (|x log2 e| < 2^22):
   * roundf would be a call without SSE4.1.  The sum's low bits hold n. */
  float shifted = x * 1.44269504088896341f + 12582912.0f;
  float n = shifted - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  /* Cephes' expf polynomial: exp(r) = 1 + r + r^2 P(r) on |r| <= ln2 / 2. */
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
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

/* out (rows, lin->out) = inp (rows, lin->in) W^T + b, or += with accumulate.
 * The bias goes in before the product, so that sgemm runs with beta = 1:
 * with beta = 0 OpenBLAS first clears the output in a pass of its own, and
 * the bias would then need another. */
static void
linear_forward (float *out, const float *inp, const VmoeLinear *lin, int rows,
    gboolean accumulate)
{
  if (rows == 0)
    return;
  if (lin->bias) {
    for (int r = 0; r < rows; r++) {
      float *y = out + (size_t) r * lin->out;
      if (accumulate)
        for (int i = 0; i < lin->out; i++)
          y[i] += lin->bias[i];
      else
        memcpy (y, lin->bias, lin->out * sizeof (float));
    }
  }
  cblas_sgemm (CblasRowMajor, CblasNoTrans, CblasTrans, rows, lin->out, lin->in,
      1.0f, inp, lin->in, lin->weight, lin->in,
      accumulate || lin->bias ? 1.0f : 0.0f, out, lin->out);
}

/* ------------------------------------------------------------ attention
 *
 * Attention runs on the backend's own threads rather than as per-head
 * sgemm calls: each head's products are small (T x T x D/H), and OpenBLAS
 * spends as long splitting, packing and clearing them as multiplying, while
 * the softmax between them ran on one core.  Work items are blocks of query
 * rows of one head of one image; each computes its scores, their softmax and
 * its rows of the output, all in the item's own scratch.  An item gives the
 * same bits on whichever thread runs it. */

#define ATTENTION_LANES 16
#define ATTENTION_KEY_STEP (2 * ATTENTION_LANES)   /* score columns per tile */
#define ATTENTION_QUERY_BLOCK 16                   /* query rows per item */

typedef float Lanes __attribute__ ((vector_size (ATTENTION_LANES * sizeof (float))));
/* The same lanes at any float address (activation rows are not aligned). */
typedef float LanesAnywhere __attribute__ ((vector_size (ATTENTION_LANES * sizeof (float)), aligned (4)));

/* Score rows are padded to whole tiles; the padding is computed against
 * zero keys and never read. */
static int
attention_padded_tokens (int tokens)
{
  return (tokens + ATTENTION_KEY_STEP - 1) / ATTENTION_KEY_STEP * ATTENTION_KEY_STEP;
}

size_t
vmoe_attention_scratch_len (int n_images, int tokens, int dim, int heads,
    int threads)
{
  size_t padded = attention_padded_tokens (tokens);
  return (size_t) n_images * dim * padded
      + (size_t) MAX (threads, 1) * ATTENTION_QUERY_BLOCK * padded;
}

typedef struct {
  float *out;
  const float *qkv;
  float *keys_t;       /* [N, H, D/H, padded]: each head's keys transposed */
  float *scores;       /* [threads, QUERY_BLOCK, padded] */
  int tokens, dim, heads, head_dim, padded, query_blocks;
  float scale;
} AttentionJob;

#pragma GCC push_options
#pragma GCC optimize ("finite-math-only", "no-signed-zeros", "fp-contract=fast")

/* Item (image, head): keys_t (D/H, padded) = K^T, zero past the last token. */
static void
transpose_keys (void *data, int index, int thread)
{
  const AttentionJob *job = data;
  int i = index / job->heads, h = index % job->heads;
  /* seek to image i's keys of head h */
  const float *k = job->qkv + (size_t) i * job->tokens * 3 * job->dim + job->dim
      + h * job->head_dim;
  float *kt = job->keys_t + (size_t) index * job->head_dim * job->padded;
  for (int d = 0; d < job->head_dim; d++) {
    float *row = kt + (size_t) d * job->padded;
    for (int j = 0; j < job->tokens; j++)
      row[j] = k[(size_t) j * 3 * job->dim + d];
    for (int j = job->tokens; j < job->padded; j++)
      row[j] = 0;
  }
}

/* s (ROWS, padded) = scale * q (ROWS, hd) kt (hd, padded).  Each d step
 * loads two key vectors and feeds ROWS x 2 accumulators. */
static inline __attribute__ ((always_inline)) void
score_rows (float *s, const float *q, int q_stride, const float *kt, int hd,
    int padded, float scale, const int ROWS)
{
  for (int j = 0; j < padded; j += ATTENTION_KEY_STEP) {
    Lanes acc[4][2] = { { { 0 } } };
    for (int d = 0; d < hd; d++) {
      const float *kd = kt + (size_t) d * padded + j;
      Lanes k0 = *(const LanesAnywhere *) kd;
      Lanes k1 = *(const LanesAnywhere *) (kd + ATTENTION_LANES);
      for (int r = 0; r < ROWS; r++) {
        float qd = q[(size_t) r * q_stride + d];
        acc[r][0] += qd * k0;
        acc[r][1] += qd * k1;
      }
    }
    for (int r = 0; r < ROWS; r++) {
      *(LanesAnywhere *) (s + (size_t) r * padded + j) = acc[r][0] * scale;
      *(LanesAnywhere *) (s + (size_t) r * padded + j + ATTENTION_LANES) = acc[r][1] * scale;
    }
  }
}

/* o (ROWS, CHUNKS x 16) = p (ROWS, tokens) v (tokens, CHUNKS x 16), the
 * columns starting at o and v. */
static inline __attribute__ ((always_inline)) void
mix_value_chunks (float *o, int o_stride, const float *p, int p_stride,
    const float *v, int v_stride, int tokens, const int ROWS, const int CHUNKS)
{
  Lanes acc[4][4] = { { { 0 } } };
  for (int j = 0; j < tokens; j++) {
    Lanes vj[4];
    for (int c = 0; c < CHUNKS; c++)
      vj[c] = *(const LanesAnywhere *) (v + (size_t) j * v_stride + c * ATTENTION_LANES);
    for (int r = 0; r < ROWS; r++) {
      float pj = p[(size_t) r * p_stride + j];
      for (int c = 0; c < CHUNKS; c++)
        acc[r][c] += pj * vj[c];
    }
  }
  for (int r = 0; r < ROWS; r++)
    for (int c = 0; c < CHUNKS; c++)
      *(LanesAnywhere *) (o + (size_t) r * o_stride + c * ATTENTION_LANES) = acc[r][c];
}

static inline __attribute__ ((always_inline)) void
mix_values (float *o, int o_stride, const float *p, int p_stride,
    const float *v, int v_stride, int tokens, int hd, const int ROWS)
{
  int c0 = 0;
  for (; hd - c0 >= 4 * ATTENTION_LANES; c0 += 4 * ATTENTION_LANES)
    mix_value_chunks (o + c0, o_stride, p, p_stride, v + c0, v_stride, tokens, ROWS, 4);
  for (; hd - c0 >= ATTENTION_LANES; c0 += ATTENTION_LANES)
    mix_value_chunks (o + c0, o_stride, p, p_stride, v + c0, v_stride, tokens, ROWS, 1);
  for (int r = 0; r < ROWS; r++)
    for (int c = c0; c < hd; c++) {
      float sum = 0;
      for (int j = 0; j < tokens; j++)
        sum += p[(size_t) r * p_stride + j] * v[(size_t) j * v_stride + c];
      o[(size_t) r * o_stride + c] = sum;
    }
}

/* Item (image, head, query block). */
static VMOE_VECTOR_CLONES void
attend_query_block (void *data, int index, int thread)
{
  const AttentionJob *job = data;
  int block = index % job->query_blocks, ih = index / job->query_blocks;
  int i = ih / job->heads, h = ih % job->heads;
  int first = block * ATTENTION_QUERY_BLOCK;
  int rows = MIN (ATTENTION_QUERY_BLOCK, job->tokens - first);
  int qkv_stride = 3 * job->dim, hd = job->head_dim, padded = job->padded;
  /* seek to image i, head h, the block's first query */
  const float *q = job->qkv + ((size_t) i * job->tokens + first) * qkv_stride
      + h * hd;
  const float *v = job->qkv + (size_t) i * job->tokens * qkv_stride
      + 2 * job->dim + h * hd;
  const float *kt = job->keys_t + (size_t) ih * hd * padded;
  float *o = job->out + ((size_t) i * job->tokens + first) * job->dim + h * hd;
  float *s = job->scores + (size_t) thread * ATTENTION_QUERY_BLOCK * padded;

  int r = 0;
  for (; r + 4 <= rows; r += 4)
    score_rows (s + (size_t) r * padded, q + (size_t) r * qkv_stride, qkv_stride,
        kt, hd, padded, job->scale, 4);
  for (; r < rows; r++)
    score_rows (s + (size_t) r * padded, q + (size_t) r * qkv_stride, qkv_stride,
        kt, hd, padded, job->scale, 1);
  for (r = 0; r < rows; r++)
    vmoe_softmax_rows (s + (size_t) r * padded, 1, job->tokens);
  r = 0;
  for (; r + 4 <= rows; r += 4)
    mix_values (o + (size_t) r * job->dim, job->dim, s + (size_t) r * padded,
        padded, v, qkv_stride, job->tokens, hd, 4);
  for (; r < rows; r++)
    mix_values (o + (size_t) r * job->dim, job->dim, s + (size_t) r * padded,
        padded, v, qkv_stride, job->tokens, hd, 1);
}
#pragma GCC pop_options

/* qkv is (N, T, 3D) with q, k, v each split into heads of D/H columns;
 * out is (N, T, D); scratch holds vmoe_attention_scratch_len() floats for
 * the workers' thread count. */
void
vmoe_attention_forward (float *out, const float *qkv, float *scratch,
    VmoeWorkers *workers, int n_images, int tokens, int dim, int heads)
{
  AttentionJob job = {
    .out = out, .qkv = qkv, .tokens = tokens, .dim = dim, .heads = heads,
    .head_dim = dim / heads, .padded = attention_padded_tokens (tokens),
    .query_blocks = (tokens + ATTENTION_QUERY_BLOCK - 1) / ATTENTION_QUERY_BLOCK,
    .scale = 1.0f / sqrtf ((float) (dim / heads)),
  };
  job.keys_t = scratch;
  job.scores = scratch + (size_t) n_images * dim * job.padded;
  /* As for row slices: threads only for work worth waking them for. */
  if (2.0 * n_images * tokens * tokens * dim < 2 * VMOE_CPU_MIN_SLICE_FMAS)
    workers = NULL;
  vmoe_workers_run (workers, n_images * heads, transpose_keys, &job);
  vmoe_workers_run (workers, n_images * heads * job.query_blocks,
      attend_query_block, &job);
}

/* out (rows, D) = fc2(act(fc1(inp))), or += with accumulate; hidden is
 * scratch (rows, M). */
static void
mlp_forward (float *out, const float *inp, const VmoeMlp *mlp, int rows,
    float *hidden, VmoeActivation act, gboolean accumulate)
{
  linear_forward (hidden, inp, &mlp->fc1, rows, FALSE);
  vmoe_gelu_forward (hidden, (size_t) rows * mlp->fc1.out, act);
  linear_forward (out, hidden, &mlp->fc2, rows, accumulate);
}

/* Puts the docs/design.md token-routing assignment of one image in
 * assigned_expert [T*k] (-1: dropped) and counts per expert; returns the
 * number of dropped assignments. choice/choice_p are [T, k], best first. */
int
vmoe_assign_tokens (const int *choice, const float *choice_p, int tokens,
    int top_k, int num_experts, int capacity, gboolean bpr, int *order,
    int *assigned_expert, int *tokens_per_expert)
{
  for (int t = 0; t < tokens; t++)
    order[t] = t;
  if (bpr) {
    /* Insertion sort by descending top-1 probability: stable, so ties keep
     * the lower token index first. */
    for (int a = 1; a < tokens; a++) {
      int t = order[a];
      float p = choice_p[t * top_k];
      int b = a;
      for (; b > 0 && choice_p[order[b - 1] * top_k] < p; b--)
        order[b] = order[b - 1];
      order[b] = t;
    }
  }
  memset (tokens_per_expert, 0, num_experts * sizeof (int));
  int dropped = 0;
  for (int j = 0; j < top_k; j++) {
    for (int a = 0; a < tokens; a++) {
      int t = order[a];
      int e = choice[t * top_k + j];
      if (tokens_per_expert[e] < capacity) {
        tokens_per_expert[e]++;
        assigned_expert[t * top_k + j] = e;
      } else {
        assigned_expert[t * top_k + j] = -1;
        dropped++;
      }
    }
  }
  return dropped;
}

/* ---------------------------------------------------------------- rows */

/* Work on the token rows [first, first + count); arg is what the phase
 * needs besides the backend. */
typedef void (*RowsFunc) (VmoeCpu *cpu, const void *arg, int first, int count);

typedef struct {
  VmoeCpu *cpu;
  const void *arg;
  RowsFunc func;
  int rows, slices;
} RowsJob;

static void
rows_slice (void *data, int index, int thread)
{
  const RowsJob *job = data;
  int first = (int) ((gint64) job->rows * index / job->slices);
  int end = (int) ((gint64) job->rows * (index + 1) / job->slices);
  job->func (job->cpu, job->arg, first, end - first);
}

/* Runs func on one slice of [0, rows) per thread and returns when all are
 * done; fmas_per_row is what the phase costs a row. */
static void
run_on_rows (VmoeCpu *cpu, int rows, double fmas_per_row, RowsFunc func,
    const void *arg)
{
  int slices = (int) MIN (vmoe_workers_threads (cpu->workers),
      rows * fmas_per_row / VMOE_CPU_MIN_SLICE_FMAS);
  if (slices <= 1) {
    func (cpu, arg, 0, rows);
    return;
  }
  RowsJob job = { cpu, arg, func, rows, slices };
  vmoe_workers_run (cpu->workers, slices, rows_slice, &job);
}

static double
mlp_fmas_per_row (const VmoeMlp *mlp)
{
  return (double) mlp->fc1.in * mlp->fc1.out + (double) mlp->fc2.in * mlp->fc2.out;
}

/* z = LN1(x); qkv = z Wqkv^T + b. */
static void
attention_input_rows (VmoeCpu *cpu, const void *arg, int first, int count)
{
  const VmoeBlock *block = arg;
  size_t d = cpu->dim;
  vmoe_layernorm_forward (cpu->z + first * d, cpu->x + first * d,
      block->norm1_weight, block->norm1_bias, count, d,
      (float) cpu->model->config.norm_eps);
  linear_forward (cpu->qkv + first * 3 * d, cpu->z + first * d, &block->qkv,
      count, FALSE);
}

/* x += attn Wproj^T + b; z = LN2(x); and for a dense block x += MLP(z). */
static void
attention_output_rows (VmoeCpu *cpu, const void *arg, int first, int count)
{
  const VmoeBlock *block = arg;
  const VmoeConfig *c = &cpu->model->config;
  size_t d = cpu->dim;
  linear_forward (cpu->x + first * d, cpu->attn + first * d, &block->proj,
      count, TRUE);
  vmoe_layernorm_forward (cpu->z + first * d, cpu->x + first * d,
      block->norm2_weight, block->norm2_bias, count, d, (float) c->norm_eps);
  if (!block->is_moe)
    mlp_forward (cpu->x + first * d, cpu->z + first * d, &block->mlp, count,
        cpu->hidden + (size_t) first * cpu->hidden_dim, c->act, TRUE);
}

/* ViMoE's shared expert: x += MLP(z). */
static void
shared_expert_rows (VmoeCpu *cpu, const void *arg, int first, int count)
{
  const VmoeBlock *block = arg;
  size_t d = cpu->dim;
  mlp_forward (cpu->x + first * d, cpu->z + first * d, &block->shared, count,
      cpu->hidden + (size_t) first * cpu->hidden_dim,
      cpu->model->config.act, TRUE);
}

/* z (N*Np, D) = patches W^T + b. */
static void
patch_embed_rows (VmoeCpu *cpu, const void *arg, int first, int count)
{
  const VmoeLinear *lin = arg;
  linear_forward (cpu->z + (size_t) first * lin->out,
      cpu->patches + (size_t) first * lin->in, lin, count, FALSE);
}

/* ---------------------------------------------------------------- MoE */

/* Rows [first, first + count) of one expert's list: gathers the rows of z
 * listed in cpu->rows, runs the expert on them and adds weight x result
 * into the same rows of x.  An expert's list holds a row at most once, so
 * slices never write the same row. */
static void
expert_rows (VmoeCpu *cpu, const void *arg, int first, int count)
{
  const VmoeMlp *mlp = arg;
  size_t d = cpu->dim;
  float *in = cpu->gather_in + first * d, *out = cpu->gather_out + first * d;
  for (int r = 0; r < count; r++)
    memcpy (in + r * d, cpu->z + (size_t) cpu->rows[first + r] * d,
        d * sizeof (float));
  mlp_forward (out, in, mlp, count, cpu->hidden + (size_t) first * cpu->hidden_dim,
      cpu->model->config.act, FALSE);
  for (int r = 0; r < count; r++) {
    float *x = cpu->x + (size_t) cpu->rows[first + r] * d;
    const float *y = out + r * d;
    float w = cpu->row_weights[first + r];
    for (size_t i = 0; i < d; i++)
      x[i] += w * y[i];
  }
}

/* Mobile V-MoE: one router on the residual stream entering the first MoE
 * block decides k experts and gates per image, and with E3 per member
 * among its partition's experts: the router's [E] logits are [M, E/M], one
 * softmax and top-k per member, so out's [n, M, k] fill row by row. */
static void
route_images (VmoeCpu *cpu, int n, VmoeRawOutput *out)
{
  const VmoeModel *m = cpu->model;
  const VmoeConfig *c = &m->config;
  int t_count = cpu->tokens, d = cpu->dim, members = c->ensemble_members;
  int e_count = c->num_experts / members, k = cpu->routing.top_k;
  for (int i = 0; i < n; i++) {
    float *r = cpu->router_input + (size_t) i * d;
    const float *x = cpu->x + (size_t) i * t_count * d;
    if (c->router_input == VMOE_ROUTER_INPUT_CLS) {
      memcpy (r, x, d * sizeof (float));
    } else {
      for (int j = 0; j < d; j++) {
        double s = 0;
        for (int t = 0; t < t_count; t++)
          s += x[(size_t) t * d + j];
        r[j] = (float) (s / t_count);
      }
    }
  }
  linear_forward (cpu->router_probs, cpu->router_input, &m->router, n, FALSE);
  vmoe_softmax_rows (cpu->router_probs, n * members, e_count);
  for (int i = 0; i < n * members; i++) {
    int *experts = out->experts + (size_t) i * k;
    float *gates = out->gates + (size_t) i * k;
    vmoe_topk (cpu->router_probs + (size_t) i * e_count, e_count, k, experts, gates);
    for (int j = 0; j < k; j++)
      experts[j] += i % members * e_count;
    if (c->normalize_gates) {
      float sum = 0;
      for (int j = 0; j < k; j++)
        sum += gates[j];
      for (int j = 0; j < k; j++)
        gates[j] /= sum;
    }
  }
}

static void
moe_image_routed (VmoeCpu *cpu, const VmoeBlock *block, int n,
    const VmoeRawOutput *out)
{
  int k = cpu->routing.top_k;
  for (int e = 0; e < cpu->model->config.num_experts; e++) {
    int n_rows = 0;
    for (int i = 0; i < n; i++) {
      for (int j = 0; j < k; j++) {
        if (out->experts[i * k + j] != e)
          continue;
        for (int t = 0; t < cpu->tokens; t++) {
          cpu->rows[n_rows] = i * cpu->tokens + t;
          cpu->row_weights[n_rows++] = out->gates[i * k + j];
        }
      }
    }
    run_on_rows (cpu, n_rows, mlp_fmas_per_row (&block->experts[e]), expert_rows,
        &block->experts[e]);
  }
}

/* The router logits [n*T, E/M] of n member copies (copy i*M + m): each
 * copy's T rows against its member's E/M rows of the router, so that no
 * copy computes (or stores) the logits of experts it cannot choose. */
static void
member_router_logits (VmoeCpu *cpu, const VmoeLinear *router, int n)
{
  int members = cpu->model->config.ensemble_members, t_count = cpu->tokens;
  int e_count = router->out / members;
  for (int i = 0; i < n; i++) {
    int m = i % members;
    VmoeLinear part = { router->weight + (size_t) m * e_count * router->in,
      router->bias ? router->bias + (size_t) m * e_count : NULL, router->in, e_count };
    linear_forward (cpu->router_probs + (size_t) i * t_count * e_count,
        cpu->z + (size_t) i * t_count * cpu->dim, &part, t_count, FALSE);
  }
}

/* V-MoE: a router per token in each MoE block, with per-image capacity.
 * With E3, n counts member copies (copy i*M + m) and copy m routes among
 * its partition's E/M experts; choices are first local to the partition. */
static void
moe_token_routed (VmoeCpu *cpu, const VmoeBlock *block, int layer, int n,
    VmoeRawOutput *out)
{
  const VmoeConfig *c = &cpu->model->config;
  int t_count = cpu->tokens, members = c->ensemble_members, k = cpu->routing.top_k;
  int e_all = c->num_experts, e_count = e_all / members;
  int rows = n * t_count;
  int capacity = vmoe_token_capacity (k, t_count, cpu->routing.capacity_ratio,
      e_all, members);
  if (members == 1)
    linear_forward (cpu->router_probs, cpu->z, &block->router, rows, FALSE);
  else
    member_router_logits (cpu, &block->router, n);
  vmoe_softmax_rows (cpu->router_probs, rows, e_count);
  for (int r = 0; r < rows; r++)
    vmoe_topk (cpu->router_probs + (size_t) r * e_count, e_count, k,
        cpu->choice + (size_t) r * k, cpu->choice_p + (size_t) r * k);
  for (int i = 0; i < n; i++) {
    size_t first = (size_t) i * t_count * k;
    /* Copy i is member i % M of image i / M; out is [image, layer, M]. */
    size_t at = ((size_t) i / members * c->n_moe_layers + layer) * members + i % members;
    out->dropped[at] = vmoe_assign_tokens (cpu->choice + first, cpu->choice_p + first,
        t_count, k, e_count, capacity, c->bpr, cpu->order, cpu->assigned + first,
        out->tokens_per_expert + at * e_count);
    for (int a = 0; a < t_count * k; a++)
      if (cpu->assigned[first + a] >= 0)
        cpu->assigned[first + a] += i % members * e_count;
  }
  for (int e = 0; e < e_all; e++) {
    int n_rows = 0;
    for (int a = 0; a < rows * k; a++) {
      if (cpu->assigned[a] != e)
        continue;
      cpu->rows[n_rows] = a / k;
      cpu->row_weights[n_rows++] = cpu->choice_p[a];
    }
    run_on_rows (cpu, n_rows, mlp_fmas_per_row (&block->experts[e]), expert_rows,
        &block->experts[e]);
  }
}

/* ---------------------------------------------------------------- forward */

/* input (N, C, H, W) -> patches (N*Np, C*P*P), im2col order (c, ky, kx). */
static void
im2col (float *patches, const float *input, int n, const VmoeConfig *c)
{
  int p = c->patch_size, gh = c->image_h / p, gw = c->image_w / p;
  int h = c->image_h, w = c->image_w;
  for (int i = 0; i < n; i++) {
    const float *img = input + (size_t) i * c->in_channels * h * w;
    for (int py = 0; py < gh; py++) {
      for (int px = 0; px < gw; px++) {
        float *dst = patches + ((size_t) (i * gh + py) * gw + px) * c->in_channels * p * p;
        for (int ch = 0; ch < c->in_channels; ch++)
          for (int ky = 0; ky < p; ky++) {
            memcpy (dst, img + ((size_t) ch * h + py * p + ky) * w + px * p,
                p * sizeof (float));
            dst += p;
          }
      }
    }
  }
}

static void
embed (VmoeCpu *cpu, const float *input, int n)
{
  const VmoeModel *m = cpu->model;
  const VmoeConfig *c = &m->config;
  int d = cpu->dim, n_patches = vmoe_config_patches (c);
  int first_patch = c->class_token ? 1 : 0;
  im2col (cpu->patches, input, n, c);
  run_on_rows (cpu, n * n_patches, (double) m->patch_embed.in * d,
      patch_embed_rows, &m->patch_embed);
  for (int i = 0; i < n; i++) {
    float *x = cpu->x + (size_t) i * cpu->tokens * d;
    if (c->class_token)
      for (int j = 0; j < d; j++)
        x[j] = m->cls_token[j] + m->pos_embed[j];
    for (int t = 0; t < n_patches; t++) {
      float *dst = x + (size_t) (first_patch + t) * d;
      const float *src = cpu->z + ((size_t) i * n_patches + t) * d;
      const float *pos = m->pos_embed + (size_t) (first_patch + t) * d;
      for (int j = 0; j < d; j++)
        dst[j] = src[j] + pos[j];
    }
  }
}

static void
pool_and_head (VmoeCpu *cpu, int n, float *logits)
{
  const VmoeModel *m = cpu->model;
  const VmoeConfig *c = &m->config;
  int d = cpu->dim, t_count = cpu->tokens;
  float eps = (float) c->norm_eps;
  for (int i = 0; i < n; i++) {
    const float *x = cpu->x + (size_t) i * t_count * d;
    float *pooled = cpu->pooled + (size_t) i * d;
    if (c->pool == VMOE_POOL_TOKEN) {
      vmoe_layernorm_forward (pooled, x, m->norm_weight, m->norm_bias, 1, d, eps);
      continue;
    }
    int first = c->class_token ? 1 : 0, count = t_count - first;
    vmoe_layernorm_forward (cpu->z, x + (size_t) first * d, m->norm_weight,
        m->norm_bias, count, d, eps);
    for (int j = 0; j < d; j++) {
      double s = 0;
      for (int t = 0; t < count; t++)
        s += cpu->z[(size_t) t * d + j];
      pooled[j] = (float) (s / count);
    }
  }
  linear_forward (logits, cpu->pooled, &m->head, n, FALSE);
}

/* E3: images [0, n) of x and z become n*M member copies, copy i*M + m
 * being image i's.  In place from the last image down: copy i's targets
 * start at i*M >= i, past every image still to be read. */
static void
copy_members (VmoeCpu *cpu, int n)
{
  int members = cpu->model->config.ensemble_members;
  size_t image = (size_t) cpu->tokens * cpu->dim;
  for (int i = n - 1; i >= 0; i--)
    for (int m = members - 1; m >= 0; m--) {
      size_t to = ((size_t) i * members + m) * image, from = (size_t) i * image;
      if (to == from)
        continue;
      memcpy (cpu->x + to, cpu->x + from, image * sizeof (float));
      memcpy (cpu->z + to, cpu->z + from, image * sizeof (float));
    }
}

void
vmoe_cpu_forward (VmoeCpu *cpu, const float *input, int n, VmoeRawOutput *out)
{
  const VmoeModel *m = cpu->model;
  const VmoeConfig *c = &m->config;
  int d = cpu->dim;
  vmoe_cpu_reserve (cpu, n);

  embed (cpu, input, n);
  /* Rows of the batch: images, and from the first MoE block's FFN on, the
   * ensemble's member copies (docs/design.md: copying there gives what
   * copying the stream entering the block would, as the copies are equal
   * until their routing differs, for one attention instead of M). */
  int images = n, layer = 0;
  for (int b = 0; b < c->depth; b++) {
    const VmoeBlock *block = &m->blocks[b];
    int rows = images * cpu->tokens;
    /* x = x + Attn(LN1(x)) */
    run_on_rows (cpu, rows, (double) d * block->qkv.out, attention_input_rows, block);
    vmoe_attention_forward (cpu->attn, cpu->qkv, cpu->attention_scratch,
        cpu->workers, images, cpu->tokens, d, c->num_heads);
    /* x = x + FFN(LN2(x)); the image router reads x before the FFN. */
    run_on_rows (cpu, rows, (double) d * d + (block->is_moe ? 0 : mlp_fmas_per_row
            (&block->mlp)), attention_output_rows, block);
    if (!block->is_moe)
      continue;
    if (c->routing == VMOE_ROUTING_IMAGE && layer == 0)
      route_images (cpu, n, out);
    if (layer == 0 && c->ensemble_members > 1) {
      copy_members (cpu, n);
      images = n * c->ensemble_members;
      rows = images * cpu->tokens;
    }
    if (block->has_shared)
      run_on_rows (cpu, rows, mlp_fmas_per_row (&block->shared), shared_expert_rows,
          block);
    if (c->routing == VMOE_ROUTING_IMAGE)
      moe_image_routed (cpu, block, images, out);
    else
      moe_token_routed (cpu, block, layer, images, out);
    layer++;
  }
  pool_and_head (cpu, images, out->logits);
}

/* ---------------------------------------------------------------- life */

static void
workspace_free (VmoeCpu *cpu)
{
  cpu->patches = NULL;
  float **floats[] = { &cpu->x, &cpu->z, &cpu->qkv, &cpu->attn, &cpu->hidden,
    &cpu->gather_in, &cpu->gather_out,
    &cpu->router_probs, &cpu->router_input, &cpu->pooled, &cpu->row_weights,
    &cpu->choice_p };
  for (guint i = 0; i < G_N_ELEMENTS (floats); i++)
    g_clear_pointer (floats[i], g_free);
  g_clear_pointer (&cpu->rows, g_free);
  g_clear_pointer (&cpu->choice, g_free);
  g_clear_pointer (&cpu->assigned, g_free);
  g_clear_pointer (&cpu->order, g_free);
  g_clear_pointer (&cpu->attention_scratch, g_aligned_free);
}

void
vmoe_cpu_reserve (VmoeCpu *cpu, int n)
{
  if (n <= cpu->reserved)
    return;
  const VmoeConfig *c = &cpu->model->config;
  workspace_free (cpu);
  size_t t = cpu->tokens, d = cpu->dim, k = MAX (cpu->routing.top_k, 1);
  /* Activations for the E3 member copies (n*M images); the patches and
   * the router's input only ever hold the n images. */
  size_t rows = (size_t) n * c->ensemble_members * t;
  /* An image may send all its tokens to one expert k times only with k
   * distinct experts, so one expert sees at most N*T rows; the shared buffers
   * are sized for N*T*k to stay obviously safe. */
  size_t expert_rows = rows * k;
  size_t patch_len = (size_t) c->in_channels * c->patch_size * c->patch_size;
  cpu->x = g_new (float, rows * d);
  cpu->z = g_new (float, MAX (rows * d, (size_t) n * vmoe_config_patches (c) * d));
  cpu->qkv = g_new (float, rows * 3 * d);
  cpu->attn = g_new (float, rows * d);
  size_t patches_len = (size_t) n * vmoe_config_patches (c) * patch_len;
  cpu->hidden = g_new (float, MAX (expert_rows * cpu->hidden_dim, patches_len));
  cpu->patches = cpu->hidden;
  cpu->attention_scratch = g_aligned_alloc (vmoe_attention_scratch_len (
          n * c->ensemble_members, cpu->tokens, cpu->dim, c->num_heads, vmoe_workers_threads (cpu->workers)),
      sizeof (float), 64);
  cpu->gather_in = g_new (float, expert_rows * d);
  cpu->gather_out = g_new (float, expert_rows * d);
  /* Token routing: [rows, E/M]; image routing: [n, E], no larger. */
  cpu->router_probs = g_new (float, rows * MAX (c->num_experts / c->ensemble_members, 1));
  cpu->router_input = g_new (float, (size_t) n * d);
  cpu->pooled = g_new (float, (size_t) n * c->ensemble_members * d);
  cpu->rows = g_new (int, expert_rows);
  cpu->row_weights = g_new (float, expert_rows);
  cpu->choice = g_new (int, expert_rows);
  cpu->choice_p = g_new (float, expert_rows);
  cpu->assigned = g_new (int, expert_rows);
  cpu->order = g_new (int, t);
  cpu->reserved = n;
}

VmoeCpu *
vmoe_cpu_new (VmoeModel *model, VmoeRoutingParams routing, int threads)
{
  const VmoeConfig *c = &model->config;
  VmoeCpu *cpu = g_new0 (VmoeCpu, 1);
  cpu->model = vmoe_model_ref (model);
  cpu->routing = routing;
  cpu->tokens = vmoe_config_tokens (c);
  cpu->dim = c->embed_dim;
  cpu->hidden_dim = MAX (c->mlp_dim, c->routing != VMOE_ROUTING_NONE ? c->expert_mlp_dim : 0);
  /* OpenBLAS's thread count is process-wide: every CPU session wants it at
   * one (see the top of this file); docs/cpu.md says so to embedders. */
  openblas_set_num_threads (1);
  cpu->workers = vmoe_workers_new (threads > 0 ? threads : (int) g_get_num_processors ());
  return cpu;
}

void
vmoe_cpu_free (VmoeCpu *cpu)
{
  if (!cpu)
    return;
  workspace_free (cpu);
  vmoe_workers_free (cpu->workers);
  vmoe_model_unref (cpu->model);
  g_free (cpu);
}
