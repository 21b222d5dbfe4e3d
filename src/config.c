/* Parsing and validation of the "vmoe.config" JSON (docs/design.md, The model file).
 * Defaults for optional keys are listed in docs/model-format.md. */
#include "vmoe-private.h"

#include <float.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

/* Bounds that keep a hostile config from asking for absurd buffers before any
 * tensor shape is checked against the file. */
#define MAX_IMAGE_SIDE 8192
#define MAX_TOKENS 16384
#define MAX_WIDTH 65536
#define MAX_DEPTH 1024
#define MAX_CLASSES 1000000
#define MAX_EXPERTS 4096
/* The labels and the superclasses' class lists may each name every class. */
#define MAX_CONFIG_VALUES (2 * MAX_CLASSES + 65536)

G_DEFINE_QUARK (vmoe-error-quark, vmoe_error)

static gboolean
config_error (GError **error, const char *key, const char *fmt, ...)
    G_GNUC_PRINTF (3, 4);

static gboolean
config_error (GError **error, const char *key, const char *fmt, ...)
{
  va_list args;
  va_start (args, fmt);
  char *what = g_strdup_vprintf (fmt, args);
  va_end (args);
  g_set_error (error, VMOE_ERROR, VMOE_ERROR_CONFIG, "vmoe.config: '%s' %s",
      key, what);
  g_free (what);
  return FALSE;
}

/* Reads an integer member; absent members take `fallback` unless required. */
static gboolean
get_int (JsonObject *obj, const char *key, gboolean required, gint64 fallback,
    gint64 min, gint64 max, int *out, GError **error)
{
  if (!json_object_has_member (obj, key)) {
    if (required)
      return config_error (error, key, "is required but missing");
    *out = (int) fallback;
    return TRUE;
  }
  JsonNode *node = json_object_get_member (obj, key);
  if (!JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_INT64)
    return config_error (error, key, "must be an integer");
  gint64 v = json_node_get_int (node);
  if (v < min || v > max)
    return config_error (error, key, "is %" G_GINT64_FORMAT
        ", outside [%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT "]", v, min, max);
  *out = (int) v;
  return TRUE;
}

static gboolean
node_get_number (JsonNode *node, double *out)
{
  if (!JSON_NODE_HOLDS_VALUE (node))
    return FALSE;
  GType t = json_node_get_value_type (node);
  if (t == G_TYPE_INT64)
    *out = (double) json_node_get_int (node);
  else if (t == G_TYPE_DOUBLE)
    *out = json_node_get_double (node);
  else
    return FALSE;
  return isfinite (*out);
}

static gboolean
get_double (JsonObject *obj, const char *key, double fallback, double *out,
    GError **error)
{
  if (!json_object_has_member (obj, key)) {
    *out = fallback;
    return TRUE;
  }
  if (!node_get_number (json_object_get_member (obj, key), out))
    return config_error (error, key, "must be a finite number");
  return TRUE;
}

static gboolean
get_bool (JsonObject *obj, const char *key, gboolean fallback, gboolean *out,
    GError **error)
{
  if (!json_object_has_member (obj, key)) {
    *out = fallback;
    return TRUE;
  }
  JsonNode *node = json_object_get_member (obj, key);
  if (!JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_BOOLEAN)
    return config_error (error, key, "must be true or false");
  *out = json_node_get_boolean (node);
  return TRUE;
}

/* Reads a string member and maps it onto one of `choices`. */
static gboolean
get_choice (JsonObject *obj, const char *key, const char *const *choices,
    int fallback, int *out, GError **error)
{
  if (!json_object_has_member (obj, key)) {
    *out = fallback;
    return TRUE;
  }
  JsonNode *node = json_object_get_member (obj, key);
  const char *s = NULL;
  if (JSON_NODE_HOLDS_VALUE (node) && json_node_get_value_type (node) == G_TYPE_STRING)
    s = json_node_get_string (node);
  for (int i = 0; s && choices[i]; i++) {
    if (strcmp (s, choices[i]) == 0) {
      *out = i;
      return TRUE;
    }
  }
  char *list = g_strjoinv ("\", \"", (char **) choices);
  config_error (error, key, "must be one of \"%s\"", list);
  g_free (list);
  return FALSE;
}

