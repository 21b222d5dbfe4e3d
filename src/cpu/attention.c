/* Attention runs on the backend's own threads rather than as per-head
 * sgemm calls: each head's products are small (T x T x D/H), and OpenBLAS
 * spends as long splitting, packing and clearing them as multiplying, while
 * the softmax between them ran on one core.  Work items are blocks of query
 * rows of one head of one image; each computes its scores, their softmax and
 * its rows of the output, all in the item's own scratch.  An item gives the
 * same bits on whichever thread runs it.  In bf16 mode the same items
 * multiply bf16 pairs with vdpbf16ps (docs/cpu.md, "Precision"). */
#include "attention.h"
#include "ops.h"
#include "pass.h"

#include <math.h>

/* bf16 attention needs the compiler's AVX512_BF16 intrinsics; the CPU is
 * checked at run time. */
#ifdef VMOE_HAVE_BF16_INTRINSICS
#define VMOE_HAVE_BF16_ATTENTION 1
#include <immintrin.h>
#endif

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

/* bf16 mode multiplies pairs of bf16 (vdpbf16ps): a guint32 holds two,
 * the even-indexed element in its low half.  A head's keys are pairs of
 * adjacent head columns, [ceil(hd/2), padded], and its values pairs of
 * adjacent tokens, [ceil(T/2), hd rounded up to 16], zero where the head or
 * the tokens end. */
static inline __attribute__ ((always_inline)) int
pairs_of (int n)
{
  return (n + 1) / 2;
}

static inline __attribute__ ((always_inline)) int
value_columns (int head_dim)
{
  return (head_dim + ATTENTION_LANES - 1) / ATTENTION_LANES * ATTENTION_LANES;
}

gboolean
vmoe_attention_bf16_available (void)
{
#ifdef VMOE_HAVE_BF16_ATTENTION
  /* All three, as the kernels use all three (and the OS must keep the
   * registers: libgcc checks that for avx512f and avx512bw). */
  __builtin_cpu_init ();
  return __builtin_cpu_supports ("avx512f") && __builtin_cpu_supports ("avx512bw")
      && __builtin_cpu_supports ("avx512bf16");
#else
  return FALSE;
#endif
}

/* bf16 where it is asked for and can run; otherwise (a build without the
 * intrinsics) fp32, as before bf16 attention existed. */
static gboolean
attention_in_bf16 (VmoePrecision precision)
{
  return precision == VMOE_PRECISION_BF16 && vmoe_attention_bf16_available ();
}

size_t
vmoe_attention_scratch_len (int n_images, int tokens, int dim, int heads,
    int threads, VmoePrecision precision)
{
  size_t padded = attention_padded_tokens (tokens);
  int hd = dim / heads;
  size_t per_head = (size_t) hd * padded;   /* keys transposed */
  size_t per_thread = ATTENTION_QUERY_BLOCK * padded;   /* scores */
  if (attention_in_bf16 (precision)) {
    per_head = (size_t) pairs_of (hd) * padded
        + (size_t) pairs_of (tokens) * value_columns (hd);
    per_thread += ATTENTION_QUERY_BLOCK * (size_t) (pairs_of (hd) + pairs_of (tokens));
  }
  return (size_t) n_images * heads * per_head + (size_t) MAX (threads, 1) * per_thread;
}

typedef struct {
  float *out;
  const float *qkv;
  float *keys_t;       /* fp32: [N, H, D/H, padded] each head's keys transposed */
  float *scores;       /* [threads, QUERY_BLOCK, padded] */
  /* bf16 pairs: */
  guint32 *key_pairs;    /* [N, H, ceil(hd/2), padded] */
  guint32 *value_pairs;  /* [N, H, ceil(T/2), value_columns] */
  guint32 *query_pairs;  /* [threads, QUERY_BLOCK, ceil(hd/2)] */
  guint32 *prob_pairs;   /* [threads, QUERY_BLOCK, ceil(T/2)] */
  int tokens, dim, heads, head_dim, padded, query_blocks;
  float scale;
  void (*softmax) (float *row, int tokens);   /* in place, fp32 kernels' */
} AttentionJob;

#pragma GCC push_options
#pragma GCC optimize ("finite-math-only", "no-signed-zeros", "fp-contract=fast")

/* Image i, head h: its keys, [tokens, hd] rows qkv_stride apart. */
static inline __attribute__ ((always_inline)) const float *
head_keys (const AttentionJob *job, int i, int h)
{
  return job->qkv + (size_t) i * job->tokens * 3 * job->dim + job->dim
      + h * job->head_dim;
}

