/* The malformed-model suite: one test per failure class of the loader, each
 * asserting a clean GError that names what is wrong.  Files start from a
 * valid random model and are edited in one place. */
#include "testutil.h"

#include <check.h>
#include <math.h>
#include <glib/gstdio.h>
#include <string.h>

#define MOE_IMAGE "{\"layers\": [1], \"num_experts\": 3, \"top_k\": 1}"

/* A valid tiny model, read back for editing. */
static void
valid_file (TestModelFile *file, const char *moe)
{
  char *config = test_config_json (moe);
  char *path = test_write_random_model (config);
  test_model_file_read (path, file);
  g_unlink (path);
  g_free (path);
  g_free (config);
}

/* Writes `file` (or header_text), expects the error, removes the file. */
static void
expect_error (TestModelFile *file, const char *header_text, int code,
    const char *needle)
{
  char *path = test_model_file_write (file, header_text);
  test_expect_load_error (path, code, needle);
  g_unlink (path);
  g_free (path);
  test_model_file_clear (file);
}

static void
expect_raw_error (const void *bytes, gsize size, int code, const char *needle)
{
  char *path = NULL;
  int fd = g_file_open_tmp ("vmoe-raw-XXXXXX", &path, NULL);
  close (fd);
  ck_assert (g_file_set_contents (path, bytes, size, NULL));
  test_expect_load_error (path, code, needle);
  g_unlink (path);
  g_free (path);
}

/* Edits one key of the config and expects a config error naming it. */
static void
expect_config_error (const char *moe, const char *key, JsonNode *value,
    const char *needle)
{
  TestModelFile file;
  valid_file (&file, moe);
  JsonNode *config = test_get_config (&file);
  JsonObject *obj = json_node_get_object (config);
  if (g_str_has_prefix (key, "moe."))
    obj = json_object_get_object_member (obj, "moe"), key += 4;
  if (value)
    json_object_set_member (obj, key, value);
  else
    json_object_remove_member (obj, key);
  test_set_config (&file, config);
  json_node_unref (config);
  expect_error (&file, NULL, VMOE_ERROR_CONFIG, needle);
}

static JsonNode *
int_node (gint64 v)
{
  JsonNode *n = json_node_new (JSON_NODE_VALUE);
  json_node_set_int (n, v);
  return n;
}

static JsonNode *
double_node (double v)
{
  JsonNode *n = json_node_new (JSON_NODE_VALUE);
  json_node_set_double (n, v);
  return n;
}

START_TEST (test_valid_models_load)
{
  const char *moes[] = { NULL, MOE_IMAGE,
    "{\"layers\": [0, 1], \"num_experts\": 4, \"top_k\": 2, \"routing\": \"token\", "
    "\"shared_expert\": true, \"capacity_ratio\": 0.5}" };
  for (guint i = 0; i < G_N_ELEMENTS (moes); i++) {
    char *config = test_config_json (moes[i]);
    char *path = test_write_random_model (config);
    GError *error = NULL;
    VmoeModel *model = vmoe_model_load (path, &error);
    ck_assert_msg (model != NULL, "%s", error ? error->message : "");
    const VmoeConfig *c = vmoe_model_get_config (model);
    ck_assert_int_eq (c->embed_dim, 8);
    ck_assert_int_eq (vmoe_model_tokens (model), 5);
    ck_assert_str_eq (c->labels[2], "c");
    /* Defaults of docs/model-format.md. */
    ck_assert (c->class_token && c->qkv_bias && c->pool == VMOE_POOL_TOKEN);
    ck_assert_float_eq (c->crop_pct, 1.0);
    vmoe_model_unref (model);
    g_unlink (path);
    g_free (path);
    g_free (config);
  }
}
END_TEST

START_TEST (test_missing_file)
{
  test_expect_load_error ("/nonexistent/model.safetensors", VMOE_ERROR_IO,
      "/nonexistent/model.safetensors");
}
END_TEST

START_TEST (test_too_short)
{
  expect_raw_error ("abc", 3, VMOE_ERROR_FORMAT, "too short");
}
END_TEST

START_TEST (test_header_length_past_end)
{
  guint8 bytes[16] = { 0 };
  guint64 n = GUINT64_TO_LE (1000);
  memcpy (bytes, &n, 8);
  expect_raw_error (bytes, sizeof bytes, VMOE_ERROR_FORMAT, "exceeds");
}
END_TEST

START_TEST (test_truncated_data)
{
  TestModelFile file;
  valid_file (&file, NULL);
  gsize size;
  const guint8 *data = g_bytes_get_data (file.data, &size);
  GBytes *cut = g_bytes_new (data, size - 5);
  g_bytes_unref (file.data);
  file.data = cut;
  expect_error (&file, NULL, VMOE_ERROR_FORMAT, "outside");
}
END_TEST

START_TEST (test_header_not_json)
{
  TestModelFile file;
  valid_file (&file, NULL);
  expect_error (&file, "{\"a\": [1, 2", VMOE_ERROR_FORMAT, "not valid JSON");
}
END_TEST

START_TEST (test_header_not_object)
{
  TestModelFile file;
  valid_file (&file, NULL);
  expect_error (&file, "[1, 2, 3]", VMOE_ERROR_FORMAT, "not a JSON object");
}
END_TEST

START_TEST (test_offsets_outside_data)
{
  TestModelFile file;
  valid_file (&file, NULL);
  JsonArray *off = json_object_get_array_member (test_tensor (&file, "head.bias"),
      "data_offsets");
  json_array_remove_element (off, 1);
  json_array_add_int_element (off, G_GINT64_CONSTANT (1) << 40);
  expect_error (&file, NULL, VMOE_ERROR_FORMAT, "'head.bias' data_offsets");
}
END_TEST

