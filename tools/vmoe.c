/* vmoe: the command-line tool (docs/design.md, The vmoe tool).
 * One binary, one function per sub-command; each error is one line on
 * stderr and a non-zero exit. */
#include "npy.h"
#include "vmoe/vmoe.h"
#include "vmoejson.h"

#ifdef VMOE_HAVE_GST
#include <gst/app/gstappsink.h>
#include <gst/gst.h>
#include <gst/video/video.h>
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*CommandFunc) (int argc, char **argv);

static int
fail (const char *command, const char *message)
{
  fprintf (stderr, "vmoe %s: %s\n", command, message);
  return 1;
}

static int
fail_error (const char *command, GError *error)
{
  fail (command, error->message);
  g_error_free (error);
  return 1;
}

/* Parses the options of one sub-command; handles --help and bad options. */
static gboolean
parse_options (const char *command, const char *params, const char *summary,
    const GOptionEntry *entries, int *argc, char ***argv, int *status)
{
  GOptionContext *ctx = g_option_context_new (params);
  g_option_context_set_summary (ctx, summary);
  g_option_context_add_main_entries (ctx, entries, NULL);
  char *prgname = g_strdup_printf ("vmoe %s", command);
  g_set_prgname (prgname);
  g_free (prgname);
  GError *error = NULL;
  gboolean ok = g_option_context_parse (ctx, argc, argv, &error);
  g_option_context_free (ctx);
  if (!ok)
    *status = fail_error (command, error);
  return ok;
}

/* One image's line of `vmoe run`: the MoE fields through the helper that
 * vmoemetaconvert shares (gst/vmoejson.h), so both name and shape them the
 * same way. */
static char *
result_to_json (const VmoeConfig *c, const VmoeImageResult *r, gsize index,
    gboolean with_logits)
{
  JsonBuilder *b = json_builder_new ();
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "index");
  json_builder_add_int_value (b, (gint64) index);
  json_builder_set_member_name (b, "top");
  json_builder_begin_array (b);
  for (int j = 0; j < r->n_top; j++) {
    json_builder_begin_object (b);
    json_builder_set_member_name (b, "class");
    json_builder_add_int_value (b, r->top_classes[j]);
    json_builder_set_member_name (b, "label");
    json_builder_add_string_value (b, r->top_labels[j]);
    json_builder_set_member_name (b, "score");
    vmoe_json_add_double (b, r->top_scores[j]);
    json_builder_end_object (b);
  }
  json_builder_end_array (b);
  if (with_logits) {
    json_builder_set_member_name (b, "logits");
    json_builder_begin_array (b);
    for (int j = 0; j < c->num_classes; j++)
      vmoe_json_add_double (b, r->logits[j]);
    json_builder_end_array (b);
  }
  /* Token counts are never negative, so the engine's int arrays are read as
   * the view's unsigned ones (C11 6.5p7 allows the access). */
  VmoeJsonLayer *layers = g_new (VmoeJsonLayer, r->n_layers);
  for (int l = 0; l < r->n_layers; l++)
    layers[l] = (VmoeJsonLayer) { r->layers[l].block,
      (guint) (c->num_experts / c->ensemble_members),
      (const guint *) r->layers[l].tokens_per_expert, r->layers[l].dropped,
      r->layers[l].member };
  VmoeJsonRouting routing = { (guint) r->n_experts, r->experts, r->gates,
    (guint) r->n_layers, layers, (guint) r->n_members, r->member_classes,
    r->entropy, r->disagreement };
  vmoe_json_add_routing (b, &routing);
  g_free (layers);
  if (r->n_experts && c->n_superclasses) {
    json_builder_set_member_name (b, "superclasses");
    json_builder_begin_array (b);
    for (int j = 0; j < r->n_experts; j++) {
      if (r->superclasses[j])
        json_builder_add_string_value (b, r->superclasses[j]);
      else
        json_builder_add_null_value (b);
    }
    json_builder_end_array (b);
  }
  json_builder_end_object (b);
  char *text = vmoe_json_to_string (b, -1);
  g_object_unref (b);
  return text;
}

/* ------------------------------------------------------------------ info */

