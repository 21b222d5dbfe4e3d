#version 450
// Multi-head self-attention with one query row per thread and an online
// softmax (flash-attention's recurrence), for head sizes that are a
// multiple of 4 up to 64.  A workgroup takes ROWS query rows of one head of
// one image and walks the keys in chunks of KC staged in shared memory as
// vec4s: every thread reads the same key (a broadcast), so each shared load
// feeds four FMAs; q and the output row live in registers.  Per chunk, the
// scores are kept in registers, the running maximum moves once, and the
// output and the running sum are rescaled once.  No scores array, so no
// limit on the number of tokens.  Same push constants as attention.comp.
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint HEAD_DIM = 64;
const uint D4 = HEAD_DIM / 4u;
const uint KC = 32u;               // VMOE_ATTENTION_KEY_CHUNK
const float LOWEST = -3.402823466e38;

layout(push_constant) uniform Params {
  uint tokens, dim, heads;
  uint qkv_off, out_off;
} p;

shared vec4 ks[KC][D4];
shared vec4 vs[KC][D4];

vec4 load4(uint at)
{
  return vec4(A[at], A[at + 1u], A[at + 2u], A[at + 3u]);
}

void main()
{
  uint rows = gl_WorkGroupSize.x, lid = gl_LocalInvocationID.x;
  uint t = gl_WorkGroupID.x * rows + lid, h = gl_WorkGroupID.y, img = gl_WorkGroupID.z;
  uint stride = 3u * p.dim;
  uint base = p.qkv_off + img * p.tokens * stride + h * HEAD_DIM;
  bool in_range = t < p.tokens;
  // The scale goes on q once rather than on every score.
  float scale = 1.0 / sqrt(float(HEAD_DIM));

  vec4 q[D4], acc[D4];
  for (uint d = 0u; d < D4; d++) {
    q[d] = in_range ? load4(base + t * stride + 4u * d) * scale : vec4(0.0);
    acc[d] = vec4(0.0);
  }
  float row_max = LOWEST, row_sum = 0.0;

  for (uint k0 = 0u; k0 < p.tokens; k0 += KC) {
    barrier();                 // the previous chunk is no longer read
    for (uint e = lid; e < KC * D4; e += rows) {
      uint j = e / D4, d = e % D4, key = k0 + j;
      uint at = base + key * stride + 4u * d;
      ks[j][d] = key < p.tokens ? load4(at + p.dim) : vec4(0.0);
      vs[j][d] = key < p.tokens ? load4(at + 2u * p.dim) : vec4(0.0);
    }
    barrier();
    uint keys = min(KC, p.tokens - k0);

    float s[KC];
    float chunk_max = row_max;
    for (uint j = 0u; j < KC; j++) {
      vec4 dot4 = vec4(0.0);
      for (uint d = 0u; d < D4; d++)
        dot4 += q[d] * ks[j][d];
      s[j] = j < keys ? (dot4.x + dot4.y) + (dot4.z + dot4.w) : LOWEST;
      chunk_max = max(chunk_max, s[j]);
    }
    // exp(LOWEST - finite) is 0: the first chunk starts from nothing.
    float rescale = exp(row_max - chunk_max);
    row_sum *= rescale;
    for (uint d = 0u; d < D4; d++)
      acc[d] *= rescale;
    for (uint j = 0u; j < KC; j++) {
      float w = j < keys ? exp(s[j] - chunk_max) : 0.0;
      row_sum += w;
      for (uint d = 0u; d < D4; d++)
        acc[d] += w * vs[j][d];
    }
    row_max = chunk_max;
  }

  if (in_range) {
    float inv = 1.0 / row_sum;
    uint at = p.out_off + (img * p.tokens + t) * p.dim + h * HEAD_DIM;
    for (uint d = 0u; d < D4; d++) {
      vec4 o = acc[d] * inv;
      A[at + 4u * d] = o.x;
      A[at + 4u * d + 1u] = o.y;
      A[at + 4u * d + 2u] = o.z;
      A[at + 4u * d + 3u] = o.w;
    }
  }
}