static JsonArray *
get_array (JsonObject *obj, const char *key, GError **error)
{
  JsonNode *node = json_object_get_member (obj, key);
  if (!JSON_NODE_HOLDS_ARRAY (node)) {
    config_error (error, key, "must be an array");
    return NULL;
  }
  return json_node_get_array (node);
}

static gboolean
get_floats (JsonObject *obj, const char *key, int expected, float fallback,
    float *out, GError **error)
{
  if (!json_object_has_member (obj, key)) {
    for (int i = 0; i < expected; i++)
      out[i] = fallback;
    return TRUE;
  }
  JsonArray *arr = get_array (obj, key, error);
  if (!arr)
    return FALSE;
  if ((int) json_array_get_length (arr) != expected)
    return config_error (error, key, "has %u values, in_channels is %d",
        json_array_get_length (arr), expected);
  for (int i = 0; i < expected; i++) {
    double v;
    /* Converting a double beyond float's range is undefined behaviour. */
    if (!node_get_number (json_array_get_element (arr, i), &v) || fabs (v) > FLT_MAX)
      return config_error (error, key, "must hold finite numbers within float range");
    out[i] = (float) v;
  }
  return TRUE;
}

static gboolean
parse_image_size (JsonObject *obj, VmoeConfig *c, GError **error)
{
  const char *key = "image_size";
  if (!json_object_has_member (obj, key))
    return config_error (error, key, "is required but missing");
  JsonNode *node = json_object_get_member (obj, key);
  gint64 hw[2];
  if (JSON_NODE_HOLDS_VALUE (node) && json_node_get_value_type (node) == G_TYPE_INT64) {
    hw[0] = hw[1] = json_node_get_int (node);
  } else if (JSON_NODE_HOLDS_ARRAY (node)
      && json_array_get_length (json_node_get_array (node)) == 2) {
    JsonArray *arr = json_node_get_array (node);
    for (int i = 0; i < 2; i++) {
      JsonNode *e = json_array_get_element (arr, i);
      if (!JSON_NODE_HOLDS_VALUE (e) || json_node_get_value_type (e) != G_TYPE_INT64)
        return config_error (error, key, "must be [height, width] integers");
      hw[i] = json_node_get_int (e);
    }
  } else {
    return config_error (error, key, "must be [height, width] or an integer");
  }
  for (int i = 0; i < 2; i++)
    if (hw[i] < 1 || hw[i] > MAX_IMAGE_SIDE)
      return config_error (error, key, "side %" G_GINT64_FORMAT
          " is outside [1, %d]", hw[i], MAX_IMAGE_SIDE);
  c->image_h = (int) hw[0];
  c->image_w = (int) hw[1];
  return TRUE;
}

static gboolean
parse_labels (JsonObject *obj, VmoeConfig *c, GError **error)
{
  c->labels = g_new0 (char *, c->num_classes + 1);
  if (!json_object_has_member (obj, "labels")) {
    for (int i = 0; i < c->num_classes; i++)
      c->labels[i] = g_strdup_printf ("class %d", i);
    return TRUE;
  }
  JsonArray *arr = get_array (obj, "labels", error);
  if (!arr)
    return FALSE;
  if ((int) json_array_get_length (arr) != c->num_classes)
    return config_error (error, "labels", "has %u entries, num_classes is %d",
        json_array_get_length (arr), c->num_classes);
  for (int i = 0; i < c->num_classes; i++) {
    JsonNode *e = json_array_get_element (arr, i);
    if (!JSON_NODE_HOLDS_VALUE (e) || json_node_get_value_type (e) != G_TYPE_STRING)
      return config_error (error, "labels", "entry %d is not a string", i);
    c->labels[i] = g_strdup (json_node_get_string (e));
  }
  return TRUE;
}

static int
compare_int (gconstpointer a, gconstpointer b)
{
  return *(const int *) a - *(const int *) b;
}