static int
cmd_info (int argc, char **argv)
{
  int status = 0;
  GOptionEntry entries[] = { { NULL } };
  if (!parse_options ("info", "MODEL", "Prints a model's configuration, "
          "parameter count, FLOPs per image and labels.", entries, &argc, &argv, &status))
    return status;
  if (argc != 2)
    return fail ("info", "expects one MODEL argument (see --help)");
  GError *error = NULL;
  VmoeModel *model = vmoe_model_load (argv[1], &error);
  if (!model)
    return fail_error ("info", error);
  const VmoeConfig *c = vmoe_model_get_config (model);
  static const char *const routing[] = { "dense", "image (Mobile V-MoE)",
    "token (V-MoE)" };
  printf ("model:        %s\n", argv[1]);
  printf ("image:        %dx%d, %d channel(s), patch %d, %d tokens\n",
      c->image_w, c->image_h, c->in_channels, c->patch_size, vmoe_model_tokens (model));
  printf ("trunk:        depth %d, width %d, %d heads, MLP %d, %s, %s pooling%s\n",
      c->depth, c->embed_dim, c->num_heads, c->mlp_dim,
      c->act == VMOE_ACT_GELU ? "gelu" : "gelu_tanh",
      c->pool == VMOE_POOL_TOKEN ? "token" : "avg",
      c->class_token ? ", class token" : "");
  if (c->aspect == VMOE_ASPECT_STRETCH)
    printf ("aspect:       stretch\n");
  else
    printf ("aspect:       crop, crop_pct %g\n", c->crop_pct);
  printf ("routing:      %s\n", routing[c->routing]);
  if (c->routing != VMOE_ROUTING_NONE) {
    printf ("moe blocks:  ");
    for (int i = 0; i < c->n_moe_layers; i++)
      printf (" %d", c->moe_layers[i]);
    printf ("\nexperts:      %d, top-k %d, expert MLP %d%s\n", c->num_experts,
        c->top_k, c->expert_mlp_dim, c->shared_expert ? ", shared expert" : "");
    if (c->ensemble_members > 1)
      printf ("ensemble:     E3, %d members of %d experts each, top-k within a member; "
          "%d copies from block %d on\n", c->ensemble_members,
          c->num_experts / c->ensemble_members, c->ensemble_members, c->moe_layers[0]);
    if (c->routing == VMOE_ROUTING_TOKEN)
      printf ("capacity:     ratio %g, BPR %s\n", c->capacity_ratio, c->bpr ? "on" : "off");
    else
      printf ("router input: %s, gates %s\n",
          c->router_input == VMOE_ROUTER_INPUT_CLS ? "cls" : "mean",
          c->normalize_gates ? "normalised" : "raw");
  }
  printf ("parameters:   %" G_GUINT64_FORMAT "\n", vmoe_model_parameter_count (model));
  printf ("GFLOPs/image: %.4f as routed, %.4f with every expert%s\n",
      vmoe_model_flops (model, TRUE) / 1e9, vmoe_model_flops (model, FALSE) / 1e9,
      c->ensemble_members > 1 ? " (all member copies)" : "");
  /* What a CPU session would run its linear layers on, per precision. */
  static const VmoePrecision precisions[] = { VMOE_PRECISION_FP32, VMOE_PRECISION_BF16 };
  for (guint i = 0; i < G_N_ELEMENTS (precisions); i++) {
    GError *why = NULL;
    const char *gemm = vmoe_cpu_gemm_describe (precisions[i], &why);
    printf ("cpu %s:     %s\n", vmoe_precision_name (precisions[i]),
        gemm ? gemm : why->message);
    g_clear_error (&why);
  }
  printf ("classes:      %d:", c->num_classes);
  for (int i = 0; i < c->num_classes && i < 20; i++)
    printf ("%s %s", i ? "," : "", c->labels[i]);
  printf ("%s\n", c->num_classes > 20 ? ", ..." : "");
  for (int i = 0; i < c->n_superclasses; i++) {
    printf ("superclass %d: %s (", i, c->superclasses[i].name);
    for (int j = 0; j < c->superclasses[i].n_classes; j++)
      printf ("%s%s", j ? ", " : "", c->labels[c->superclasses[i].classes[j]]);
    printf (")\n");
  }
  vmoe_model_unref (model);
  return 0;
}

/* ------------------------------------------------------------------- run */

/* The options every command that runs a model shares. */
typedef struct {
  char *backend;
  char *device;
  gboolean fp16;
  int threads;
  char *precision;
} BackendArgs;

