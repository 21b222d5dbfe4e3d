/* GstVmoeMeta: the classification of one video frame by vmoeclassify.
 *
 * Applications read it with gst_buffer_get_vmoe_meta (buffer) in a pad probe
 * or an appsink, after `pkg-config --cflags --libs gstreamer-vmoe-1.0`.  The
 * meta has no tags and copies itself on every transform, so it survives
 * videoconvert, videoscale and tee: a classification describes the frame's
 * content, whatever its size or format downstream.
 *
 * The annotations in the comments below are read by g-ir-scanner for the
 * GstVmoe-1.0 typelib (Python: GstVmoe.buffer_get_vmoe_meta (buffer)).
 */
#ifndef GST_VMOE_META_H
#define GST_VMOE_META_H

#include <gst/gst.h>

G_BEGIN_DECLS

#define GST_VMOE_META_API_TYPE (gst_vmoe_meta_api_get_type ())
#define GST_VMOE_META_INFO (gst_vmoe_meta_get_info ())

/**
 * GstVmoeLayerStats:
 * @block: index of the MoE block in the model
 * @n_experts: entries of @tokens_per_expert
 * @tokens_per_expert: (array length=n_experts): tokens each expert took
 * @dropped: assignments over capacity
 *
 * Token routing statistics of one MoE block.
 */
typedef struct {
  gint block;
  guint n_experts;
  guint *tokens_per_expert;   /* n_experts entries */
  gint dropped;               /* assignments over capacity */
} GstVmoeLayerStats;

/**
 * GstVmoeMeta:
 * @meta: the parent
 * @frame: index of the frame in the stream
 * @fresh: FALSE when the result is carried from an earlier frame
 * @latency: inference time of this result, ns
 * @class_id: top class
 * @label: its label
 * @score: its softmax probability
 * @n_top: entries of the top-k arrays
 * @top_classes: (array length=n_top): the top-k classes, best first
 * @top_scores: (array length=n_top): their probabilities
 * @top_labels: (array zero-terminated=1): their labels
 * @n_experts: image routing: chosen experts, else 0
 * @experts: (array length=n_experts): the chosen experts
 * @gates: (array length=n_experts): their gates
 * @superclass: (nullable): of the first expert, NULL if unnamed
 * @n_layers: token routing: MoE blocks (x E3 members), else 0
 * @layers: (array length=n_layers): per MoE block (and E3 member)
 * @model_name: the model file's name without .safetensors
 * @element_name: the vmoeclassify element's name
 * @roi_id: -1: the whole frame; else the id of the region classified
 * @entropy: predictive entropy of the class probabilities, nats
 * @uncertain: @entropy is above the element's entropy-threshold
 * @n_members: E3 ensemble members; 1 without an ensemble
 * @member_classes: (array length=n_members): each member's top-1 class
 * @disagreement: fraction of members whose top-1 is not @class_id
 * @layer_members: (array length=n_layers): the E3 member of each @layers entry
 *
 * With an E3 ensemble (docs/design.md), @experts and @gates hold the
 * members' k choices in member order, and @layers one entry per MoE block
 * and member, the member's E/M experts each (@layer_members says which).
 *
 * The classification of one frame.  Bindings read the arrays through the
 * gst_vmoe_meta_get_ functions, which carry their lengths.
 */
typedef struct {
  GstMeta meta;

  guint64 frame;              /* index of the frame in the stream */
  gboolean fresh;             /* FALSE: carried from an earlier frame
                                 (inference-interval or QoS) */
  GstClockTime latency;       /* inference time of this result, ns */

  gint class_id;              /* top class */
  gchar *label;
  gfloat score;               /* its softmax probability */

  guint n_top;                /* top-k classes, best first */
  gint *top_classes;
  gfloat *top_scores;
  gchar **top_labels;         /* NULL-terminated */

  guint n_experts;            /* image routing: chosen experts, else 0 */
  gint *experts;
  gfloat *gates;
  gchar *superclass;          /* of the first expert, NULL if unnamed */

  guint n_layers;             /* token routing: per MoE block, else 0 */
  GstVmoeLayerStats *layers;

  /* Who made it, so that two classifiers in a row can be told apart. */
  gchar *model_name;          /* the model file's name without .safetensors */
  gchar *element_name;        /* the vmoeclassify element's name */
  gint roi_id;                /* -1: the whole frame; else the id of the
                                 GstVideoRegionOfInterestMeta classified */

  /* Appended after 0.1: GStreamer allocates every meta at the size the
   * library registers, so readers built against 0.1 read the fields above
   * unchanged. */
  gfloat entropy;             /* predictive entropy of the scores, nats */
  gboolean uncertain;         /* entropy above the element's entropy-threshold */
  guint n_members;            /* E3 ensemble members; 1 without an ensemble */
  gint *member_classes;       /* n_members: each member's top-1 class */
  gfloat disagreement;        /* fraction of members whose top-1 is not class_id */
  gint *layer_members;        /* n_layers: the E3 member of each layers[] entry */
} GstVmoeMeta;

