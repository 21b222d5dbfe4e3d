/* Multi-head self-attention on the CPU backend's threads. */
#ifndef VMOE_CPU_ATTENTION_H
#define VMOE_CPU_ATTENTION_H

#include "vmoe-private.h"
#include "workers.h"

#include <stddef.h>

/* Floats of scratch vmoe_attention_forward needs with `threads` workers. */
size_t vmoe_attention_scratch_len (int n_images, int tokens, int dim, int heads,
    int threads, VmoePrecision precision);
/* Attention in two steps, so that the threads of a pass split by rows
 * meet once per layer, between them: staging puts rows [first, first +
 * count) of the batch's keys (in bf16 also values) into scratch in the
 * layout the products read, and each thread stages the rows of qkv it has
 * just computed; any split of the rows into such calls gives the same
 * scratch.  Attending then computes the output rows [first, first + count)
 * on the calling thread, with `thread`'s part of the scratch (sized for
 * `threads`), once every row is staged; each row's result is the same bits
 * whatever the split.
 * qkv is (N, T, 3D), out is (N, T, D).  At bf16 (where
 * vmoe_attention_bf16_available) q, k, v and the softmax are rounded to
 * bf16 for the two products (docs/cpu.md). */
void vmoe_attention_stage_rows (float *scratch, const float *qkv, int first,
    int count, int n_images, int tokens, int dim, int heads,
    VmoePrecision precision);
void vmoe_attention_attend_rows (float *out, const float *qkv, float *scratch,
    int first, int count, int thread, int threads, int n_images, int tokens,
    int dim, int heads, VmoePrecision precision);
/* Both steps for every row, staging on the calling thread and attending
 * over `workers` (NULL: all on the caller). */
void vmoe_attention_forward (float *out, const float *qkv, float *scratch,
    VmoeWorkers *workers, int n_images, int tokens, int dim, int heads,
    VmoePrecision precision);
/* Whether this build and CPU run attention in bf16 (AVX512_BF16). */
gboolean vmoe_attention_bf16_available (void);

#endif
