/* vmoe-soak: live streams through vmoeclassify for a set time, in one
 * process, so that its memory and every bus can be watched (issue #17).
 *
 *   vmoe-soak SECONDS MODEL_A MODEL_B      (tests/soak.sh runs it)
 *
 * Four pipelines, each `videotestsrc is-live=true` at 30 frames/s in its own
 * pixel format and size (one through videoconvert), `vmoeclassify
 * backend=cpu post-messages=true`, and `fakesink sync=true`, with no queue:
 * one streaming thread each.  The two models must route differently (e.g.
 * Mobile V-MoE and dense), so that a frame's meta tells which model
 * classified it.  While they run, once a second:
 *
 *   - VmRSS is sampled, before any action of that second (with glibc's
 *     allocator pinned, see pin_allocator);
 *   - every 2 s one pair of streams swaps models through the `model`
 *     property while PLAYING, one A->B and the other B->A, so that the set
 *     of loaded models, and with it the memory they take, stays the same;
 *   - every 6 s, on the odd seconds between swaps, one stream leaves PLAYING
 *     for PAUSED or READY (each stream alternately) and comes back the next
 *     second.
 *
 * It fails (exit 1) on: a frame after the element without a GstVmoeMeta or
 * whose meta skips a frame index; a stream not classifying with the model
 * it was last given by its next swap; a PLAYING stream without a frame for
 * 5 s; `vmoe` messages that do not match the classified (fresh) frames seen
 * after the element, in number and in the sum of their frame indices, over
 * each run of the element (a READY flush may drop the one frame after the
 * last seen, after its message); any WARNING or ERROR on a bus or in
 * GStreamer's log; streams not reaching EOS within 10 s of the end; and
 * RSS growing more than 1024 kB after the warm-up (the first fifth of the
 * run, at least 10 s): over the samples taken while every stream was
 * PLAYING with the model it was last given (see all_settled), the lowest
 * RSS of each 10 s window, whose spread (highest floor - lowest floor) is
 * what is checked.  A leak raises every later floor; a one-second spike
 * (a swap's two models, an allocator's moment) raises none.  The raw
 * max - min is printed beside it.  GLib warnings and
 * criticals abort.  It ends with one summary line, and prints progress
 * every 60 s (every second with VMOE_SOAK_TRACE=1).
 */
#include <gst/gst.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vmoe/vmoe.h>

#include "gstvmoemeta.h"

#define RSS_SPREAD_LIMIT_KB 1024
/* Windows over which the lowest RSS is taken (see the top of this file). */
#define RSS_WINDOW_S 10
/* AddressSanitizer holds freed memory in quarantine on purpose, so RSS says
 * nothing there; LeakSanitizer checks for leaks instead. */
#ifdef __SANITIZE_ADDRESS__
#define CHECK_RSS FALSE
#else
#define CHECK_RSS TRUE
#endif
#define SWAP_PERIOD_S 2
#define STATE_PERIOD_S 6
#define STALL_LIMIT_S 5
#define EOS_WAIT_S 10
#define PROGRESS_PERIOD_S 60

typedef struct {
  const char *name;
  const char *source;           /* everything before vmoeclassify */
} StreamSpec;

static const StreamSpec stream_specs[] = {
  { "rgb", "videotestsrc is-live=true pattern=ball ! "
      "video/x-raw,format=RGB,width=320,height=240,framerate=30/1" },
  { "i420", "videotestsrc is-live=true pattern=smpte ! "
      "video/x-raw,format=I420,width=640,height=480,framerate=30/1" },
  { "gray8", "videotestsrc is-live=true pattern=snow ! "
      "video/x-raw,format=GRAY8,width=28,height=28,framerate=30/1" },
  { "yuy2-to-bgrx", "videotestsrc is-live=true pattern=ball ! "
      "video/x-raw,format=YUY2,width=352,height=288,framerate=30/1 ! "
      "videoconvert ! video/x-raw,format=BGRx" },
};
#define N_STREAMS G_N_ELEMENTS (stream_specs)

