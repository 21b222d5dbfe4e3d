/* The linear layers on OpenBLAS's sgemm: the portable GEMM path (the build
 * without oneDNN).  Each call runs on the calling thread, with OpenBLAS set
 * to one thread for the process (vmoe_cpu_new; docs/cpu.md says why).
 * OpenBLAS repacks the weights on every call and sums a row in an order that
 * depends on the call's row count and the row's place in it, so an image's
 * logits may differ in the last bits between batches here (docs/cpu.md). */
#include "linear.h"
#include "ops.h"

#include <cblas.h>
#include <string.h>

VmoeGemmScratch *
vmoe_gemm_scratch_new (VmoePrecision precision)
{
  return NULL;                /* OpenBLAS keeps its own buffers */
}

void
vmoe_gemm_scratch_free (VmoeGemmScratch *scratch)
{
}

static const char no_bf16[] = "precision bf16 needs the oneDNN GEMM path, and "
    "this libvmoe was built without it (meson option onednn); use fp32";

/* sgemm reads the weights as stored.  OpenBLAS's thread count is
 * process-wide (it has no per-call setting). */
gboolean
vmoe_cpu_gemm_prepare (VmoeModel *model, VmoePrecision precision, GError **error)
{
  if (precision != VMOE_PRECISION_FP32) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND, no_bf16);
    return FALSE;
  }
  openblas_set_num_threads (1);
  return TRUE;
}

void
vmoe_cpu_weights_free (VmoeModel *model)
{
}

/* The bias goes in before the product, so that sgemm runs with beta = 1:
 * with beta = 0 OpenBLAS first clears the output in a pass of its own, and
 * the bias would then need another. */
void
vmoe_linear_forward (VmoeGemmScratch *scratch, float *out, const float *inp,
    const VmoeLinear *lin, int rows, VmoeEpilogue epilogue)
{
  if (rows == 0)
    return;
  gboolean accumulate = epilogue == VMOE_EPILOGUE_ADD;
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
  if (epilogue == VMOE_EPILOGUE_GELU_ERF || epilogue == VMOE_EPILOGUE_GELU_TANH)
    vmoe_gelu_forward (out, (size_t) rows * lin->out,
        epilogue == VMOE_EPILOGUE_GELU_ERF ? VMOE_ACT_GELU : VMOE_ACT_GELU_TANH);
}

void
vmoe_linear_forward_fp32 (VmoeGemmScratch *scratch, float *out, const float *inp,
    const VmoeLinear *lin, int rows, VmoeEpilogue epilogue)
{
  vmoe_linear_forward (scratch, out, inp, lin, rows, epilogue);
}

const char *
vmoe_cpu_gemm_describe (VmoePrecision precision, GError **error)
{
  static char path[96];
  static gsize once;
  if (precision != VMOE_PRECISION_FP32) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND, no_bf16);
    return NULL;
  }
  if (g_once_init_enter (&once)) {
    g_snprintf (path, sizeof path, "%s", OPENBLAS_VERSION);
    g_strstrip (path);
    g_strlcat (path, " ", sizeof path);
    g_strlcat (path, openblas_get_corename (), sizeof path);
    g_once_init_leave (&once, 1);
  }
  return path;
}
