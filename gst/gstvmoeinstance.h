/* GstVmoeInstance: one loaded model, one session and one inference worker
 * thread, shared by every vmoeclassify element with the same
 * `model-instance-id` (an element without an id gets a private one: one
 * mechanism for both).  Elements queue jobs (one image: a frame or one
 * region of it); the worker gathers the jobs of all its elements into
 * batches of up to batch-size images, waiting at most batch-timeout for a
 * batch to fill, and runs each batch in one engine call.  Jobs run in the
 * order they were queued, so each stream keeps its order; the engine gives
 * every image the same result whatever batch it lands in.
 */
#ifndef GST_VMOE_INSTANCE_H
#define GST_VMOE_INSTANCE_H

#include <gst/gst.h>
#include <vmoe/vmoe.h>

#include "gstvmoeresult.h"

G_BEGIN_DECLS

typedef struct _GstVmoeJob GstVmoeJob;

struct _GstVmoeJob {
  /* Set by the element before queueing; the pixels stay valid until done. */
  VmoeImage image;
  gconstpointer owner;          /* the element, for gst_vmoe_instance_cancel */
  void (*done) (GstVmoeJob *job);  /* called once per job, from any thread */

  /* Set before done is called: a result, an error, or cancelled. */
  GstVmoeResult result;
  GError *error;
  gboolean cancelled;
  gint64 queued_at;             /* monotonic µs, for the batch timeout */
};

/* What an instance was made with; sharers must ask for the same. */
typedef struct {
  gchar *model_path;
  VmoeBackend backend;
  gchar *device;
  gboolean fp16;
  VmoePrecision precision;
  guint batch_size;
  guint64 batch_timeout_us;
} GstVmoeInstanceSettings;

typedef struct _GstVmoeInstance GstVmoeInstance;

/* Makes the first session of a new instance (the element's properties) and
 * says the routing settings it runs with. */
typedef VmoeSession *(*GstVmoeSessionMaker) (gpointer maker_data, gint *experts_k,
    gdouble *capacity_ratio, GError **error);
/* Called by the worker for every member before each batch, outside the
 * instance's lock: the place to swap a model in or apply new settings
 * (gst_vmoe_instance_get_session and _replace_session). */
typedef void (*GstVmoeBeforeBatch) (GObject *member, GstVmoeInstance *instance);

/* The instance for `id` (NULL: a new private one), with `member` added.
 * The first to ask for an id makes its session with `maker`; a later one
 * whose settings name another model file, backend, device or precision
 * gets an error.  Returns NULL with `error` set on failure. */
GstVmoeInstance *gst_vmoe_instance_acquire (const gchar *id,
    const GstVmoeInstanceSettings *settings, GstVmoeSessionMaker maker,
    gpointer maker_data, GObject *member, GstVmoeBeforeBatch before_batch,
    GError **error);
/* Removes `member`, whose jobs must all be done; the last one out stops the
 * worker and frees the session. */
void gst_vmoe_instance_release (GstVmoeInstance *instance, GObject *member);

/* Queues a job for the worker. */
void gst_vmoe_instance_queue (GstVmoeInstance *instance, GstVmoeJob *job);
/* Takes back every queued job of `owner` not yet in a batch: each is done
 * now, cancelled.  Jobs already in a batch finish normally. */
void gst_vmoe_instance_cancel (GstVmoeInstance *instance, gconstpointer owner);

/* The warm-up inference time of the first session, ns. */
GstClockTime gst_vmoe_instance_get_warmup_latency (GstVmoeInstance *instance);
guint64 gst_vmoe_instance_get_batch_timeout_us (GstVmoeInstance *instance);

/* Worker thread only (in GstVmoeBeforeBatch): the session, and a new one
 * in its place (made from `model_path`, NULL: the same model); the old one
 * is freed. */
VmoeSession *gst_vmoe_instance_get_session (GstVmoeInstance *instance);
void gst_vmoe_instance_replace_session (GstVmoeInstance *instance,
    VmoeSession *session, const gchar *model_path);
/* The routing settings the session runs with (experts-k, capacity-ratio),
 * what a rejected setting returns to; worker thread only, or before the
 * worker starts. */
void gst_vmoe_instance_get_routing (GstVmoeInstance *instance, gint *experts_k,
    gdouble *capacity_ratio);
void gst_vmoe_instance_set_routing (GstVmoeInstance *instance, gint experts_k,
    gdouble capacity_ratio);

void gst_vmoe_instance_settings_clear (GstVmoeInstanceSettings *settings);

G_END_DECLS

#endif