typedef struct {
  const char *path;
  VmoeRouting routing;
} ModelFile;

typedef struct {
  const StreamSpec *spec;
  GstElement *pipeline;
  GstElement *classify;

  /* Main thread only. */
  guint model;                  /* index of the model last given */
  GstState down_state;          /* PAUSED/READY while out of PLAYING, else VOID_PENDING */
  guint64 frames_at_check;      /* frames seen at the last stall check */
  gint64 last_progress_s;       /* when frames last advanced */
  guint64 fresh_at_swap;        /* fresh frames seen when the model was last set */
  guint64 messages;
  guint64 flushed;              /* classified, then dropped by a READY flush */
  /* The element's run since it last started (numbering frames from 0). */
  guint64 run_messages;
  guint64 run_message_index_sum;
  guint64 run_last_message_index;
  gboolean eos;

  /* Written by the streaming thread's probe, under lock. */
  GMutex lock;
  guint64 frames;
  guint64 fresh;
  guint64 run_fresh;
  guint64 run_fresh_index_sum;
  guint64 next_index;           /* the meta's frame index due next */
  VmoeRouting last_fresh_routing;
} Stream;

typedef struct {
  guint seconds;
  ModelFile models[2];
  Stream streams[N_STREAMS];
  GMainLoop *loop;
  gint64 start_us;
  guint tick;                   /* seconds elapsed, one per timer call */
  guint swaps;
  guint state_changes;
  gint warnings;                /* bus and log warnings and errors, atomic */
  guint failures;
  /* kB; min/max over the samples after warm-up with every stream settled. */
  guint64 rss_start, rss_end, rss_min, rss_max;
  guint rss_samples;
  guint rss_max_at;             /* second of the run */
  guint64 *rss_floors;          /* lowest settled sample of each 10 s window, 0: none */
  guint n_floors;
  guint warmup_s;
  guint eos_seen;
  guint eos_timeout;            /* source id while waiting for EOS */
} Soak;

static Soak soak;
static GMutex failure_lock;

static void fail (const char *format, ...) G_GNUC_PRINTF (1, 2);

static void
fail (const char *format, ...)
{
  va_list args;
  va_start (args, format);
  gchar *text = g_strdup_vprintf (format, args);
  va_end (args);
  g_mutex_lock (&failure_lock);
  /* A broken stream fails on every frame; the first few say enough. */
  if (++soak.failures <= 20)
    g_printerr ("soak: FAIL: %s\n", text);
  g_mutex_unlock (&failure_lock);
  g_free (text);
}

static guint64
read_rss_kb (void)
{
  FILE *f = fopen ("/proc/self/status", "r");
  if (!f)
    return 0;
  char line[256];
  unsigned long long kb = 0;
  while (fgets (line, sizeof line, f))
    if (sscanf (line, "VmRSS: %llu kB", &kb) == 1)
      break;
  fclose (f);
  return kb;
}

/* RSS should show what the process holds, not what glibc keeps.  By
 * default glibc raises its mmap threshold to the size of the first mmapped
 * block freed (a video frame), after which frames come from the heaps of up
 * to 8 arenas per core, each new thread (model loader, session workers, a
 * restarted stream) may take another, and RSS climbs by megabytes of free
 * blocks that malloc_trim does not give back (bench/RESULTS.md).  Pinned to
 * its initial 128 KiB and two arenas, every frame-sized block is mapped and
 * unmapped whole, and RSS stays flat unless something is really kept.
 * VMOE_SOAK_DEFAULT_MALLOC=1 leaves glibc's defaults, to see the climb. */
static void
pin_allocator (void)
{
#ifdef __GLIBC__
  if (g_getenv ("VMOE_SOAK_DEFAULT_MALLOC"))
    return;
  mallopt (M_MMAP_THRESHOLD, 128 * 1024);
  mallopt (M_ARENA_MAX, 2);
#endif
}

