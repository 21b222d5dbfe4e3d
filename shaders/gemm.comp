#version 450
// C[m, n] = act(A[m, :] . W[n, :] + b[n]) (or C += that): every linear layer.
// W is [N, K] row-major as PyTorch stores it.  Tiles of TM x TN outputs per
// workgroup, TK-deep slices of A and W staged in shared memory, fp32
// accumulation.  Each thread owns RM adjacent rows and RN adjacent columns
// of its tile, so that its operands for one k are adjacent in shared memory
// and are read as vec4s (one load per four values: with 4 x 4 outputs, two
// loads feed 16 FMAs).  With FLAG_EXPERT_LISTS the rows come from per-expert lists
// that the routing kernels built on the GPU: workgroup z is expert e, its
// rows are entries list[e][..count[e]], row entry reads A row entry/a_row_div
// and writes C row entry, and W, b are expert e's.
#include "common.glsl"
#ifdef WEIGHTS_F16
#extension GL_EXT_shader_16bit_storage : require
layout(std430, set = 0, binding = 4) readonly buffer Weights16 { float16_t WH[]; };
#define WEIGHT(i) float(WH[i])
#else
#define WEIGHT(i) W[i]
#endif

layout(constant_id = 0) const uint TM = 64;
layout(constant_id = 1) const uint TN = 64;
layout(constant_id = 2) const uint TK = 16;
layout(local_size_x = 16, local_size_y = 16) in;
const uint RM = TM / 16, RN = TN / 16;    // outputs per thread along m, n
// Rows of the staged slices, in vec4s: 4 floats of padding keep a thread's
// operands 16-byte aligned and spread the k-major stores over banks.
const uint AS4 = TM / 4u + 1u, WS4 = TN / 4u + 1u;

const uint FLAG_GELU = 1u, FLAG_GELU_TANH = 2u, FLAG_ACCUMULATE = 4u,
           FLAG_EXPERT_LISTS = 8u;

layout(push_constant) uniform Params {
  uint M, N, K;
  uint a_off, a_stride;
  uint w_off, b_off;
  uint c_off, c_stride;
  uint flags;
  uint w_expert_stride, b_expert_stride;
  uint list_off, count_off, list_cap, a_row_div;
} p;

shared vec4 As[TK][AS4];
shared vec4 Ws[TK][WS4];
shared uint a_rows[TM];
shared uint c_rows[TM];

float erf_approx(float x)
{
  // Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): GLSL has no erf.
  float s = sign(x), a = abs(x);
  float t = 1.0 / (1.0 + 0.3275911 * a);
  float y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t
                    - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
  return s * y;
}

float activate(float v)
{
  if ((p.flags & FLAG_GELU) != 0u)
    return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
  if ((p.flags & FLAG_GELU_TANH) != 0u)
    return 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
  return v;
}

void main()
{
  uint lx = gl_LocalInvocationID.x, ly = gl_LocalInvocationID.y;
  uint tid = ly * 16u + lx;
  uint row0 = gl_WorkGroupID.y * TM, col0 = gl_WorkGroupID.x * TN;
  bool lists = (p.flags & FLAG_EXPERT_LISTS) != 0u;
  uint expert = lists ? gl_WorkGroupID.z : 0u;
  uint rows = lists ? uint(I[p.count_off + expert]) : p.M;
  if (row0 >= rows)
    return;                    // uniform across the workgroup: no barrier skipped
  uint w_base = p.w_off + expert * p.w_expert_stride;

  for (uint r = tid; r < TM; r += 256u) {
    uint m = row0 + r;
    uint entry = m < rows ? (lists ? uint(I[p.list_off + expert * p.list_cap + m]) : m) : 0u;
    a_rows[r] = lists ? entry / p.a_row_div : entry;
    c_rows[r] = m < rows ? entry : NONE;
  }
  barrier();

  float acc[RM][RN];
  for (uint i = 0u; i < RM; i++)
    for (uint j = 0u; j < RN; j++)
      acc[i][j] = 0.0;

  for (uint k0 = 0u; k0 < p.K; k0 += TK) {
    for (uint e = tid; e < TK * TM; e += 256u) {
      uint r = e / TK, kk = e % TK, k = k0 + kk;
      As[kk][r >> 2][r & 3u] = (c_rows[r] != NONE && k < p.K) ? A[p.a_off + a_rows[r] * p.a_stride + k] : 0.0;
    }
    for (uint e = tid; e < TK * TN; e += 256u) {
      uint c = e / TK, kk = e % TK, k = k0 + kk, n = col0 + c;
      Ws[kk][c >> 2][c & 3u] = (n < p.N && k < p.K) ? WEIGHT(w_base + n * p.K + k) : 0.0;
    }
    barrier();
    for (uint kk = 0u; kk < TK; kk++) {
      float a[RM], w[RN];
      for (uint i = 0u; i < RM; i++) a[i] = As[kk][(ly * RM + i) >> 2][(ly * RM + i) & 3u];
      for (uint j = 0u; j < RN; j++) w[j] = Ws[kk][(lx * RN + j) >> 2][(lx * RN + j) & 3u];
      for (uint i = 0u; i < RM; i++)
        for (uint j = 0u; j < RN; j++)
          acc[i][j] += a[i] * w[j];
    }
    barrier();
  }

  for (uint i = 0u; i < RM; i++) {
    uint c_row = c_rows[ly * RM + i];
    if (c_row == NONE)
      continue;
    for (uint j = 0u; j < RN; j++) {
      uint n = col0 + lx * RN + j;
      if (n >= p.N)
        continue;
      float v = acc[i][j];
      if (p.b_off != NONE)
        v += W[p.b_off + expert * p.b_expert_stride + n];
      v = activate(v);
      uint at = p.c_off + c_row * p.c_stride + n;
      A[at] = (p.flags & FLAG_ACCUMULATE) != 0u ? A[at] + v : v;
    }
  }
}
