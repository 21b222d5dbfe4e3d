/* The CPU backend: the forward pass of docs/design.md on OpenBLAS. */
#ifndef VMOE_CPU_H
#define VMOE_CPU_H

#include "backend.h"
#include "workers.h"

typedef struct VmoeCpu VmoeCpu;

/* Work goes to other threads only in pieces worth waking a thread for (tens
 * of microseconds): about 0.1 ms of multiply-adds.  Small models (the
 * shipped 28x28 one) then run on the calling thread alone, where they were
 * 2.4x faster than split.  Attention splits from twice this. */
#define VMOE_CPU_MIN_SLICE_FMAS (4.0 * 1024 * 1024)

VmoeCpu *vmoe_cpu_new (VmoeModel *model, VmoeRoutingParams routing, int threads);
void vmoe_cpu_free (VmoeCpu *cpu);
/* Grows the workspace to hold n images; afterwards runs of up to n images
 * allocate nothing. */
void vmoe_cpu_reserve (VmoeCpu *cpu, int n);
void vmoe_cpu_forward (VmoeCpu *cpu, const float *input, int n, VmoeRawOutput *out);

/* The ops, exposed for the op-level tests. Shapes in the comments of cpu.c. */
void vmoe_layernorm_forward (float *out, const float *inp, const float *weight,
    const float *bias, int rows, int dim, float eps);
void vmoe_gelu_forward (float *x, size_t n, VmoeActivation act);
/* The erf that the erf GELU uses (a rational approximation). */
float vmoe_erf (float x);
/* The exp that softmax uses, for x <= 0 (a polynomial). */
float vmoe_exp_nonpositive (float x);
void vmoe_softmax_rows (float *x, int rows, int cols);
void vmoe_topk (const float *values, int n, int k, int *index, float *top);
/* Floats of scratch vmoe_attention_forward needs with `threads` workers. */
size_t vmoe_attention_scratch_len (int n_images, int tokens, int dim, int heads,
    int threads);
/* workers may be NULL (all in the caller). */
void vmoe_attention_forward (float *out, const float *qkv, float *scratch,
    VmoeWorkers *workers, int n_images, int tokens, int dim, int heads);
/* Token-routing assignment of one image (docs/design.md, token routing). */
int vmoe_assign_tokens (const int *choice, const float *choice_p, int tokens,
    int top_k, int num_experts, int capacity, gboolean bpr, int *order,
    int *assigned_expert, int *tokens_per_expert);

#endif