START_TEST (test_offsets_reversed)
{
  TestModelFile file;
  valid_file (&file, NULL);
  JsonArray *off = json_object_get_array_member (test_tensor (&file, "norm.bias"),
      "data_offsets");
  gint64 begin = json_array_get_int_element (off, 0);
  json_array_remove_element (off, 1);
  json_array_add_int_element (off, begin - 4);
  expect_error (&file, NULL, VMOE_ERROR_FORMAT, "'norm.bias'");
}
END_TEST

START_TEST (test_overlapping_tensors)
{
  TestModelFile file;
  valid_file (&file, NULL);
  /* norm.weight and norm.bias have the same shape: point one at the other. */
  JsonObject *w = test_tensor (&file, "norm.weight");
  JsonObject *b = test_tensor (&file, "norm.bias");
  json_object_set_array_member (b, "data_offsets",
      json_array_ref (json_object_get_array_member (w, "data_offsets")));
  expect_error (&file, NULL, VMOE_ERROR_FORMAT, "overlaps");
}
END_TEST

START_TEST (test_trailing_bytes)
{
  TestModelFile file;
  valid_file (&file, NULL);
  gsize size;
  const guint8 *data = g_bytes_get_data (file.data, &size);
  guint8 *grown = g_malloc0 (size + 64);
  memcpy (grown, data, size);
  g_bytes_unref (file.data);
  file.data = g_bytes_new_take (grown, size + 64);
  expect_error (&file, NULL, VMOE_ERROR_FORMAT, "after the last tensor");
}
END_TEST

START_TEST (test_size_mismatch)
{
  TestModelFile file;
  valid_file (&file, NULL);
  json_object_set_string_member (test_tensor (&file, "head.weight"), "dtype", "F16");
  expect_error (&file, NULL, VMOE_ERROR_FORMAT, "'head.weight' holds");
}
END_TEST

START_TEST (test_shape_overflow)
{
  TestModelFile file;
  valid_file (&file, NULL);
  JsonArray *shape = json_array_new ();
  for (int i = 0; i < 4; i++)
    json_array_add_int_element (shape, G_GINT64_CONSTANT (1) << 20);
  json_object_set_array_member (test_tensor (&file, "head.weight"), "shape", shape);
  expect_error (&file, NULL, VMOE_ERROR_FORMAT, "overflows");
}
END_TEST

START_TEST (test_negative_shape)
{
  TestModelFile file;
  valid_file (&file, NULL);
  JsonArray *shape = json_array_new ();
  json_array_add_int_element (shape, -3);
  json_object_set_array_member (test_tensor (&file, "head.bias"), "shape", shape);
  expect_error (&file, NULL, VMOE_ERROR_FORMAT, "non-negative");
}
END_TEST

START_TEST (test_unknown_dtype)
{
  TestModelFile file;
  valid_file (&file, NULL);
  json_object_set_string_member (test_tensor (&file, "head.bias"), "dtype", "Q4");
  expect_error (&file, NULL, VMOE_ERROR_FORMAT, "unknown dtype");
}
END_TEST

START_TEST (test_unsupported_dtype)
{
  TestModelFile file;
  valid_file (&file, NULL);
  /* Same element size, so only the dtype check can refuse it. */
  json_object_set_string_member (test_tensor (&file, "head.bias"), "dtype", "I32");
  expect_error (&file, NULL, VMOE_ERROR_TENSOR, "dtype I32");
}
END_TEST

START_TEST (test_missing_tensor)
{
  TestModelFile file;
  valid_file (&file, MOE_IMAGE);
  /* Rename, so the data section stays fully described. */
  JsonObject *root = json_node_get_object (file.header);
  JsonNode *t = json_node_copy (json_object_get_member (root, "blocks.1.moe.experts.2.fc1.weight"));
  json_object_remove_member (root, "blocks.1.moe.experts.2.fc1.weight");
  json_object_set_member (root, "unused.tensor", t);
  expect_error (&file, NULL, VMOE_ERROR_TENSOR, "'blocks.1.moe.experts.2.fc1.weight'");
}
END_TEST

START_TEST (test_wrong_shape)
{
  TestModelFile file;
  valid_file (&file, NULL);
  JsonArray *shape = json_array_new ();
  json_array_add_int_element (shape, 4);
  json_array_add_int_element (shape, 2);
  json_object_set_array_member (test_tensor (&file, "norm.weight"), "shape", shape);
  expect_error (&file, NULL, VMOE_ERROR_TENSOR, "'norm.weight' has shape [4, 2]");
}
END_TEST

START_TEST (test_no_config)
{
  TestModelFile file;
  valid_file (&file, NULL);
  json_object_remove_member (json_node_get_object (file.header), "__metadata__");
  expect_error (&file, NULL, VMOE_ERROR_CONFIG, "vmoe.config");
}
END_TEST

START_TEST (test_config_not_json)
{
  TestModelFile file;
  valid_file (&file, NULL);
  json_object_set_string_member (json_object_get_object_member (
          json_node_get_object (file.header), "__metadata__"), "vmoe.config", "{oops");
  expect_error (&file, NULL, VMOE_ERROR_CONFIG, "not valid JSON");
}
END_TEST

START_TEST (test_config_missing_key)
{
  expect_config_error (NULL, "embed_dim", NULL, "'embed_dim' is required");
}
END_TEST

START_TEST (test_config_wrong_type)
{
  JsonNode *s = json_node_new (JSON_NODE_VALUE);
  json_node_set_string (s, "eight");
  expect_config_error (NULL, "depth", s, "'depth' must be an integer");
}
END_TEST

START_TEST (test_heads_do_not_divide)
{
  expect_config_error (NULL, "num_heads", int_node (3), "'num_heads' 3 does not divide");
}
END_TEST

START_TEST (test_patch_does_not_divide)
{
  expect_config_error (NULL, "patch_size", int_node (5), "'patch_size' 5 does not divide");
}
END_TEST

START_TEST (test_moe_layer_outside_depth)
{
  JsonArray *layers = json_array_new ();
  json_array_add_int_element (layers, 2);
  JsonNode *n = json_node_new (JSON_NODE_ARRAY);
  json_node_take_array (n, layers);
  expect_config_error (MOE_IMAGE, "moe.layers", n, "'moe.layers'");
}
END_TEST