#define BACKEND_OPTIONS(args) \
  { "backend", 0, 0, G_OPTION_ARG_STRING, &(args).backend, "auto, cpu or vulkan", "NAME" }, \
  { "device", 0, 0, G_OPTION_ARG_STRING, &(args).device, \
    "Vulkan device: auto, an index, cpu (e.g. lavapipe) or part of its name " \
    "(default: $VMOE_VULKAN_DEVICE, else auto)", "DEVICE" }, \
  { "fp16", 0, 0, G_OPTION_ARG_NONE, &(args).fp16, \
    "Vulkan: store the GEMM weights as fp16", NULL }, \
  { "threads", 0, 0, G_OPTION_ARG_INT, &(args).threads, "CPU threads (default: all)", "N" }, \
  { "precision", 0, 0, G_OPTION_ARG_STRING, &(args).precision, \
    "CPU: fp32 (default) or bf16 (oneDNN on avx512_bf16 CPUs)", "P" }

static void
backend_args_clear (BackendArgs *args)
{
  g_clear_pointer (&args->backend, g_free);
  g_clear_pointer (&args->device, g_free);
  g_clear_pointer (&args->precision, g_free);
}

static gboolean
make_session (const BackendArgs *args, int top_k, VmoeModel *model,
    VmoeSession **session, GError **error)
{
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  if (args->backend && !vmoe_backend_from_string (args->backend, &options.backend)) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "unknown backend '%s' (auto, cpu or vulkan)", args->backend);
    return FALSE;
  }
  if (args->threads < 0 || args->threads > VMOE_MAX_THREADS) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "--threads must be 0 to %d", VMOE_MAX_THREADS);
    return FALSE;
  }
  if (args->precision
      && !vmoe_precision_from_string (args->precision, &options.precision)) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "unknown precision '%s' (fp32 or bf16)", args->precision);
    return FALSE;
  }
  options.threads = args->threads;
  options.device = args->device;
  options.fp16 = args->fp16;
  if (top_k > 0)
    options.top_k = top_k;
  *session = vmoe_session_new (model, &options, error);
  return *session != NULL;
}

/* Parses --roi "x,y,w,h": four integers, w and h at least 1 (x and y may
 * lie outside the frame: the engine clamps the region). */
static gboolean
parse_roi (const char *text, VmoeImage *region_of, GError **error)
{
  g_auto (GStrv) parts = g_strsplit (text, ",", -1);
  gint64 v[4];
  gboolean ok = g_strv_length (parts) == 4;
  for (int i = 0; ok && i < 4; i++)
    ok = g_ascii_string_to_signed (g_strstrip (parts[i]), 10, G_MININT, G_MAXINT, &v[i], NULL);
  if (!ok || v[2] < 1 || v[3] < 1) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "--roi '%s' must be x,y,w,h: four integers, w and h at least 1", text);
    return FALSE;
  }
  region_of->region.x = (int) v[0];
  region_of->region.y = (int) v[1];
  region_of->region.width = (int) v[2];
  region_of->region.height = (int) v[3];
  return TRUE;
}

/* Runs every image of `input` in chunks of `batch`, printing JSON lines;
 * `roi`'s region (zero for the whole frame) applies to every 8-bit image. */
static gboolean
run_array (VmoeSession *session, const NpyArray *input, int batch,
    gboolean with_logits, const VmoeImage *roi, GError **error)
{
  const VmoeConfig *c = vmoe_model_get_config (vmoe_session_get_model (session));
  gint64 n = input->shape[0];
  batch = (int) MIN (batch, n);
  VmoeImage *images = g_new0 (VmoeImage, batch);
  gboolean ok = TRUE;
  for (gint64 first = 0; ok && first < n; first += batch) {
    int count = (int) MIN (batch, n - first);
    if (input->dtype == NPY_FLOAT32) {
      size_t per_image = (size_t) c->in_channels * c->image_h * c->image_w;
      ok = vmoe_session_run_f32 (session,
          (const float *) input->data + first * per_image, count, error);
    } else {
      int h = (int) input->shape[1], w = (int) input->shape[2], ch = (int) input->shape[3];
      for (int i = 0; i < count; i++) {
        vmoe_image_init_packed (&images[i],
            (const guint8 *) input->data + (first + i) * (size_t) h * w * ch, w, h, ch,
            (size_t) w * ch);
        images[i].region = roi->region;
      }
      ok = vmoe_session_run_u8 (session, images, count, error);
    }
    if (!ok)
      g_prefix_error (error, "images %" G_GINT64_FORMAT " to %" G_GINT64_FORMAT ": ",
          first, first + count - 1);
    for (int i = 0; ok && i < count; i++) {
      char *line = result_to_json (c, vmoe_session_get_result (session, i),
          (gsize) (first + i), with_logits);
      puts (line);
      g_free (line);
    }
  }
  g_free (images);
  return ok;
}