/* keys_t (D/H, padded) of image i, head h = K^T: the columns of tokens
 * [j0, j1), and past the last token zero where j1 is it. */
static void
stage_keys_t (const AttentionJob *job, int i, int h, int j0, int j1)
{
  const float *k = head_keys (job, i, h);
  float *kt = job->keys_t + (size_t) (i * job->heads + h) * job->head_dim * job->padded;
  for (int d = 0; d < job->head_dim; d++) {
    float *row = kt + (size_t) d * job->padded;
    for (int j = j0; j < j1; j++)
      row[j] = k[(size_t) j * 3 * job->dim + d];
    if (j1 == job->tokens)
      for (int j = j1; j < job->padded; j++)
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
    Lanes acc[8][2] = { { { 0 } } };
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

/* Where item `index` of a job, (image, head, block of queries), reads and
 * writes, for both precisions' kernels. */
typedef struct {
  int head_index;              /* image * heads + head: keys' and values' */
  int rows;                    /* queries in the block */
  const float *q;              /* the block's first query */
  const float *v;              /* the head's first value */
  float *o;                    /* the block's first output row */
  float *s;                    /* the running thread's scores */
} QueryBlock;

/* Query rows [first, first + rows) of image i, head h, no more than
 * ATTENTION_QUERY_BLOCK, on `thread`'s scores. */
static inline __attribute__ ((always_inline)) QueryBlock
query_rows (const AttentionJob *job, int i, int h, int first, int rows, int thread)
{
  size_t qkv_stride = 3 * (size_t) job->dim, hd = job->head_dim;
  /* seek to image i, head h, the first query */
  return (QueryBlock) {
    i * job->heads + h, rows,
    job->qkv + ((size_t) i * job->tokens + first) * qkv_stride + h * hd,
    job->qkv + (size_t) i * job->tokens * qkv_stride + 2 * job->dim + h * hd,
    job->out + ((size_t) i * job->tokens + first) * job->dim + h * hd,
    job->scores + (size_t) thread * ATTENTION_QUERY_BLOCK * job->padded,
  };
}

/* Item `index` of a run over every query: (image, head, block of queries). */
static inline __attribute__ ((always_inline)) QueryBlock
query_block (const AttentionJob *job, int index, int thread)
{
  int block = index % job->query_blocks, ih = index / job->query_blocks;
  int first = block * ATTENTION_QUERY_BLOCK;
  return query_rows (job, ih / job->heads, ih % job->heads, first,
      MIN (ATTENTION_QUERY_BLOCK, job->tokens - first), thread);
}

/* A block of queries in fp32.  Each row's products are summed in the same
 * order whichever tile of rows it falls in, so a row's result does not
 * depend on where its block starts. */
static VMOE_VECTOR_CLONES void
attend_block (const AttentionJob *job, QueryBlock b)
{
  int rows = b.rows, qkv_stride = 3 * job->dim, hd = job->head_dim;
  int padded = job->padded;
  const float *q = b.q, *v = b.v;
  const float *kt = job->keys_t + (size_t) b.head_index * hd * padded;
  float *o = b.o, *s = b.s;

  int r = 0;
  for (; r + 8 <= rows; r += 8)
    score_rows (s + (size_t) r * padded, q + (size_t) r * qkv_stride, qkv_stride,
        kt, hd, padded, job->scale, 8);
  for (; r + 4 <= rows; r += 4)
    score_rows (s + (size_t) r * padded, q + (size_t) r * qkv_stride, qkv_stride,
        kt, hd, padded, job->scale, 4);
  for (; r + 2 <= rows; r += 2)
    score_rows (s + (size_t) r * padded, q + (size_t) r * qkv_stride, qkv_stride,
        kt, hd, padded, job->scale, 2);
  for (; r < rows; r++)
    score_rows (s + (size_t) r * padded, q + (size_t) r * qkv_stride, qkv_stride,
        kt, hd, padded, job->scale, 1);
  for (r = 0; r < rows; r++)
    job->softmax (s + (size_t) r * padded, job->tokens);
  r = 0;
  for (; r + 4 <= rows; r += 4)
    mix_values (o + (size_t) r * job->dim, job->dim, s + (size_t) r * padded,
        padded, v, qkv_stride, job->tokens, hd, 4);
  for (; r + 2 <= rows; r += 2)
    mix_values (o + (size_t) r * job->dim, job->dim, s + (size_t) r * padded,
        padded, v, qkv_stride, job->tokens, hd, 2);
  for (; r < rows; r++)
    mix_values (o + (size_t) r * job->dim, job->dim, s + (size_t) r * padded,
        padded, v, qkv_stride, job->tokens, hd, 1);
}

static void
attend_item (void *data, int index, int thread)
{
  const AttentionJob *job = data;
  attend_block (job, query_block (job, index, thread));
}

static void
softmax_row (float *row, int tokens)
{
  vmoe_softmax_rows (row, 1, tokens);
}

#ifdef VMOE_HAVE_BF16_ATTENTION
#define AVX512_TARGET __attribute__ ((target ("avx512f")))
#define BF16_TARGET __attribute__ ((target ("avx512f,avx512bw,avx512bf16")))

static inline __attribute__ ((always_inline)) AVX512_TARGET __mmask16
first_lanes (int n)
{
  return n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16) ((1u << n) - 1);
}

/* The first min(n, 32) of in rounded to bf16 (to nearest even, as the
 * linear layers' inputs; vcvtne2ps2bf16 flushes subnormals to zero), as 16
 * pairs, zero past n. */
static inline __attribute__ ((always_inline)) BF16_TARGET __m512i
round_to_pair_vector (const float *in, int n)
{
  __m512 low = _mm512_maskz_loadu_ps (first_lanes (n), in);
  __m512 high = _mm512_maskz_loadu_ps (first_lanes (n - ATTENTION_LANES),
      in + ATTENTION_LANES);
  return (__m512i) _mm512_cvtne2ps_pbh (high, low);
}

/* pairs[0, ceil(n/2)) = in[0, n) rounded to bf16, an odd n's last pair
 * completed with zero. */
static inline __attribute__ ((always_inline)) BF16_TARGET void
round_to_pairs (guint32 *pairs, const float *in, int n)
{
  for (int i = 0; i < n; i += 2 * ATTENTION_LANES)
    _mm512_mask_storeu_epi32 (pairs + i / 2, first_lanes (pairs_of (n - i)),
        round_to_pair_vector (in + i, n - i));
}

/* rows[i] lane l becomes rows[l] lane i: pairs of 32-bit, of 64-bit, then
 * 128-bit lanes twice. */
static inline __attribute__ ((always_inline)) AVX512_TARGET void
transpose_16x16 (__m512i rows[16])
{
  __m512i t[16], u[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_epi32 (rows[2 * i], rows[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32 (rows[2 * i], rows[2 * i + 1]);
  }
  /* u[4i + m] lane k: column 4k + m of rows 4i .. 4i + 3 */
  for (int i = 0; i < 4; i++) {
    u[4 * i] = _mm512_unpacklo_epi64 (t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64 (t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64 (t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64 (t[4 * i + 1], t[4 * i + 3]);
  }
  for (int m = 0; m < 4; m++) {
    __m512i a_low = _mm512_shuffle_i32x4 (u[m], u[4 + m], 0x44);
    __m512i a_high = _mm512_shuffle_i32x4 (u[m], u[4 + m], 0xee);
    __m512i b_low = _mm512_shuffle_i32x4 (u[8 + m], u[12 + m], 0x44);
    __m512i b_high = _mm512_shuffle_i32x4 (u[8 + m], u[12 + m], 0xee);
    rows[m] = _mm512_shuffle_i32x4 (a_low, b_low, 0x88);
    rows[4 + m] = _mm512_shuffle_i32x4 (a_low, b_low, 0xdd);
    rows[8 + m] = _mm512_shuffle_i32x4 (a_high, b_high, 0x88);
    rows[12 + m] = _mm512_shuffle_i32x4 (a_high, b_high, 0xdd);
  }
}

/* e^x for x <= 0 in 16 lanes: ops.c's exp_nonpositive step for step (its
 * constants, ops.h), with vscalefps for its 2^n.  vmaxps returns its
 * second operand where either is NaN, so a NaN stays NaN through the
 * clamp. */
static inline __attribute__ ((always_inline)) AVX512_TARGET __m512
exp_nonpositive_lanes (__m512 x)
{
  x = _mm512_max_ps (_mm512_set1_ps (VMOE_EXP_MIN_X), x);
  __m512 n = _mm512_roundscale_ps (_mm512_mul_ps (x, _mm512_set1_ps (VMOE_EXP_LOG2E)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps (n, _mm512_set1_ps (VMOE_EXP_LN2_HIGH), x);
  r = _mm512_fnmadd_ps (n, _mm512_set1_ps (VMOE_EXP_LN2_LOW), r);
  __m512 p = _mm512_set1_ps (VMOE_EXP_P0);
  p = _mm512_fmadd_ps (p, r, _mm512_set1_ps (VMOE_EXP_P1));
  p = _mm512_fmadd_ps (p, r, _mm512_set1_ps (VMOE_EXP_P2));
  p = _mm512_fmadd_ps (p, r, _mm512_set1_ps (VMOE_EXP_P3));
  p = _mm512_fmadd_ps (p, r, _mm512_set1_ps (VMOE_EXP_P4));
  p = _mm512_fmadd_ps (p, r, _mm512_set1_ps (VMOE_EXP_P5));
  p = _mm512_add_ps (_mm512_fmadd_ps (p, _mm512_mul_ps (r, r), r), _mm512_set1_ps (1.0f));
  return _mm512_scalef_ps (p, n);
}

/* s[0, tokens) = e^(s - max s), unnormalised; returns 1 / their sum.  One
 * pass for the maximum and one for the exponentials and their sum: the
 * softmax as separate loops (vmoe_softmax_rows) took a third of bf16
 * attention, and a fifth of fp32. */
static inline __attribute__ ((always_inline)) AVX512_TARGET float
exponentials (float *s, int tokens)
{
  __m512 max = _mm512_set1_ps (-INFINITY);
  for (int i = 0; i < tokens; i += ATTENTION_LANES)
    max = _mm512_max_ps (_mm512_mask_loadu_ps (max, first_lanes (tokens - i), s + i), max);
  __m512 row_max = _mm512_set1_ps (_mm512_reduce_max_ps (max));
  __m512 sum = _mm512_setzero_ps ();
  for (int i = 0; i < tokens; i += ATTENTION_LANES) {
    __mmask16 in_row = first_lanes (tokens - i);
    __m512 e = _mm512_maskz_mov_ps (in_row, exp_nonpositive_lanes (
            _mm512_sub_ps (_mm512_maskz_loadu_ps (in_row, s + i), row_max)));
    _mm512_mask_storeu_ps (s + i, in_row, e);
    sum = _mm512_add_ps (sum, e);
  }
  return 1.0f / _mm512_reduce_add_ps (sum);
}

/* The fp32 kernels' softmax on AVX-512 CPUs: row[0, tokens) in place. */
static AVX512_TARGET void
softmax_row_avx512 (float *row, int tokens)
{
  __m512 inv = _mm512_set1_ps (exponentials (row, tokens));
  for (int i = 0; i < tokens; i += ATTENTION_LANES) {
    __mmask16 in_row = first_lanes (tokens - i);
    _mm512_mask_storeu_ps (row + i, in_row,
        _mm512_mul_ps (_mm512_maskz_loadu_ps (in_row, row + i), inv));
  }
}

/* pairs = softmax (s[0, tokens)) rounded to bf16 pairs, scaled and
 * rounded in one pass; s is left holding the unnormalised exponentials. */
static inline __attribute__ ((always_inline)) BF16_TARGET void
softmax_to_pairs (guint32 *pairs, float *s, int tokens)
{
  __m512 inv = _mm512_set1_ps (exponentials (s, tokens));
  for (int i = 0; i < tokens; i += 2 * ATTENTION_LANES) {
    __m512 low = _mm512_mul_ps (_mm512_maskz_loadu_ps (first_lanes (tokens - i), s + i), inv);
    __m512 high = _mm512_mul_ps (_mm512_maskz_loadu_ps (
            first_lanes (tokens - i - ATTENTION_LANES), s + i + ATTENTION_LANES), inv);
    _mm512_mask_storeu_epi32 (pairs + i / 2, first_lanes (pairs_of (tokens - i)),
        (__m512i) _mm512_cvtne2ps_pbh (high, low));
  }
}

/* The 16 lanes from `first` that hold tokens [j0, j1). */
static inline __attribute__ ((always_inline)) AVX512_TARGET __mmask16
tokens_in_tile (int first, int j0, int j1)
{
  return first_lanes (j1 - first) & ~first_lanes (j0 - first);
}

/* The fp32 staging with 16 x 16 tile transposes. */
static AVX512_TARGET void
stage_keys_t_avx512 (const AttentionJob *job, int i, int h, int j0, int j1)
{
  int hd = job->head_dim, stride = 3 * job->dim, padded = job->padded;
  const float *k = head_keys (job, i, h);
  float *kt = job->keys_t + (size_t) (i * job->heads + h) * hd * padded;
  for (int j = j0 - j0 % ATTENTION_LANES; j < j1; j += ATTENTION_LANES) {
    __mmask16 staged = tokens_in_tile (j, j0, j1);
    for (int d = 0; d < hd; d += ATTENTION_LANES) {
      __m512i tile[ATTENTION_LANES];
      for (int l = 0; l < ATTENTION_LANES; l++)
        tile[l] = staged >> l & 1
            ? _mm512_maskz_loadu_epi32 (first_lanes (hd - d), k + (size_t) (j + l) * stride + d)
            : _mm512_setzero_si512 ();
      transpose_16x16 (tile);
      for (int l = 0; l < MIN (ATTENTION_LANES, hd - d); l++)
        _mm512_mask_storeu_epi32 (kt + (size_t) (d + l) * padded + j, staged, tile[l]);
    }
  }
  if (j1 == job->tokens)
    for (int d = 0; d < hd; d++)
      for (int j = j1; j < padded; j++)
        kt[(size_t) d * padded + j] = 0;
}

/* Image i, head h: the keys and values of tokens [j0, j1) as bf16 pairs,
 * and past the last token zero where j1 is it.  A pair of values whose two
 * tokens two slices stage is written by each in its own halves. */
static BF16_TARGET void
stage_pairs (const AttentionJob *job, int i, int h, int j0, int j1)
{
  int hd = job->head_dim, stride = 3 * job->dim, padded = job->padded;
  int key_pairs = pairs_of (hd), token_pairs = pairs_of (job->tokens);
  int columns = value_columns (hd), index = i * job->heads + h;
  const float *k = head_keys (job, i, h);
  const float *v = k + job->dim;
  guint32 *kp = job->key_pairs + (size_t) index * key_pairs * padded;
  guint32 *vp = job->value_pairs + (size_t) index * token_pairs * columns;
  /* Keys in tiles of 16 keys by 16 pairs: each key's pairs rounded in a
   * row, the tile transposed so that key j's pair lands in lane j. */
  for (int j = j0 - j0 % ATTENTION_LANES; j < j1; j += ATTENTION_LANES) {
    __mmask16 staged = tokens_in_tile (j, j0, j1);
    for (int d = 0; d < hd; d += 2 * ATTENTION_LANES) {
      __m512i tile[ATTENTION_LANES];
      for (int l = 0; l < ATTENTION_LANES; l++)
        tile[l] = staged >> l & 1
            ? round_to_pair_vector (k + (size_t) (j + l) * stride + d, hd - d)
            : _mm512_setzero_si512 ();
      transpose_16x16 (tile);
      for (int l = 0; l < MIN (ATTENTION_LANES, key_pairs - d / 2); l++)
        _mm512_mask_storeu_epi32 (kp + (size_t) (d / 2 + l) * padded + j, staged, tile[l]);
    }
  }
  if (j1 == job->tokens)
    for (int dp = 0; dp < key_pairs; dp++)
      for (int j = j1; j < padded; j++)
        kp[(size_t) dp * padded + j] = 0;
  /* Values: a row of even tokens and one of odd rounded together, their
   * halves then interleaved, the even token's in the low half. */
  static const guint16 interleave_halves[32] = { 0, 16, 1, 17, 2, 18, 3, 19, 4,
    20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30,
    15, 31 };
  __m512i interleave = _mm512_loadu_si512 (interleave_halves);
  for (int jp = j0 / 2; jp < pairs_of (j1); jp++) {
    int even = 2 * jp, odd = even + 1;
    gboolean has_odd = odd < j1;
    /* the halves this slice writes; the even token's slice zeroes the odd
     * half past the last token */
    __mmask32 halves = (even >= j0 ? 0x55555555u : 0)
        | (has_odd || odd >= job->tokens ? 0xaaaaaaaau : 0);
    const float *even_row = v + (size_t) even * stride;
    const float *odd_row = has_odd ? even_row + stride : even_row;
    for (int c = 0; c < columns; c += ATTENTION_LANES) {
      __mmask16 in_head = first_lanes (hd - c);
      __m512 e = _mm512_maskz_loadu_ps (even >= j0 ? in_head : 0, even_row + c);
      __m512 o = _mm512_maskz_loadu_ps (has_odd ? in_head : 0, odd_row + c);
      _mm512_mask_storeu_epi16 (vp + (size_t) jp * columns + c, halves,
          _mm512_permutexvar_epi16 (interleave, (__m512i) _mm512_cvtne2ps_pbh (o, e)));
    }
  }
}

/* s (ROWS, padded) = scale * q (ROWS, hd) k^T, q and k as pairs: each pair
 * step loads two key vectors and feeds ROWS x 2 accumulators. */
static inline __attribute__ ((always_inline)) BF16_TARGET void
score_rows_bf16 (float *s, const guint32 *q, const guint32 *kp, int key_pairs,
    int padded, float scale, const int ROWS)
{
  __m512 scales = _mm512_set1_ps (scale);
  for (int j = 0; j < padded; j += ATTENTION_KEY_STEP) {
    __m512 acc[8][2];
    for (int r = 0; r < ROWS; r++)
      acc[r][0] = acc[r][1] = _mm512_setzero_ps ();
    for (int dp = 0; dp < key_pairs; dp++) {
      const guint32 *kd = kp + (size_t) dp * padded + j;
      __m512bh k0 = (__m512bh) _mm512_loadu_si512 (kd);
      __m512bh k1 = (__m512bh) _mm512_loadu_si512 (kd + ATTENTION_LANES);
      for (int r = 0; r < ROWS; r++) {
        __m512bh qd = (__m512bh) _mm512_set1_epi32 ((int) q[(size_t) r * key_pairs + dp]);
        acc[r][0] = _mm512_dpbf16_ps (acc[r][0], qd, k0);
        acc[r][1] = _mm512_dpbf16_ps (acc[r][1], qd, k1);
      }
    }
    for (int r = 0; r < ROWS; r++) {
      _mm512_storeu_ps (s + (size_t) r * padded + j, _mm512_mul_ps (acc[r][0], scales));
      _mm512_storeu_ps (s + (size_t) r * padded + j + ATTENTION_LANES,
          _mm512_mul_ps (acc[r][1], scales));
    }
  }
}

/* o (ROWS, up to CHUNKS x 16 columns, `columns` of them written) =
 * p (ROWS, T) v (T, ...), p and v as pairs of tokens. */
static inline __attribute__ ((always_inline)) BF16_TARGET void
mix_value_chunks_bf16 (float *o, int o_stride, const guint32 *p, const guint32 *vp,
    int v_stride, int token_pairs, int columns, const int ROWS, const int CHUNKS)
{
  __m512 acc[4][4];
  for (int r = 0; r < ROWS; r++)
    for (int c = 0; c < CHUNKS; c++)
      acc[r][c] = _mm512_setzero_ps ();
  for (int jp = 0; jp < token_pairs; jp++) {
    __m512bh vj[4];
    for (int c = 0; c < CHUNKS; c++)
      vj[c] = (__m512bh) _mm512_loadu_si512 (vp + (size_t) jp * v_stride + c * ATTENTION_LANES);
    for (int r = 0; r < ROWS; r++) {
      __m512bh pj = (__m512bh) _mm512_set1_epi32 ((int) p[(size_t) r * token_pairs + jp]);
      for (int c = 0; c < CHUNKS; c++)
        acc[r][c] = _mm512_dpbf16_ps (acc[r][c], pj, vj[c]);
    }
  }
  for (int r = 0; r < ROWS; r++)
    for (int c = 0; c < CHUNKS; c++)
      _mm512_mask_storeu_ps (o + (size_t) r * o_stride + c * ATTENTION_LANES,
          first_lanes (columns - c * ATTENTION_LANES), acc[r][c]);
}

static inline __attribute__ ((always_inline)) BF16_TARGET void
mix_values_bf16 (float *o, int o_stride, const guint32 *p, const guint32 *vp,
    int token_pairs, int hd, const int ROWS)
{
  int v_stride = value_columns (hd);
  for (int c0 = 0; c0 < hd; c0 += 4 * ATTENTION_LANES) {
    int columns = hd - c0;
    switch (MIN ((columns + ATTENTION_LANES - 1) / ATTENTION_LANES, 4)) {
      case 4:
        mix_value_chunks_bf16 (o + c0, o_stride, p, vp + c0, v_stride, token_pairs,
            columns, ROWS, 4);
        break;
      case 3:
        mix_value_chunks_bf16 (o + c0, o_stride, p, vp + c0, v_stride, token_pairs,
            columns, ROWS, 3);
        break;
      case 2:
        mix_value_chunks_bf16 (o + c0, o_stride, p, vp + c0, v_stride, token_pairs,
            columns, ROWS, 2);
        break;
      default:
        mix_value_chunks_bf16 (o + c0, o_stride, p, vp + c0, v_stride, token_pairs,
            columns, ROWS, 1);
    }
  }
}

/* A block of queries as attend_block, with the queries, keys,
 * probabilities and values rounded to bf16 and the products summed in fp32
 * (vdpbf16ps); the scale and the softmax in fp32. */
static BF16_TARGET void
attend_block_bf16 (const AttentionJob *job, QueryBlock b, int thread)
{
  int rows = b.rows, qkv_stride = 3 * job->dim, hd = job->head_dim;
  int padded = job->padded, ih = b.head_index;
  int key_pairs = pairs_of (hd), token_pairs = pairs_of (job->tokens);
  const float *q = b.q;
  const guint32 *kp = job->key_pairs + (size_t) ih * key_pairs * padded;
  const guint32 *vp = job->value_pairs + (size_t) ih * token_pairs * value_columns (hd);
  float *o = b.o, *s = b.s;
  guint32 *qp = job->query_pairs + (size_t) thread * ATTENTION_QUERY_BLOCK * key_pairs;
  guint32 *pp = job->prob_pairs + (size_t) thread * ATTENTION_QUERY_BLOCK * token_pairs;

  for (int r = 0; r < rows; r++)
    round_to_pairs (qp + (size_t) r * key_pairs, q + (size_t) r * qkv_stride, hd);
  int r = 0;
  for (; r + 8 <= rows; r += 8)
    score_rows_bf16 (s + (size_t) r * padded, qp + (size_t) r * key_pairs, kp,
        key_pairs, padded, job->scale, 8);
  for (; r + 4 <= rows; r += 4)
    score_rows_bf16 (s + (size_t) r * padded, qp + (size_t) r * key_pairs, kp,
        key_pairs, padded, job->scale, 4);
  for (; r + 2 <= rows; r += 2)
    score_rows_bf16 (s + (size_t) r * padded, qp + (size_t) r * key_pairs, kp,
        key_pairs, padded, job->scale, 2);
  for (; r < rows; r++)
    score_rows_bf16 (s + (size_t) r * padded, qp + (size_t) r * key_pairs, kp,
        key_pairs, padded, job->scale, 1);
  for (r = 0; r < rows; r++)
    softmax_to_pairs (pp + (size_t) r * token_pairs, s + (size_t) r * padded, job->tokens);
  r = 0;
  for (; r + 4 <= rows; r += 4)
    mix_values_bf16 (o + (size_t) r * job->dim, job->dim, pp + (size_t) r * token_pairs,
        vp, token_pairs, hd, 4);
  for (; r + 2 <= rows; r += 2)
    mix_values_bf16 (o + (size_t) r * job->dim, job->dim, pp + (size_t) r * token_pairs,
        vp, token_pairs, hd, 2);
  for (; r < rows; r++)
    mix_values_bf16 (o + (size_t) r * job->dim, job->dim, pp + (size_t) r * token_pairs,
        vp, token_pairs, hd, 1);
}
static BF16_TARGET void
attend_item_bf16 (void *data, int index, int thread)
{
  const AttentionJob *job = data;
  attend_block_bf16 (job, query_block (job, index, thread), thread);
}
#endif
#pragma GCC pop_options

/* Where attention's parts live in scratch (vmoe_attention_scratch_len):
 * the staged keys (and values) of every image and head, then each
 * thread's scores (and pairs). */
static AttentionJob
attention_job (float *out, const float *qkv, float *scratch, int n_images,
    int tokens, int dim, int heads, int threads, VmoePrecision precision)
{
  AttentionJob job = {
    .out = out, .qkv = qkv, .tokens = tokens, .dim = dim, .heads = heads,
    .head_dim = dim / heads, .padded = attention_padded_tokens (tokens),
    .query_blocks = (tokens + ATTENTION_QUERY_BLOCK - 1) / ATTENTION_QUERY_BLOCK,
    .scale = 1.0f / sqrtf ((float) (dim / heads)),
  };
  int items = n_images * heads, hd = job.head_dim;
  threads = MAX (threads, 1);
  job.softmax = softmax_row;
#ifdef VMOE_HAVE_BF16_ATTENTION
  if (__builtin_cpu_supports ("avx512f"))
    job.softmax = softmax_row_avx512;
#endif
  if (attention_in_bf16 (precision)) {
    job.key_pairs = (guint32 *) scratch;
    job.value_pairs = job.key_pairs + (size_t) items * pairs_of (hd) * job.padded;
    job.scores = (float *) (job.value_pairs
        + (size_t) items * pairs_of (tokens) * value_columns (hd));
    job.query_pairs = (guint32 *) (job.scores
        + (size_t) threads * ATTENTION_QUERY_BLOCK * job.padded);
    job.prob_pairs = job.query_pairs
        + (size_t) threads * ATTENTION_QUERY_BLOCK * pairs_of (hd);
  } else {
    job.keys_t = scratch;
    job.scores = scratch + (size_t) items * hd * job.padded;
  }
  return job;
}

void
vmoe_attention_stage_rows (float *scratch, const float *qkv, int first,
    int count, int n_images, int tokens, int dim, int heads,
    VmoePrecision precision)
{
  AttentionJob job = attention_job (NULL, qkv, scratch, n_images, tokens, dim,
      heads, 1, precision);
  void (*stage) (const AttentionJob *, int, int, int, int) = stage_keys_t;
#ifdef VMOE_HAVE_BF16_ATTENTION
  if (attention_in_bf16 (precision))
    stage = stage_pairs;
  else if (__builtin_cpu_supports ("avx512f"))
    stage = stage_keys_t_avx512;
#endif
  /* image by image: a slice may start and end inside images */
  for (int row = first, end = first + count; row < end;) {
    int i = row / tokens, j0 = row % tokens, j1 = MIN (tokens, j0 + end - row);
    for (int h = 0; h < heads; h++)
      stage (&job, i, h, j0, j1);
    row += j1 - j0;
  }
}

/* Every query, as items over workers. */
static void
attend_all (float *out, const float *qkv, float *scratch, VmoeWorkers *workers,
    int n_images, int tokens, int dim, int heads, VmoePrecision precision)
{
  /* As for row slices: threads only for work worth waking them for. */
  if (2.0 * n_images * tokens * tokens * dim < 2 * VMOE_CPU_MIN_SLICE_FMAS)
    workers = NULL;
  AttentionJob job = attention_job (out, qkv, scratch, n_images, tokens, dim,
      heads, vmoe_workers_threads (workers), precision);
  int items = n_images * heads * job.query_blocks;
#ifdef VMOE_HAVE_BF16_ATTENTION
  if (attention_in_bf16 (precision)) {
    vmoe_workers_run (workers, items, attend_item_bf16, &job);
    return;
  }
#endif
  vmoe_workers_run (workers, items, attend_item, &job);
}

void
vmoe_attention_attend_rows (float *out, const float *qkv, float *scratch,
    int first, int count, int thread, int threads, int n_images, int tokens,
    int dim, int heads, VmoePrecision precision)
{
  AttentionJob job = attention_job (out, qkv, scratch, n_images, tokens, dim,
      heads, threads, precision);
  gboolean bf16 = attention_in_bf16 (precision);
  /* image by image, head by head (its keys and values stay in cache) */
  for (int row = first, end = first + count; row < end;) {
    int i = row / tokens, j0 = row % tokens, j1 = MIN (tokens, j0 + end - row);
    for (int h = 0; h < heads; h++)
      for (int q = j0; q < j1; q += ATTENTION_QUERY_BLOCK) {
        QueryBlock b = query_rows (&job, i, h, q, MIN (ATTENTION_QUERY_BLOCK, j1 - q),
            thread);
#ifdef VMOE_HAVE_BF16_ATTENTION
        if (bf16) {
          attend_block_bf16 (&job, b, thread);
          continue;
        }
#endif
        attend_block (&job, b);
      }
    row += j1 - j0;
  }
  (void) bf16;
}

void
vmoe_attention_forward (float *out, const float *qkv, float *scratch,
    VmoeWorkers *workers, int n_images, int tokens, int dim, int heads,
    VmoePrecision precision)
{
  vmoe_attention_stage_rows (scratch, qkv, 0, n_images * tokens, n_images,
      tokens, dim, heads, precision);
  attend_all (out, qkv, scratch, workers, n_images, tokens, dim, heads, precision);
}