START_TEST (test_top_k_above_experts)
{
  expect_config_error (MOE_IMAGE, "moe.top_k", int_node (4), "more than num_experts");
}
END_TEST

START_TEST (test_std_zero)
{
  JsonArray *std = json_array_new ();
  json_array_add_double_element (std, 0.5);
  json_array_add_double_element (std, 0.0);
  json_array_add_double_element (std, 0.5);
  JsonNode *n = json_node_new (JSON_NODE_ARRAY);
  json_node_take_array (n, std);
  expect_config_error (NULL, "std", n, "'std' channel 1 is zero");
}
END_TEST

START_TEST (test_label_count)
{
  JsonArray *labels = json_array_new ();
  json_array_add_string_element (labels, "only");
  JsonNode *n = json_node_new (JSON_NODE_ARRAY);
  json_node_take_array (n, labels);
  expect_config_error (NULL, "labels", n, "'labels' has 1 entries, num_classes is 3");
}
END_TEST

START_TEST (test_capacity_ratio_range)
{
  expect_config_error (MOE_IMAGE, "moe.capacity_ratio", double_node (-1), "capacity_ratio");
}
END_TEST

START_TEST (test_cls_router_without_class_token)
{
  TestModelFile file;
  valid_file (&file, MOE_IMAGE);
  JsonNode *config = test_get_config (&file);
  json_object_set_boolean_member (json_node_get_object (config), "class_token", FALSE);
  json_object_set_string_member (json_node_get_object (config), "pool", "avg");
  test_set_config (&file, config);
  json_node_unref (config);
  expect_error (&file, NULL, VMOE_ERROR_CONFIG, "no class token");
}
END_TEST

START_TEST (test_unknown_enum)
{
  JsonNode *s = json_node_new (JSON_NODE_VALUE);
  json_node_set_string (s, "relu");
  expect_config_error (NULL, "act", s, "'act' must be one of");
}
END_TEST

/* The 2026-11-23 additions: "aspect" takes "crop" and "stretch" only;
 * E3's ensemble_members must divide num_experts, with top_k at most E/M;
 * the defaults load. */
START_TEST (test_additions_validated)
{
  JsonNode *s = json_node_new (JSON_NODE_VALUE);
  json_node_set_string (s, "squash");
  expect_config_error (NULL, "aspect", s, "'aspect' must be one of");
  const char *moe = "{\"layers\": [1], \"num_experts\": 4, \"top_k\": 1}";
  expect_config_error (moe, "moe.ensemble_members", int_node (3),
      "'moe.ensemble_members' is 3, which does not divide num_experts 4");
  expect_config_error (moe, "moe.ensemble_members", int_node (0),
      "'ensemble_members' is 0, outside [1, 4096]");
  expect_config_error ("{\"layers\": [1], \"num_experts\": 8, \"top_k\": 3}",
      "moe.ensemble_members", int_node (4),
      "'moe.top_k' is 3, more than the 2 experts of each ensemble member");
  char *config = test_config_json ("{\"layers\": [1], \"num_experts\": 4, "
      "\"top_k\": 1, \"ensemble_members\": 1}, \"aspect\": \"crop\"");
  char *path = test_write_random_model (config);
  GError *error = NULL;
  VmoeModel *model = vmoe_model_load (path, &error);
  ck_assert_msg (model != NULL, "%s", error ? error->message : "");
  ck_assert_int_eq (vmoe_model_get_config (model)->aspect, VMOE_ASPECT_CROP);
  vmoe_model_unref (model);
  g_unlink (path);
  g_free (path);
  g_free (config);

  config = test_config_json (NULL);
  char *stretch = g_strdup_printf ("%.*s, \"aspect\": \"stretch\"}",
      (int) strlen (config) - 1, config);
  path = test_write_random_model (stretch);
  model = vmoe_model_load (path, &error);
  ck_assert_msg (model != NULL, "%s", error ? error->message : "");
  ck_assert_int_eq (vmoe_model_get_config (model)->aspect, VMOE_ASPECT_STRETCH);
  vmoe_model_unref (model);
  g_unlink (path);
  g_free (path);
  g_free (stretch);
  g_free (config);
}
END_TEST

START_TEST (test_nan_weight)
{
  TestModelFile file;
  valid_file (&file, NULL);
  JsonArray *off = json_object_get_array_member (test_tensor (&file, "blocks.1.attn.proj.weight"),
      "data_offsets");
  gsize size;
  guint8 *data = g_bytes_unref_to_data (file.data, &size);
  float nan = NAN;
  memcpy (data + json_array_get_int_element (off, 0) + 12, &nan, 4);
  file.data = g_bytes_new_take (data, size);
  expect_error (&file, NULL, VMOE_ERROR_TENSOR, "'blocks.1.attn.proj.weight' holds a non-finite");
}
END_TEST

/* Text nested `levels` deep in arrays: [[[...]]]. */
static char *
nested_arrays (int levels)
{
  char *text = g_malloc (2 * (gsize) levels + 1);
  memset (text, '[', levels);
  memset (text + levels, ']', levels);
  text[2 * levels] = '\0';
  return text;
}

/* The nesting limit of docs/model-format.md, counting the root. */
#define JSON_MAX_DEPTH 64

/* 80,000 levels overflowed the stack inside json-glib's recursive parser. */
START_TEST (test_deeply_nested_header)
{
  TestModelFile file;
  valid_file (&file, NULL);
  char *deep = nested_arrays (80000);
  expect_error (&file, deep, VMOE_ERROR_FORMAT, "nests deeper than 64");
  g_free (deep);
}
END_TEST