static VmoeRouting
meta_routing (const GstVmoeMeta *meta)
{
  if (meta->n_experts > 0)
    return VMOE_ROUTING_IMAGE;
  if (meta->n_layers > 0)
    return VMOE_ROUTING_TOKEN;
  return VMOE_ROUTING_NONE;
}

static const char *
routing_name (VmoeRouting routing)
{
  switch (routing) {
    case VMOE_ROUTING_IMAGE: return "image routing";
    case VMOE_ROUTING_TOKEN: return "token routing";
    default: return "dense";
  }
}

/* ------------------------------------------------------------- frames */

static GstPadProbeReturn
count_frame (GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
  Stream *s = data;
  GstBuffer *buffer = GST_PAD_PROBE_INFO_BUFFER (info);
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (buffer);
  g_mutex_lock (&s->lock);
  guint64 expected = s->next_index;
  s->frames++;
  if (meta) {
    s->next_index = meta->frame + 1;
    if (meta->fresh) {
      s->fresh++;
      s->run_fresh++;
      s->run_fresh_index_sum += meta->frame;
      s->last_fresh_routing = meta_routing (meta);
    }
  }
  g_mutex_unlock (&s->lock);
  if (!meta)
    fail ("%s: frame at %" GST_TIME_FORMAT " has no GstVmoeMeta", s->spec->name,
        GST_TIME_ARGS (GST_BUFFER_PTS (buffer)));
  else if (meta->frame != expected)
    fail ("%s: meta frame index %" G_GUINT64_FORMAT ", expected %" G_GUINT64_FORMAT,
        s->spec->name, meta->frame, expected);
  return GST_PAD_PROBE_OK;
}

/* ---------------------------------------------------------------- bus */

static gboolean
on_message (GstBus *bus, GstMessage *msg, gpointer data)
{
  Stream *s = data;
  switch (GST_MESSAGE_TYPE (msg)) {
    case GST_MESSAGE_ELEMENT: {
      const GstStructure *st = gst_message_get_structure (msg);
      guint64 frame;
      if (GST_MESSAGE_SRC (msg) != GST_OBJECT (s->classify)
          || !gst_structure_has_name (st, "vmoe"))
        break;
      if (!gst_structure_get_uint64 (st, "frame", &frame)) {
        fail ("%s: vmoe message without a frame field", s->spec->name);
        break;
      }
      s->messages++;
      s->run_messages++;
      s->run_message_index_sum += frame;
      s->run_last_message_index = frame;
      break;
    }
    case GST_MESSAGE_WARNING:
    case GST_MESSAGE_ERROR: {
      GError *error = NULL;
      gchar *debug = NULL;
      gboolean is_error = GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR;
      if (is_error)
        gst_message_parse_error (msg, &error, &debug);
      else
        gst_message_parse_warning (msg, &error, &debug);
      g_atomic_int_inc (&soak.warnings);
      fail ("%s: %s from %s: %s (%s)", s->spec->name, is_error ? "error" : "warning",
          GST_OBJECT_NAME (GST_MESSAGE_SRC (msg)), error->message, debug ? debug : "");
      g_error_free (error);
      g_free (debug);
      break;
    }
    case GST_MESSAGE_LATENCY:
      gst_bin_recalculate_latency (GST_BIN (s->pipeline));
      break;
    case GST_MESSAGE_EOS:
      if (!s->eos) {
        s->eos = TRUE;
        if (++soak.eos_seen == N_STREAMS) {
          g_source_remove (soak.eos_timeout);
          g_main_loop_quit (soak.loop);
        }
      }
      break;
    default:
      break;
  }
  return G_SOURCE_CONTINUE;
}

/* Warnings that elements only log (no bus message) count too. */
static void
count_log_warning (GstDebugCategory *category, GstDebugLevel level, const gchar *file,
    const gchar *function, gint line, GObject *object, GstDebugMessage *message,
    gpointer data)
{
  if (level > GST_LEVEL_WARNING)
    return;
  g_atomic_int_inc (&soak.warnings);
  fail ("log %s in %s (%s:%d): %s", gst_debug_level_get_name (level),
      gst_debug_category_get_name (category), file, line,
      gst_debug_message_get (message));
}

