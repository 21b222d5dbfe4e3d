#include "testutil.h"

#include <check.h>
#include <glib/gstdio.h>
#include <string.h>

char *
test_config_json (const char *moe_json)
{
  return g_strdup_printf ("{\"format\": \"vmoe\", \"version\": 1, "
      "\"image_size\": [16, 16], \"patch_size\": 8, \"in_channels\": 3, "
      "\"embed_dim\": 8, \"depth\": 2, \"num_heads\": 2, \"mlp_dim\": 16, "
      "\"num_classes\": 3, \"labels\": [\"a\", \"b\", \"c\"]%s%s}",
      moe_json ? ", \"moe\": " : "", moe_json ? moe_json : "");
}

static char *
temp_path (void)
{
  char *path = NULL;
  GError *error = NULL;
  int fd = g_file_open_tmp ("vmoe-test-XXXXXX.safetensors", &path, &error);
  ck_assert_msg (fd >= 0, "tmp file: %s", error ? error->message : "");
  close (fd);
  return path;
}

char *
test_write_random_model (const char *config_json)
{
  char *path = temp_path ();
  GError *error = NULL;
  ck_assert_msg (vmoe_random_model_write (config_json, 7, path, &error),
      "random model: %s", error ? error->message : "");
  return path;
}

void
test_model_file_read (const char *path, TestModelFile *file)
{
  char *bytes;
  gsize size;
  ck_assert (g_file_get_contents (path, &bytes, &size, NULL));
  guint64 n;
  memcpy (&n, bytes, 8);
  n = GUINT64_FROM_LE (n);
  char *text = g_strndup (bytes + 8, n);
  file->header = json_from_string (text, NULL);
  ck_assert (file->header != NULL);
  file->data = g_bytes_new (bytes + 8 + n, size - 8 - n);
  g_free (text);
  g_free (bytes);
}

void
test_model_file_clear (TestModelFile *file)
{
  json_node_unref (file->header);
  g_bytes_unref (file->data);
}

char *
test_model_file_write (const TestModelFile *file, const char *header_text)
{
  char *text = header_text ? g_strdup (header_text) : json_to_string (file->header, FALSE);
  guint64 n = GUINT64_TO_LE ((guint64) strlen (text));
  gsize data_size;
  const guint8 *data = g_bytes_get_data (file->data, &data_size);
  GByteArray *out = g_byte_array_new ();
  g_byte_array_append (out, (const guint8 *) &n, 8);
  g_byte_array_append (out, (const guint8 *) text, strlen (text));
  g_byte_array_append (out, data, data_size);
  char *path = temp_path ();
  ck_assert (g_file_set_contents (path, (const char *) out->data, out->len, NULL));
  g_byte_array_free (out, TRUE);
  g_free (text);
  return path;
}

JsonObject *
test_tensor (TestModelFile *file, const char *name)
{
  JsonObject *root = json_node_get_object (file->header);
  ck_assert_msg (json_object_has_member (root, name), "no tensor %s", name);
  return json_object_get_object_member (root, name);
}

static JsonObject *
metadata (TestModelFile *file)
{
  return json_object_get_object_member (json_node_get_object (file->header),
      "__metadata__");
}

JsonNode *
test_get_config (TestModelFile *file)
{
  return json_from_string (json_object_get_string_member (metadata (file),
          "vmoe.config"), NULL);
}

void
test_set_config (TestModelFile *file, JsonNode *config)
{
  char *text = json_to_string (config, FALSE);
  json_object_set_string_member (metadata (file), "vmoe.config", text);
  g_free (text);
}

void
test_expect_load_error (const char *path, int code, const char *needle)
{
  GError *error = NULL;
  VmoeModel *model = vmoe_model_load (path, &error);
  ck_assert_msg (model == NULL, "'%s' loaded but should fail with '%s'", path, needle);
  ck_assert (error != NULL);
  ck_assert_msg (error->domain == VMOE_ERROR && error->code == code,
      "error code %d, expected %d: %s", error->code, code, error->message);
  ck_assert_msg (strstr (error->message, needle) != NULL,
      "error '%s' does not mention '%s'", error->message, needle);
  g_error_free (error);
}
