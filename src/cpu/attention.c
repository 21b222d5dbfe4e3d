/* Attention runs on the backend's own threads rather than as per-head
 * sgemm calls: each head's products are small (T x T x D/H), and OpenBLAS
 * spends as long splitting, packing and clearing them as multiplying, while
 * the softmax between them ran on one core.  Work items are blocks of query
 * rows of one head of one image; each computes its scores, their softmax and
 * its rows of the output, all in the item's own scratch.  An item gives the
 * same bits on whichever thread runs it. */
#include "attention.h"
#include "ops.h"
#include "pass.h"

#include <math.h>

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
