/* The model loader on a whole file in memory (vmoe_model_new_from_bytes, the
 * path the file loader takes after mapping).  The input is copied into a
 * buffer of exactly its size, so AddressSanitizer catches any read past the
 * end.  A model that loads must be one the engine can size, and a small one
 * runs one inference on the CPU backend: whatever its (finite) weights, the
 * result is finite logits or a GError, never NaN passed off as a class. */
#include "fuzz-common.h"

#include <math.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* An inference of this size takes a few milliseconds. */
#define MAX_FLOPS 2e7

static void
run_once (VmoeModel *model)
{
  const VmoeConfig *c = vmoe_model_get_config (model);
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_CPU;
  options.threads = 1;
  GError *error = NULL;
  VmoeSession *session = vmoe_session_new (model, &options, &error);
  fuzz_check_outcome (session != NULL, error);
  g_clear_error (&error);
  if (!session)
    return;
  size_t count = (size_t) c->in_channels * c->image_h * c->image_w;
  float *input = g_new (float, count);
  for (size_t i = 0; i < count; i++)
    input[i] = (float) (i % 7) / 3.0f - 1.0f;
  gboolean ok = vmoe_session_run_f32 (session, input, 1, &error);
  fuzz_check_outcome (ok, error);
  g_clear_error (&error);
  if (ok) {
    const VmoeImageResult *r = vmoe_session_get_result (session, 0);
    for (int i = 0; i < c->num_classes; i++)
      FUZZ_ASSERT (isfinite (r->logits[i]), "logit %d is %g", i, r->logits[i]);
  }
  g_free (input);
  vmoe_session_free (session);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  GBytes *bytes = g_bytes_new (data, size);
  GError *error = NULL;
  VmoeModel *model = vmoe_model_new_from_bytes (bytes, &error);
  g_bytes_unref (bytes);
  fuzz_check_outcome (model != NULL, error);
  g_clear_error (&error);
  if (!model)
    return 0;
  const VmoeConfig *c = vmoe_model_get_config (model);
  FUZZ_ASSERT (vmoe_model_tokens (model) >= 1, "no tokens");
  FUZZ_ASSERT (vmoe_model_parameter_count (model) > 0, "no parameters");
  double dense = vmoe_model_flops (model, FALSE), routed = vmoe_model_flops (model, TRUE);
  FUZZ_ASSERT (isfinite (dense) && dense > 0 && routed > 0 && routed <= dense,
      "FLOPs %g routed, %g dense", routed, dense);
  FUZZ_ASSERT (c->num_classes >= 1 && c->labels[c->num_classes - 1], "labels");
  if (dense <= MAX_FLOPS)
    run_once (model);
  vmoe_model_unref (model);
  return 0;
}