/* ----------------------------------------------------------- messages */

/* Compares the `vmoe` messages of the element's run that just ended with
 * the classified frames the probe saw, then starts counting the next run.
 * Nothing queues between the element and the sink, so one streaming thread
 * carries one frame at a time: a READY flush can drop at most the frame
 * after the last one seen, after its message went out. */
static void
reconcile_run (Stream *s, gboolean flushed)
{
  g_mutex_lock (&s->lock);
  guint64 fresh = s->run_fresh, fresh_sum = s->run_fresh_index_sum;
  guint64 next_index = s->next_index;
  s->run_fresh = s->run_fresh_index_sum = s->next_index = 0;
  g_mutex_unlock (&s->lock);
  guint64 messages = s->run_messages, message_sum = s->run_message_index_sum;
  s->run_messages = s->run_message_index_sum = 0;

  if (messages == fresh && message_sum == fresh_sum)
    return;
  if (flushed && messages == fresh + 1 && s->run_last_message_index == next_index
      && message_sum == fresh_sum + next_index) {
    s->flushed++;
    return;
  }
  fail ("%s: %" G_GUINT64_FORMAT " vmoe messages (frame indices summing to %"
      G_GUINT64_FORMAT ") for %" G_GUINT64_FORMAT " classified frames (summing to %"
      G_GUINT64_FORMAT ")", s->spec->name, messages, message_sum, fresh, fresh_sum);
}

/* The messages already posted, read now rather than from the main loop. */
static void
read_pending_messages (Stream *s)
{
  GstBus *bus = gst_element_get_bus (s->pipeline);
  GstMessage *msg;
  while ((msg = gst_bus_pop (bus))) {
    on_message (bus, msg, s);
    gst_message_unref (msg);
  }
  gst_object_unref (bus);
}

/* ------------------------------------------------------------ actions */

static gboolean
set_state (Stream *s, GstState state)
{
  GstStateChangeReturn ret = gst_element_set_state (s->pipeline, state);
  if (ret == GST_STATE_CHANGE_ASYNC)
    ret = gst_element_get_state (s->pipeline, NULL, NULL, 10 * GST_SECOND);
  if (ret == GST_STATE_CHANGE_FAILURE || ret == GST_STATE_CHANGE_ASYNC) {
    fail ("%s: could not reach %s", s->spec->name, gst_element_state_get_name (state));
    return FALSE;
  }
  return TRUE;
}

/* Checks that the stream classified with the model it was last given, then
 * gives it the other one. */
static void
swap_model (Stream *s)
{
  g_mutex_lock (&s->lock);
  guint64 fresh = s->fresh;
  VmoeRouting seen = s->last_fresh_routing;
  g_mutex_unlock (&s->lock);
  const ModelFile *given = &soak.models[s->model];
  if (fresh == s->fresh_at_swap)
    fail ("%s: no frame classified since '%s' was set", s->spec->name, given->path);
  else if (seen != given->routing)
    fail ("%s: still classifying %s after '%s' (%s) was set", s->spec->name,
        routing_name (seen), given->path, routing_name (given->routing));
  s->model = 1 - s->model;
  s->fresh_at_swap = fresh;
  g_object_set (s->classify, "model", soak.models[s->model].path, NULL);
  soak.swaps++;
}

static void
take_down (Stream *s, GstState state)
{
  if (!set_state (s, state))
    return;
  s->down_state = state;
  if (state == GST_STATE_READY) {
    /* Streaming has stopped and every message of the run is on the bus;
     * the element numbers frames from 0 when it starts again. */
    read_pending_messages (s);
    reconcile_run (s, TRUE);
  }
}

static void
bring_up (Stream *s, gint64 now_s)
{
  if (set_state (s, GST_STATE_PLAYING))
    soak.state_changes++;
  s->down_state = GST_STATE_VOID_PENDING;
  s->last_progress_s = now_s;
}

