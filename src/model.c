/* Model file loading: a memory-mapped safetensors file whose header is checked
 * in full before any tensor is touched.  Every failure is a GError naming the
 * key or tensor at fault. */
#include "vmoe-private.h"
#include "cpu/linear.h"

#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The reference safetensors implementation refuses larger headers too. */
#define MAX_HEADER_BYTES (100u * 1024u * 1024u)
#define MAX_NDIM 8
/* About 8 values per tensor: room for 125,000 tensors, where a V-MoE of 15
 * billion parameters has about 3,000.  json-glib spends ~80 bytes a value. */
#define MAX_HEADER_VALUES 1000000

typedef enum { DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_OTHER } ComputeDtype;

static const struct {
  const char *name;
  guint size;
  ComputeDtype kind;
} dtypes[] = {
  { "F32", 4, DTYPE_F32 }, { "F16", 2, DTYPE_F16 }, { "BF16", 2, DTYPE_BF16 },
  { "F64", 8, DTYPE_OTHER }, { "I64", 8, DTYPE_OTHER }, { "U64", 8, DTYPE_OTHER },
  { "I32", 4, DTYPE_OTHER }, { "U32", 4, DTYPE_OTHER }, { "I16", 2, DTYPE_OTHER },
  { "U16", 2, DTYPE_OTHER }, { "I8", 1, DTYPE_OTHER }, { "U8", 1, DTYPE_OTHER },
  { "BOOL", 1, DTYPE_OTHER }, { "F8_E4M3", 1, DTYPE_OTHER },
  { "F8_E5M2", 1, DTYPE_OTHER },
};

typedef struct {
  const char *name;           /* owned by the parser's JSON tree */
  int dtype;                  /* index into dtypes */
  int ndim;
  gint64 shape[MAX_NDIM];
  guint64 begin, end;         /* offsets inside the data section */
} Entry;

static gboolean
format_error (GError **error, const char *fmt, ...) G_GNUC_PRINTF (2, 3);

static gboolean
format_error (GError **error, const char *fmt, ...)
{
  va_list args;
  va_start (args, fmt);
  char *msg = g_strdup_vprintf (fmt, args);
  va_end (args);
  g_set_error (error, VMOE_ERROR, VMOE_ERROR_FORMAT, "safetensors: %s", msg);
  g_free (msg);
  return FALSE;
}

static gboolean
json_get_uint (JsonNode *node, guint64 *out)
{
  if (!node || !JSON_NODE_HOLDS_VALUE (node)
      || json_node_get_value_type (node) != G_TYPE_INT64 || json_node_get_int (node) < 0)
    return FALSE;
  *out = (guint64) json_node_get_int (node);
  return TRUE;
}

