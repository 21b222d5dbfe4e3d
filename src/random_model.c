/* Writes model files with seeded random weights for any configuration, for
 * benchmarks and tests.  Initialisation is PyTorch's Linear default
 * (uniform in +-1/sqrt(fan_in)), which keeps activations and router
 * probabilities well conditioned at any depth of a random model. */
#include "vmoe-private.h"

#include <errno.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* splitmix64: tiny, seedable, and the same on every platform. */
static guint64
next_random (guint64 *state)
{
  guint64 z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float
uniform (guint64 *state)
{
  return (float) ((next_random (state) >> 40) * (2.0 / 16777216.0) - 1.0);
}

static gint64
element_count (const VmoeTensorSpec *s)
{
  gint64 n = 1;
  for (int i = 0; i < s->ndim; i++)
    n *= s->shape[i];
  return n;
}

static void
fill_tensor (const VmoeTensorSpec *s, float *out, guint64 *state)
{
  gint64 n = element_count (s);
  gboolean is_norm = g_str_has_suffix (s->name, "norm1.weight")
      || g_str_has_suffix (s->name, "norm2.weight")
      || strcmp (s->name, "norm.weight") == 0;
  float bound = 0.1f;
  if (s->ndim >= 2 && !g_str_has_suffix (s->name, "cls_token")
      && !g_str_has_suffix (s->name, "pos_embed")) {
    gint64 fan_in = n / s->shape[0];
    bound = 1.0f / sqrtf ((float) fan_in);
  }
  for (gint64 i = 0; i < n; i++)
    out[i] = (is_norm ? 1.0f : 0.0f) + bound * uniform (state);
}

static char *
build_header (const char *config_json, GPtrArray *specs)
{
  JsonBuilder *b = json_builder_new ();
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "__metadata__");
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "vmoe.config");
  json_builder_add_string_value (b, config_json);
  json_builder_end_object (b);
  gint64 offset = 0;
  for (guint i = 0; i < specs->len; i++) {
    const VmoeTensorSpec *s = specs->pdata[i];
    json_builder_set_member_name (b, s->name);
    json_builder_begin_object (b);
    json_builder_set_member_name (b, "dtype");
    json_builder_add_string_value (b, "F32");
    json_builder_set_member_name (b, "shape");
    json_builder_begin_array (b);
    for (int d = 0; d < s->ndim; d++)
      json_builder_add_int_value (b, s->shape[d]);
    json_builder_end_array (b);
    gint64 bytes = element_count (s) * 4;
    json_builder_set_member_name (b, "data_offsets");
    json_builder_begin_array (b);
    json_builder_add_int_value (b, offset);
    json_builder_add_int_value (b, offset + bytes);
    json_builder_end_array (b);
    json_builder_end_object (b);
    offset += bytes;
  }
  json_builder_end_object (b);
  JsonGenerator *gen = json_generator_new ();
  JsonNode *root = json_builder_get_root (b);
  json_generator_set_root (gen, root);
  char *text = json_generator_to_data (gen, NULL);
  json_node_unref (root);
  g_object_unref (gen);
  g_object_unref (b);
  return text;
}

gboolean
vmoe_random_model_write (const char *config_json, guint64 seed, const char *path,
    GError **error)
{
  VmoeConfig config;
  if (!vmoe_config_parse (config_json, -1, &config, error))
    return FALSE;
  GPtrArray *specs = vmoe_config_tensor_specs (&config, TRUE);
  char *header = build_header (config_json, specs);
  /* Pad with spaces so the data section starts 8-byte aligned and float32
   * tensors map in place. */
  size_t len = strlen (header);
  size_t padded = (len + 7) & ~(size_t) 7;
  guint64 len_le = GUINT64_TO_LE ((guint64) padded);

  gboolean ok = FALSE;
  FILE *f = fopen (path, "wb");
  if (!f) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_IO, "cannot write '%s': %s",
        path, g_strerror (errno));
    goto out;
  }
  gboolean written = fwrite (&len_le, 8, 1, f) == 1 && fwrite (header, 1, len, f) == len;
  for (size_t i = len; written && i < padded; i++)
    written = fputc (' ', f) != EOF;
  guint64 state = seed;
  for (guint i = 0; written && i < specs->len; i++) {
    const VmoeTensorSpec *s = specs->pdata[i];
    gint64 n = element_count (s);
    float *values = g_new (float, MAX (n, 1));
    fill_tensor (s, values, &state);
    written = fwrite (values, sizeof (float), n, f) == (size_t) n;
    g_free (values);
  }
  if (fclose (f) != 0 || !written) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_IO, "cannot write '%s': %s",
        path, g_strerror (errno));
    goto out;
  }
  ok = TRUE;
out:
  g_free (header);
  g_ptr_array_unref (specs);
  vmoe_config_clear (&config);
  return ok;
}
