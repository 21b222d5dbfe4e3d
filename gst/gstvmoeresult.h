/* The element's own copy of one classification.  The engine's
 * VmoeImageResult lives only until the session's next run; this copy is
 * what later frames carry (inference-interval, QoS) and the one source of
 * both the GstVmoeMeta and the `vmoe` bus message. */
#ifndef GST_VMOE_RESULT_H
#define GST_VMOE_RESULT_H

#include <gst/gst.h>
#include <vmoe/vmoe.h>

#include "gstvmoemeta.h"

G_BEGIN_DECLS

typedef struct {
  VmoeModel *model;               /* a reference: it owns the label strings */
  GstClockTime latency;           /* inference time, ns */
  guint n_top;
  gint *top_classes;
  gfloat *top_scores;
  const gchar **top_labels;
  guint n_experts;                /* image routing */
  gint *experts;
  gfloat *gates;
  const gchar *superclass;        /* of the first expert, NULL if unnamed */
  guint n_layers;                 /* token routing: per block (and E3 member) */
  guint layer_experts;            /* tokens_per_expert entries per layer (E/M) */
  gint *blocks;
  gint *layer_members;            /* the E3 member of each layer */
  gint *dropped;
  guint *tokens_per_expert;       /* n_layers x layer_experts */
  gfloat entropy;                 /* of the scores, nats */
  guint n_members;                /* E3 members, 1 without an ensemble */
  gint *member_classes;           /* n_members: each member's top-1 */
  gfloat disagreement;
  gboolean uncertain;             /* gst_vmoe_result_mark_uncertain */
} GstVmoeResult;

/* Replaces `result` with a copy of `src`, a result of a session on `model`. */
void gst_vmoe_result_set (GstVmoeResult *result, VmoeModel *model,
    const VmoeImageResult *src, GstClockTime latency);
void gst_vmoe_result_clear (GstVmoeResult *result);
/* Sets `uncertain`: the entropy is above `entropy_threshold` (0: never).
 * The element calls it as it attaches a result, carried ones too, so a
 * threshold changed while playing applies from the next frame on. */
void gst_vmoe_result_mark_uncertain (GstVmoeResult *result, gdouble entropy_threshold);
gboolean gst_vmoe_result_is_set (const GstVmoeResult *result);

/* Fills the empty meta `meta` (its frame and fresh fields too);
 * `element_name` names the element that attaches it. */
void gst_vmoe_result_fill_meta (const GstVmoeResult *result, GstVmoeMeta *meta,
    const gchar *element_name, guint64 frame, gboolean fresh);

/* The `vmoe` element message's structure (README.md, docs/design.md);
 * `fresh` as in the meta. */
GstStructure *gst_vmoe_result_to_structure (const GstVmoeResult *result,
    const gchar *element_name, guint64 frame, gboolean fresh, GstClockTime timestamp, GstClockTime stream_time,
    GstClockTime running_time);

/* The param a classified region's GstVideoRegionOfInterestMeta gets, named
 * `name` (the element's attribute-name): label, label_id, confidence,
 * model_name, and with image routing experts, gates and superclass. */
GstStructure *gst_vmoe_result_to_roi_param (const GstVmoeResult *result,
    const gchar *name);

/* The numbers of a list-valued field of an ROI param (`experts`, `gates`):
 * a GValueArray as the element writes it, or a GstValueArray/GstValueList
 * (what a structure parsed from a string holds), appended to `doubles` as
 * gdouble.  FALSE if `value` is neither or holds a non-number. */
gboolean gst_vmoe_value_get_numbers (const GValue *value, GArray *doubles);

G_END_DECLS

#endif