static gboolean
parse_entry (const char *name, JsonNode *node, guint64 data_size, Entry *entry,
    GError **error)
{
  if (!JSON_NODE_HOLDS_OBJECT (node))
    return format_error (error, "tensor '%s' is not a JSON object", name);
  JsonObject *obj = json_node_get_object (node);
  entry->name = name;

  JsonNode *dtype = json_object_get_member (obj, "dtype");
  const char *dtype_name = dtype && JSON_NODE_HOLDS_VALUE (dtype)
      && json_node_get_value_type (dtype) == G_TYPE_STRING
      ? json_node_get_string (dtype) : NULL;
  entry->dtype = -1;
  for (guint i = 0; dtype_name && i < G_N_ELEMENTS (dtypes); i++)
    if (strcmp (dtype_name, dtypes[i].name) == 0)
      entry->dtype = (int) i;
  if (entry->dtype < 0)
    return format_error (error, "tensor '%s' has an unknown dtype", name);

  JsonNode *shape = json_object_get_member (obj, "shape");
  if (!shape || !JSON_NODE_HOLDS_ARRAY (shape))
    return format_error (error, "tensor '%s' has no 'shape' array", name);
  JsonArray *dims = json_node_get_array (shape);
  if (json_array_get_length (dims) > MAX_NDIM)
    return format_error (error, "tensor '%s' has more than %d dimensions", name, MAX_NDIM);
  entry->ndim = (int) json_array_get_length (dims);
  guint64 bytes = dtypes[entry->dtype].size;
  for (int i = 0; i < entry->ndim; i++) {
    guint64 d;
    if (!json_get_uint (json_array_get_element (dims, i), &d))
      return format_error (error, "tensor '%s' has a shape entry that is not a "
          "non-negative integer", name);
    entry->shape[i] = (gint64) d;
    if (!g_uint64_checked_mul (&bytes, bytes, d))
      return format_error (error, "tensor '%s': shape overflows 64 bits", name);
  }

  JsonNode *offsets = json_object_get_member (obj, "data_offsets");
  if (!offsets || !JSON_NODE_HOLDS_ARRAY (offsets)
      || json_array_get_length (json_node_get_array (offsets)) != 2
      || !json_get_uint (json_array_get_element (json_node_get_array (offsets), 0), &entry->begin)
      || !json_get_uint (json_array_get_element (json_node_get_array (offsets), 1), &entry->end))
    return format_error (error, "tensor '%s' needs 'data_offsets' [begin, end]", name);
  if (entry->begin > entry->end || entry->end > data_size)
    return format_error (error, "tensor '%s' data_offsets [%" G_GUINT64_FORMAT ", %"
        G_GUINT64_FORMAT "] lie outside the %" G_GUINT64_FORMAT "-byte data section",
        name, entry->begin, entry->end, data_size);
  if (entry->end - entry->begin != bytes)
    return format_error (error, "tensor '%s' holds %" G_GUINT64_FORMAT
        " bytes but dtype %s x shape needs %" G_GUINT64_FORMAT, name,
        entry->end - entry->begin, dtypes[entry->dtype].name, bytes);
  return TRUE;
}

