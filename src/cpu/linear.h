/* The linear layers of the CPU backend, and the MLP made of two of them.
 * Two GEMM paths implement them, picked at build time (meson option
 * `onednn`): gemm-onednn.c (packed weights, fused epilogues) and
 * gemm-openblas.c (the portable path).  docs/cpu.md compares them. */
#ifndef VMOE_CPU_LINEAR_H
#define VMOE_CPU_LINEAR_H

#include "vmoe-private.h"

/* What happens to y = in W^T + b on its way out. */
typedef enum {
  VMOE_EPILOGUE_STORE,        /* out = y */
  VMOE_EPILOGUE_GELU_ERF,     /* out = GELU(y), erf form */
  VMOE_EPILOGUE_GELU_TANH,    /* out = GELU(y), tanh form */
  VMOE_EPILOGUE_ADD,          /* out += y (the residual) */
  VMOE_N_EPILOGUES
} VmoeEpilogue;

/* One thread's scratch for the linear layers (padding, the GEMM library's
 * own); grows on first use, so steady-state calls allocate nothing. */
typedef struct VmoeGemmScratch VmoeGemmScratch;

/* For a session at `precision` (which vmoe_cpu_gemm_prepare accepted). */
VmoeGemmScratch *vmoe_gemm_scratch_new (VmoePrecision precision);
void vmoe_gemm_scratch_free (VmoeGemmScratch *scratch);

/* Readies the GEMM path for a new session on the model at `precision`, or
 * fails with a VMOE_ERROR_BACKEND error where it cannot run it.  oneDNN:
 * puts the model's weights into its layout, once per model and precision
 * (later calls return at once), shared by every session on it and freed with
 * the model.  OpenBLAS: sets it to one thread, process-wide (docs/cpu.md). */
gboolean vmoe_cpu_gemm_prepare (VmoeModel *model, VmoePrecision precision,
    GError **error);
void vmoe_cpu_weights_free (VmoeModel *model);

/* out (rows, lin->out) = epilogue (inp (rows, lin->in) W^T + b), on the
 * calling thread.  Each row's result depends only on that row's input (not
 * on `rows`, nor on where the row is) on the oneDNN path. */
void vmoe_linear_forward (VmoeGemmScratch *scratch, float *out, const float *inp,
    const VmoeLinear *lin, int rows, VmoeEpilogue epilogue);
/* The same in fp32 whatever the session's precision: the routers, so that
 * bf16 moves routing decisions less (docs/cpu.md). */
void vmoe_linear_forward_fp32 (VmoeGemmScratch *scratch, float *out,
    const float *inp, const VmoeLinear *lin, int rows, VmoeEpilogue epilogue);
/* out (rows, D) = fc2(act(fc1(inp))), or += with accumulate; hidden is
 * scratch (rows, M). */
void vmoe_mlp_forward (VmoeGemmScratch *scratch, float *out, const float *inp,
    const VmoeMlp *mlp, int rows, float *hidden, VmoeActivation act,
    gboolean accumulate);
/* Multiply-adds of the MLP per row. */
double vmoe_mlp_fmas_per_row (const VmoeMlp *mlp);


#endif