static void
check_progress (Stream *s, gint64 now_s)
{
  g_mutex_lock (&s->lock);
  guint64 frames = s->frames;
  g_mutex_unlock (&s->lock);
  if (frames != s->frames_at_check || s->down_state != GST_STATE_VOID_PENDING) {
    s->frames_at_check = frames;
    s->last_progress_s = now_s;
  } else if (now_s - s->last_progress_s == STALL_LIMIT_S) {
    fail ("%s: no frame for %d s while PLAYING", s->spec->name, STALL_LIMIT_S);
  }
}

static guint64
total_frames (void)
{
  guint64 n = 0;
  for (guint i = 0; i < N_STREAMS; i++) {
    g_mutex_lock (&soak.streams[i].lock);
    n += soak.streams[i].frames;
    g_mutex_unlock (&soak.streams[i].lock);
  }
  return n;
}

static gboolean
on_eos_timeout (gpointer data)
{
  fail ("%u of %u streams reached EOS within %d s", soak.eos_seen, (guint) N_STREAMS,
      EOS_WAIT_S);
  soak.eos_timeout = 0;
  g_main_loop_quit (soak.loop);
  return G_SOURCE_REMOVE;
}

static void
finish (void)
{
  for (guint i = 0; i < N_STREAMS; i++) {
    Stream *s = &soak.streams[i];
    if (s->down_state != GST_STATE_VOID_PENDING)
      bring_up (s, soak.tick);
    /* EOS from the source, so that every message reaches the bus before it. */
    gst_element_send_event (s->pipeline, gst_event_new_eos ());
  }
  soak.eos_timeout = g_timeout_add_seconds (EOS_WAIT_S, on_eos_timeout, NULL);
}

/* Every stream PLAYING and classifying with the model it was last given.
 * A stream in READY has freed its model and buffers; one whose swap is
 * still under way holds two models for a moment. */
static gboolean
all_settled (void)
{
  for (guint i = 0; i < N_STREAMS; i++) {
    Stream *s = &soak.streams[i];
    if (s->down_state != GST_STATE_VOID_PENDING)
      return FALSE;
    g_mutex_lock (&s->lock);
    VmoeRouting seen = s->last_fresh_routing;
    g_mutex_unlock (&s->lock);
    if (seen != soak.models[s->model].routing)
      return FALSE;
  }
  return TRUE;
}

/* Once a second: RSS first, then the actions due.  Only samples taken with
 * every stream settled count. */
static gboolean
on_tick (gpointer data)
{
  guint64 rss = read_rss_kb ();
  guint t = ++soak.tick;
  soak.rss_end = rss;
  gboolean settled = all_settled ();
  if (t > soak.warmup_s && settled) {
    guint w = (t - soak.warmup_s - 1) / RSS_WINDOW_S;
    if (w < soak.n_floors)
      soak.rss_floors[w] = soak.rss_floors[w] ? MIN (soak.rss_floors[w], rss) : rss;
    soak.rss_samples++;
    soak.rss_min = soak.rss_min ? MIN (soak.rss_min, rss) : rss;
    if (rss > soak.rss_max) {
      soak.rss_max = rss;
      soak.rss_max_at = t;
    }
  }
  if (t % PROGRESS_PERIOD_S == 0 || g_getenv ("VMOE_SOAK_TRACE"))
    g_print ("soak: %u s, frames %" G_GUINT64_FORMAT ", RSS %" G_GUINT64_FORMAT " kB%s\n", t,
        total_frames (), rss, settled ? "" : ", not settled");
  if (t >= soak.seconds) {
    finish ();
    return G_SOURCE_REMOVE;
  }

  for (guint i = 0; i < N_STREAMS; i++) {
    Stream *s = &soak.streams[i];
    if (s->down_state != GST_STATE_VOID_PENDING)
      bring_up (s, t);
    else
      check_progress (s, t);
  }
  if (t % SWAP_PERIOD_S == 0) {
    guint pair = (t / SWAP_PERIOD_S) % (N_STREAMS / 2);
    swap_model (&soak.streams[2 * pair]);
    swap_model (&soak.streams[2 * pair + 1]);
  }
  /* Half a period off the swaps (on even seconds), so that a stream is
   * never paused with a model swap pending: the element would hold both
   * models until the next frame, and RSS would be sampled with both. */
  if (t % STATE_PERIOD_S == STATE_PERIOD_S / 2) {
    guint k = t / STATE_PERIOD_S;
    take_down (&soak.streams[k % N_STREAMS],
        (k / N_STREAMS) % 2 ? GST_STATE_READY : GST_STATE_PAUSED);
  }
  return G_SOURCE_CONTINUE;
}

