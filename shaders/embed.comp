#version 450
// Patch embedding around one GEMM.  MODE_IM2COL: input [N, C, H, W] ->
// patches [N*Np, C*P*P] in (c, ky, kx) order.  MODE_ASSEMBLE: tokens
// [cls, patches] + pos_embed into the residual stream.
#include "common.glsl"
layout(local_size_x = 256) in;

const uint MODE_IM2COL = 0u, MODE_ASSEMBLE = 1u;

layout(push_constant) uniform Params {
  uint mode, images, channels, height, width, patch_size, dim, tokens, class_token;
  uint src_off, dst_off, cls_off, pos_off;
} p;

void main()
{
  uint i = flat_group_id() * 256u + gl_LocalInvocationID.x;
  uint gw = p.width / p.patch_size, gh = p.height / p.patch_size, np = gw * gh;
  if (p.mode == MODE_IM2COL) {
    uint len = p.channels * p.patch_size * p.patch_size;
    if (i >= p.images * np * len)
      return;
    uint row = i / len, col = i % len;
    uint img = row / np, pi = row % np, py = pi / gw, px = pi % gw;
    uint c = col / (p.patch_size * p.patch_size), ky = (col / p.patch_size) % p.patch_size, kx = col % p.patch_size;
    A[p.dst_off + i] = A[p.src_off + ((img * p.channels + c) * p.height + py * p.patch_size + ky)
                         * p.width + px * p.patch_size + kx];
    return;
  }
  if (i >= p.images * p.tokens * p.dim)
    return;
  uint d = i % p.dim, t = (i / p.dim) % p.tokens, img = i / (p.dim * p.tokens);
  float v;
  if (p.class_token != 0u && t == 0u)
    v = W[p.cls_off + d];
  else
    v = A[p.src_off + (img * np + t - p.class_token) * p.dim + d];
  A[p.dst_off + i] = v + W[p.pos_off + t * p.dim + d];
}