static gboolean
parse_superclasses (JsonObject *moe, VmoeConfig *c, GError **error)
{
  if (!json_object_has_member (moe, "superclasses"))
    return TRUE;
  JsonArray *arr = get_array (moe, "superclasses", error);
  if (!arr)
    return FALSE;
  int n = (int) json_array_get_length (arr);
  if (n != c->num_experts)
    return config_error (error, "moe.superclasses",
        "has %d entries, num_experts is %d (superclass e names expert e)",
        n, c->num_experts);
  c->superclasses = g_new0 (VmoeSuperclass, n);
  c->n_superclasses = n;
  for (int i = 0; i < n; i++) {
    JsonNode *e = json_array_get_element (arr, i);
    if (!JSON_NODE_HOLDS_OBJECT (e))
      return config_error (error, "moe.superclasses", "entry %d is not an object", i);
    JsonObject *o = json_node_get_object (e);
    JsonNode *name = json_object_get_member (o, "name");
    if (!name || !JSON_NODE_HOLDS_VALUE (name)
        || json_node_get_value_type (name) != G_TYPE_STRING)
      return config_error (error, "moe.superclasses", "entry %d has no string 'name'", i);
    VmoeSuperclass *s = &c->superclasses[i];
    s->name = g_strdup (json_node_get_string (name));
    if (!json_object_has_member (o, "classes"))
      continue;
    JsonArray *cls = get_array (o, "classes", error);
    if (!cls)
      return FALSE;
    s->n_classes = (int) json_array_get_length (cls);
    s->classes = g_new0 (int, s->n_classes);
    for (int j = 0; j < s->n_classes; j++) {
      JsonNode *v = json_array_get_element (cls, j);
      if (!JSON_NODE_HOLDS_VALUE (v) || json_node_get_value_type (v) != G_TYPE_INT64
          || json_node_get_int (v) < 0 || json_node_get_int (v) >= c->num_classes)
        return config_error (error, "moe.superclasses",
            "entry %d lists a class outside [0, %d)", i, c->num_classes);
      s->classes[j] = (int) json_node_get_int (v);
    }
  }
  return TRUE;
}

