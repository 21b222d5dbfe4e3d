/* The model loader on a whole file in memory (vmoe_model_new_from_bytes, the
 * path the file loader takes after mapping).  The input is copied into a
 * buffer of exactly its size, so AddressSanitizer catches any read past the
 * end.  A model that loads must be one the engine can size. */
#include "fuzz-common.h"

#include <math.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

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
  vmoe_model_unref (model);
  return 0;
}
