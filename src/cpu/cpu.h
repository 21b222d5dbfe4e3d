/* The CPU backend: the forward pass of docs/design.md (forward.c), on its
 * own thread pool (workers.c), with OpenBLAS for the linear layers.  The
 * ops are declared in their own headers, included here for the tests. */
#ifndef VMOE_CPU_H
#define VMOE_CPU_H

#include "backend.h"
#include "workers.h"
#include "cpu/attention.h"
#include "cpu/moe.h"
#include "cpu/ops.h"

typedef struct VmoeCpu VmoeCpu;

/* NULL with `error` set where the GEMM path cannot be readied. */
VmoeCpu *vmoe_cpu_new (VmoeModel *model, VmoeRoutingParams routing, int threads,
    VmoePrecision precision, GError **error);
void vmoe_cpu_free (VmoeCpu *cpu);
/* Grows the workspace to hold n images; afterwards runs of up to n images
 * allocate nothing. */
void vmoe_cpu_reserve (VmoeCpu *cpu, int n);
void vmoe_cpu_forward (VmoeCpu *cpu, const float *input, int n, VmoeRawOutput *out);

#endif