static gboolean
check_input_shape (const VmoeConfig *c, const NpyArray *a, GError **error)
{
  if (a->ndim != 4 || a->shape[0] < 1) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "input must be 4-D: float32 [N, C, H, W] or uint8 [N, H, W, C]");
    return FALSE;
  }
  if (a->dtype == NPY_FLOAT32 && (a->shape[1] != c->in_channels
          || a->shape[2] != c->image_h || a->shape[3] != c->image_w)) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "float32 input must be [N, %d, %d, %d] for this model (got [%" G_GINT64_FORMAT
        ", %" G_GINT64_FORMAT ", %" G_GINT64_FORMAT ", %" G_GINT64_FORMAT "])",
        c->in_channels, c->image_h, c->image_w, a->shape[0], a->shape[1],
        a->shape[2], a->shape[3]);
    return FALSE;
  }
  if (a->dtype == NPY_UINT8 && (a->shape[3] != 1 && a->shape[3] != 3 && a->shape[3] != 4)) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "uint8 input must be [N, H, W, C] with C = 1, 3 or 4");
    return FALSE;
  }
  return TRUE;
}

/* Regions apply to 8-bit frames only: float input is already the model's
 * input, with no frame left to take a region of. */
static gboolean
check_roi_input (const char *roi_text, const NpyArray *a, GError **error)
{
  if (!roi_text || a->dtype == NPY_UINT8)
    return TRUE;
  g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
      "--roi applies to uint8 [N, H, W, C] frames only, not to float32 input");
  return FALSE;
}

static int
cmd_run (int argc, char **argv)
{
  int status = 0, batch = 8, top_k = 5;
  BackendArgs args = { 0 };
  gboolean logits = FALSE;
  char *roi_text = NULL;
  VmoeImage roi = { 0 };
  GOptionEntry entries[] = {
    BACKEND_OPTIONS (args),
    { "logits", 0, 0, G_OPTION_ARG_NONE, &logits, "Print the logits too", NULL },
    { "roi", 0, 0, G_OPTION_ARG_STRING, &roi_text, "Classify only this region of "
      "every uint8 image, in pixels, clamped to the image (docs/design.md, Regions "
      "of interest)", "X,Y,W,H" },
    { "batch", 0, 0, G_OPTION_ARG_INT, &batch, "Images per call (default 8)", "N" },
    { "top-k", 0, 0, G_OPTION_ARG_INT, &top_k, "Classes per image (default 5)", "K" },
    { NULL }
  };
  if (!parse_options ("run", "MODEL INPUT.npy", "Classifies the images of a "
          ".npy array: float32 [N, C, H, W] already normalised, or uint8 "
          "[N, H, W, C] (C = 1, 3, 4) of any size, pre-processed as the model "
          "says. Prints one JSON object per image and line.",
          entries, &argc, &argv, &status))
    goto out;
  if (argc != 3) {
    status = fail ("run", "expects MODEL and INPUT.npy (see --help)");
    goto out;
  }
  if (batch < 1 || top_k < 1 || args.threads < 0) {
    status = fail ("run", "--batch and --top-k must be at least 1, --threads not negative");
    goto out;
  }
  GError *error = NULL;
  if (roi_text && !parse_roi (roi_text, &roi, &error)) {
    status = fail_error ("run", error);
    goto out;
  }
  VmoeModel *model = vmoe_model_load (argv[1], &error);
  VmoeSession *session = NULL;
  NpyArray input = { 0 };
  if (!model || !npy_load (argv[2], &input, &error)
      || !check_input_shape (vmoe_model_get_config (model), &input, &error)
      || !check_roi_input (roi_text, &input, &error)
      || !make_session (&args, top_k, model, &session, &error)
      || !run_array (session, &input, batch, logits, &roi, &error))
    status = fail_error ("run", error);
  npy_clear (&input);
  vmoe_session_free (session);
  vmoe_model_unref (model);
out:
  g_free (roi_text);
  backend_args_clear (&args);
  return status;
}

