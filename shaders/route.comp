#version 450
// Routing decided on the GPU (docs/design.md, Step 4: routing); one
// invocation per image, so an image's result never depends on the batch.
// Both modes end with the same per-entry decision that the expert GEMMs and
// the combine step read: entry (row, j) = j-th choice of token row, its
// expert (-1: dropped) and its gate.
//
// MODE_IMAGE (Mobile V-MoE): router on the class token (or the token mean)
// of the residual stream, softmax, top-k with ties to the lower index,
// optionally normalised gates; all tokens of the image share the decision.
// MODE_TOKEN (V-MoE): probs [rows, E] hold the router logits of each token;
// softmax and top-k per token, then assignment choice by choice under the
// per-image capacity, tokens in BPR order (descending top-1 probability,
// stable) or in token order.
//
// E3 ensembles of M members (docs/design.md): member m routes among the
// experts [m*E/M, (m+1)*E/M) only, softmax and top-k over those.  Image
// mode runs per image and decides for its M member copies (copy i*M + m);
// token mode runs per copy (images = n*M), with counts over the member's
// E/M experts.  Entries hold global expert indices.
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint MAX_EXPERTS = 64;
layout(constant_id = 1) const uint MAX_K = 8;

const uint MODE_IMAGE = 0u, MODE_TOKEN = 1u;

layout(push_constant) uniform Params {
  uint mode, images, tokens, dim, experts, k;
  uint x_off, w_off, b_off, router_mean, normalize_gates;
  uint probs_off;              // A: token logits -> probabilities [rows, E]
  uint entry_expert_off;       // I: [rows * k]
  uint entry_gate_off;         // A: [rows * k]
  uint out_experts_off;        // I: [images, k] (image mode)
  uint out_gates_off;          // A: [images, k] (image mode)
  uint order_off;              // I: scratch [rows] (token mode)
  uint out_counts_off;         // I: [images, layers, E] (token mode)
  uint out_dropped_off;        // I: [images, layers] (token mode)
  uint layer, layers, capacity, bpr;
  uint members;
} p;

// Top-k of v[0..n), largest first, ties to the lower index.
void topk(float v[MAX_EXPERTS], uint n, out int index[MAX_K], out float top[MAX_K])
{
  for (uint j = 0u; j < p.k; j++) {
    int best = -1;
    for (uint i = 0u; i < n; i++) {
      bool taken = false;
      for (uint q = 0u; q < j; q++)
        taken = taken || index[q] == int(i);
      if (!taken && (best < 0 || v[i] > v[best]))
        best = int(i);
    }
    index[j] = best;
    top[j] = v[best];
  }
}

void softmax(inout float v[MAX_EXPERTS], uint n)
{
  float m = v[0];
  for (uint i = 1u; i < n; i++)
    m = max(m, v[i]);
  float s = 0.0;
  for (uint i = 0u; i < n; i++) {
    v[i] = exp(v[i] - m);
    s += v[i];
  }
  float inv = 1.0 / s;
  for (uint i = 0u; i < n; i++)
    v[i] *= inv;
}