START_TEST (test_deeply_nested_config)
{
  TestModelFile file;
  valid_file (&file, NULL);
  char *deep = nested_arrays (80000);
  json_object_set_string_member (json_object_get_object_member (
          json_node_get_object (file.header), "__metadata__"), "vmoe.config", deep);
  g_free (deep);
  expect_error (&file, NULL, VMOE_ERROR_CONFIG, "nests deeper than 64");
}
END_TEST

/* An unknown key nested to exactly the limit loads; one level more fails.
 * Brackets and escaped quotes inside strings are not nesting. */
START_TEST (test_nesting_limit_boundary)
{
  for (int extra = 0; extra < 2; extra++) {
    TestModelFile file;
    valid_file (&file, NULL);
    char *config = test_config_json (NULL);
    char *deep = nested_arrays (JSON_MAX_DEPTH - 1 + extra);
    /* A string "\"[[[...[\\": read as text, its brackets would nest too deep. */
    char *brackets = g_strnfill (JSON_MAX_DEPTH + 1, '[');
    /* The root object is level 1, the arrays the next ones. */
    char *text = g_strdup_printf ("{\"unknown\": %s, \"note\": \"\\\"%s\\\\\", %s",
        deep, brackets, config + 1);
    g_free (brackets);
    json_object_set_string_member (json_object_get_object_member (
            json_node_get_object (file.header), "__metadata__"), "vmoe.config", text);
    char *path = test_model_file_write (&file, NULL);
    GError *error = NULL;
    VmoeModel *model = vmoe_model_load (path, &error);
    if (extra) {
      ck_assert (model == NULL);
      ck_assert_msg (g_error_matches (error, VMOE_ERROR, VMOE_ERROR_CONFIG)
          && strstr (error->message, "nests deeper than 64"), "%s", error->message);
    } else {
      ck_assert_msg (model != NULL, "%s", error ? error->message : "");
    }
    g_clear_error (&error);
    vmoe_model_unref (model);
    g_unlink (path);
    g_free (path);
    g_free (text);
    g_free (deep);
    g_free (config);
    test_model_file_clear (&file);
  }
}
END_TEST

/* "" gave a NULL root and a GLib critical, fatal under G_DEBUG=fatal-criticals. */
START_TEST (test_config_not_an_object)
{
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  const char *texts[] = { "", "   ", "null", "[]", "0", "\"vmoe\"" };
  for (guint i = 0; i < G_N_ELEMENTS (texts); i++) {
    TestModelFile file;
    valid_file (&file, NULL);
    json_object_set_string_member (json_object_get_object_member (
            json_node_get_object (file.header), "__metadata__"), "vmoe.config", texts[i]);
    expect_error (&file, NULL, VMOE_ERROR_CONFIG, "vmoe.config");
  }
}
END_TEST

/* A tiny file whose config asks for depth 1024 with 4,096 experts in every
 * block (16.8 million tensors) fails at once: it cannot hold them. */
START_TEST (test_config_larger_than_file)
{
  TestModelFile file;
  valid_file (&file, NULL);
  JsonNode *config = test_get_config (&file);
  JsonObject *obj = json_node_get_object (config);
  json_object_set_int_member (obj, "depth", 1024);
  JsonArray *layers = json_array_new ();
  for (int i = 0; i < 1024; i++)
    json_array_add_int_element (layers, i);
  JsonObject *moe = json_object_new ();
  json_object_set_array_member (moe, "layers", layers);
  json_object_set_int_member (moe, "num_experts", 4096);
  json_object_set_object_member (obj, "moe", moe);
  test_set_config (&file, config);
  json_node_unref (config);
  gint64 start = g_get_monotonic_time ();
  expect_error (&file, NULL, VMOE_ERROR_TENSOR, "the config needs more than");
  gint64 ms = (g_get_monotonic_time () - start) / 1000;
  ck_assert_msg (ms < 5000, "took %" G_GINT64_FORMAT " ms", ms);
}
END_TEST

/* Room for 512 Ki weights in an unused tensor, but depth 64 needs 12 tensors
 * per block, more than the file has. */
START_TEST (test_config_needs_more_tensors_than_declared)
{
  TestModelFile file;
  valid_file (&file, NULL);
  gsize size;
  const guint8 *data = g_bytes_get_data (file.data, &size);
  gsize pad = 1 << 20;
  guint8 *grown = g_malloc0 (size + pad);
  memcpy (grown, data, size);
  g_bytes_unref (file.data);
  file.data = g_bytes_new_take (grown, size + pad);
  JsonObject *padding = json_object_new ();
  json_object_set_string_member (padding, "dtype", "U8");
  JsonArray *shape = json_array_new ();
  json_array_add_int_element (shape, (gint64) pad);
  json_object_set_array_member (padding, "shape", shape);
  JsonArray *offsets = json_array_new ();
  json_array_add_int_element (offsets, (gint64) size);
  json_array_add_int_element (offsets, (gint64) (size + pad));
  json_object_set_array_member (padding, "data_offsets", offsets);
  json_object_set_object_member (json_node_get_object (file.header), "padding", padding);
  JsonNode *config = test_get_config (&file);
  json_object_set_int_member (json_node_get_object (config), "depth", 64);
  test_set_config (&file, config);
  json_node_unref (config);
  expect_error (&file, NULL, VMOE_ERROR_TENSOR, "tensors the header declares");
}
END_TEST

/* As many tensors as the file has, but far more weights than its data
 * section can hold at 2 bytes each. */
START_TEST (test_config_weights_exceed_data)
{
  TestModelFile file;
  valid_file (&file, NULL);
  JsonNode *config = test_get_config (&file);
  json_object_set_int_member (json_node_get_object (config), "embed_dim", 65536);
  test_set_config (&file, config);
  json_node_unref (config);
  expect_error (&file, NULL, VMOE_ERROR_TENSOR, "the most its data section can hold");
}
END_TEST

static void
input_pattern (float *input, gsize n)
{
  for (gsize i = 0; i < n; i++)
    input[i] = (float) (i % 17) / 8.0f - 1.0f;
}