static gboolean
parse_moe (JsonObject *root, VmoeConfig *c, GError **error)
{
  c->routing = VMOE_ROUTING_NONE;
  c->ensemble_members = 1;
  if (!json_object_has_member (root, "moe")
      || JSON_NODE_HOLDS_NULL (json_object_get_member (root, "moe")))
    return TRUE;
  JsonNode *node = json_object_get_member (root, "moe");
  if (!JSON_NODE_HOLDS_OBJECT (node))
    return config_error (error, "moe", "must be an object");
  JsonObject *moe = json_node_get_object (node);

  if (!json_object_has_member (moe, "layers"))
    return config_error (error, "moe.layers", "is required but missing");
  JsonArray *layers = get_array (moe, "layers", error);
  if (!layers)
    return FALSE;
  int n = (int) json_array_get_length (layers);
  if (n < 1 || n > c->depth)
    return config_error (error, "moe.layers", "must list 1 to depth (%d) blocks", c->depth);
  c->moe_layers = g_new0 (int, n);
  c->n_moe_layers = n;
  for (int i = 0; i < n; i++) {
    JsonNode *v = json_array_get_element (layers, i);
    if (!JSON_NODE_HOLDS_VALUE (v) || json_node_get_value_type (v) != G_TYPE_INT64
        || json_node_get_int (v) < 0 || json_node_get_int (v) >= c->depth)
      return config_error (error, "moe.layers",
          "entry %d is not a block index inside depth %d", i, c->depth);
    c->moe_layers[i] = (int) json_node_get_int (v);
  }
  qsort (c->moe_layers, n, sizeof (int), compare_int);
  for (int i = 1; i < n; i++)
    if (c->moe_layers[i] == c->moe_layers[i - 1])
      return config_error (error, "moe.layers", "lists block %d twice", c->moe_layers[i]);

  static const char *const routings[] = { "image", "token", NULL };
  static const char *const inputs[] = { "cls", "mean", NULL };
  int routing, router_input;
  if (!get_int (moe, "num_experts", TRUE, 0, 1, MAX_EXPERTS, &c->num_experts, error)
      || !get_int (moe, "top_k", FALSE, 1, 1, MAX_EXPERTS, &c->top_k, error)
      || !get_choice (moe, "routing", routings, 0, &routing, error)
      || !get_choice (moe, "router_input", inputs, 0, &router_input, error)
      || !get_bool (moe, "normalize_gates", FALSE, &c->normalize_gates, error)
      || !get_int (moe, "expert_mlp_dim", FALSE, c->mlp_dim, 1, MAX_WIDTH,
          &c->expert_mlp_dim, error)
      || !get_bool (moe, "shared_expert", FALSE, &c->shared_expert, error)
      || !get_double (moe, "capacity_ratio", 1.0, &c->capacity_ratio, error)
      || !get_bool (moe, "bpr", TRUE, &c->bpr, error)
      || !get_int (moe, "ensemble_members", FALSE, 1, 1, MAX_EXPERTS,
          &c->ensemble_members, error))
    return FALSE;
  c->routing = routing == 0 ? VMOE_ROUTING_IMAGE : VMOE_ROUTING_TOKEN;
  c->router_input = router_input == 0 ? VMOE_ROUTER_INPUT_CLS : VMOE_ROUTER_INPUT_MEAN;
  /* E3 (docs/design.md, Ensembles of expert paths): member m routes among
   * its partition's E/M experts. */
  if (c->num_experts % c->ensemble_members)
    return config_error (error, "moe.ensemble_members",
        "is %d, which does not divide num_experts %d", c->ensemble_members,
        c->num_experts);
  int per_member = c->num_experts / c->ensemble_members;
  if (c->top_k > per_member)
    return config_error (error, "moe.top_k", c->ensemble_members > 1
        ? "is %d, more than the %d experts of each ensemble member"
        : "is %d, more than num_experts %d", c->top_k, per_member);
  if (c->capacity_ratio <= 0 || c->capacity_ratio > 1e6)
    return config_error (error, "moe.capacity_ratio", "must be in (0, 1e6]");
  if (c->routing == VMOE_ROUTING_IMAGE && c->router_input == VMOE_ROUTER_INPUT_CLS
      && !c->class_token)
    return config_error (error, "moe.router_input",
        "is \"cls\" but the model has no class token");
  return parse_superclasses (moe, c, error);
}