static int
compare_entries (gconstpointer a, gconstpointer b)
{
  const Entry *x = a, *y = b;
  if (x->begin != y->begin)
    return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

/* Like the reference implementation, the tensors must tile the data section
 * exactly: no overlap, no hole, nothing after the last one. */
static gboolean
check_layout (Entry *entries, guint n, guint64 data_size, GError **error)
{
  qsort (entries, n, sizeof (Entry), compare_entries);
  guint64 expected = 0;
  for (guint i = 0; i < n; i++) {
    if (entries[i].begin < expected)
      return format_error (error, "tensor '%s' overlaps tensor '%s'",
          entries[i].name, entries[i - 1].name);
    if (entries[i].begin > expected)
      return format_error (error, "%" G_GUINT64_FORMAT " unused bytes before "
          "tensor '%s'", entries[i].begin - expected, entries[i].name);
    expected = entries[i].end;
  }
  if (expected != data_size)
    return format_error (error, "%" G_GUINT64_FORMAT " bytes after the last tensor "
        "are not described by the header", data_size - expected);
  return TRUE;
}

static float
half_to_float (guint16 h)
{
  guint32 sign = (guint32) (h & 0x8000) << 16;
  guint32 exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  guint32 bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {                    /* subnormal: renormalise */
    exp = 113;
    while (!(mant & 0x400)) {
      mant <<= 1;
      exp--;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  memcpy (&f, &bits, sizeof f);
  return f;
}

static float
bf16_to_float (guint16 h)
{
  guint32 bits = (guint32) h << 16;
  float f;
  memcpy (&f, &bits, sizeof f);
  return f;
}

/* Returns the tensor as float32, mapped in place when it already is aligned
 * float32, else converted into a buffer the model owns. */
static const float *
tensor_as_float (VmoeModel *model, const Entry *e, const guint8 *data)
{
  const guint8 *src = data + e->begin;
  guint64 count = (e->end - e->begin) / dtypes[e->dtype].size;
  if (dtypes[e->dtype].kind == DTYPE_F32 && ((guintptr) src % sizeof (float)) == 0)
    return (const float *) src;
  float *dst = g_new (float, MAX (count, 1));
  g_ptr_array_add (model->owned, dst);
  for (guint64 i = 0; i < count; i++) {
    guint16 h;
    switch (dtypes[e->dtype].kind) {
      case DTYPE_F32:
        memcpy (&dst[i], src + 4 * i, 4);
        break;
      case DTYPE_F16:
        memcpy (&h, src + 2 * i, 2);
        dst[i] = half_to_float (GUINT16_FROM_LE (h));
        break;
      default:
        memcpy (&h, src + 2 * i, 2);
        dst[i] = bf16_to_float (GUINT16_FROM_LE (h));
        break;
    }
  }
  return dst;
}

static char *
shape_string (int ndim, const gint64 *shape)
{
  GString *s = g_string_new ("[");
  for (int i = 0; i < ndim; i++)
    g_string_append_printf (s, "%s%" G_GINT64_FORMAT, i ? ", " : "", shape[i]);
  g_string_append_c (s, ']');
  return g_string_free (s, FALSE);
}

/* Checks each tensor the config needs and resolves it to float32. */
static gboolean
load_tensors (VmoeModel *model, const Entry *entries, guint n,
    const guint8 *data, guint64 data_size, GHashTable *floats, GError **error)
{
  /* Each required tensor is a distinct entry of at least 2 bytes per value
   * (F16, BF16), and the entries tile the data section. */
  GPtrArray *specs = vmoe_config_tensor_specs_within (&model->config, TRUE, n,
      data_size / 2, error);
  if (!specs)
    return FALSE;
  GHashTable *by_name = g_hash_table_new (g_str_hash, g_str_equal);
  for (guint i = 0; i < n; i++)
    g_hash_table_insert (by_name, (gpointer) entries[i].name, (gpointer) &entries[i]);
  gboolean ok = TRUE;
  for (guint i = 0; ok && i < specs->len; i++) {
    const VmoeTensorSpec *spec = specs->pdata[i];
    const Entry *e = g_hash_table_lookup (by_name, spec->name);
    if (!e) {
      if (!spec->optional) {
        g_set_error (error, VMOE_ERROR, VMOE_ERROR_TENSOR,
            "tensor '%s' is required by the config but missing", spec->name);
        ok = FALSE;
      }
      continue;
    }
    if (e->ndim != spec->ndim
        || memcmp (e->shape, spec->shape, spec->ndim * sizeof (gint64)) != 0) {
      char *have = shape_string (e->ndim, e->shape);
      char *want = shape_string (spec->ndim, spec->shape);
      g_set_error (error, VMOE_ERROR, VMOE_ERROR_TENSOR,
          "tensor '%s' has shape %s, the config needs %s", spec->name, have, want);
      g_free (have);
      g_free (want);
      ok = FALSE;
      continue;
    }
    if (dtypes[e->dtype].kind == DTYPE_OTHER) {
      g_set_error (error, VMOE_ERROR, VMOE_ERROR_TENSOR,
          "tensor '%s' has dtype %s; only F32, F16 and BF16 load",
          spec->name, dtypes[e->dtype].name);
      ok = FALSE;
      continue;
    }
    const float *f = tensor_as_float (model, e, data);
    guint64 count = (e->end - e->begin) / dtypes[e->dtype].size;
    for (guint64 j = 0; j < count; j++) {
      if (!isfinite (f[j])) {
        g_set_error (error, VMOE_ERROR, VMOE_ERROR_TENSOR,
            "tensor '%s' holds a non-finite value (%g) at element %" G_GUINT64_FORMAT,
            spec->name, f[j], j);
        ok = FALSE;
        break;
      }
    }
    model->n_params += count;
    g_hash_table_insert (floats, g_strdup (spec->name), (gpointer) f);
  }
  g_ptr_array_unref (specs);
  g_hash_table_unref (by_name);
  return ok;
}

static const float *
lookup (GHashTable *floats, const char *fmt, ...) G_GNUC_PRINTF (2, 3);

static const float *
lookup (GHashTable *floats, const char *fmt, ...)
{
  va_list args;
  va_start (args, fmt);
  char *name = g_strdup_vprintf (fmt, args);
  va_end (args);
  const float *f = g_hash_table_lookup (floats, name);
  g_free (name);
  return f;
}

static VmoeLinear
linear (GHashTable *floats, const char *prefix, int in, int out)
{
  VmoeLinear l = { lookup (floats, "%s.weight", prefix),
    lookup (floats, "%s.bias", prefix), in, out };
  return l;
}

static VmoeMlp
mlp (GHashTable *floats, const char *prefix, int d, int m)
{
  char *fc1 = g_strdup_printf ("%s.fc1", prefix);
  char *fc2 = g_strdup_printf ("%s.fc2", prefix);
  VmoeMlp r = { linear (floats, fc1, d, m), linear (floats, fc2, m, d) };
  g_free (fc1);
  g_free (fc2);
  return r;
}

static void
resolve_weights (VmoeModel *model, GHashTable *floats)
{
  const VmoeConfig *c = &model->config;
  int d = c->embed_dim, p = c->patch_size;
  model->patch_embed = linear (floats, "patch_embed.proj", c->in_channels * p * p, d);
  model->cls_token = lookup (floats, "cls_token");
  model->pos_embed = lookup (floats, "pos_embed");
  model->router = linear (floats, "router", d, c->num_experts);
  model->norm_weight = lookup (floats, "norm.weight");
  model->norm_bias = lookup (floats, "norm.bias");
  model->head = linear (floats, "head", d, c->num_classes);
  model->blocks = g_new0 (VmoeBlock, c->depth);
  for (int i = 0; i < c->depth; i++) {
    VmoeBlock *b = &model->blocks[i];
    char *prefix = g_strdup_printf ("blocks.%d", i);
    char *name = g_strdup_printf ("%s.attn.qkv", prefix);
    b->qkv = linear (floats, name, d, 3 * d);
    g_free (name);
    name = g_strdup_printf ("%s.attn.proj", prefix);
    b->proj = linear (floats, name, d, d);
    g_free (name);
    b->norm1_weight = lookup (floats, "%s.norm1.weight", prefix);
    b->norm1_bias = lookup (floats, "%s.norm1.bias", prefix);
    b->norm2_weight = lookup (floats, "%s.norm2.weight", prefix);
    b->norm2_bias = lookup (floats, "%s.norm2.bias", prefix);
    b->is_moe = vmoe_config_block_is_moe (c, i);
    if (!b->is_moe) {
      name = g_strdup_printf ("%s.mlp", prefix);
      b->mlp = mlp (floats, name, d, c->mlp_dim);
      g_free (name);
    } else {
      b->experts = g_new0 (VmoeMlp, c->num_experts);
      for (int e = 0; e < c->num_experts; e++) {
        name = g_strdup_printf ("%s.moe.experts.%d", prefix, e);
        b->experts[e] = mlp (floats, name, d, c->expert_mlp_dim);
        g_free (name);
      }
      b->has_shared = c->shared_expert;
      if (b->has_shared) {
        name = g_strdup_printf ("%s.moe.shared", prefix);
        b->shared = mlp (floats, name, d, c->mlp_dim);
        g_free (name);
      }
      if (c->routing == VMOE_ROUTING_TOKEN) {
        name = g_strdup_printf ("%s.moe.router", prefix);
        b->router = linear (floats, name, d, c->num_experts);
        g_free (name);
      }
    }
    g_free (prefix);
  }
}

static gboolean
parse_file (VmoeModel *model, const char *path, GError **error)
{
  gsize mapped_size;
  const guint8 *bytes = g_bytes_get_data (model->bytes, &mapped_size);
  guint64 size = mapped_size;
  if (size < 8)
    return format_error (error, "'%s' is %" G_GUINT64_FORMAT " bytes, too short "
        "for the 8-byte header length", path, size);
  guint64 header_len;
  memcpy (&header_len, bytes, 8);
  header_len = GUINT64_FROM_LE (header_len);
  if (header_len > size - 8)
    return format_error (error, "header length %" G_GUINT64_FORMAT " exceeds the "
        "%" G_GUINT64_FORMAT " bytes after it (truncated file?)", header_len, size - 8);
  if (header_len > MAX_HEADER_BYTES)
    return format_error (error, "header length %" G_GUINT64_FORMAT " is over the "
        "%u-byte limit", header_len, MAX_HEADER_BYTES);
  guint64 data_size = size - 8 - header_len;
  const guint8 *data = bytes + 8 + header_len;

  JsonParser *parser = json_parser_new ();
  GError *json_error = NULL;
  Entry *entries = NULL;
  GHashTable *floats = NULL;
  gboolean ok = FALSE;
  VmoeJsonSize json_size;
  vmoe_json_measure ((const char *) bytes + 8, (gssize) header_len, &json_size);
  if (json_size.depth > VMOE_JSON_MAX_DEPTH) {
    format_error (error, "header nests deeper than %d levels of arrays and objects",
        VMOE_JSON_MAX_DEPTH);
    goto out;
  }
  if (json_size.values > MAX_HEADER_VALUES) {
    format_error (error, "header holds more than %d values", MAX_HEADER_VALUES);
    goto out;
  }
  if (header_len == 0 || !json_parser_load_from_data (parser,
          (const char *) bytes + 8, (gssize) header_len, &json_error)) {
    format_error (error, "header is not valid JSON: %s",
        json_error ? json_error->message : "empty");
    g_clear_error (&json_error);
    goto out;
  }
  JsonNode *root = json_parser_get_root (parser);
  if (!root || !JSON_NODE_HOLDS_OBJECT (root)) {
    format_error (error, "header is not a JSON object");
    goto out;
  }
  JsonObject *header = json_node_get_object (root);
  GList *members = json_object_get_members (header);
  entries = g_new0 (Entry, g_list_length (members) + 1);
  guint n = 0;
  const char *config_text = NULL;
  gboolean entries_ok = TRUE;
  for (GList *l = members; l && entries_ok; l = l->next) {
    const char *name = l->data;
    JsonNode *node = json_object_get_member (header, name);
    if (strcmp (name, "__metadata__") == 0) {
      if (!JSON_NODE_HOLDS_OBJECT (node)) {
        entries_ok = format_error (error, "'__metadata__' is not an object");
        break;
      }
      JsonNode *cfg = json_object_get_member (json_node_get_object (node), "vmoe.config");
      if (cfg && JSON_NODE_HOLDS_VALUE (cfg)
          && json_node_get_value_type (cfg) == G_TYPE_STRING)
        config_text = json_node_get_string (cfg);
      continue;
    }
    entries_ok = parse_entry (name, node, data_size, &entries[n++], error);
  }
  g_list_free (members);
  if (!entries_ok || !check_layout (entries, n, data_size, error))
    goto out;
  if (!config_text) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_CONFIG,
        "'__metadata__' has no string 'vmoe.config': not a vmoe model file");
    goto out;
  }
  if (!vmoe_config_parse (config_text, -1, &model->config, error))
    goto out;
  floats = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  if (!load_tensors (model, entries, n, data, data_size, floats, error))
    goto out;
  resolve_weights (model, floats);
  ok = TRUE;
out:
  if (floats)
    g_hash_table_unref (floats);
  g_free (entries);
  g_object_unref (parser);
  return ok;
}

/* What results are labelled with (the `model` of DL Streamer's JSON):
 * "models/fashion-vmoe.safetensors" is "fashion-vmoe". */
static char *
model_name_from_path (const char *path)
{
  char *base = g_path_get_basename (path);
  if (g_str_has_suffix (base, ".safetensors"))
    base[strlen (base) - strlen (".safetensors")] = '\0';
  return base;
}

/* `name` only names the model in errors. */
static VmoeModel *
model_new (GBytes *bytes, const char *name, GError **error)
{
  VmoeModel *model = g_new0 (VmoeModel, 1);
  model->refcount = 1;
  model->bytes = g_bytes_ref (bytes);
  model->owned = g_ptr_array_new_with_free_func (g_free);
  if (!parse_file (model, name, error)) {
    vmoe_model_unref (model);
    return NULL;
  }
  return model;
}

VmoeModel *
vmoe_model_new_from_bytes (GBytes *bytes, GError **error)
{
  g_return_val_if_fail (bytes != NULL, NULL);
  return model_new (bytes, "the model bytes", error);
}

VmoeModel *
vmoe_model_load (const char *path, GError **error)
{
  g_return_val_if_fail (path != NULL, NULL);
  GError *io_error = NULL;
  GMappedFile *file = g_mapped_file_new (path, FALSE, &io_error);
  if (!file) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_IO, "cannot open model '%s': %s",
        path, io_error->message);
    g_error_free (io_error);
    return NULL;
  }
  /* The bytes hold the mapping, so it lives as long as the model. */
  GBytes *bytes = g_mapped_file_get_bytes (file);
  g_mapped_file_unref (file);
  VmoeModel *model = model_new (bytes, path, error);
  g_bytes_unref (bytes);
  if (model) {
    model->name = model_name_from_path (path);
    model->file_mapped = TRUE;
  }
  return model;
}