/* ----------------------------------------------------------------- bench */

static int
compare_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

static double
percentile (const GArray *sorted, double q)
{
  guint i = (guint) MIN (sorted->len - 1, floor (q * (sorted->len - 1) + 0.5));
  return g_array_index (sorted, double, i);
}

static int
cmd_bench (int argc, char **argv)
{
  int status = 0, batch = 1, n_sessions = 1;
  double seconds = 5.0;
  BackendArgs args = { 0 };
  gboolean json = FALSE;
  GOptionEntry entries[] = {
    BACKEND_OPTIONS (args),
    { "batch", 0, 0, G_OPTION_ARG_INT, &batch, "Images per call (default 1)", "N" },
    { "sessions", 0, 0, G_OPTION_ARG_INT, &n_sessions,
      "Sessions sharing the model, called in turn (default 1)", "N" },
    { "seconds", 0, 0, G_OPTION_ARG_DOUBLE, &seconds, "Time to measure (default 5)", "S" },
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print one JSON object", NULL },
    { NULL }
  };
  if (!parse_options ("bench", "MODEL", "Times the forward pass on random "
          "pre-processed input: images/s, latency percentiles per call and "
          "achieved GFLOP/s (FLOPs as routed).", entries, &argc, &argv, &status))
    goto out;
  if (argc != 2) {
    status = fail ("bench", "expects one MODEL argument (see --help)");
    goto out;
  }
  if (batch < 1 || batch > VMOE_MAX_BATCH || !(seconds > 0) || args.threads < 0
      || n_sessions < 1 || n_sessions > 64) {
    char *message = g_strdup_printf ("--batch must be 1 to %d, --seconds positive, "
        "--sessions 1 to 64", VMOE_MAX_BATCH);
    status = fail ("bench", message);
    g_free (message);
    goto out;
  }
  GError *error = NULL;
  VmoeSession *sessions[64] = { NULL };
  VmoeModel *model = vmoe_model_load (argv[1], &error);
  gboolean made = model != NULL;
  for (int i = 0; made && i < n_sessions; i++)
    made = make_session (&args, 5, model, &sessions[i], &error);
  if (!made) {
    status = fail_error ("bench", error);
    for (int i = 0; i < n_sessions; i++)
      vmoe_session_free (sessions[i]);
    vmoe_model_unref (model);
    goto out;
  }
  VmoeSession *session = sessions[0];
  const VmoeConfig *c = vmoe_model_get_config (model);
  size_t count = (size_t) batch * c->in_channels * c->image_h * c->image_w;
  float *input = g_try_new (float, count);
  if (!input) {
    char *message = g_strdup_printf ("--batch %d needs %" G_GSIZE_FORMAT
        " bytes of input, more than can be allocated", batch, count * sizeof (float));
    status = fail ("bench", message);
    g_free (message);
    for (int i = 0; i < n_sessions; i++)
      vmoe_session_free (sessions[i]);
    vmoe_model_unref (model);
    goto out;
  }
  GRand *rand = g_rand_new_with_seed (1);
  for (size_t i = 0; i < count; i++)
    input[i] = (float) g_rand_double_range (rand, -2, 2);
  g_rand_free (rand);

  /* One untimed call per session sizes every buffer and warms caches. */
  gboolean ok = TRUE;
  for (int i = 0; ok && i < n_sessions; i++)
    ok = vmoe_session_run_f32 (sessions[i], input, batch, &error);
  GArray *latencies = g_array_new (FALSE, FALSE, sizeof (double));
  gint64 start = g_get_monotonic_time ();
  double elapsed = 0;
  while (ok && (elapsed < seconds || latencies->len < 3)) {
    gint64 t0 = g_get_monotonic_time ();
    ok = vmoe_session_run_f32 (sessions[latencies->len % n_sessions], input, batch, &error);
    gint64 t1 = g_get_monotonic_time ();
    double ms = (t1 - t0) / 1000.0;
    g_array_append_val (latencies, ms);
    elapsed = (t1 - start) / 1e6;
  }
  if (!ok) {
    status = fail_error ("bench", error);
  } else {
    double images_per_s = latencies->len * (double) batch / elapsed;
    double gflops = vmoe_model_flops (model, TRUE) * images_per_s / 1e9;
    g_array_sort (latencies, compare_double);
    const char *name = vmoe_backend_name (vmoe_session_get_backend (session));
    if (json)
      printf ("{\"backend\": \"%s\", \"device\": \"%s\", \"batch\": %d, \"images_per_s\": %.3f, "
          "\"latency_ms\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f}, "
          "\"gflops\": %.3f}\n", name, vmoe_session_get_device (session), batch, images_per_s,
          percentile (latencies, 0.5), percentile (latencies, 0.9),
          percentile (latencies, 0.99), gflops);
    else
      printf ("backend %s (%s), batch %d: %.2f images/s, latency per call p50 %.3f ms, "
          "p90 %.3f ms, p99 %.3f ms, %.2f GFLOP/s (%u calls)\n", name,
          vmoe_session_get_device (session), batch,
          images_per_s, percentile (latencies, 0.5), percentile (latencies, 0.9),
          percentile (latencies, 0.99), gflops, latencies->len);
  }
  g_array_free (latencies, TRUE);
  g_free (input);
  for (int i = 0; i < n_sessions; i++)
    vmoe_session_free (sessions[i]);
  vmoe_model_unref (model);
out:
  backend_args_clear (&args);
  return status;
}

