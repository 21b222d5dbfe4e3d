/* Sessions: option handling, the per-session buffers and the results that
 * every backend shares.  Buffers grow to the largest batch seen and are then
 * reused, so steady-state runs allocate nothing. */
#include "backend.h"
#include "cpu/ops.h"

#include <math.h>
#include <string.h>

#define DEFAULT_TOP_K 5

struct VmoeSession {
  VmoeModel *model;
  VmoeBackendInstance backend;
  VmoeRoutingParams routing;
  int n_top;

  int reserved;                    /* images the buffers hold */
  int n_last;                      /* images of the last run */
  VmoeRawOutput raw;
  float *ensemble_logits;          /* [N, K] with E3 (else raw.logits serve) */
  int *member_classes;             /* [N, M] */
  double *member_log_norms;        /* [M] scratch */
  float *probs;                    /* [N, K] */
  int *top_classes;                /* [N, n_top], room for [N, K] */
  float *top_scores;
  const char **top_labels;
  const char **superclass_names;   /* [N, M*k] */
  VmoeLayerStats *layers;          /* [N, n_moe_layers, M] */
  VmoeImageResult *results;        /* [N] */
};

void
vmoe_session_options_init (VmoeSessionOptions *options)
{
  memset (options, 0, sizeof *options);
  options->backend = VMOE_BACKEND_AUTO;
  options->top_k = DEFAULT_TOP_K;
  options->capacity_ratio = -1;
}

static void
buffers_free (VmoeSession *s)
{
  g_clear_pointer (&s->raw.logits, g_free);
  g_clear_pointer (&s->raw.experts, g_free);
  g_clear_pointer (&s->raw.gates, g_free);
  g_clear_pointer (&s->raw.tokens_per_expert, g_free);
  g_clear_pointer (&s->raw.dropped, g_free);
  g_clear_pointer (&s->ensemble_logits, g_free);
  g_clear_pointer (&s->member_classes, g_free);
  g_clear_pointer (&s->member_log_norms, g_free);
  g_clear_pointer (&s->probs, g_free);
  g_clear_pointer (&s->top_classes, g_free);
  g_clear_pointer (&s->top_scores, g_free);
  g_clear_pointer (&s->top_labels, g_free);
  g_clear_pointer (&s->superclass_names, g_free);
  g_clear_pointer (&s->layers, g_free);
  g_clear_pointer (&s->results, g_free);
}

static void
reserve (VmoeSession *s, int n)
{
  if (n <= s->reserved)
    return;
  const VmoeConfig *c = &s->model->config;
  buffers_free (s);
  size_t members = c->ensemble_members;
  size_t k = s->routing.top_k * members, layers = c->n_moe_layers * members;
  size_t e = c->num_experts;
  s->raw.logits = g_new (float, (size_t) n * members * c->num_classes);
  s->raw.experts = g_new0 (int, MAX (n * k, 1));
  s->raw.gates = g_new0 (float, MAX (n * k, 1));
  s->raw.tokens_per_expert = g_new0 (int, MAX (n * c->n_moe_layers * e, 1));
  s->raw.dropped = g_new0 (int, MAX (n * layers, 1));
  if (members > 1)
    s->ensemble_logits = g_new (float, (size_t) n * c->num_classes);
  s->member_classes = g_new (int, (size_t) n * members);
  s->member_log_norms = g_new (double, members);
  s->probs = g_new (float, (size_t) n * c->num_classes);
  /* Room for every class, so that the reported count can change between
   * runs (vmoe_session_set_top_k) without reallocating. */
  s->top_classes = g_new (int, (size_t) n * c->num_classes);
  s->top_scores = g_new (float, (size_t) n * c->num_classes);
  s->top_labels = g_new (const char *, (size_t) n * c->num_classes);
  s->superclass_names = g_new0 (const char *, MAX (n * k, 1));
  s->layers = g_new0 (VmoeLayerStats, MAX (n * layers, 1));
  s->results = g_new0 (VmoeImageResult, n);
  s->reserved = n;
}

VmoeSession *
vmoe_session_new (VmoeModel *model, const VmoeSessionOptions *options,
    GError **error)
{
  g_return_val_if_fail (model != NULL, NULL);
  VmoeSessionOptions defaults;
  if (!options) {
    vmoe_session_options_init (&defaults);
    options = &defaults;
  }
  const VmoeConfig *c = &model->config;
  if (options->top_k < 0 || options->threads < 0
      || options->threads > VMOE_MAX_THREADS) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "top_k must not be negative, threads must be 0 to %d", VMOE_MAX_THREADS);
    return NULL;
  }
  if (options->precision != VMOE_PRECISION_FP32
      && options->precision != VMOE_PRECISION_BF16) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "precision %d is neither fp32 nor bf16", (int) options->precision);
    return NULL;
  }
  VmoeRoutingParams routing = { c->top_k, c->capacity_ratio };
  if (options->experts_k > 0) {
    int per_member = c->num_experts / c->ensemble_members;
    if (c->routing == VMOE_ROUTING_NONE || options->experts_k > per_member) {
      if (c->ensemble_members > 1)
        g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
            "experts-k %d is not possible: each of the model's %d ensemble "
            "members has %d experts", options->experts_k, c->ensemble_members,
            per_member);
      else
        g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
            "experts-k %d is not possible: the model has %d experts",
            options->experts_k, c->num_experts);
      return NULL;
    }
    routing.top_k = options->experts_k;
  }
  if (options->capacity_ratio > 0)
    routing.capacity_ratio = options->capacity_ratio;

  VmoeSession *s = g_new0 (VmoeSession, 1);
  s->model = vmoe_model_ref (model);
  s->routing = routing;
  s->n_top = MIN (options->top_k > 0 ? options->top_k : DEFAULT_TOP_K, c->num_classes);
  if (!vmoe_backend_open (model, routing, options, &s->backend, error)) {
    vmoe_session_free (s);
    return NULL;
  }
  reserve (s, 1);
  return s;
}