/* Weights scaled to ~1e31 (a flipped exponent bit) are finite, so they
 * load, but the activations overflow: the run must fail, not report classes
 * from NaN logits. */
START_TEST (test_overflowing_weights_fail_the_run)
{
  TestModelFile file;
  valid_file (&file, NULL);
  JsonArray *off = json_object_get_array_member (
      test_tensor (&file, "blocks.0.attn.qkv.weight"), "data_offsets");
  gsize size;
  guint8 *data = g_bytes_unref_to_data (file.data, &size);
  for (gint64 at = json_array_get_int_element (off, 0);
      at < json_array_get_int_element (off, 1); at += 4) {
    float w;
    memcpy (&w, data + at, 4);
    w *= 1e31f;
    memcpy (data + at, &w, 4);
  }
  file.data = g_bytes_new_take (data, size);
  char *path = test_model_file_write (&file, NULL);
  test_model_file_clear (&file);
  GError *error = NULL;
  VmoeModel *model = vmoe_model_load (path, &error);
  ck_assert_msg (model != NULL, "%s", error ? error->message : "");
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_CPU;
  VmoeSession *session = vmoe_session_new (model, &options, &error);
  ck_assert (session);
  float input[2 * 3 * 16 * 16];
  input_pattern (input, G_N_ELEMENTS (input));
  ck_assert (!vmoe_session_run_f32 (session, input, 2, &error));
  ck_assert_msg (g_error_matches (error, VMOE_ERROR, VMOE_ERROR_NUMERIC)
      && strstr (error->message, "non-finite logits for image 0"),
      "%s", error->message);
  g_clear_error (&error);
  vmoe_session_free (session);
  vmoe_model_unref (model);
  g_unlink (path);
  g_free (path);
}
END_TEST

/* A NaN in float input is refused before the forward pass, naming where. */
START_TEST (test_non_finite_input_refused)
{
  char *config = test_config_json (MOE_IMAGE);
  char *path = test_write_random_model (config);
  VmoeModel *model = vmoe_model_load (path, NULL);
  ck_assert (model);
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_CPU;
  VmoeSession *session = vmoe_session_new (model, &options, NULL);
  const float bad[] = { NAN, INFINITY, -INFINITY };
  float input[2 * 3 * 16 * 16];
  for (guint b = 0; b < G_N_ELEMENTS (bad); b++) {
    input_pattern (input, G_N_ELEMENTS (input));
    ck_assert (vmoe_session_run_f32 (session, input, 2, NULL));
    input[3 * 16 * 16 + 100] = bad[b];
    GError *error = NULL;
    ck_assert (!vmoe_session_run_f32 (session, input, 2, &error));
    ck_assert_msg (g_error_matches (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT)
        && strstr (error->message, "image 1")
        && strstr (error->message, "element 100"), "%s", error->message);
    g_error_free (error);
  }
  vmoe_session_free (session);
  vmoe_model_unref (model);
  g_unlink (path);
  g_free (path);
  g_free (config);
}
END_TEST

static JsonNode *
three_doubles (double a, double b, double c)
{
  JsonArray *arr = json_array_new ();
  json_array_add_double_element (arr, a);
  json_array_add_double_element (arr, b);
  json_array_add_double_element (arr, c);
  JsonNode *n = json_node_new (JSON_NODE_ARRAY);
  json_node_take_array (n, arr);
  return n;
}

/* The engine computes in float: a double beyond its range cannot be
 * converted (undefined behaviour), and a std that rounds to a subnormal
 * divides to infinity. */
START_TEST (test_config_values_fit_float)
{
  expect_config_error (NULL, "std", three_doubles (0.5, 1e300, 0.5), "'std'");
  expect_config_error (NULL, "std", three_doubles (0.5, 1e-40, 0.5),
      "'std' channel 1 is zero or too small");
  expect_config_error (NULL, "mean", three_doubles (-1e39, 0.5, 0.5), "'mean'");
  expect_config_error (NULL, "norm_eps", double_node (1e39), "'norm_eps'");
}
END_TEST

/* Each CPU thread is started at once: 100,000 aborted in GLib. */
/* vmoe info's FLOPs with E3 (docs/design.md), derived by hand for the test
 * config (16x16 image, patch 8: 4 patches + class token = 5 tokens, D 8,
 * MLP 16, 3 classes, depth 2) with block 1 an image-routed MoE of 4
 * experts in 2 members: block 0 and block 1's attention run once, block 1's FFN and the head on
 * 2 copies.  A session's experts-k above a member's 2 experts is refused. */
START_TEST (test_ensemble_flops_and_experts_k)
{
  char *config = test_config_json ("{\"layers\": [1], \"num_experts\": 4, "
      "\"top_k\": 1, \"ensemble_members\": 2}");
  char *path = test_write_random_model (config);
  GError *error = NULL;
  VmoeModel *model = vmoe_model_load (path, &error);
  ck_assert_msg (model != NULL, "%s", error ? error->message : "");
  ck_assert_int_eq (vmoe_model_get_config (model)->ensemble_members, 2);
  double embed = 2.0 * 4 * 8 * (3 * 8 * 8);                 /* 12288 */
  double attention = 2.0 * 5 * 8 * 24 + 2.0 * 2 * 5 * 5 * 8 + 2.0 * 5 * 8 * 8; /* 3360 */
  double mlp = 2.0 * 2 * 5 * 8 * 16;                         /* 2560 */
  double router = 2.0 * 8 * 4, head = 2.0 * 8 * 3;
  ck_assert_double_eq (vmoe_model_flops (model, TRUE),
      embed + (attention + mlp) + attention + 2 * mlp + router + 2 * head);
  ck_assert_double_eq (vmoe_model_flops (model, FALSE),
      embed + (attention + mlp) + attention + 2 * 2 * mlp + router + 2 * head);

  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_CPU;
  options.experts_k = 3;
  ck_assert (vmoe_session_new (model, &options, &error) == NULL);
  ck_assert_int_eq (error->code, VMOE_ERROR_INVALID_ARGUMENT);
  ck_assert_msg (strstr (error->message, "each of the model's 2 ensemble members has 2 "
          "experts"), "%s", error->message);
  g_clear_error (&error);
  options.experts_k = 2;
  VmoeSession *session = vmoe_session_new (model, &options, &error);
  ck_assert_msg (session != NULL, "%s", error ? error->message : "");
  float input[3 * 16 * 16];
  for (guint i = 0; i < G_N_ELEMENTS (input); i++)
    input[i] = (float) (i % 7) - 3.0f;
  ck_assert (vmoe_session_run_f32 (session, input, 1, &error));
  const VmoeImageResult *r = vmoe_session_get_result (session, 0);
  ck_assert_int_eq (r->n_members, 2);
  ck_assert_int_eq (r->n_experts, 4);
  /* Member m's two experts are its partition's, {2m, 2m + 1}. */
  for (int j = 0; j < 4; j++)
    ck_assert_int_eq (r->experts[j] / 2, j / 2);
  vmoe_session_free (session);
  vmoe_model_unref (model);
  g_unlink (path);
  g_free (path);
  g_free (config);
}
END_TEST

