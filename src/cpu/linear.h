/* The linear layers of the CPU backend, and the MLP made of two of them. */
#ifndef VMOE_CPU_LINEAR_H
#define VMOE_CPU_LINEAR_H

#include "vmoe-private.h"

/* out (rows, lin->out) = inp (rows, lin->in) W^T + b, or += with accumulate. */
void vmoe_linear_forward (float *out, const float *inp, const VmoeLinear *lin,
    int rows, gboolean accumulate);
/* out (rows, D) = fc2(act(fc1(inp))), or += with accumulate; hidden is
 * scratch (rows, M). */
void vmoe_mlp_forward (float *out, const float *inp, const VmoeMlp *mlp, int rows,
    float *hidden, VmoeActivation act, gboolean accumulate);
/* Multiply-adds of the MLP per row. */
double vmoe_mlp_fmas_per_row (const VmoeMlp *mlp);

#endif