/* -------------------------------------------------------------- setup */

static gboolean
open_model (ModelFile *m, const char *path)
{
  GError *error = NULL;
  VmoeModel *model = vmoe_model_load (path, &error);
  if (!model) {
    g_printerr ("soak: %s\n", error->message);
    g_error_free (error);
    return FALSE;
  }
  m->path = path;
  m->routing = vmoe_model_get_config (model)->routing;
  vmoe_model_unref (model);
  return TRUE;
}

static gboolean
start_stream (Stream *s, const StreamSpec *spec, guint model)
{
  s->spec = spec;
  s->model = model;
  s->down_state = GST_STATE_VOID_PENDING;
  s->last_fresh_routing = soak.models[model].routing;
  g_mutex_init (&s->lock);
  gchar *desc = g_strdup_printf ("%s ! vmoeclassify name=classify backend=cpu "
      "post-messages=true ! fakesink name=sink sync=true", spec->source);
  GError *error = NULL;
  s->pipeline = gst_parse_launch (desc, &error);
  g_free (desc);
  if (error) {
    g_printerr ("soak: %s: %s (is GST_PLUGIN_PATH set?)\n", spec->name, error->message);
    g_error_free (error);
    return FALSE;
  }
  s->classify = gst_bin_get_by_name (GST_BIN (s->pipeline), "classify");
  g_object_set (s->classify, "model", soak.models[model].path, NULL);
  GstElement *sink = gst_bin_get_by_name (GST_BIN (s->pipeline), "sink");
  GstPad *pad = gst_element_get_static_pad (sink, "sink");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, count_frame, s, NULL);
  gst_object_unref (pad);
  gst_object_unref (sink);
  GstBus *bus = gst_element_get_bus (s->pipeline);
  gst_bus_add_watch (bus, on_message, s);
  gst_object_unref (bus);
  return set_state (s, GST_STATE_PLAYING);
}

static void
stop_stream (Stream *s)
{
  if (!s->pipeline)
    return;
  gst_element_set_state (s->pipeline, GST_STATE_NULL);
  GstBus *bus = gst_element_get_bus (s->pipeline);
  gst_bus_remove_watch (bus);
  gst_object_unref (bus);
  gst_object_unref (s->classify);
  gst_object_unref (s->pipeline);
  g_mutex_clear (&s->lock);
}