/* E3 member copies multiply a batch's routed rows: 4096 members of one
 * expert on 65 tokens (8x8 patches of 1 pixel and a class token) give
 * 8066 x 4096 x 65 = 2,147,491,840 rows for a batch of 8066, past the
 * ints the backends index them with: an error naming the limit, before
 * anything is allocated. */
START_TEST (test_batch_of_too_many_member_rows)
{
  const char *config = "{\"format\": \"vmoe\", \"version\": 1, \"image_size\": 8, "
      "\"patch_size\": 1, \"embed_dim\": 2, \"depth\": 1, \"num_heads\": 1, "
      "\"mlp_dim\": 1, \"num_classes\": 2, \"moe\": {\"layers\": [0], "
      "\"num_experts\": 4096, \"ensemble_members\": 4096, \"routing\": \"token\"}}";
  char *path = test_write_random_model (config);
  GError *error = NULL;
  VmoeModel *model = vmoe_model_load (path, &error);
  ck_assert_msg (model != NULL, "%s", error ? error->message : "");
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_CPU;
  VmoeSession *session = vmoe_session_new (model, &options, &error);
  ck_assert_msg (session != NULL, "%s", error ? error->message : "");
  /* (Running it at all is slow: the CPU scans every assignment per expert,
   * 4096 x 266,240 for one image.) */
  enum { N = 8066 };
  float *input = g_new0 (float, (gsize) N * 3 * 8 * 8);
  ck_assert (!vmoe_session_run_f32 (session, input, N, &error));
  ck_assert_msg (g_error_matches (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT)
      && strstr (error->message, "2147491840 routed rows"), "%s", error->message);
  g_clear_error (&error);
  g_free (input);
  vmoe_session_free (session);
  vmoe_model_unref (model);
  g_unlink (path);
  g_free (path);
}
END_TEST

/* Without an ensemble the result still has an entropy, of the reported
 * probabilities (softmax of the logits, recomputed here in double), one
 * member whose top-1 is the top class, and no disagreement. */
START_TEST (test_entropy_without_ensemble)
{
  char *config = test_config_json ("{\"layers\": [1], \"num_experts\": 4, \"top_k\": 2}");
  char *path = test_write_random_model (config);
  GError *error = NULL;
  VmoeModel *model = vmoe_model_load (path, &error);
  ck_assert_msg (model != NULL, "%s", error ? error->message : "");
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_CPU;
  VmoeSession *session = vmoe_session_new (model, &options, &error);
  ck_assert_msg (session != NULL, "%s", error ? error->message : "");
  float input[2 * 3 * 16 * 16];
  for (guint i = 0; i < G_N_ELEMENTS (input); i++)
    input[i] = (float) ((i * 7919) % 13) / 3.0f - 2.0f;
  ck_assert (vmoe_session_run_f32 (session, input, 2, &error));
  for (int i = 0; i < 2; i++) {
    const VmoeImageResult *r = vmoe_session_get_result (session, i);
    double max = r->logits[0], sum = 0, entropy = 0;
    for (int j = 1; j < 3; j++)
      max = MAX (max, r->logits[j]);
    for (int j = 0; j < 3; j++)
      sum += exp (r->logits[j] - max);
    for (int j = 0; j < 3; j++) {
      double p = exp (r->logits[j] - max) / sum;
      entropy -= p * log (p);
    }
    ck_assert_double_eq_tol (r->entropy, entropy, 1e-6);
    ck_assert (r->entropy > 0 && r->entropy <= log (3) + 1e-6);
    ck_assert_int_eq (r->n_members, 1);
    ck_assert_int_eq (r->member_classes[0], r->top_classes[0]);
    ck_assert_double_eq (r->disagreement, 0);
  }
  vmoe_session_free (session);
  vmoe_model_unref (model);
  g_unlink (path);
  g_free (path);
  g_free (config);
}
END_TEST

START_TEST (test_session_threads_bounded)
{
  char *config = test_config_json (NULL);
  char *path = test_write_random_model (config);
  VmoeModel *model = vmoe_model_load (path, NULL);
  ck_assert (model);
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_CPU;
  options.threads = 100000;
  GError *error = NULL;
  ck_assert (vmoe_session_new (model, &options, &error) == NULL);
  ck_assert_msg (g_error_matches (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT)
      && strstr (error->message, "256"), "%s", error->message);
  g_error_free (error);
  options.threads = VMOE_MAX_THREADS;
  VmoeSession *session = vmoe_session_new (model, &options, &error);
  ck_assert_msg (session != NULL, "%s", error ? error->message : "");
  vmoe_session_free (session);
  vmoe_model_unref (model);
  g_unlink (path);
  g_free (path);
  g_free (config);
}
END_TEST

