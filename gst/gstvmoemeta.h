/* GstVmoeMeta: the classification of one video frame by vmoeclassify.
 *
 * Applications read it with gst_buffer_get_vmoe_meta (buffer) in a pad probe
 * or an appsink, after `pkg-config --cflags --libs gstreamer-vmoe-1.0`.  The
 * meta has no tags and copies itself on every transform, so it survives
 * videoconvert, videoscale and tee: a classification describes the frame's
 * content, whatever its size or format downstream.
 */
#ifndef GST_VMOE_META_H
#define GST_VMOE_META_H

#include <gst/gst.h>

G_BEGIN_DECLS

#define GST_VMOE_META_API_TYPE (gst_vmoe_meta_api_get_type ())
#define GST_VMOE_META_INFO (gst_vmoe_meta_get_info ())

/* Token routing statistics of one MoE block. */
typedef struct {
  gint block;
  guint n_experts;
  guint *tokens_per_expert;   /* n_experts entries */
  gint dropped;               /* assignments over capacity */
} GstVmoeLayerStats;

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
} GstVmoeMeta;

GType gst_vmoe_meta_api_get_type (void);
const GstMetaInfo *gst_vmoe_meta_get_info (void);

#define gst_buffer_get_vmoe_meta(b) \
  ((GstVmoeMeta *) gst_buffer_get_meta ((b), GST_VMOE_META_API_TYPE))

/* Adds an empty meta to `buffer` (writable); the element fills it. */
GstVmoeMeta *gst_buffer_add_vmoe_meta (GstBuffer *buffer);

/* Copies every field of `src` into the empty meta `dest`. */
void gst_vmoe_meta_copy_into (GstVmoeMeta *dest, const GstVmoeMeta *src);

G_END_DECLS

#endif
