/* The MoE fields of one classification as JSON: `experts`, `gates` and
 * `layers`, written the same way by `vmoe run` and by vmoemetaconvert
 * (docs/design.md, Results as JSON).
 *
 * The two callers hold their results in different structs (the engine's
 * VmoeImageResult, the element's GstVmoeMeta and ROI params), so they fill
 * this neutral view.  GStreamer-free: tools/vmoe.c compiles it too, also
 * when the plugin is not built. */
#ifndef VMOE_JSON_H
#define VMOE_JSON_H

#include <json-glib/json-glib.h>

G_BEGIN_DECLS

/* Token routing statistics of one MoE block (of one E3 member). */
typedef struct {
  gint block;
  guint n_experts;                /* entries of tokens_per_expert */
  const guint *tokens_per_expert;
  gint dropped;                   /* assignments over capacity */
  gint member;                    /* E3 member; written with n_members > 1 */
} VmoeJsonLayer;

typedef struct {
  guint n_experts;                /* image routing: chosen experts, else 0 */
  const gint *experts;
  const gfloat *gates;
  guint n_layers;                 /* token routing: per MoE block, else 0 */
  const VmoeJsonLayer *layers;
  /* E3 ensembles (docs/design.md): with n_members > 1, `members` (each
   * one's share of experts and gates, n_experts / n_members, and its top-1
   * class), `entropy` and `disagreement` are written, and each layer's
   * `member`; 0 or 1 writes none of them. */
  guint n_members;
  const gint *member_classes;     /* n_members */
  gdouble entropy, disagreement;
  /* vmoeclassify's entropy-threshold mark: `"uncertain": true` when set. */
  gboolean uncertain;
} VmoeJsonRouting;

/* Adds `value`, or null where it is not finite: JSON has no NaN or
 * infinity, and a consumer must not parse a made-up number. */
void vmoe_json_add_double (JsonBuilder *builder, gdouble value);

/* Adds the members `experts` and `gates` (when n_experts > 0), `layers`
 * (when n_layers > 0), the ensemble's `members`, `entropy` and
 * `disagreement` (when n_members > 1) and `uncertain` (when set) to the
 * object being built. */
void vmoe_json_add_routing (JsonBuilder *builder, const VmoeJsonRouting *routing);

/* The finished document of `builder` as text: compact for indent < 0, else
 * pretty-printed with `indent` spaces. */
gchar *vmoe_json_to_string (JsonBuilder *builder, gint indent);

G_END_DECLS

#endif
