#version 450
// out[r] = (x[r] - mean) / sqrt(var + eps) * w + b, one workgroup per row;
// rows may be strided (the class token of each image).
#include "common.glsl"
layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
  uint rows, dim;
  uint in_off, in_stride, out_off, out_stride;
  uint w_off, b_off;
  float eps;
} p;

shared float partial[64];

float workgroup_sum(float v)
{
  uint t = gl_LocalInvocationID.x;
  partial[t] = v;
  barrier();
  for (uint s = 32u; s > 0u; s >>= 1) {
    if (t < s)
      partial[t] += partial[t + s];
    barrier();
  }
  float total = partial[0];
  barrier();
  return total;
}

void main()
{
  uint r = flat_group_id();
  if (r >= p.rows)
    return;
  uint t = gl_LocalInvocationID.x;
  uint x0 = p.in_off + r * p.in_stride, y0 = p.out_off + r * p.out_stride;
  float s = 0.0;
  for (uint i = t; i < p.dim; i += 64u)
    s += A[x0 + i];
  float mean = workgroup_sum(s) / float(p.dim);
  float v = 0.0;
  for (uint i = t; i < p.dim; i += 64u) {
    float d = A[x0 + i] - mean;
    v += d * d;
  }
  float rstd = inversesqrt(workgroup_sum(v) / float(p.dim) + p.eps);
  for (uint i = t; i < p.dim; i += 64u)
    A[y0 + i] = (A[x0 + i] - mean) * rstd * W[p.w_off + i] + W[p.b_off + i];
}
