#version 450
// The two steps around the expert GEMMs.
// MODE_LISTS: each routed entry appends itself to its expert's list (the
// order inside a list does not change any result: each row is computed
// alone).  count[] is zeroed by the command buffer before.
// MODE_COMBINE: x[row] += sum over the row's k entries of gate * expert output.
#include "common.glsl"
layout(local_size_x = 256) in;

const uint MODE_LISTS = 0u, MODE_COMBINE = 1u;

layout(push_constant) uniform Params {
  uint mode, rows, k, dim;
  uint entry_expert_off, entry_gate_off;
  uint count_off, list_off, list_cap;
  uint y_off, x_off;
} p;

void main()
{
  uint i = flat_group_id() * 256u + gl_LocalInvocationID.x;
  if (p.mode == MODE_LISTS) {
    if (i >= p.rows * p.k)
      return;
    int e = I[p.entry_expert_off + i];
    if (e < 0)
      return;
    int slot = atomicAdd(I[p.count_off + uint(e)], 1);
    I[p.list_off + uint(e) * p.list_cap + uint(slot)] = int(i);
    return;
  }
  if (i >= p.rows * p.dim)
    return;
  uint row = i / p.dim, d = i % p.dim;
  float acc = A[p.x_off + i];
  for (uint j = 0u; j < p.k; j++) {
    uint entry = row * p.k + j;
    if (I[p.entry_expert_off + entry] >= 0)
      acc += A[p.entry_gate_off + entry] * A[p.y_off + entry * p.dim + d];
  }
  A[p.x_off + i] = acc;
}
