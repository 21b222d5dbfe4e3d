/* GstVmoeInstance: a model instance shared across streams, its inference
 * worker and its cross-stream batches (see the header). */
#include "gstvmoeinstance.h"

GST_DEBUG_CATEGORY_STATIC (gst_vmoe_instance_debug);
#define GST_CAT_DEFAULT gst_vmoe_instance_debug

typedef struct {
  GObject *object;
  GstVmoeBeforeBatch before_batch;
} Member;

struct _GstVmoeInstance {
  gchar *id;                       /* NULL: private */
  GstVmoeInstanceSettings settings;
  GstClockTime warmup_latency;
  GThread *worker;

  /* Under lock. */
  GMutex lock;
  GCond cond;
  GQueue jobs;                     /* GstVmoeJob, oldest first */
  GList *members;                  /* Member */
  guint n_members;
  gboolean quit;

  /* Worker thread only (and the creator before the worker starts). */
  VmoeSession *session;
  gint experts_k;
  gdouble capacity_ratio;
};

/* Shared instances by id. */
static GMutex registry_lock;
static GHashTable *registry;

void
gst_vmoe_instance_settings_clear (GstVmoeInstanceSettings *s)
{
  g_clear_pointer (&s->model_path, g_free);
  g_clear_pointer (&s->device, g_free);
}

static void
settings_copy (GstVmoeInstanceSettings *dest, const GstVmoeInstanceSettings *src)
{
  *dest = *src;
  dest->model_path = g_strdup (src->model_path);
  dest->device = g_strdup (src->device);
}

/* Runs `n` jobs in one engine call.  A batch fails as a whole when one of
 * its images does (non-finite logits), so a failed batch of several is run
 * again image by image: each image then gets the result or the error it
 * would get alone. */
static void
run_batch (GstVmoeInstance *inst, GstVmoeJob **jobs, guint n)
{
  VmoeImage *images = g_new (VmoeImage, n);
  for (guint i = 0; i < n; i++)
    images[i] = jobs[i]->image;
  GError *error = NULL;
  gint64 t0 = g_get_monotonic_time ();
  gboolean ok = vmoe_session_run_u8 (inst->session, images, (int) n, &error);
  GstClockTime latency = (GstClockTime) (g_get_monotonic_time () - t0) * GST_USECOND;
  g_free (images);
  if (!ok && n > 1 && !g_error_matches (error, VMOE_ERROR, VMOE_ERROR_BACKEND)) {
    GST_DEBUG ("batch of %u failed (%s), running its images one by one", n, error->message);
    g_clear_error (&error);
    for (guint i = 0; i < n; i++)
      run_batch (inst, jobs + i, 1);
    return;
  }
  VmoeModel *model = vmoe_session_get_model (inst->session);
  for (guint i = 0; i < n; i++) {
    if (ok)
      gst_vmoe_result_set (&jobs[i]->result, model,
          vmoe_session_get_result (inst->session, (int) i), latency);
    else
      jobs[i]->error = g_error_copy (error);
  }
  g_clear_error (&error);
}

static void
prepare_members (GstVmoeInstance *inst)
{
  g_mutex_lock (&inst->lock);
  GList *members = NULL;
  for (GList *l = inst->members; l; l = l->next) {
    Member *m = g_memdup2 (l->data, sizeof (Member));
    g_object_ref (m->object);
    members = g_list_prepend (members, m);
  }
  g_mutex_unlock (&inst->lock);
  for (GList *l = members; l; l = l->next) {
    Member *m = l->data;
    m->before_batch (m->object, inst);
    g_object_unref (m->object);
  }
  g_list_free_full (members, g_free);
}

static gpointer
worker_main (gpointer data)
{
  GstVmoeInstance *inst = data;
  guint capacity = inst->settings.batch_size;
  GstVmoeJob **batch = g_new (GstVmoeJob *, capacity);
  g_mutex_lock (&inst->lock);
  while (!inst->quit) {
    if (g_queue_is_empty (&inst->jobs)) {
      g_cond_wait (&inst->cond, &inst->lock);
      continue;
    }
    /* Gather: wait for a full batch, or until the oldest job has waited
     * batch-timeout. */
    GstVmoeJob *oldest = g_queue_peek_head (&inst->jobs);
    gint64 deadline = oldest->queued_at + (gint64) inst->settings.batch_timeout_us;
    if (g_queue_get_length (&inst->jobs) < capacity && g_get_monotonic_time () < deadline) {
      g_cond_wait_until (&inst->cond, &inst->lock, deadline);
      continue;
    }
    g_mutex_unlock (&inst->lock);
    /* Between batches: model swaps and new settings, from any member. */
    prepare_members (inst);
    g_mutex_lock (&inst->lock);
    guint n = 0;
    while (n < capacity && !g_queue_is_empty (&inst->jobs))
      batch[n++] = g_queue_pop_head (&inst->jobs);
    g_mutex_unlock (&inst->lock);
    if (n) {
      GST_LOG ("instance %s: batch of %u", inst->id ? inst->id : "(private)", n);
      run_batch (inst, batch, n);
      for (guint i = 0; i < n; i++)
        batch[i]->done (batch[i]);
    }
    g_mutex_lock (&inst->lock);
  }
  g_mutex_unlock (&inst->lock);
  g_free (batch);
  return NULL;
}