void route_image(uint img)
{
  float logits[MAX_EXPERTS];
  for (uint e = 0u; e < p.experts; e++)
    logits[e] = p.b_off != NONE ? W[p.b_off + e] : 0.0;
  uint x0 = p.x_off + img * p.tokens * p.dim;
  // Same summation order as the CPU's sgemm would not be guaranteed anyway;
  // the per-expert dot products accumulate in fp32.
  float dots[MAX_EXPERTS];
  for (uint e = 0u; e < p.experts; e++)
    dots[e] = 0.0;
  for (uint d = 0u; d < p.dim; d++) {
    float r;
    if (p.router_mean != 0u) {
      float s = 0.0;
      for (uint t = 0u; t < p.tokens; t++)
        s += A[x0 + t * p.dim + d];
      r = s / float(p.tokens);
    } else {
      r = A[x0 + d];
    }
    for (uint e = 0u; e < p.experts; e++)
      dots[e] += W[p.w_off + e * p.dim + d] * r;
  }
  for (uint e = 0u; e < p.experts; e++)
    logits[e] += dots[e];
  uint per = p.experts / p.members;
  for (uint m = 0u; m < p.members; m++) {
    float v[MAX_EXPERTS];
    for (uint e = 0u; e < per; e++)
      v[e] = logits[m * per + e];
    softmax(v, per);
    int chosen[MAX_K];
    float gates[MAX_K];
    topk(v, per, chosen, gates);
    if (p.normalize_gates != 0u) {
      float s = 0.0;
      for (uint j = 0u; j < p.k; j++)
        s += gates[j];
      for (uint j = 0u; j < p.k; j++)
        gates[j] /= s;
    }
    uint copy = img * p.members + m;
    for (uint j = 0u; j < p.k; j++) {
      chosen[j] += int(m * per);
      I[p.out_experts_off + copy * p.k + j] = chosen[j];
      A[p.out_gates_off + copy * p.k + j] = gates[j];
    }
    for (uint t = 0u; t < p.tokens; t++)
      for (uint j = 0u; j < p.k; j++) {
        uint entry = (copy * p.tokens + t) * p.k + j;
        I[p.entry_expert_off + entry] = chosen[j];
        A[p.entry_gate_off + entry] = gates[j];
      }
  }
}

void route_tokens(uint img)
{
  uint row0 = img * p.tokens;
  uint member = img % p.members, per = p.experts / p.members, first = member * per;
  // Per token: probabilities, then its k choices (expert in entry_expert,
  // probability in entry_gate) before capacity is applied.
  for (uint t = 0u; t < p.tokens; t++) {
    uint at = p.probs_off + (row0 + t) * p.experts + first;
    float v[MAX_EXPERTS];
    for (uint e = 0u; e < per; e++)
      v[e] = A[at + e];
    softmax(v, per);
    for (uint e = 0u; e < per; e++)
      A[at + e] = v[e];
    int chosen[MAX_K];
    float top[MAX_K];
    topk(v, per, chosen, top);
    for (uint j = 0u; j < p.k; j++) {
      I[p.entry_expert_off + (row0 + t) * p.k + j] = chosen[j] + int(first);
      A[p.entry_gate_off + (row0 + t) * p.k + j] = top[j];
    }
  }
  uint order = p.order_off + row0;
  for (uint t = 0u; t < p.tokens; t++)
    I[order + t] = int(t);
  if (p.bpr != 0u) {
    // Insertion sort by descending top-1 probability; stable, so ties keep
    // the lower token index first (as the CPU backend).
    for (uint a = 1u; a < p.tokens; a++) {
      int t = I[order + a];
      float pt = A[p.entry_gate_off + (row0 + uint(t)) * p.k];
      uint b = a;
      for (; b > 0u && A[p.entry_gate_off + (row0 + uint(I[order + b - 1u])) * p.k] < pt; b--)
        I[order + b] = I[order + b - 1u];
      I[order + b] = t;
    }
  }
  uint counts[MAX_EXPERTS];
  for (uint e = 0u; e < per; e++)
    counts[e] = 0u;
  int dropped = 0;
  for (uint j = 0u; j < p.k; j++) {
    for (uint a = 0u; a < p.tokens; a++) {
      uint entry = (row0 + uint(I[order + a])) * p.k + j;
      uint e = uint(I[p.entry_expert_off + entry]) - first;
      if (counts[e] < p.capacity) {
        counts[e]++;
      } else {
        I[p.entry_expert_off + entry] = -1;
        dropped++;
      }
    }
  }
  // Results are [image, layer, member, E/M] and [image, layer, member].
  uint at = ((img / p.members) * p.layers + p.layer) * p.members + member;
  for (uint e = 0u; e < per; e++)
    I[p.out_counts_off + at * per + e] = int(counts[e]);
  I[p.out_dropped_off + at] = dropped;
}

void main()
{
  uint img = flat_group_id() * 64u + gl_LocalInvocationID.x;
  if (img >= p.images)
    return;
  if (p.mode == MODE_IMAGE)
    route_image(img);
  else
    route_tokens(img);
}
