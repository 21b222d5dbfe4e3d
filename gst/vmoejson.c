/* The MoE fields of a classification as JSON (vmoejson.h). */
#include "vmoejson.h"

#include <math.h>

void
vmoe_json_add_double (JsonBuilder *b, gdouble value)
{
  if (isfinite (value))
    json_builder_add_double_value (b, value);
  else
    json_builder_add_null_value (b);
}

static void
add_int_array (JsonBuilder *b, const gint *values, guint n)
{
  json_builder_begin_array (b);
  for (guint i = 0; i < n; i++)
    json_builder_add_int_value (b, values[i]);
  json_builder_end_array (b);
}

static void
add_double_array (JsonBuilder *b, const gfloat *values, guint n)
{
  json_builder_begin_array (b);
  for (guint i = 0; i < n; i++)
    vmoe_json_add_double (b, values[i]);
  json_builder_end_array (b);
}

/* E3: `members` [{experts, gates, class}], member 0 first (experts and gates
 * only with image routing), then `entropy` and `disagreement`. */
static void
add_members (JsonBuilder *b, const VmoeJsonRouting *r)
{
  guint k = r->n_experts / r->n_members;
  json_builder_set_member_name (b, "members");
  json_builder_begin_array (b);
  for (guint m = 0; m < r->n_members; m++) {
    json_builder_begin_object (b);
    if (k) {
      json_builder_set_member_name (b, "experts");
      add_int_array (b, r->experts + m * k, k);
      json_builder_set_member_name (b, "gates");
      add_double_array (b, r->gates + m * k, k);
    }
    json_builder_set_member_name (b, "class");
    json_builder_add_int_value (b, r->member_classes[m]);
    json_builder_end_object (b);
  }
  json_builder_end_array (b);
  json_builder_set_member_name (b, "entropy");
  vmoe_json_add_double (b, r->entropy);
  json_builder_set_member_name (b, "disagreement");
  vmoe_json_add_double (b, r->disagreement);
}

void
vmoe_json_add_routing (JsonBuilder *b, const VmoeJsonRouting *r)
{
  if (r->n_experts) {
    json_builder_set_member_name (b, "experts");
    add_int_array (b, r->experts, r->n_experts);
    json_builder_set_member_name (b, "gates");
    add_double_array (b, r->gates, r->n_experts);
  }
  if (r->n_layers) {
    json_builder_set_member_name (b, "layers");
    json_builder_begin_array (b);
    for (guint l = 0; l < r->n_layers; l++) {
      const VmoeJsonLayer *layer = &r->layers[l];
      json_builder_begin_object (b);
      json_builder_set_member_name (b, "block");
      json_builder_add_int_value (b, layer->block);
      if (r->n_members > 1) {
        json_builder_set_member_name (b, "member");
        json_builder_add_int_value (b, layer->member);
      }
      json_builder_set_member_name (b, "tokens_per_expert");
      json_builder_begin_array (b);
      for (guint e = 0; e < layer->n_experts; e++)
        json_builder_add_int_value (b, layer->tokens_per_expert[e]);
      json_builder_end_array (b);
      json_builder_set_member_name (b, "dropped");
      json_builder_add_int_value (b, layer->dropped);
      json_builder_end_object (b);
    }
    json_builder_end_array (b);
  }
  if (r->n_members > 1)
    add_members (b, r);
  if (r->uncertain) {
    json_builder_set_member_name (b, "uncertain");
    json_builder_add_boolean_value (b, TRUE);
  }
}

gchar *
vmoe_json_to_string (JsonBuilder *b, gint indent)
{
  JsonNode *root = json_builder_get_root (b);
  JsonGenerator *gen = json_generator_new ();
  json_generator_set_root (gen, root);
  if (indent >= 0) {
    json_generator_set_pretty (gen, TRUE);
    json_generator_set_indent (gen, (guint) indent);
    json_generator_set_indent_char (gen, ' ');
  }
  gchar *text = json_generator_to_data (gen, NULL);
  g_object_unref (gen);
  json_node_unref (root);
  return text;
}