void
vmoe_model_release_stored (const VmoeModel *model, const void *data, size_t bytes)
{
  gsize size;
  guintptr base = (guintptr) g_bytes_get_data (model->bytes, &size);
  guintptr begin = (guintptr) data, end = begin + bytes;
  if (!model->file_mapped || begin < base || end > base + size)
    return;
  /* The pages at the ends may hold neighbouring tensors, still read. */
  guintptr page = (guintptr) sysconf (_SC_PAGESIZE);
  begin = (begin + page - 1) & ~(page - 1);
  end &= ~(page - 1);
  /* Advice: where it fails the pages merely stay resident. */
  if (end > begin)
    madvise ((void *) begin, end - begin, MADV_DONTNEED);
}

VmoeModel *
vmoe_model_ref (VmoeModel *model)
{
  g_atomic_int_inc (&model->refcount);
  return model;
}

void
vmoe_model_unref (VmoeModel *model)
{
  if (!model || !g_atomic_int_dec_and_test (&model->refcount))
    return;
  vmoe_cpu_weights_free (model);
  if (model->blocks) {
    for (int i = 0; i < model->config.depth; i++)
      g_free (model->blocks[i].experts);
    g_free (model->blocks);
  }
  vmoe_config_clear (&model->config);
  g_ptr_array_unref (model->owned);
  g_bytes_unref (model->bytes);
  g_free (model->name);
  g_free (model);
}

