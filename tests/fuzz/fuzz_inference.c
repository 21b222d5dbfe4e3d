/* One inference of any small model: the input is the text of a
 * "vmoe.config", a NUL, then a seed for the random weights, session options
 * (top-k, experts_k, capacity ratio) and an RGB frame.  The model is written
 * by vmoe_random_model_write into an in-memory file, loaded back from its
 * path and run once on the CPU backend.  Configs too big for a quick run are
 * skipped before anything is written (parameters) or run (FLOPs).  The
 * result must be a well-formed classification: finite logits, top-k in
 * order and in range, probabilities, routing within the model's bounds. */
#include "fuzz-common.h"
#include "vmoe-private.h"

#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

#define MAX_PARAMETERS 100000
#define MAX_FLOPS 2e7
#define MAX_FRAME_SIDE 64

static int memfd = -1;
static char *memfd_path;

static gint64
parameter_count (const VmoeConfig *config)
{
  GPtrArray *specs = vmoe_config_tensor_specs (config, TRUE);
  gint64 total = 0;
  for (guint i = 0; i < specs->len; i++) {
    const VmoeTensorSpec *spec = specs->pdata[i];
    gint64 n = 1;
    for (int d = 0; d < spec->ndim; d++)
      n *= spec->shape[d];
    total += n;
  }
  g_ptr_array_unref (specs);
  return total;
}

static void
check_result (const VmoeConfig *c, const VmoeImageResult *r, int top_k, int experts_k)
{
  for (int i = 0; i < c->num_classes; i++)
    FUZZ_ASSERT (isfinite (r->logits[i]), "logit %d is %g", i, r->logits[i]);
  FUZZ_ASSERT (r->n_top == MIN (top_k ? top_k : 5, c->num_classes), "n_top %d", r->n_top);
  double total = 0;
  for (int i = 0; i < r->n_top; i++) {
    FUZZ_ASSERT (r->top_classes[i] >= 0 && r->top_classes[i] < c->num_classes,
        "class %d", r->top_classes[i]);
    FUZZ_ASSERT (r->top_scores[i] >= 0 && r->top_scores[i] <= 1, "score %g", r->top_scores[i]);
    FUZZ_ASSERT (i == 0 || r->top_scores[i] <= r->top_scores[i - 1], "scores out of order");
    FUZZ_ASSERT (r->top_labels[i] && strcmp (r->top_labels[i], c->labels[r->top_classes[i]]) == 0,
        "label of class %d", r->top_classes[i]);
    total += r->top_scores[i];
  }
  FUZZ_ASSERT (total <= 1 + 1e-4, "top scores sum to %g", total);
  if (c->routing == VMOE_ROUTING_IMAGE) {
    FUZZ_ASSERT (r->n_experts == (experts_k ? experts_k : c->top_k), "%d experts", r->n_experts);
    for (int i = 0; i < r->n_experts; i++) {
      FUZZ_ASSERT (r->experts[i] >= 0 && r->experts[i] < c->num_experts, "expert %d", r->experts[i]);
      FUZZ_ASSERT (r->gates[i] >= 0 && r->gates[i] <= 1 + 1e-6, "gate %g", r->gates[i]);
    }
  } else if (c->routing == VMOE_ROUTING_TOKEN) {
    FUZZ_ASSERT (r->n_layers == c->n_moe_layers, "%d layers", r->n_layers);
    for (int l = 0; l < r->n_layers; l++) {
      int routed = 0;
      for (int e = 0; e < c->num_experts; e++) {
        FUZZ_ASSERT (r->layers[l].tokens_per_expert[e] >= 0, "negative count");
        routed += r->layers[l].tokens_per_expert[e];
      }
      FUZZ_ASSERT (r->layers[l].dropped >= 0, "%d dropped", r->layers[l].dropped);
      /* Every token makes k assignments; each is routed or dropped. */
      int k = experts_k ? experts_k : c->top_k;
      FUZZ_ASSERT (routed + r->layers[l].dropped == k * vmoe_config_tokens (c),
          "%d routed + %d dropped != %d x %d tokens", routed, r->layers[l].dropped,
          k, vmoe_config_tokens (c));
    }
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  const uint8_t *nul = memchr (data, 0, size);
  if (!nul)
    return 0;
  FuzzInput in = { nul + 1, size - (size_t) (nul + 1 - data) };

  VmoeConfig config;
  if (!vmoe_config_parse ((const char *) data, nul - data, &config, NULL))
    return 0;
  gboolean small = config.num_classes <= 1000 && parameter_count (&config) <= MAX_PARAMETERS;
  vmoe_config_clear (&config);
  if (!small)
    return 0;

  if (memfd < 0) {
    memfd = memfd_create ("fuzz-inference", 0);
    FUZZ_ASSERT (memfd >= 0, "memfd_create failed");
    memfd_path = g_strdup_printf ("/proc/self/fd/%d", memfd);
  }
  guint64 seed = fuzz_take (&in, 8);
  GError *error = NULL;
  gboolean ok = vmoe_random_model_write ((const char *) data, seed, memfd_path, &error);
  fuzz_check_outcome (ok, error);
  FUZZ_ASSERT (ok, "a config that parses was not written: %s", error->message);
  VmoeModel *model = vmoe_model_load (memfd_path, &error);
  fuzz_check_outcome (model != NULL, error);
  FUZZ_ASSERT (model, "a random model does not load: %s", error->message);
  const VmoeConfig *c = vmoe_model_get_config (model);
  if (vmoe_model_flops (model, FALSE) > MAX_FLOPS) {
    vmoe_model_unref (model);
    return 0;
  }

  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_CPU;
  options.threads = 1;
  options.top_k = fuzz_int (&in, 0, c->num_classes + 1);
  options.experts_k = c->num_experts ? fuzz_int (&in, 0, c->num_experts + 1) : 0;
  options.capacity_ratio = fuzz_int (&in, 0, 64) / 16.0;
  VmoeSession *session = vmoe_session_new (model, &options, &error);
  fuzz_check_outcome (session != NULL, error);
  g_clear_error (&error);
  if (session) {
    int width = fuzz_int (&in, 1, MAX_FRAME_SIDE), height = fuzz_int (&in, 1, MAX_FRAME_SIDE);
    size_t frame_bytes = (size_t) width * height * 3;
    uint8_t *pixels = g_malloc (frame_bytes);
    for (size_t i = 0; i < frame_bytes; i++)
      pixels[i] = in.size ? in.data[i % in.size] : (uint8_t) (i * 29);
    VmoeImage frame;
    vmoe_image_init_packed (&frame, pixels, width, height, 3, (size_t) width * 3);
    ok = vmoe_session_run_u8 (session, &frame, 1, &error);
    fuzz_check_outcome (ok, error);
    /* A valid frame can fail only because the numbers overflow (a config
     * with an extreme mean or std): then the engine must say so rather
     * than report a result. */
    FUZZ_ASSERT (ok || error->code == VMOE_ERROR_NUMERIC, "a run failed: %s", error->message);
    if (ok)
      check_result (c, vmoe_session_get_result (session, 0), options.top_k, options.experts_k);
    g_clear_error (&error);
    g_free (pixels);
    vmoe_session_free (session);
  }
  vmoe_model_unref (model);
  return 0;
}
