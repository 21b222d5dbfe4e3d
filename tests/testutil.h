/* Helpers for tests that build model files and edit them byte by byte. */
#ifndef VMOE_TESTUTIL_H
#define VMOE_TESTUTIL_H

#include <json-glib/json-glib.h>

#include "vmoe/vmoe.h"

/* A tiny valid config (16x16 image, patch 8, width 8, depth 2); `moe_json`
 * is the value of "moe" or NULL for a dense model. */
char *test_config_json (const char *moe_json);

/* A model file split into its parsed header and its data section. */
typedef struct {
  JsonNode *header;
  GBytes *data;
} TestModelFile;

/* Writes a random model for config_json to a temporary path (g_free it). */
char *test_write_random_model (const char *config_json);
void test_model_file_read (const char *path, TestModelFile *file);
void test_model_file_clear (TestModelFile *file);
/* Writes header + data back; `header_text` overrides the header if set. */
char *test_model_file_write (const TestModelFile *file, const char *header_text);
JsonObject *test_tensor (TestModelFile *file, const char *name);
/* The parsed "vmoe.config" and its replacement. */
JsonNode *test_get_config (TestModelFile *file);
void test_set_config (TestModelFile *file, JsonNode *config);

/* Loads `path` and expects failure with `code` and a message containing
 * `needle`; frees the error. */
void test_expect_load_error (const char *path, int code, const char *needle);

#endif