const char *
vmoe_model_get_name (const VmoeModel *model)
{
  return model->name ? model->name : "";
}

const VmoeConfig *
vmoe_model_get_config (const VmoeModel *model)
{
  return &model->config;
}

int
vmoe_model_tokens (const VmoeModel *model)
{
  return vmoe_config_tokens (&model->config);
}

guint64
vmoe_model_parameter_count (const VmoeModel *model)
{
  return model->n_params;
}

guint64
vmoe_model_weight_bytes (const VmoeModel *model)
{
  return model->n_params * sizeof (float);
}

double
vmoe_model_flops (const VmoeModel *model, gboolean routed)
{
  const VmoeConfig *c = &model->config;
  double t = vmoe_config_tokens (c), np = vmoe_config_patches (c);
  double d = c->embed_dim;
  double flops = 2.0 * np * d * c->in_channels * c->patch_size * c->patch_size;
  /* E3: from the first MoE block's FFN on, every layer runs on M copies
   * (each routing among its own E/M experts), the head included. */
  double copies = 1;
  for (int i = 0; i < c->depth; i++) {
    double block = 2.0 * t * d * 3 * d       /* qkv */
        + 2.0 * 2 * t * t * d                /* scores and weighted values */
        + 2.0 * t * d * d;                   /* proj */
    flops += copies * block;
    if (!vmoe_config_block_is_moe (c, i)) {
      flops += copies * 2.0 * 2 * t * d * c->mlp_dim;
      continue;
    }
    copies = c->ensemble_members;
    double experts = routed ? c->top_k : c->num_experts / c->ensemble_members;
    double ffn = experts * 2.0 * 2 * t * d * c->expert_mlp_dim;
    if (c->shared_expert)
      ffn += 2.0 * 2 * t * d * c->mlp_dim;
    if (c->routing == VMOE_ROUTING_TOKEN)
      ffn += 2.0 * t * d * c->num_experts / c->ensemble_members;
    flops += copies * ffn;
  }
  if (c->routing == VMOE_ROUTING_IMAGE)
    flops += 2.0 * d * c->num_experts;
  flops += copies * 2.0 * d * c->num_classes;
  return flops;
}