int
main (int argc, char **argv)
{
  pin_allocator ();
  /* Progress lines of an hours-long run reach a pipe (tee) as they come. */
  setvbuf (stdout, NULL, _IOLBF, 0);
  gst_init (&argc, &argv);
  if (argc != 4 || atoi (argv[1]) <= 0) {
    g_printerr ("usage: %s SECONDS MODEL_A MODEL_B\n", argv[0]);
    return 2;
  }
  g_log_set_always_fatal (G_LOG_LEVEL_WARNING | G_LOG_LEVEL_CRITICAL);
  if (!g_getenv ("GST_DEBUG"))
    gst_debug_set_default_threshold (GST_LEVEL_WARNING);
  gst_debug_add_log_function (count_log_warning, NULL, NULL);

  soak.seconds = (guint) atoi (argv[1]);
  soak.warmup_s = MAX (10, soak.seconds / 5);
  soak.n_floors = soak.seconds / RSS_WINDOW_S + 1;
  soak.rss_floors = g_new0 (guint64, soak.n_floors);
  if (!open_model (&soak.models[0], argv[2]) || !open_model (&soak.models[1], argv[3]))
    return 2;
  if (soak.models[0].routing == soak.models[1].routing) {
    g_printerr ("soak: the two models must route differently (dense, image, token) "
        "so that a frame tells which one classified it\n");
    return 2;
  }

  soak.loop = g_main_loop_new (NULL, FALSE);
  soak.rss_start = read_rss_kb ();
  soak.start_us = g_get_monotonic_time ();
  gboolean started = TRUE;
  for (guint i = 0; i < N_STREAMS && started; i++)
    started = start_stream (&soak.streams[i], &stream_specs[i], i % 2);
  if (started) {
    g_timeout_add_seconds (1, on_tick, NULL);
    g_main_loop_run (soak.loop);
  }
  double elapsed = (g_get_monotonic_time () - soak.start_us) / 1e6;

  guint64 frames = 0, fresh = 0, messages = 0, flushed = 0;
  for (guint i = 0; i < N_STREAMS; i++) {
    Stream *s = &soak.streams[i];
    if (!s->pipeline)
      continue;
    gst_element_set_state (s->pipeline, GST_STATE_NULL);
    /* After EOS every message has been read and no frame flushed. */
    if (s->eos)
      reconcile_run (s, FALSE);
    frames += s->frames;
    fresh += s->fresh;
    messages += s->messages;
    flushed += s->flushed;
  }
  for (guint i = 0; i < N_STREAMS; i++)
    stop_stream (&soak.streams[i]);
  g_main_loop_unref (soak.loop);

  guint64 spread = soak.rss_max - soak.rss_min, floor_lo = 0, floor_hi = 0;
  for (guint w = 0; w < soak.n_floors; w++) {
    if (!soak.rss_floors[w])
      continue;
    floor_lo = floor_lo ? MIN (floor_lo, soak.rss_floors[w]) : soak.rss_floors[w];
    floor_hi = MAX (floor_hi, soak.rss_floors[w]);
  }
  g_free (soak.rss_floors);
  guint64 growth = floor_hi - floor_lo;
  if (CHECK_RSS && started && growth > RSS_SPREAD_LIMIT_KB)
    fail ("RSS grew %" G_GUINT64_FORMAT " kB after the %u s warm-up (lowest RSS of each "
        "%d s window: %" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT " kB), over %d kB",
        growth, soak.warmup_s, RSS_WINDOW_S, floor_lo, floor_hi, RSS_SPREAD_LIMIT_KB);
  gboolean passed = started && soak.failures == 0;
  g_print ("soak: %s: %.0f s, %u streams, frames %" G_GUINT64_FORMAT " (classified %"
      G_GUINT64_FORMAT ", carried %" G_GUINT64_FORMAT "), messages %" G_GUINT64_FORMAT
      " (%" G_GUINT64_FORMAT " for frames flushed by READY), model swaps %u, state changes %u, warnings %d, RSS kB start %" G_GUINT64_FORMAT
      " end %" G_GUINT64_FORMAT ", after %u s warm-up min %" G_GUINT64_FORMAT " max %"
      G_GUINT64_FORMAT " (at %u s) over %u samples (spread %" G_GUINT64_FORMAT "; growth of the 10 s floors %" G_GUINT64_FORMAT ", limit %d), failures %u\n",
      passed ? "PASS" : "FAIL", elapsed, (guint) N_STREAMS, frames, fresh, frames - fresh,
      messages, flushed, soak.swaps, soak.state_changes, soak.warnings, soak.rss_start,
      soak.rss_end, soak.warmup_s, soak.rss_min, soak.rss_max, soak.rss_max_at, soak.rss_samples, spread,
      growth, RSS_SPREAD_LIMIT_KB, soak.failures);
  return passed ? 0 : 1;
}
