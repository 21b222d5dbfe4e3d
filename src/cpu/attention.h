/* Multi-head self-attention on the CPU backend's threads. */
#ifndef VMOE_CPU_ATTENTION_H
#define VMOE_CPU_ATTENTION_H

#include "workers.h"

#include <stddef.h>

/* Floats of scratch vmoe_attention_forward needs with `threads` workers. */
size_t vmoe_attention_scratch_len (int n_images, int tokens, int dim, int heads,
    int threads);
/* qkv is (N, T, 3D), out is (N, T, D); workers may be NULL (all in the
 * caller). */
void vmoe_attention_forward (float *out, const float *qkv, float *scratch,
    VmoeWorkers *workers, int n_images, int tokens, int dim, int heads);

#endif