static gboolean
same_settings (const GstVmoeInstanceSettings *a, const GstVmoeInstanceSettings *b,
    GError **error)
{
  const char *what = NULL;
  if (g_strcmp0 (a->model_path, b->model_path) != 0)
    what = "model";
  else if (a->backend != b->backend)
    what = "backend";
  else if (g_strcmp0 (a->device, b->device) != 0)
    what = "device";
  else if (a->fp16 != b->fp16)
    what = "fp16";
  else if (a->precision != b->precision)
    what = "precision";
  if (what)
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "model-instance-id is shared with an element whose '%s' differs (model '%s', "
        "backend %s, device %s, fp16 %d, precision %s): sharers must ask for the same "
        "model", what, a->model_path, vmoe_backend_name (a->backend),
        a->device ? a->device : "(default)", a->fp16, vmoe_precision_name (a->precision));
  return what == NULL;
}

/* Frees what instance_new made, once no worker runs. */
static void
instance_destroy (GstVmoeInstance *inst)
{
  vmoe_session_free (inst->session);
  gst_vmoe_instance_settings_clear (&inst->settings);
  g_mutex_clear (&inst->lock);
  g_cond_clear (&inst->cond);
  g_free (inst->id);
  g_free (inst);
}

static GstVmoeInstance *
instance_new (const gchar *id, const GstVmoeInstanceSettings *settings,
    GstVmoeSessionMaker maker, gpointer maker_data, GError **error)
{
  gint experts_k = 0;
  gdouble capacity_ratio = 0;
  VmoeSession *session = maker (maker_data, &experts_k, &capacity_ratio, error);
  if (!session)
    return NULL;
  GstVmoeInstance *inst = g_new0 (GstVmoeInstance, 1);
  inst->id = g_strdup (id);
  settings_copy (&inst->settings, settings);
  inst->settings.batch_size = MAX (settings->batch_size, 1);
  inst->session = session;
  inst->experts_k = experts_k;
  inst->capacity_ratio = capacity_ratio;
  g_mutex_init (&inst->lock);
  g_cond_init (&inst->cond);
  g_queue_init (&inst->jobs);
  /* One inference on a black frame at the model's size warms the engine up
   * and gives the first latency estimate for LATENCY queries. */
  const VmoeConfig *c = vmoe_model_get_config (vmoe_session_get_model (session));
  guint8 *black = g_malloc0 ((gsize) c->image_w * c->image_h);
  VmoeImage img;
  vmoe_image_init_packed (&img, black, c->image_w, c->image_h, 1, c->image_w);
  gint64 t0 = g_get_monotonic_time ();
  vmoe_session_run_u8 (session, &img, 1, NULL);
  inst->warmup_latency = (GstClockTime) (g_get_monotonic_time () - t0) * GST_USECOND;
  g_free (black);
  /* Out of threads is an error at start, not an abort. */
  inst->worker = g_thread_try_new ("vmoe-infer", worker_main, inst, error);
  if (!inst->worker) {
    g_prefix_error (error, "Could not start the inference thread: ");
    instance_destroy (inst);
    return NULL;
  }
  return inst;
}

static void
instance_free (GstVmoeInstance *inst)
{
  g_mutex_lock (&inst->lock);
  inst->quit = TRUE;
  g_cond_broadcast (&inst->cond);
  g_mutex_unlock (&inst->lock);
  g_thread_join (inst->worker);
  g_warn_if_fail (g_queue_is_empty (&inst->jobs));
  instance_destroy (inst);
}

static void
add_member (GstVmoeInstance *inst, GObject *member, GstVmoeBeforeBatch before_batch)
{
  Member *m = g_new (Member, 1);
  *m = (Member) { member, before_batch };
  g_mutex_lock (&inst->lock);
  inst->members = g_list_append (inst->members, m);
  inst->n_members++;
  g_mutex_unlock (&inst->lock);
}