void
vmoe_session_free (VmoeSession *s)
{
  if (!s)
    return;
  buffers_free (s);
  vmoe_backend_close (&s->backend);
  vmoe_model_unref (s->model);
  g_free (s);
}

gboolean
vmoe_session_set_top_k (VmoeSession *s, int top_k, GError **error)
{
  if (top_k < 0) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "top_k must not be negative");
    return FALSE;
  }
  s->n_top = MIN (top_k > 0 ? top_k : DEFAULT_TOP_K, s->model->config.num_classes);
  /* The last run's results were laid out for the old count. */
  s->n_last = 0;
  return TRUE;
}

VmoeModel *
vmoe_session_get_model (VmoeSession *s)
{
  return s->model;
}

VmoeBackend
vmoe_session_get_backend (VmoeSession *s)
{
  return s->backend.ops->kind;
}

const char *
vmoe_session_get_device (VmoeSession *s)
{
  return s->backend.ops->device_name (s->backend.impl);
}

/* log sum_i exp(values[i * stride]), in double. */
static double
log_sum_exp (const float *values, int count, size_t stride)
{
  double max = values[0];
  for (int i = 1; i < count; i++)
    max = MAX (max, values[i * stride]);
  double sum = 0;
  for (int i = 0; i < count; i++)
    sum += exp (values[i * stride] - max);
  return max + log (sum);
}

/* E3 (docs/design.md): the ensemble's logits log((1/M) sum_m softmax
 * (logits_m)) of image i, written as a log-sum-exp of the members' log-
 * softmax so that they stay finite where a probability underflows, and
 * each member's top-1 class. */
static void
combine_members (VmoeSession *s, int i)
{
  const VmoeConfig *c = &s->model->config;
  int k_classes = c->num_classes, members = c->ensemble_members;
  const float *member_logits = s->raw.logits + (size_t) i * members * k_classes;
  float *logits = s->ensemble_logits + (size_t) i * k_classes;
  double *norms = s->member_log_norms;
  for (int m = 0; m < members; m++) {
    const float *row = member_logits + (size_t) m * k_classes;
    norms[m] = log_sum_exp (row, k_classes, 1);
    vmoe_topk (row, k_classes, 1, &s->member_classes[i * members + m], NULL);
  }
  for (int j = 0; j < k_classes; j++) {
    double max = -INFINITY, sum = 0;
    for (int m = 0; m < members; m++)
      max = MAX (max, member_logits[(size_t) m * k_classes + j] - norms[m]);
    for (int m = 0; m < members; m++)
      sum += exp (member_logits[(size_t) m * k_classes + j] - norms[m] - max);
    logits[j] = (float) (max + log (sum / members));
  }
}

/* -sum p log p of softmax (logits), in nats. */
static float
entropy_of_logits (const float *logits, int k_classes)
{
  double norm = log_sum_exp (logits, k_classes, 1), entropy = 0;
  for (int j = 0; j < k_classes; j++) {
    double log_p = logits[j] - norm;
    entropy -= exp (log_p) * log_p;
  }
  return (float) entropy;
}

