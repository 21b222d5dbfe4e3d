#version 450
// Average pooling: out[i, d] = mean over count tokens from token `first` of
// image i.  (Token pooling needs no kernel: LayerNorm reads the class rows.)
#include "common.glsl"
layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
  uint images, tokens, first, count, dim, in_off, out_off;
} p;

void main()
{
  uint i = flat_group_id() * 64u + gl_LocalInvocationID.x;
  if (i >= p.images * p.dim)
    return;
  uint img = i / p.dim, d = i % p.dim;
  float s = 0.0;
  for (uint t = 0u; t < p.count; t++)
    s += A[p.in_off + (img * p.tokens + p.first + t) * p.dim + d];
  A[p.out_off + i] = s / float(p.count);
}