/* Text of a JSON array of `n` zeros. */
static char *
zeros_array (gsize n)
{
  GString *s = g_string_sized_new (2 * n + 2);
  g_string_append_c (s, '[');
  for (gsize i = 0; i < n; i++)
    g_string_append (s, i ? ",0" : "0");
  g_string_append_c (s, ']');
  return g_string_free (s, FALSE);
}

/* json-glib spends ~80 bytes and real time per value: a header of a million
 * values and more is refused before it parses. */
START_TEST (test_header_too_many_values)
{
  TestModelFile file;
  valid_file (&file, NULL);
  char *zeros = zeros_array (1000000);
  char *header = json_to_string (file.header, FALSE);
  char *text = g_strdup_printf ("{\"zeros\": %s, %s", zeros, header + 1);
  gint64 start = g_get_monotonic_time ();
  expect_error (&file, text, VMOE_ERROR_FORMAT, "header holds more than 1000000 values");
  gint64 ms = (g_get_monotonic_time () - start) / 1000;
  ck_assert_msg (ms < 2000, "took %" G_GINT64_FORMAT " ms", ms);
  g_free (text);
  g_free (header);
  g_free (zeros);
}
END_TEST

/* The config may hold two values per class (labels, superclass lists)
 * and then some: 2,065,536 values. */
START_TEST (test_config_too_many_values)
{
  TestModelFile file;
  valid_file (&file, NULL);
  char *zeros = zeros_array (2065536);
  char *config = test_config_json (NULL);
  char *text = g_strdup_printf ("{\"zeros\": %s, %s", zeros, config + 1);
  json_object_set_string_member (json_object_get_object_member (
          json_node_get_object (file.header), "__metadata__"), "vmoe.config", text);
  expect_error (&file, NULL, VMOE_ERROR_CONFIG, "vmoe.config holds more than 2065536 values");
  g_free (text);
  g_free (config);
  g_free (zeros);
}
END_TEST

/* Property: every truncation and every single-byte change of the header
 * either loads or fails with a GError; ASan/UBSan turn any crash or
 * out-of-bounds read into a failure here. */
START_TEST (test_corruptions_never_crash)
{
  char *config = test_config_json (MOE_IMAGE);
  char *path = test_write_random_model (config);
  char *bytes;
  gsize size;
  ck_assert (g_file_get_contents (path, &bytes, &size, NULL));
  guint64 header_len;
  memcpy (&header_len, bytes, 8);
  GRand *rand = g_rand_new_with_seed (42);
  for (int trial = 0; trial < 400; trial++) {
    char *copy = g_memdup2 (bytes, size);
    gsize len = size;
    if (trial % 2)
      len = g_rand_int_range (rand, 0, (gint32) size);
    else
      copy[g_rand_int_range (rand, 0, (gint32) (8 + header_len))] =
          (char) g_rand_int_range (rand, 0, 256);
    ck_assert (g_file_set_contents (path, copy, len, NULL));
    GError *error = NULL;
    VmoeModel *model = vmoe_model_load (path, &error);
    ck_assert ((model == NULL) == (error != NULL));
    if (error)
      ck_assert (error->domain == VMOE_ERROR && error->message[0]);
    g_clear_error (&error);
    vmoe_model_unref (model);
    g_free (copy);
  }
  g_rand_free (rand);
  g_unlink (path);
  g_free (path);
  g_free (bytes);
  g_free (config);
}
END_TEST

typedef struct {
  VmoeModel *model;
  const float *input;
  float logits[3];
  int expert;
} ThreadRun;

static gpointer
run_in_thread (gpointer data)
{
  ThreadRun *run = data;
  VmoeSession *session = vmoe_session_new (run->model, NULL, NULL);
  for (int i = 0; i < 20; i++)
    ck_assert (vmoe_session_run_f32 (session, run->input, 1, NULL));
  const VmoeImageResult *r = vmoe_session_get_result (session, 0);
  memcpy (run->logits, r->logits, sizeof run->logits);
  run->expert = r->experts[0];
  vmoe_session_free (session);
  return NULL;
}

/* One mapping serves sessions on several threads at once, and outlives the
 * caller's reference while sessions hold it. */
START_TEST (test_model_shared_by_threads)
{
  char *config = test_config_json (MOE_IMAGE);
  char *path = test_write_random_model (config);
  VmoeModel *model = vmoe_model_load (path, NULL);
  ck_assert (model);
  float input[3 * 16 * 16];
  for (guint i = 0; i < G_N_ELEMENTS (input); i++)
    input[i] = (float) (i % 17) / 8.0f - 1.0f;
  ThreadRun runs[3];
  GThread *threads[3];
  for (int t = 0; t < 3; t++) {
    runs[t] = (ThreadRun) { model, input, { 0 }, -1 };
    threads[t] = g_thread_new ("session", run_in_thread, &runs[t]);
  }
  for (int t = 0; t < 3; t++)
    g_thread_join (threads[t]);
  for (int t = 1; t < 3; t++) {
    for (int i = 0; i < 3; i++)
      ck_assert_float_eq (runs[t].logits[i], runs[0].logits[i]);
    ck_assert_int_eq (runs[t].expert, runs[0].expert);
  }
  VmoeSession *session = vmoe_session_new (model, NULL, NULL);
  vmoe_model_unref (model);
  ck_assert (vmoe_session_run_f32 (session, input, 1, NULL));
  ck_assert_float_eq (vmoe_session_get_result (session, 0)->logits[0], runs[0].logits[0]);
  vmoe_session_free (session);
  g_unlink (path);
  g_free (path);
  g_free (config);
}
END_TEST

/* A model from bytes in memory classifies exactly as the same file loaded
 * from its path, and keeps the bytes alive itself.  At offset 0 the float32
 * tensors are read in place; one byte off alignment they are all copied. */