static gboolean
parse_root (JsonObject *root, VmoeConfig *c, GError **error)
{
  static const char *const acts[] = { "gelu", "gelu_tanh", NULL };
  static const char *const pools[] = { "token", "avg", NULL };
  static const char *const resizes[] = { "bilinear", NULL };
  static const char *const aspects[] = { "crop", "stretch", NULL };
  int act, pool, resize, aspect, version;

  JsonNode *format = json_object_get_member (root, "format");
  if (!format || !JSON_NODE_HOLDS_VALUE (format)
      || json_node_get_value_type (format) != G_TYPE_STRING
      || strcmp (json_node_get_string (format), "vmoe") != 0)
    return config_error (error, "format", "must be \"vmoe\"");
  if (!get_int (root, "version", TRUE, 0, 1, 1, &version, error)
      || !parse_image_size (root, c, error)
      || !get_int (root, "patch_size", TRUE, 0, 1, MAX_IMAGE_SIDE, &c->patch_size, error)
      || !get_int (root, "in_channels", FALSE, 3, 1, 3, &c->in_channels, error)
      || !get_int (root, "embed_dim", TRUE, 0, 1, MAX_WIDTH, &c->embed_dim, error)
      || !get_int (root, "depth", TRUE, 0, 1, MAX_DEPTH, &c->depth, error)
      || !get_int (root, "num_heads", TRUE, 0, 1, MAX_WIDTH, &c->num_heads, error)
      || !get_int (root, "mlp_dim", TRUE, 0, 1, MAX_WIDTH, &c->mlp_dim, error)
      || !get_bool (root, "qkv_bias", TRUE, &c->qkv_bias, error)
      || !get_double (root, "norm_eps", 1e-6, &c->norm_eps, error)
      || !get_choice (root, "act", acts, 0, &act, error)
      || !get_bool (root, "class_token", TRUE, &c->class_token, error)
      || !get_choice (root, "pool", pools, 0, &pool, error)
      || !get_int (root, "num_classes", TRUE, 0, 1, MAX_CLASSES, &c->num_classes, error)
      || !get_choice (root, "resize", resizes, 0, &resize, error)
      || !get_double (root, "crop_pct", 1.0, &c->crop_pct, error)
      || !get_choice (root, "aspect", aspects, 0, &aspect, error))
    return FALSE;
  c->aspect = aspect == 0 ? VMOE_ASPECT_CROP : VMOE_ASPECT_STRETCH;
  c->act = act == 0 ? VMOE_ACT_GELU : VMOE_ACT_GELU_TANH;
  c->pool = pool == 0 ? VMOE_POOL_TOKEN : VMOE_POOL_AVG;

  if (c->in_channels == 2)
    return config_error (error, "in_channels", "must be 1 or 3");
  if (c->image_h % c->patch_size || c->image_w % c->patch_size)
    return config_error (error, "patch_size", "%d does not divide image_size %dx%d",
        c->patch_size, c->image_h, c->image_w);
  if (vmoe_config_tokens (c) > MAX_TOKENS)
    return config_error (error, "patch_size", "gives %d tokens, more than %d",
        vmoe_config_tokens (c), MAX_TOKENS);
  if (c->embed_dim % c->num_heads)
    return config_error (error, "num_heads", "%d does not divide embed_dim %d",
        c->num_heads, c->embed_dim);
  if (!(c->norm_eps > 0 && c->norm_eps <= FLT_MAX))
    return config_error (error, "norm_eps", "must be positive and within float range");
  if (c->pool == VMOE_POOL_TOKEN && !c->class_token)
    return config_error (error, "pool", "is \"token\" but class_token is false");
  if (!(c->crop_pct > 0 && c->crop_pct <= 1))
    return config_error (error, "crop_pct", "must be in (0, 1]");
  if (!get_floats (root, "mean", c->in_channels, 0.5f, c->mean, error)
      || !get_floats (root, "std", c->in_channels, 0.5f, c->std, error))
    return FALSE;
  for (int i = 0; i < c->in_channels; i++)
    if (!isfinite (1.0f / c->std[i]))
      return config_error (error, "std", "channel %d is zero or too small to divide by", i);
  return parse_labels (root, c, error) && parse_moe (root, c, error);
}

gboolean
vmoe_config_parse (const char *json_text, gssize length, VmoeConfig *config,
    GError **error)
{
  memset (config, 0, sizeof *config);
  JsonParser *parser = json_parser_new ();
  GError *json_error = NULL;
  gboolean ok = FALSE;
  JsonNode *root = NULL;
  VmoeJsonSize size;
  vmoe_json_measure (json_text, length, &size);
  if (size.depth > VMOE_JSON_MAX_DEPTH) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_CONFIG,
        "vmoe.config nests deeper than %d levels of arrays and objects",
        VMOE_JSON_MAX_DEPTH);
  } else if (size.values > MAX_CONFIG_VALUES) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_CONFIG,
        "vmoe.config holds more than %d values", MAX_CONFIG_VALUES);
  } else if (!json_parser_load_from_data (parser, json_text, length, &json_error)) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_CONFIG,
        "vmoe.config is not valid JSON: %s", json_error->message);
    g_error_free (json_error);
  } else if (!(root = json_parser_get_root (parser))
      || !JSON_NODE_HOLDS_OBJECT (root)) {
    /* Empty text parses, to no root at all. */
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_CONFIG,
        "vmoe.config must be a JSON object");
  } else {
    ok = parse_root (json_node_get_object (root), config, error);
  }
  g_object_unref (parser);
  if (!ok)
    vmoe_config_clear (config);
  return ok;
}

void
vmoe_config_clear (VmoeConfig *config)
{
  g_strfreev (config->labels);
  g_free (config->moe_layers);
  for (int i = 0; i < config->n_superclasses; i++) {
    g_free (config->superclasses[i].name);
    g_free (config->superclasses[i].classes);
  }
  g_free (config->superclasses);
  memset (config, 0, sizeof *config);
}

