#version 450
// Multi-head self-attention for one query token of one head of one image per
// workgroup: scores against every key, softmax over keys, weighted sum of the
// values.  qkv rows hold q for all heads, then k, then v (DESIGN.md).
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint MAX_TOKENS = 1024;

layout(push_constant) uniform Params {
  uint tokens, dim, heads;
  uint qkv_off, out_off;
} p;

shared float scores[MAX_TOKENS];
shared float partial[64];

void main()
{
  uint t = gl_WorkGroupID.x, h = gl_WorkGroupID.y, img = gl_WorkGroupID.z;
  uint lid = gl_LocalInvocationID.x;
  uint dh = p.dim / p.heads, stride = 3u * p.dim;
  uint base = p.qkv_off + img * p.tokens * stride + h * dh;
  uint q = base + t * stride;
  float scale = 1.0 / sqrt(float(dh));

  float local_max = -3.402823466e38;
  for (uint j = lid; j < p.tokens; j += 64u) {
    uint k = base + j * stride + p.dim;
    float s = 0.0;
    for (uint d = 0u; d < dh; d++)
      s += A[q + d] * A[k + d];
    s *= scale;
    scores[j] = s;
    local_max = max(local_max, s);
  }
  partial[lid] = local_max;
  barrier();
  for (uint s = 32u; s > 0u; s >>= 1) {
    if (lid < s)
      partial[lid] = max(partial[lid], partial[lid + s]);
    barrier();
  }
  float row_max = partial[0];
  barrier();

  float local_sum = 0.0;
  for (uint j = lid; j < p.tokens; j += 64u) {
    float e = exp(scores[j] - row_max);
    scores[j] = e;
    local_sum += e;
  }
  partial[lid] = local_sum;
  barrier();
  for (uint s = 32u; s > 0u; s >>= 1) {
    if (lid < s)
      partial[lid] += partial[lid + s];
    barrier();
  }
  float inv = 1.0 / partial[0];

  uint out_row = p.out_off + (img * p.tokens + t) * p.dim + h * dh;
  for (uint d = lid; d < dh; d += 64u) {
    float acc = 0.0;
    for (uint j = 0u; j < p.tokens; j++)
      acc += scores[j] * A[base + j * stride + 2u * p.dim + d];
    A[out_row + d] = acc * inv;
  }
}