START_TEST (test_model_from_bytes)
{
  char *config = test_config_json (MOE_IMAGE);
  char *path = test_write_random_model (config);
  char *contents;
  gsize size;
  ck_assert (g_file_get_contents (path, &contents, &size, NULL));
  VmoeModel *from_file = vmoe_model_load (path, NULL);
  ck_assert (from_file);
  float input[3 * 16 * 16];
  for (guint i = 0; i < G_N_ELEMENTS (input); i++)
    input[i] = (float) (i % 13) / 6.0f - 1.0f;
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_CPU;
  VmoeSession *b = vmoe_session_new (from_file, &options, NULL);
  ck_assert (b && vmoe_session_run_f32 (b, input, 1, NULL));
  const VmoeImageResult *rb = vmoe_session_get_result (b, 0);

  for (gsize shift = 0; shift < 2; shift++) {
    char *copy = g_malloc (size + shift);
    memcpy (copy + shift, contents, size);
    GBytes *whole = g_bytes_new_take (copy, size + shift);
    GBytes *bytes = g_bytes_new_from_bytes (whole, shift, size);
    g_bytes_unref (whole);
    ck_assert_int_eq ((guintptr) g_bytes_get_data (bytes, NULL) % sizeof (float), shift);

    GError *error = NULL;
    VmoeModel *from_bytes = vmoe_model_new_from_bytes (bytes, &error);
    ck_assert_msg (from_bytes != NULL, "%s", error ? error->message : "");
    g_bytes_unref (bytes);
    ck_assert_uint_eq (vmoe_model_parameter_count (from_bytes),
        vmoe_model_parameter_count (from_file));
    VmoeSession *a = vmoe_session_new (from_bytes, &options, NULL);
    ck_assert (a && vmoe_session_run_f32 (a, input, 1, NULL));
    const VmoeImageResult *ra = vmoe_session_get_result (a, 0);
    for (int i = 0; i < 3; i++)
      ck_assert_float_eq (ra->logits[i], rb->logits[i]);
    ck_assert_int_eq (ra->experts[0], rb->experts[0]);
    vmoe_session_free (a);
    vmoe_model_unref (from_bytes);
  }
  vmoe_session_free (b);
  vmoe_model_unref (from_file);

  /* Bytes are checked as a file is. */
  contents[0] ^= 0x7f;
  GBytes *bytes = g_bytes_new_take (contents, size);
  GError *error = NULL;
  ck_assert (vmoe_model_new_from_bytes (bytes, &error) == NULL);
  ck_assert (g_error_matches (error, VMOE_ERROR, VMOE_ERROR_FORMAT));
  g_clear_error (&error);
  g_bytes_unref (bytes);
  g_unlink (path);
  g_free (path);
  g_free (config);
}
END_TEST

static Suite *
model_suite (void)
{
  Suite *s = suite_create ("model");
  TCase *tc = tcase_create ("load");
  tcase_set_timeout (tc, 120);
  tcase_add_test (tc, test_valid_models_load);
  tcase_add_test (tc, test_missing_file);
  tcase_add_test (tc, test_too_short);
  tcase_add_test (tc, test_header_length_past_end);
  tcase_add_test (tc, test_truncated_data);
  tcase_add_test (tc, test_header_not_json);
  tcase_add_test (tc, test_header_not_object);
  tcase_add_test (tc, test_offsets_outside_data);
  tcase_add_test (tc, test_offsets_reversed);
  tcase_add_test (tc, test_overlapping_tensors);
  tcase_add_test (tc, test_trailing_bytes);
  tcase_add_test (tc, test_size_mismatch);
  tcase_add_test (tc, test_shape_overflow);
  tcase_add_test (tc, test_negative_shape);
  tcase_add_test (tc, test_unknown_dtype);
  tcase_add_test (tc, test_unsupported_dtype);
  tcase_add_test (tc, test_missing_tensor);
  tcase_add_test (tc, test_wrong_shape);
  tcase_add_test (tc, test_no_config);
  tcase_add_test (tc, test_config_not_json);
  tcase_add_test (tc, test_config_missing_key);
  tcase_add_test (tc, test_config_wrong_type);
  tcase_add_test (tc, test_heads_do_not_divide);
  tcase_add_test (tc, test_patch_does_not_divide);
  tcase_add_test (tc, test_moe_layer_outside_depth);
  tcase_add_test (tc, test_top_k_above_experts);
  tcase_add_test (tc, test_std_zero);
  tcase_add_test (tc, test_label_count);
  tcase_add_test (tc, test_capacity_ratio_range);
  tcase_add_test (tc, test_cls_router_without_class_token);
  tcase_add_test (tc, test_unknown_enum);
  tcase_add_test (tc, test_additions_validated);
  tcase_add_test (tc, test_ensemble_flops_and_experts_k);
  tcase_add_test (tc, test_entropy_without_ensemble);
  tcase_add_test (tc, test_batch_of_too_many_member_rows);
  tcase_add_test (tc, test_nan_weight);
  tcase_add_test (tc, test_deeply_nested_header);
  tcase_add_test (tc, test_deeply_nested_config);
  tcase_add_test (tc, test_nesting_limit_boundary);
  tcase_add_test (tc, test_config_not_an_object);
  tcase_add_test (tc, test_config_larger_than_file);
  tcase_add_test (tc, test_config_weights_exceed_data);
  tcase_add_test (tc, test_config_needs_more_tensors_than_declared);
  tcase_add_test (tc, test_overflowing_weights_fail_the_run);
  tcase_add_test (tc, test_non_finite_input_refused);
  tcase_add_test (tc, test_config_values_fit_float);
  tcase_add_test (tc, test_session_threads_bounded);
  tcase_add_test (tc, test_header_too_many_values);
  tcase_add_test (tc, test_config_too_many_values);
  tcase_add_test (tc, test_corruptions_never_crash);
  tcase_add_test (tc, test_model_shared_by_threads);
  tcase_add_test (tc, test_model_from_bytes);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  SRunner *runner = srunner_create (model_suite ());
  srunner_run_all (runner, CK_NORMAL);
  int failed = srunner_ntests_failed (runner);
  srunner_free (runner);
  return failed ? 1 : 0;
}