/* -------------------------------------------------------------- classify */

#ifdef VMOE_HAVE_GST
/* Decodes the first frame of an image (or video) file through GStreamer's
 * decodebin into RGBA. */
static GstSample *
decode_first_frame (const char *path, GError **error)
{
  GError *parse_error = NULL;
  GstElement *pipeline = gst_parse_launch ("filesrc name=src ! decodebin ! "
      "videoconvert ! video/x-raw,format=RGBA ! appsink name=sink sync=false",
      &parse_error);
  if (!pipeline) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "cannot build the decoding pipeline: %s", parse_error->message);
    g_error_free (parse_error);
    return NULL;
  }
  GstElement *src = gst_bin_get_by_name (GST_BIN (pipeline), "src");
  GstElement *sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");
  g_object_set (src, "location", path, NULL);
  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  /* Wait for the first frame, or for the error or end of stream that says
   * there will be none (an undecodable file fails at once, not at a timeout). */
  GstBus *bus = gst_element_get_bus (pipeline);
  GstSample *sample = NULL;
  GstMessage *msg = NULL;
  for (int waited = 0; !sample && !msg && waited < 300; waited++) {
    sample = gst_app_sink_try_pull_sample (GST_APP_SINK (sink), 100 * GST_MSECOND);
    if (!sample)
      msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR | GST_MESSAGE_EOS);
  }
  if (!sample) {
    GError *gst_error = NULL;
    if (msg && GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR)
      gst_message_parse_error (msg, &gst_error, NULL);
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_IO, "cannot decode '%s': %s", path,
        gst_error ? gst_error->message : "no video frame in it");
    g_clear_error (&gst_error);
  }
  if (msg)
    gst_message_unref (msg);
  gst_object_unref (bus);
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (src);
  gst_object_unref (sink);
  gst_object_unref (pipeline);
  return sample;
}

static gboolean
classify_file (VmoeSession *session, const char *path, GError **error)
{
  GstSample *sample = decode_first_frame (path, error);
  if (!sample)
    return FALSE;
  GstVideoInfo info;
  GstVideoFrame frame;
  gboolean ok = gst_video_info_from_caps (&info, gst_sample_get_caps (sample))
      && gst_video_frame_map (&frame, &info, gst_sample_get_buffer (sample), GST_MAP_READ);
  if (!ok) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_IO, "cannot read the frame of '%s'", path);
  } else {
    VmoeImage img;
    vmoe_image_init_packed (&img, GST_VIDEO_FRAME_PLANE_DATA (&frame, 0),
        GST_VIDEO_FRAME_WIDTH (&frame), GST_VIDEO_FRAME_HEIGHT (&frame), 4,
        GST_VIDEO_FRAME_PLANE_STRIDE (&frame, 0));
    ok = vmoe_session_run_u8 (session, &img, 1, error);
    gst_video_frame_unmap (&frame);
    if (ok) {
      const VmoeImageResult *r = vmoe_session_get_result (session, 0);
      printf ("%s\t%s\t%.4f\n", path, r->top_labels[0], r->top_scores[0]);
    }
  }
  gst_sample_unref (sample);
  return ok;
}
#endif

