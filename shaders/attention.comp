#version 450
// Multi-head self-attention for a block of QB query tokens of one head of
// one image per workgroup: the block's queries and chunks of KC keys (then
// values) are staged in shared memory, so each key and value is read from
// global memory once per block rather than once per query.  Scores for the
// block's rows stay in shared memory for the softmax over keys.  qkv rows
// hold q for all heads, then k, then v (docs/design.md).  The backend picks QB
// (a specialization constant) to fit the device's shared memory.
#include "common.glsl"
layout(local_size_x = 128) in;
layout(constant_id = 0) const uint MAX_TOKENS = 1024;
layout(constant_id = 1) const uint QB = 8;
layout(constant_id = 2) const uint HEAD_DIM = 64;
const uint KC = 32;                // VMOE_ATTENTION_KEY_CHUNK
const uint THREADS = 128u;         // local_size_x; VMOE_ATTENTION_THREADS
const uint OUT_PER_THREAD = (QB * HEAD_DIM + THREADS - 1u) / THREADS;
const uint ROW_THREADS = THREADS / QB;     // QB is a power of two <= THREADS

layout(push_constant) uniform Params {
  uint tokens, dim, heads;
  uint qkv_off, out_off;
} p;

shared float qs[QB][HEAD_DIM];
shared float kv[KC][HEAD_DIM + 1];      // +1: no bank conflicts across keys
shared float scores[QB][MAX_TOKENS];
shared float partial[THREADS];
shared float row_inv[QB];

void main()
{
  uint t0 = gl_WorkGroupID.x * QB, h = gl_WorkGroupID.y, img = gl_WorkGroupID.z;
  uint lid = gl_LocalInvocationID.x;
  uint stride = 3u * p.dim;
  uint base = p.qkv_off + img * p.tokens * stride + h * HEAD_DIM;
  float scale = 1.0 / sqrt(float(HEAD_DIM));

  for (uint e = lid; e < QB * HEAD_DIM; e += THREADS) {
    uint q = e / HEAD_DIM, d = e % HEAD_DIM;
    qs[q][d] = t0 + q < p.tokens ? A[base + (t0 + q) * stride + d] : 0.0;
  }
  for (uint k0 = 0u; k0 < p.tokens; k0 += KC) {
    barrier();
    for (uint e = lid; e < KC * HEAD_DIM; e += THREADS) {
      uint j = e / HEAD_DIM, d = e % HEAD_DIM;
      kv[j][d] = k0 + j < p.tokens ? A[base + (k0 + j) * stride + p.dim + d] : 0.0;
    }
    barrier();
    for (uint e = lid; e < QB * KC; e += THREADS) {
      uint q = e / KC, j = e % KC;
      if (k0 + j >= p.tokens)
        continue;
      float s = 0.0;
      for (uint d = 0u; d < HEAD_DIM; d++)
        s += qs[q][d] * kv[j][d];
      scores[q][k0 + j] = s * scale;
    }
  }
  barrier();

  // Softmax: ROW_THREADS threads per query row, each over every
  // ROW_THREADS-th key, then a pass over the row's partials: two barriers
  // per phase whatever the block size.
  {
    uint q = lid / ROW_THREADS, sub = lid % ROW_THREADS;
    float m = -3.402823466e38;
    for (uint j = sub; j < p.tokens; j += ROW_THREADS)
      m = max(m, scores[q][j]);
    partial[lid] = m;
    barrier();
    float row_max = partial[q * ROW_THREADS];
    for (uint i = 1u; i < ROW_THREADS; i++)
      row_max = max(row_max, partial[q * ROW_THREADS + i]);
    barrier();
    float sum = 0.0;
    for (uint j = sub; j < p.tokens; j += ROW_THREADS) {
      float e = exp(scores[q][j] - row_max);
      scores[q][j] = e;
      sum += e;
    }
    partial[lid] = sum;
    barrier();
    if (sub == 0u) {
      float total = 0.0;
      for (uint i = 0u; i < ROW_THREADS; i++)
        total += partial[q * ROW_THREADS + i];
      row_inv[q] = 1.0 / total;
    }
    barrier();
  }

  float acc[OUT_PER_THREAD];
  for (uint o = 0u; o < OUT_PER_THREAD; o++)
    acc[o] = 0.0;
  for (uint k0 = 0u; k0 < p.tokens; k0 += KC) {
    barrier();
    for (uint e = lid; e < KC * HEAD_DIM; e += THREADS) {
      uint j = e / HEAD_DIM, d = e % HEAD_DIM;
      kv[j][d] = k0 + j < p.tokens ? A[base + (k0 + j) * stride + 2u * p.dim + d] : 0.0;
    }
    barrier();
    uint keys = min(KC, p.tokens - k0);
    for (uint o = 0u; o < OUT_PER_THREAD; o++) {
      uint e = lid + THREADS * o;
      if (e >= QB * HEAD_DIM)
        break;
      uint q = e / HEAD_DIM, d = e % HEAD_DIM;
      float s = acc[o];
      for (uint j = 0u; j < keys; j++)
        s += scores[q][k0 + j] * kv[j][d];
      acc[o] = s;
    }
  }
  for (uint o = 0u; o < OUT_PER_THREAD; o++) {
    uint e = lid + THREADS * o;
    if (e >= QB * HEAD_DIM)
      break;
    uint q = e / HEAD_DIM, d = e % HEAD_DIM;
    if (t0 + q < p.tokens)
      A[p.out_off + (img * p.tokens + t0 + q) * p.dim + h * HEAD_DIM + d] = acc[o] * row_inv[q];
  }
}