/* Turns a backend's raw output into the public per-image results. */
static void
fill_results (VmoeSession *s, int n)
{
  const VmoeConfig *c = &s->model->config;
  int k_classes = c->num_classes, members = c->ensemble_members;
  int k = s->routing.top_k * members;
  int layers = c->n_moe_layers, per_member = c->num_experts / members;
  const float *logits = s->raw.logits;
  if (members > 1) {
    for (int i = 0; i < n; i++)
      combine_members (s, i);
    logits = s->ensemble_logits;
  }
  memcpy (s->probs, logits, (size_t) n * k_classes * sizeof (float));
  vmoe_softmax_rows (s->probs, n, k_classes);
  for (int i = 0; i < n; i++) {
    VmoeImageResult *r = &s->results[i];
    memset (r, 0, sizeof *r);
    r->logits = logits + (size_t) i * k_classes;
    r->n_top = s->n_top;
    r->top_classes = s->top_classes + (size_t) i * s->n_top;
    r->top_scores = s->top_scores + (size_t) i * s->n_top;
    r->top_labels = s->top_labels + (size_t) i * s->n_top;
    vmoe_topk (s->probs + (size_t) i * k_classes, k_classes, s->n_top,
        (int *) r->top_classes, (float *) r->top_scores);
    for (int j = 0; j < s->n_top; j++)
      ((const char **) r->top_labels)[j] = c->labels[r->top_classes[j]];
    r->n_members = members;
    r->member_classes = s->member_classes + (size_t) i * members;
    if (members == 1)
      s->member_classes[i] = r->top_classes[0];
    int disagreeing = 0;
    for (int m = 0; m < members; m++)
      disagreeing += r->member_classes[m] != r->top_classes[0];
    r->disagreement = (float) disagreeing / members;
    r->entropy = entropy_of_logits (r->logits, k_classes);
    if (c->routing == VMOE_ROUTING_IMAGE) {
      r->n_experts = k;
      r->experts = s->raw.experts + (size_t) i * k;
      r->gates = s->raw.gates + (size_t) i * k;
      r->superclasses = s->superclass_names + (size_t) i * k;
      for (int j = 0; j < k; j++)
        ((const char **) r->superclasses)[j] = c->n_superclasses
            ? c->superclasses[r->experts[j]].name : NULL;
    } else if (c->routing == VMOE_ROUTING_TOKEN) {
      r->n_layers = layers * members;
      r->layers = s->layers + (size_t) i * layers * members;
      for (int l = 0; l < layers; l++) {
        for (int m = 0; m < members; m++) {
          size_t at = ((size_t) i * layers + l) * members + m;
          VmoeLayerStats *st = &s->layers[at];
          st->block = c->moe_layers[l];
          st->member = m;
          st->tokens_per_expert = s->raw.tokens_per_expert + at * per_member;
          st->dropped = s->raw.dropped[at];
        }
      }
    }
  }
  s->n_last = n;
}

/* Index of the first NaN or infinity among `count` floats, or -1.  No result
 * is ever reported from non-finite numbers (docs/model-format.md): input is
 * checked before a run and logits after it, whatever the backend. */
static gssize
first_non_finite (const float *values, size_t count)
{
  for (size_t i = 0; i < count; i++)
    if (!isfinite (values[i]))
      return (gssize) i;
  return -1;
}

/* Checks the logits of a finished forward pass, then fills the results. */
static gboolean
finish_run (VmoeSession *s, int n, GError **error)
{
  int k_classes = s->model->config.num_classes;
  int members = s->model->config.ensemble_members;
  gssize bad = first_non_finite (s->raw.logits, (size_t) n * members * k_classes);
  if (bad >= 0) {
    s->n_last = 0;
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_NUMERIC,
        "the forward pass produced non-finite logits for image %d: the model's "
        "weights overflow float32, or the input holds NaN or infinity",
        (int) (bad / k_classes / members));
    return FALSE;
  }
  fill_results (s, n);
  return TRUE;
}

static gboolean
check_batch (VmoeSession *s, int n, GError **error)
{
  if (n < 1 || n > VMOE_MAX_BATCH) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "batch size %d is outside [1, %d]", n, VMOE_MAX_BATCH);
    return FALSE;
  }
  /* The backends index routed rows (E3 member copies x tokens x k) with
   * ints. */
  const VmoeConfig *c = &s->model->config;
  guint64 routed_rows = (guint64) n * c->ensemble_members * vmoe_config_tokens (c)
      * MAX (s->routing.top_k, 1);
  if (routed_rows > G_MAXINT) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "a batch of %d images is too large for this model: %" G_GUINT64_FORMAT
        " routed rows (images x ensemble members x tokens x k) exceed %d; "
        "use a smaller batch", n, routed_rows, G_MAXINT);
    return FALSE;
  }
  return TRUE;
}

gboolean
vmoe_session_run_f32 (VmoeSession *s, const float *input, int n, GError **error)
{
  if (!check_batch (s, n, error))
    return FALSE;
  const VmoeConfig *c = &s->model->config;
  size_t per_image = vmoe_config_input_floats (c);
  gssize bad = first_non_finite (input, per_image * n);
  if (bad >= 0) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "input image %d holds a non-finite value (%g) at element %" G_GSIZE_FORMAT,
        (int) (bad / per_image), input[bad], (gsize) bad % per_image);
    return FALSE;
  }
  reserve (s, n);
  if (!s->backend.ops->forward_f32 (s->backend.impl, input, n, &s->raw, error))
    return FALSE;
  return finish_run (s, n, error);
}

gboolean
vmoe_session_run_u8 (VmoeSession *s, const VmoeImage *images, int n, GError **error)
{
  if (!check_batch (s, n, error))
    return FALSE;
  reserve (s, n);
  if (!s->backend.ops->forward_u8 (s->backend.impl, images, n, &s->raw, error))
    return FALSE;
  return finish_run (s, n, error);
}

const VmoeImageResult *
vmoe_session_get_result (VmoeSession *s, int i)
{
  g_return_val_if_fail (i >= 0 && i < s->n_last, NULL);
  return &s->results[i];
}