/**
 * gst_vmoe_meta_api_get_type:
 *
 * Returns: the API type "GstVmoeMetaAPI", registered when the library is
 * loaded into a process whose GStreamer is initialised, else on first call
 */
GType gst_vmoe_meta_api_get_type (void);

/**
 * gst_vmoe_meta_get_info:
 *
 * Returns: (transfer none): the meta's implementation
 */
const GstMetaInfo *gst_vmoe_meta_get_info (void);

/**
 * gst_buffer_get_vmoe_meta:
 * @buffer: a #GstBuffer
 *
 * Returns: (transfer none) (nullable): the buffer's classification, NULL if
 * it has none.  With several (ROI results), the first one added.
 */
GstVmoeMeta *gst_buffer_get_vmoe_meta (GstBuffer *buffer);

/**
 * gst_buffer_add_vmoe_meta: (skip)
 * @buffer: a writable #GstBuffer
 *
 * Adds an empty meta; the element fills it.
 *
 * Returns: (transfer none): the new meta
 */
GstVmoeMeta *gst_buffer_add_vmoe_meta (GstBuffer *buffer);

/**
 * gst_vmoe_meta_copy_into: (skip)
 * @dest: an empty meta
 * @src: the meta to copy
 *
 * Copies every field of @src into @dest.
 */
void gst_vmoe_meta_copy_into (GstVmoeMeta *dest, const GstVmoeMeta *src);

/**
 * gst_vmoe_meta_get_top_classes:
 * @meta: a #GstVmoeMeta
 * @n: (out): number of classes
 *
 * Returns: (array length=n) (transfer none): the top-k classes, best first
 */
const gint *gst_vmoe_meta_get_top_classes (const GstVmoeMeta *meta, guint *n);

/**
 * gst_vmoe_meta_get_top_scores:
 * @meta: a #GstVmoeMeta
 * @n: (out): number of scores
 *
 * Returns: (array length=n) (transfer none): their probabilities
 */
const gfloat *gst_vmoe_meta_get_top_scores (const GstVmoeMeta *meta, guint *n);

/**
 * gst_vmoe_meta_get_top_labels:
 * @meta: a #GstVmoeMeta
 *
 * Returns: (array zero-terminated=1) (transfer none): their labels
 */
const gchar *const *gst_vmoe_meta_get_top_labels (const GstVmoeMeta *meta);

/**
 * gst_vmoe_meta_get_experts:
 * @meta: a #GstVmoeMeta
 * @n: (out): number of experts (0 without image routing)
 *
 * Returns: (array length=n) (transfer none): the chosen experts
 */
const gint *gst_vmoe_meta_get_experts (const GstVmoeMeta *meta, guint *n);

/**
 * gst_vmoe_meta_get_gates:
 * @meta: a #GstVmoeMeta
 * @n: (out): number of gates (0 without image routing)
 *
 * Returns: (array length=n) (transfer none): the chosen experts' gates
 */
const gfloat *gst_vmoe_meta_get_gates (const GstVmoeMeta *meta, guint *n);

/**
 * gst_vmoe_meta_get_member_classes:
 * @meta: a #GstVmoeMeta
 * @n: (out): number of E3 members (1 without an ensemble)
 *
 * Returns: (array length=n) (transfer none): each member's top-1 class
 */
const gint *gst_vmoe_meta_get_member_classes (const GstVmoeMeta *meta, guint *n);

/**
 * gst_vmoe_meta_get_layer_members:
 * @meta: a #GstVmoeMeta
 * @n: (out): number of layers (0 without token routing)
 *
 * Returns: (array length=n) (transfer none): the E3 member of each layer
 * entry (all 0 without an ensemble)
 */
const gint *gst_vmoe_meta_get_layer_members (const GstVmoeMeta *meta, guint *n);

/**
 * gst_vmoe_meta_get_layer:
 * @meta: a #GstVmoeMeta
 * @index: 0 to n_layers - 1
 *
 * Returns: (transfer none) (nullable): token routing statistics of the
 * @index-th MoE block, NULL past the last
 */
const GstVmoeLayerStats *gst_vmoe_meta_get_layer (const GstVmoeMeta *meta, guint index);

/**
 * gst_vmoe_layer_stats_get_tokens_per_expert:
 * @layer: a #GstVmoeLayerStats
 * @n: (out): number of experts
 *
 * Returns: (array length=n) (transfer none): tokens each expert took
 */
const guint *gst_vmoe_layer_stats_get_tokens_per_expert (const GstVmoeLayerStats *layer,
    guint *n);

G_END_DECLS

#endif
