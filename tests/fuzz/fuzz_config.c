/* The "vmoe.config" parser on arbitrary text (any bytes, any length, NULs
 * included).  A config that parses must describe a model the rest of the
 * engine can size: its tensor list is built and its counts are checked. */
#include "fuzz-common.h"
#include "vmoe-private.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  VmoeConfig config;
  GError *error = NULL;
  gboolean ok = vmoe_config_parse ((const char *) data, (gssize) size, &config, &error);
  fuzz_check_outcome (ok, error);
  g_clear_error (&error);
  if (!ok)
    return 0;
  FUZZ_ASSERT (vmoe_config_tokens (&config) >= 1, "no tokens");
  FUZZ_ASSERT (config.embed_dim % config.num_heads == 0, "heads do not divide the width");
  for (int i = 0; i < config.num_classes; i++)
    FUZZ_ASSERT (config.labels && config.labels[i], "label %d missing", i);
  /* As the loader does: the spec list is bounded by what a file could hold
   * (here a generous 64 Ki tensors and 2^28 weights), so that a config
   * describing a huge model costs a quick error, not its whole list. */
  GPtrArray *specs = vmoe_config_tensor_specs_within (&config, TRUE, 1 << 16,
      (guint64) 1 << 28, &error);
  if (!specs) {
    fuzz_check_outcome (FALSE, error);
    g_clear_error (&error);
    vmoe_config_clear (&config);
    return 0;
  }
  for (guint i = 0; i < specs->len; i++) {
    const VmoeTensorSpec *spec = specs->pdata[i];
    for (int d = 0; d < spec->ndim; d++)
      FUZZ_ASSERT (spec->shape[d] >= 1, "tensor %s has dimension %" G_GINT64_FORMAT,
          spec->name, spec->shape[d]);
  }
  g_ptr_array_unref (specs);
  vmoe_config_clear (&config);
  return 0;
}
