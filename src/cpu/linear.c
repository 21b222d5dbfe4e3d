/* What the linear layers of both GEMM paths share: the MLP. */
#include "linear.h"

void
vmoe_mlp_forward (VmoeGemmScratch *scratch, float *out, const float *inp,
    const VmoeMlp *mlp, int rows, float *hidden, VmoeActivation act,
    gboolean accumulate)
{
  vmoe_linear_forward (scratch, hidden, inp, &mlp->fc1, rows,
      act == VMOE_ACT_GELU ? VMOE_EPILOGUE_GELU_ERF : VMOE_EPILOGUE_GELU_TANH);
  vmoe_linear_forward (scratch, out, hidden, &mlp->fc2, rows,
      accumulate ? VMOE_EPILOGUE_ADD : VMOE_EPILOGUE_STORE);
}

double
vmoe_mlp_fmas_per_row (const VmoeMlp *mlp)
{
  return (double) mlp->fc1.in * mlp->fc1.out + (double) mlp->fc2.in * mlp->fc2.out;
}