int
vmoe_config_patches (const VmoeConfig *c)
{
  return (c->image_h / c->patch_size) * (c->image_w / c->patch_size);
}

int
vmoe_config_tokens (const VmoeConfig *c)
{
  return vmoe_config_patches (c) + (c->class_token ? 1 : 0);
}

size_t
vmoe_config_input_floats (const VmoeConfig *c)
{
  return (size_t) c->in_channels * c->image_h * c->image_w;
}

gboolean
vmoe_config_block_is_moe (const VmoeConfig *c, int block)
{
  for (int i = 0; i < c->n_moe_layers; i++)
    if (c->moe_layers[i] == block)
      return TRUE;
  return FALSE;
}

int
vmoe_token_capacity (int top_k, int tokens, double capacity_ratio, int num_experts,
    int members)
{
  /* Same expression and evaluation order as training/vmoe_torch.py, so both
   * round identically; an E3 member routes among num_experts / members. */
  double c = ceil ((double) top_k * tokens * capacity_ratio * members / num_experts);
  return c < 1 ? 1 : (int) MIN (c, (double) top_k * tokens);
}

/* Builds the spec list and counts the required tensors and their elements as
 * it goes, so that a config asking for more than a file can hold stops at
 * the bound instead of first listing millions of specs. */
typedef struct {
  GPtrArray *specs;
  guint64 required, elements;
  guint64 max_required, max_elements;
  gboolean over;
} SpecList;

static void
add_spec (SpecList *list, gboolean optional, int ndim, const gint64 *shape,
    const char *fmt, ...) G_GNUC_PRINTF (5, 6);

static void
add_spec (SpecList *list, gboolean optional, int ndim, const gint64 *shape,
    const char *fmt, ...)
{
  if (list->over)
    return;
  if (!optional) {
    guint64 count = 1;
    gboolean fits = TRUE;
    for (int i = 0; i < ndim; i++)
      fits = fits && g_uint64_checked_mul (&count, count, (guint64) shape[i]);
    fits = fits && g_uint64_checked_add (&list->elements, list->elements, count);
    list->required++;
    if (!fits || list->required > list->max_required
        || list->elements > list->max_elements) {
      list->over = TRUE;
      return;
    }
  }
  VmoeTensorSpec *s = g_new0 (VmoeTensorSpec, 1);
  va_list args;
  va_start (args, fmt);
  s->name = g_strdup_vprintf (fmt, args);
  va_end (args);
  s->ndim = ndim;
  memcpy (s->shape, shape, ndim * sizeof (gint64));
  s->optional = optional;
  g_ptr_array_add (list->specs, s);
}

static void
spec_free (gpointer p)
{
  VmoeTensorSpec *s = p;
  g_free (s->name);
  g_free (s);
}

static void
add_mlp_specs (SpecList *list, const char *prefix, gint64 d, gint64 m)
{
  add_spec (list, FALSE, 2, (gint64[]) { m, d }, "%s.fc1.weight", prefix);
  add_spec (list, FALSE, 1, (gint64[]) { m }, "%s.fc1.bias", prefix);
  add_spec (list, FALSE, 2, (gint64[]) { d, m }, "%s.fc2.weight", prefix);
  add_spec (list, FALSE, 1, (gint64[]) { d }, "%s.fc2.bias", prefix);
}