static int
cmd_classify (int argc, char **argv)
{
  int status = 0;
  BackendArgs args = { 0 };
  GOptionEntry entries[] = {
    BACKEND_OPTIONS (args),
    { NULL }
  };
  if (!parse_options ("classify", "MODEL FILE...", "Classifies image files "
          "(PNG, JPEG, ... anything GStreamer decodes), printing "
          "FILE<TAB>label<TAB>score per file.", entries, &argc, &argv, &status))
    goto out;
  if (argc < 3) {
    status = fail ("classify", "expects MODEL and at least one FILE (see --help)");
    goto out;
  }
#ifdef VMOE_HAVE_GST
  gst_init (NULL, NULL);
  GError *error = NULL;
  VmoeSession *session = NULL;
  VmoeModel *model = vmoe_model_load (argv[1], &error);
  if (!model || !make_session (&args, 1, model, &session, &error)) {
    status = fail_error ("classify", error);
  } else {
    for (int i = 2; i < argc && status == 0; i++)
      if (!classify_file (session, argv[i], &error))
        status = fail_error ("classify", error);
  }
  vmoe_session_free (session);
  vmoe_model_unref (model);
#else
  status = fail ("classify", "this vmoe was built without GStreamer (meson option gst)");
#endif
out:
  backend_args_clear (&args);
  return status;
}

/* ---------------------------------------------------------- random-model */

static int
cmd_random_model (int argc, char **argv)
{
  int status = 0;
  char *config_path = NULL, *output = NULL;
  gint64 seed = 0;
  GOptionEntry entries[] = {
    { "config", 0, 0, G_OPTION_ARG_FILENAME, &config_path,
      "JSON file with the vmoe.config of the model", "CONFIG.json" },
    { "output", 'o', 0, G_OPTION_ARG_FILENAME, &output, "Model file to write", "OUT" },
    { "seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Random seed (default 0)", "S" },
    { NULL }
  };
  if (!parse_options ("random-model", "", "Writes a model file with seeded "
          "random weights for any configuration.", entries, &argc, &argv, &status))
    goto out;
  if (!config_path || !output || argc != 1) {
    status = fail ("random-model", "needs --config CONFIG.json and -o OUT (see --help)");
    goto out;
  }
  char *text = NULL;
  GError *error = NULL;
  if (!g_file_get_contents (config_path, &text, NULL, &error)
      || !vmoe_random_model_write (text, (guint64) seed, output, &error))
    status = fail_error ("random-model", error);
  g_free (text);
out:
  g_free (config_path);
  g_free (output);
  return status;
}

/* ------------------------------------------------------------------ main */

static const struct {
  const char *name;
  CommandFunc func;
  const char *summary;
} commands[] = {
  { "info", cmd_info, "configuration, parameters, FLOPs and labels of a model" },
  { "run", cmd_run, "classify the images of a .npy array, JSON lines out" },
  { "classify", cmd_classify, "classify image files decoded by GStreamer" },
  { "bench", cmd_bench, "time the forward pass" },
  { "random-model", cmd_random_model, "write a model with random weights" },
};

static void
usage (FILE *out)
{
  fprintf (out, "Usage: vmoe COMMAND [OPTION...] ARGS\n\n"
      "Sparse Vision-Transformer Mixture-of-Experts inference.\n\nCommands:\n");
  for (guint i = 0; i < G_N_ELEMENTS (commands); i++)
    fprintf (out, "  %-14s %s\n", commands[i].name, commands[i].summary);
  fprintf (out, "\n'vmoe COMMAND --help' describes each.\n");
}

int
main (int argc, char **argv)
{
  if (argc < 2) {
    usage (stderr);
    return 1;
  }
  if (strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0
      || strcmp (argv[1], "help") == 0) {
    usage (stdout);
    return 0;
  }
  for (guint i = 0; i < G_N_ELEMENTS (commands); i++)
    if (strcmp (argv[1], commands[i].name) == 0)
      return commands[i].func (argc - 1, argv + 1);
  fprintf (stderr, "vmoe: unknown command '%s' (see vmoe --help)\n", argv[1]);
  return 1;
}
