/* The MoE layers of the CPU backend: routing, and dispatch of token rows to
 * their experts. */
#ifndef VMOE_CPU_MOE_H
#define VMOE_CPU_MOE_H

#include "pass.h"

/* Mobile V-MoE: one router on the residual stream entering the first MoE
 * block decides k experts and gates per image. */
void vmoe_cpu_route_images (VmoeCpu *cpu, int n, VmoeRawOutput *out);
/* x += the block's routed experts of z, routed as the model says (image
 * routing reads the experts route_images put in out; token routing writes
 * its counts into out).  layer counts MoE blocks from 0. */
void vmoe_cpu_moe_forward (VmoeCpu *cpu, const VmoeBlock *block, int layer, int n,
    VmoeRawOutput *out);
/* Whether the pass reads lin's stored weights, not only its packed ones:
 * an E3 model's token routers (per member, outside the GEMM path). */
gboolean vmoe_cpu_moe_reads_stored (const VmoeModel *model, const VmoeLinear *lin);
/* Token-routing assignment of one image (docs/design.md, token routing). */
int vmoe_assign_tokens (const int *choice, const float *choice_p, int tokens,
    int top_k, int num_experts, int capacity, gboolean bpr, int *order,
    int *assigned_expert, int *tokens_per_expert);

#endif
