/* The linear layers of the CPU backend, on OpenBLAS's sgemm.  Each call runs
 * on one thread (the pass splits rows between threads; see pass.h), with
 * OpenBLAS set to one thread (vmoe_cpu_new, docs/cpu.md). */
#include "linear.h"
#include "ops.h"

#include <cblas.h>
#include <string.h>

/* The bias goes in before the product, so that sgemm runs with beta = 1:
 * with beta = 0 OpenBLAS first clears the output in a pass of its own, and
 * the bias would then need another. */
void
vmoe_linear_forward (float *out, const float *inp, const VmoeLinear *lin,
    int rows, gboolean accumulate)
{
  if (rows == 0)
    return;
  if (lin->bias) {
    for (int r = 0; r < rows; r++) {
      float *y = out + (size_t) r * lin->out;
      if (accumulate)
        for (int i = 0; i < lin->out; i++)
          y[i] += lin->bias[i];
      else
        memcpy (y, lin->bias, lin->out * sizeof (float));
    }
  }
  cblas_sgemm (CblasRowMajor, CblasNoTrans, CblasTrans, rows, lin->out, lin->in,
      1.0f, inp, lin->in, lin->weight, lin->in,
      accumulate || lin->bias ? 1.0f : 0.0f, out, lin->out);
}

void
vmoe_mlp_forward (float *out, const float *inp, const VmoeMlp *mlp, int rows,
    float *hidden, VmoeActivation act, gboolean accumulate)
{
  vmoe_linear_forward (hidden, inp, &mlp->fc1, rows, FALSE);
  vmoe_gelu_forward (hidden, (size_t) rows * mlp->fc1.out, act);
  vmoe_linear_forward (out, hidden, &mlp->fc2, rows, accumulate);
}

double
vmoe_mlp_fmas_per_row (const VmoeMlp *mlp)
{
  return (double) mlp->fc1.in * mlp->fc1.out + (double) mlp->fc2.in * mlp->fc2.out;
}