GstVmoeInstance *
gst_vmoe_instance_acquire (const gchar *id, const GstVmoeInstanceSettings *settings,
    GstVmoeSessionMaker maker, gpointer maker_data, GObject *member,
    GstVmoeBeforeBatch before_batch, GError **error)
{
  static gsize debug_init = 0;
  if (g_once_init_enter (&debug_init)) {
    GST_DEBUG_CATEGORY_INIT (gst_vmoe_instance_debug, "vmoeinstance", 0,
        "vmoeclassify's shared model instances and inference worker");
    g_once_init_leave (&debug_init, 1);
  }
  GstVmoeInstance *inst = NULL;
  if (!id) {
    /* Private: nobody to wait for. */
    inst = instance_new (NULL, settings, maker, maker_data, error);
    if (inst)
      add_member (inst, member, before_batch);
    return inst;
  }
  /* Held during the first load, so that a second element with the same id
   * waits for it and shares it rather than loading its own. */
  g_mutex_lock (&registry_lock);
  if (registry)
    inst = g_hash_table_lookup (registry, id);
  if (inst) {
    if (!same_settings (&inst->settings, settings, error))
      inst = NULL;
    else if (inst->settings.batch_size != MAX (settings->batch_size, 1)
        || inst->settings.batch_timeout_us != settings->batch_timeout_us)
      GST_WARNING_OBJECT (member, "model instance '%s' runs with the batch-size %u and "
          "batch-timeout %" G_GUINT64_FORMAT " of the element that made it", id,
          inst->settings.batch_size, inst->settings.batch_timeout_us);
  } else {
    inst = instance_new (id, settings, maker, maker_data, error);
    if (inst) {
      if (!registry)
        registry = g_hash_table_new (g_str_hash, g_str_equal);
      g_hash_table_insert (registry, inst->id, inst);
    }
  }
  if (inst)
    add_member (inst, member, before_batch);
  g_mutex_unlock (&registry_lock);
  return inst;
}

void
gst_vmoe_instance_release (GstVmoeInstance *inst, GObject *member)
{
  g_mutex_lock (&registry_lock);
  g_mutex_lock (&inst->lock);
  for (GList *l = inst->members; l; l = l->next) {
    Member *m = l->data;
    if (m->object == member) {
      inst->members = g_list_delete_link (inst->members, l);
      g_free (m);
      break;
    }
  }
  gboolean last = --inst->n_members == 0;
  g_mutex_unlock (&inst->lock);
  if (last && inst->id)
    g_hash_table_remove (registry, inst->id);
  g_mutex_unlock (&registry_lock);
  if (last)
    instance_free (inst);
}

void
gst_vmoe_instance_queue (GstVmoeInstance *inst, GstVmoeJob *job)
{
  job->queued_at = g_get_monotonic_time ();
  g_mutex_lock (&inst->lock);
  g_queue_push_tail (&inst->jobs, job);
  g_cond_signal (&inst->cond);
  g_mutex_unlock (&inst->lock);
}

void
gst_vmoe_instance_cancel (GstVmoeInstance *inst, gconstpointer owner)
{
  GQueue taken = G_QUEUE_INIT;
  g_mutex_lock (&inst->lock);
  for (GList *l = inst->jobs.head; l;) {
    GList *next = l->next;
    GstVmoeJob *job = l->data;
    if (job->owner == owner) {
      g_queue_unlink (&inst->jobs, l);
      g_queue_push_tail_link (&taken, l);
    }
    l = next;
  }
  g_mutex_unlock (&inst->lock);
  GstVmoeJob *job;
  while ((job = g_queue_pop_head (&taken))) {
    job->cancelled = TRUE;
    job->done (job);
  }
}

GstClockTime
gst_vmoe_instance_get_warmup_latency (GstVmoeInstance *inst)
{
  return inst->warmup_latency;
}

guint64
gst_vmoe_instance_get_batch_timeout_us (GstVmoeInstance *inst)
{
  return inst->settings.batch_timeout_us;
}

VmoeSession *
gst_vmoe_instance_get_session (GstVmoeInstance *inst)
{
  return inst->session;
}

void
gst_vmoe_instance_replace_session (GstVmoeInstance *inst, VmoeSession *session,
    const gchar *model_path)
{
  vmoe_session_free (inst->session);
  inst->session = session;
  if (!model_path)
    return;
  /* Later sharers must ask for the model now in use. */
  g_mutex_lock (&registry_lock);
  g_free (inst->settings.model_path);
  inst->settings.model_path = g_strdup (model_path);
  g_mutex_unlock (&registry_lock);
}

void
gst_vmoe_instance_get_routing (GstVmoeInstance *inst, gint *experts_k,
    gdouble *capacity_ratio)
{
  *experts_k = inst->experts_k;
  *capacity_ratio = inst->capacity_ratio;
}

void
gst_vmoe_instance_set_routing (GstVmoeInstance *inst, gint experts_k,
    gdouble capacity_ratio)
{
  inst->experts_k = experts_k;
  inst->capacity_ratio = capacity_ratio;
}