GPtrArray *
vmoe_config_tensor_specs_within (const VmoeConfig *c, gboolean include_optional,
    guint64 max_tensors, guint64 max_elements, GError **error)
{
  SpecList list = { g_ptr_array_new_with_free_func (spec_free), 0, 0,
    max_tensors, max_elements, FALSE };
  SpecList *l = &list;
  gint64 d = c->embed_dim, p = c->patch_size, e = c->num_experts;
  add_spec (l, FALSE, 4, (gint64[]) { d, c->in_channels, p, p },
      "patch_embed.proj.weight");
  add_spec (l, FALSE, 1, (gint64[]) { d }, "patch_embed.proj.bias");
  if (c->class_token)
    add_spec (l, FALSE, 3, (gint64[]) { 1, 1, d }, "cls_token");
  add_spec (l, FALSE, 3, (gint64[]) { 1, vmoe_config_tokens (c), d }, "pos_embed");
  if (c->routing == VMOE_ROUTING_IMAGE) {
    add_spec (l, FALSE, 2, (gint64[]) { e, d }, "router.weight");
    add_spec (l, TRUE, 1, (gint64[]) { e }, "router.bias");
  }
  for (int i = 0; i < c->depth && !l->over; i++) {
    add_spec (l, FALSE, 1, (gint64[]) { d }, "blocks.%d.norm1.weight", i);
    add_spec (l, FALSE, 1, (gint64[]) { d }, "blocks.%d.norm1.bias", i);
    add_spec (l, FALSE, 2, (gint64[]) { 3 * d, d }, "blocks.%d.attn.qkv.weight", i);
    if (c->qkv_bias)
      add_spec (l, FALSE, 1, (gint64[]) { 3 * d }, "blocks.%d.attn.qkv.bias", i);
    add_spec (l, FALSE, 2, (gint64[]) { d, d }, "blocks.%d.attn.proj.weight", i);
    add_spec (l, FALSE, 1, (gint64[]) { d }, "blocks.%d.attn.proj.bias", i);
    add_spec (l, FALSE, 1, (gint64[]) { d }, "blocks.%d.norm2.weight", i);
    add_spec (l, FALSE, 1, (gint64[]) { d }, "blocks.%d.norm2.bias", i);
    if (!vmoe_config_block_is_moe (c, i)) {
      char *prefix = g_strdup_printf ("blocks.%d.mlp", i);
      add_mlp_specs (l, prefix, d, c->mlp_dim);
      g_free (prefix);
      continue;
    }
    if (c->routing == VMOE_ROUTING_TOKEN) {
      add_spec (l, FALSE, 2, (gint64[]) { e, d }, "blocks.%d.moe.router.weight", i);
      add_spec (l, TRUE, 1, (gint64[]) { e }, "blocks.%d.moe.router.bias", i);
    }
    for (int x = 0; x < c->num_experts && !l->over; x++) {
      char *prefix = g_strdup_printf ("blocks.%d.moe.experts.%d", i, x);
      add_mlp_specs (l, prefix, d, c->expert_mlp_dim);
      g_free (prefix);
    }
    if (c->shared_expert) {
      /* docs/design.md: the shared expert has the dense MLP's shape. */
      char *prefix = g_strdup_printf ("blocks.%d.moe.shared", i);
      add_mlp_specs (l, prefix, d, c->mlp_dim);
      g_free (prefix);
    }
  }
  add_spec (l, FALSE, 1, (gint64[]) { d }, "norm.weight");
  add_spec (l, FALSE, 1, (gint64[]) { d }, "norm.bias");
  add_spec (l, FALSE, 2, (gint64[]) { c->num_classes, d }, "head.weight");
  add_spec (l, FALSE, 1, (gint64[]) { c->num_classes }, "head.bias");
  if (l->over) {
    if (l->required > max_tensors)
      g_set_error (error, VMOE_ERROR, VMOE_ERROR_TENSOR, "the config needs more "
          "than the %" G_GUINT64_FORMAT " tensors the header declares", max_tensors);
    else
      g_set_error (error, VMOE_ERROR, VMOE_ERROR_TENSOR, "the config needs more "
          "than %" G_GUINT64_FORMAT " weights, the most its data section can hold",
          max_elements);
    g_ptr_array_unref (l->specs);
    return NULL;
  }
  if (!include_optional) {
    for (guint i = l->specs->len; i-- > 0;)
      if (((VmoeTensorSpec *) l->specs->pdata[i])->optional)
        g_ptr_array_remove_index (l->specs, i);
  }
  return l->specs;
}

GPtrArray *
vmoe_config_tensor_specs (const VmoeConfig *c, gboolean include_optional)
{
  return vmoe_config_tensor_specs_within (c, include_optional, G_MAXUINT64,
      G_MAXUINT64, NULL);
}
