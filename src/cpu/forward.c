/* The CPU backend's forward pass.  vmoe_cpu_forward reads top to bottom like
 * docs/design.md's "Forward pass"; the phases it runs on row slices (pass.h)
 * come first, then the embedding and the head, then the workspace. */
#include "cpu.h"
#include "linear.h"
#include "pass.h"

#include <string.h>

/* A block's phase over the rows of `images` images. */
typedef struct {
  const VmoeBlock *block;
  int images;
} BlockRows;

/* z = LN1(x); qkv = z Wqkv^T + b; and the rows' keys staged for attention
 * while they are in cache.  Staging as a step of its own, by heads, took
 * longer on 2 cores than on one at batch 1 (three heads for two threads,
 * and one more meeting point per layer). */
static void
attention_input_rows (VmoeCpu *cpu, const void *arg, int first, int count,
    int thread)
{
  const BlockRows *in = arg;
  const VmoeConfig *c = &cpu->model->config;
  size_t d = cpu->dim;
  vmoe_layernorm_forward (cpu->z + first * d, cpu->x + first * d,
      in->block->norm1_weight, in->block->norm1_bias, count, d,
      (float) c->norm_eps);
  vmoe_linear_forward (cpu->gemm[thread], cpu->qkv + first * 3 * d,
      cpu->z + first * d, &in->block->qkv, count, VMOE_EPILOGUE_STORE);
  vmoe_attention_stage_rows (cpu->attention_scratch, cpu->qkv, first, count,
      in->images, cpu->tokens, cpu->dim, c->num_heads, cpu->precision);
}

/* attn = attention of the rows' queries; x += attn Wproj^T + b;
 * z = LN2(x); and for a dense block x += MLP(z).  The attention of a
 * thread's own rows, with no meeting point between it and the rest: one
 * per layer fewer than attention run over all threads by heads and blocks
 * of queries. */
static void
attention_output_rows (VmoeCpu *cpu, const void *arg, int first, int count,
    int thread)
{
  const BlockRows *in = arg;
  const VmoeBlock *block = in->block;
  const VmoeConfig *c = &cpu->model->config;
  VmoeGemmScratch *gemm = cpu->gemm[thread];
  size_t d = cpu->dim;
  vmoe_attention_attend_rows (cpu->attn, cpu->qkv, cpu->attention_scratch,
      first, count, thread, vmoe_workers_threads (cpu->workers), in->images,
      cpu->tokens, cpu->dim, c->num_heads, cpu->precision);
  vmoe_linear_forward (gemm, cpu->x + first * d, cpu->attn + first * d,
      &block->proj, count, VMOE_EPILOGUE_ADD);
  vmoe_layernorm_forward (cpu->z + first * d, cpu->x + first * d,
      block->norm2_weight, block->norm2_bias, count, d, (float) c->norm_eps);
  if (!block->is_moe)
    vmoe_mlp_forward (gemm, cpu->x + first * d, cpu->z + first * d, &block->mlp,
        count, cpu->hidden + (size_t) first * cpu->hidden_dim, c->act, TRUE);
}

/* ViMoE's shared expert: x += MLP(z). */
static void
shared_expert_rows (VmoeCpu *cpu, const void *arg, int first, int count,
    int thread)
{
  VmoeGemmScratch *gemm = cpu->gemm[thread];
  const VmoeBlock *block = arg;
  size_t d = cpu->dim;
  vmoe_mlp_forward (gemm, cpu->x + first * d, cpu->z + first * d, &block->shared,
      count, cpu->hidden + (size_t) first * cpu->hidden_dim,
      cpu->model->config.act, TRUE);
}

/* z (N*Np, D) = patches W^T + b. */
static void
patch_embed_rows (VmoeCpu *cpu, const void *arg, int first, int count,
    int thread)
{
  VmoeGemmScratch *gemm = cpu->gemm[thread];
  const VmoeLinear *lin = arg;
  vmoe_linear_forward (gemm, cpu->z + (size_t) first * lin->out,
      cpu->patches + (size_t) first * lin->in, lin, count, VMOE_EPILOGUE_STORE);
}

/* input (N, C, H, W) -> patches (N*Np, C*P*P), im2col order (c, ky, kx). */
static void
im2col (float *patches, const float *input, int n, const VmoeConfig *c)
{
  int p = c->patch_size, gh = c->image_h / p, gw = c->image_w / p;
  int h = c->image_h, w = c->image_w;
  for (int i = 0; i < n; i++) {
    const float *img = input + (size_t) i * c->in_channels * h * w;
    for (int py = 0; py < gh; py++) {
      for (int px = 0; px < gw; px++) {
        float *dst = patches + ((size_t) (i * gh + py) * gw + px) * c->in_channels * p * p;
        for (int ch = 0; ch < c->in_channels; ch++)
          for (int ky = 0; ky < p; ky++) {
            memcpy (dst, img + ((size_t) ch * h + py * p + ky) * w + px * p,
                p * sizeof (float));
            dst += p;
          }
      }
    }
  }
}

static void
embed (VmoeCpu *cpu, const float *input, int n)
{
  const VmoeModel *m = cpu->model;
  const VmoeConfig *c = &m->config;
  int d = cpu->dim, n_patches = vmoe_config_patches (c);
  int first_patch = c->class_token ? 1 : 0;
  im2col (cpu->patches, input, n, c);
  vmoe_cpu_run_on_rows (cpu, n * n_patches, (double) m->patch_embed.in * d,
      patch_embed_rows, &m->patch_embed);
  for (int i = 0; i < n; i++) {
    float *x = cpu->x + (size_t) i * cpu->tokens * d;
    if (c->class_token)
      for (int j = 0; j < d; j++)
        x[j] = m->cls_token[j] + m->pos_embed[j];
    for (int t = 0; t < n_patches; t++) {
      float *dst = x + (size_t) (first_patch + t) * d;
      const float *src = cpu->z + ((size_t) i * n_patches + t) * d;
      const float *pos = m->pos_embed + (size_t) (first_patch + t) * d;
      for (int j = 0; j < d; j++)
        dst[j] = src[j] + pos[j];
    }
  }
}

static void
pool_and_head (VmoeCpu *cpu, int n, float *logits)
{
  const VmoeModel *m = cpu->model;
  const VmoeConfig *c = &m->config;
  int d = cpu->dim, t_count = cpu->tokens;
  float eps = (float) c->norm_eps;
  for (int i = 0; i < n; i++) {
    const float *x = cpu->x + (size_t) i * t_count * d;
    float *pooled = cpu->pooled + (size_t) i * d;
    if (c->pool == VMOE_POOL_TOKEN) {
      vmoe_layernorm_forward (pooled, x, m->norm_weight, m->norm_bias, 1, d, eps);
      continue;
    }
    int first = c->class_token ? 1 : 0, count = t_count - first;
    vmoe_layernorm_forward (cpu->z, x + (size_t) first * d, m->norm_weight,
        m->norm_bias, count, d, eps);
    for (int j = 0; j < d; j++) {
      double s = 0;
      for (int t = 0; t < count; t++)
        s += cpu->z[(size_t) t * d + j];
      pooled[j] = (float) (s / count);
    }
  }
  vmoe_linear_forward (cpu->gemm[0], logits, cpu->pooled, &m->head, n,
      VMOE_EPILOGUE_STORE);
}

/* E3: images [0, n) of x and z become n*M member copies, copy i*M + m
 * being image i's.  In place from the last image down: copy i's targets
 * start at i*M >= i, past every image still to be read. */
static void
copy_members (VmoeCpu *cpu, int n)
{
  int members = cpu->model->config.ensemble_members;
  size_t image = (size_t) cpu->tokens * cpu->dim;
  for (int i = n - 1; i >= 0; i--)
    for (int m = members - 1; m >= 0; m--) {
      size_t to = ((size_t) i * members + m) * image, from = (size_t) i * image;
      if (to == from)
        continue;
      memcpy (cpu->x + to, cpu->x + from, image * sizeof (float));
      memcpy (cpu->z + to, cpu->z + from, image * sizeof (float));
    }
}

static void row_split_forward (VmoeCpu *cpu, const float *input, int n,
    VmoeRawOutput *out);

/* A pass over model with GEMM scratch for `threads` threads, no pool and
 * no workspace yet. */
static VmoeCpu *
pass_new (VmoeModel *model, VmoeRoutingParams routing, VmoePrecision precision,
    int threads)
{
  const VmoeConfig *c = &model->config;
  VmoeCpu *cpu = g_new0 (VmoeCpu, 1);
  cpu->model = vmoe_model_ref (model);
  cpu->routing = routing;
  cpu->precision = precision;
  cpu->tokens = vmoe_config_tokens (c);
  cpu->dim = c->embed_dim;
  cpu->hidden_dim = MAX (c->mlp_dim, c->routing != VMOE_ROUTING_NONE ? c->expert_mlp_dim : 0);
  cpu->gemm = g_new0 (VmoeGemmScratch *, threads);
  for (int t = 0; t < threads; t++)
    cpu->gemm[t] = vmoe_gemm_scratch_new (precision);
  return cpu;
}

/* out's rows for images [first, ...) of the batch (backend.h: every array
 * is image-major). */
static VmoeRawOutput
raw_output_from (const VmoeConfig *c, int top_k, const VmoeRawOutput *out, int first)
{
  size_t members = c->ensemble_members, i = first, k = top_k;
  VmoeRawOutput view = {
    out->logits + i * members * c->num_classes,
    out->experts + i * members * k,
    out->gates + i * members * k,
    out->tokens_per_expert + i * c->n_moe_layers * (size_t) c->num_experts,
    out->dropped + i * c->n_moe_layers * members,
  };
  return view;
}

typedef struct {
  VmoeCpu *cpu;
  const float *input;
  VmoeRawOutput *out;
  int images, groups;
} ImageGroups;

/* Item: a group of a batch's whole images, one group per thread, through
 * the group's own pass.  By group, not by thread: whichever thread takes
 * it, a group lands on the same pass, whose workspace and GEMM scratch then
 * grow only with the batch.  Passes taken by thread, with images handed out
 * one by one, made a pass that a thread met for the first time allocate in
 * the middle of a steady stream of calls (the ops test "no allocation per
 * call" caught it, now and then).  One image at a time: a group's images in
 * one pass ran bf16 5% slower per image (batch 4 against 1 on one thread;
 * four images' qkv no longer fit the core's L2 cache), fp32 level, and the
 * workspace then holds one image (peak RSS at batch 8: 11 MB less in
 * fp32). */
static void
image_group (void *data, int index, int thread)
{
  const ImageGroups *job = data;
  VmoeCpu *pass = job->cpu->image_passes[index];
  const VmoeConfig *c = &job->cpu->model->config;
  int first = job->images * index / job->groups;
  int end = job->images * (index + 1) / job->groups;
  for (int i = first; i < end; i++) {
    VmoeRawOutput view = raw_output_from (c, job->cpu->routing.top_k, job->out, i);
    row_split_forward (pass, job->input + i * vmoe_config_input_floats (c), 1, &view);
  }
}

/* A pass split by rows waits for its slowest thread at every phase, and
 * where another process keeps a core busy (a decoder, a busy loop), the
 * thread that shares its core holds up every phase: ViT-Tiny batch 1 ran
 * 50-54 images/s split against 61 on the calling thread alone.  The kernel
 * says how long each thread was runnable but queued for a core
 * (schedstat).  Under a busy loop the pool's threads queued for about as
 * long as the whole pass, on free cores for 0.7% of it on average, with
 * now and then a pass at 20-40% (other processes waking).  So after two
 * split passes in a row queued for more than half their time, the next
 * ALONE_PASSES passes run on the calling thread alone; then a split pass
 * looks again, and one that did not queue so long ends the streak. */
#define ALONE_PASSES 15
#define CONTENDED_QUEUED_SHARE 0.5
#define CONTENDED_SPLITS_TO_GO_ALONE 2

static void
split_or_alone_forward (VmoeCpu *cpu, const float *input, int n, VmoeRawOutput *out)
{
  VmoeWorkers *workers = cpu->workers;
  if (cpu->alone_passes > 0) {
    cpu->alone_passes--;
    cpu->workers = NULL;
    row_split_forward (cpu, input, n, out);
    cpu->workers = workers;
    return;
  }
  gint64 queued = cpu->split_meets_pool ? vmoe_workers_queued_ns (workers) : -1;
  unsigned runs = vmoe_workers_runs (workers);
  gint64 start = g_get_monotonic_time ();
  row_split_forward (cpu, input, n, out);
  cpu->split_meets_pool = vmoe_workers_runs (workers) != runs;
  if (queued < 0)
    return;
  double elapsed_ns = (g_get_monotonic_time () - start) * 1e3;
  gint64 queued_after = vmoe_workers_queued_ns (workers);
  if (queued_after >= 0 && queued_after - queued > CONTENDED_QUEUED_SHARE * elapsed_ns)
    cpu->contended_splits++;
  else
    cpu->contended_splits = 0;
  if (cpu->contended_splits >= CONTENDED_SPLITS_TO_GO_ALONE)
    cpu->alone_passes = ALONE_PASSES;
}

/* A batch of at least one image per thread runs whole images on each
 * thread, each thread a pass of its own with no meeting points: on 2 cores
 * a ViT-Tiny batch of 8 split by rows ran at 104 images/s, where two
 * one-thread passes of 4 images side by side ran at 119 (every split phase
 * ends in all threads waiting for the slowest, some forty times a pass).
 * The remainder of images (fewer than the threads) is split by rows.  An
 * image's result is the same bits either way (docs/cpu.md: each row and
 * each image is computed in the same order whatever its batch). */
void
vmoe_cpu_forward (VmoeCpu *cpu, const float *input, int n, VmoeRawOutput *out)
{
  int threads = vmoe_workers_threads (cpu->workers);
  int whole = threads > 1 ? n - n % threads : 0;
  if (whole > 0) {
    if (!cpu->image_passes) {
      cpu->image_passes = g_new0 (VmoeCpu *, threads);
      for (int t = 0; t < threads; t++)
        /* one thread each, and no pool: a pool of one would count the
         * thread twice against the spinning limit (workers.c) */
        cpu->image_passes[t] = pass_new (cpu->model, cpu->routing, cpu->precision, 1);
    }
    ImageGroups job = { cpu, input, out, whole, threads };
    vmoe_workers_run (cpu->workers, threads, image_group, &job);
  }
  if (n > whole) {
    const VmoeConfig *c = &cpu->model->config;
    VmoeRawOutput view = raw_output_from (c, cpu->routing.top_k, out, whole);
    split_or_alone_forward (cpu, input + whole * vmoe_config_input_floats (c),
        n - whole, &view);
  }
}

static void
row_split_forward (VmoeCpu *cpu, const float *input, int n, VmoeRawOutput *out)
{
  const VmoeModel *m = cpu->model;
  const VmoeConfig *c = &m->config;
  int d = cpu->dim;
  vmoe_cpu_reserve (cpu, n);

  embed (cpu, input, n);
  /* Rows of the batch: images, and from the first MoE block's FFN on, the
   * ensemble's member copies (docs/design.md: copying there gives what
   * copying the stream entering the block would, as the copies are equal
   * until their routing differs, for one attention instead of M). */
  int images = n, layer = 0;
  for (int b = 0; b < c->depth; b++) {
    const VmoeBlock *block = &m->blocks[b];
    int rows = images * cpu->tokens;
    /* x = x + Attn(LN1(x)) */
    BlockRows block_rows = { block, images };
    vmoe_cpu_run_on_rows (cpu, rows, (double) d * block->qkv.out,
        attention_input_rows, &block_rows);
    /* and x = x + FFN(LN2(x)); the image router reads x before the FFN. */
    vmoe_cpu_run_on_rows (cpu, rows, 2.0 * cpu->tokens * d + (double) d * d
        + (block->is_moe ? 0 : vmoe_mlp_fmas_per_row (&block->mlp)),
        attention_output_rows, &block_rows);
    if (!block->is_moe)
      continue;
    if (c->routing == VMOE_ROUTING_IMAGE && layer == 0)
      vmoe_cpu_route_images (cpu, n, out);
    if (layer == 0 && c->ensemble_members > 1) {
      copy_members (cpu, n);
      images = n * c->ensemble_members;
      rows = images * cpu->tokens;
    }
    if (block->has_shared)
      vmoe_cpu_run_on_rows (cpu, rows, vmoe_mlp_fmas_per_row (&block->shared),
          shared_expert_rows, block);
    vmoe_cpu_moe_forward (cpu, block, layer, images, out);
    layer++;
  }
  pool_and_head (cpu, images, out->logits);
}

/* ---------------------------------------------------------------- life */

static void
workspace_free (VmoeCpu *cpu)
{
  cpu->patches = NULL;
  float **floats[] = { &cpu->x, &cpu->z, &cpu->qkv, &cpu->attn, &cpu->hidden,
    &cpu->gather_in, &cpu->gather_out,
    &cpu->router_probs, &cpu->router_input, &cpu->pooled, &cpu->row_weights,
    &cpu->choice_p };
  for (guint i = 0; i < G_N_ELEMENTS (floats); i++)
    g_clear_pointer (floats[i], g_free);
  g_clear_pointer (&cpu->rows, g_free);
  g_clear_pointer (&cpu->choice, g_free);
  g_clear_pointer (&cpu->assigned, g_free);
  g_clear_pointer (&cpu->order, g_free);
  g_clear_pointer (&cpu->attention_scratch, g_aligned_free);
}

void
vmoe_cpu_reserve (VmoeCpu *cpu, int n)
{
  if (n <= cpu->reserved)
    return;
  const VmoeConfig *c = &cpu->model->config;
  workspace_free (cpu);
  size_t t = cpu->tokens, d = cpu->dim, k = MAX (cpu->routing.top_k, 1);
  /* Activations for the E3 member copies (n*M images); the patches and
   * the router's input only ever hold the n images. */
  size_t rows = (size_t) n * c->ensemble_members * t;
  /* An image may send all its tokens to one expert k times only with k
   * distinct experts, so one expert sees at most N*T rows; the shared buffers
   * are sized for N*T*k to stay obviously safe. */
  size_t expert_rows = rows * k;
  size_t patch_len = (size_t) c->in_channels * c->patch_size * c->patch_size;
  cpu->x = g_new (float, rows * d);
  cpu->z = g_new (float, MAX (rows * d, (size_t) n * vmoe_config_patches (c) * d));
  cpu->qkv = g_new (float, rows * 3 * d);
  cpu->attn = g_new (float, rows * d);
  size_t patches_len = (size_t) n * vmoe_config_patches (c) * patch_len;
  cpu->hidden = g_new (float, MAX (expert_rows * cpu->hidden_dim, patches_len));
  cpu->patches = cpu->hidden;
  cpu->attention_scratch = g_aligned_alloc (vmoe_attention_scratch_len (
          n * c->ensemble_members, cpu->tokens, cpu->dim, c->num_heads, vmoe_workers_threads (cpu->workers),
          cpu->precision),
      sizeof (float), 64);
  cpu->gather_in = g_new (float, expert_rows * d);
  cpu->gather_out = g_new (float, expert_rows * d);
  /* Token routing: [rows, E/M]; image routing: [n, E], no larger. */
  cpu->router_probs = g_new (float, rows * MAX (c->num_experts / c->ensemble_members, 1));
  cpu->router_input = g_new (float, (size_t) n * d);
  cpu->pooled = g_new (float, (size_t) n * c->ensemble_members * d);
  cpu->rows = g_new (int, expert_rows);
  cpu->row_weights = g_new (float, expert_rows);
  cpu->choice = g_new (int, expert_rows);
  cpu->choice_p = g_new (float, expert_rows);
  cpu->assigned = g_new (int, expert_rows);
  cpu->order = g_new (int, t);
  cpu->reserved = n;
}

VmoeCpu *
vmoe_cpu_new (VmoeModel *model, VmoeRoutingParams routing, int threads,
    VmoePrecision precision, GError **error)
{
  if (!vmoe_cpu_gemm_prepare (model, precision, error))
    return NULL;
  VmoeWorkers *workers = vmoe_workers_new (threads > 0 ? threads
      : (int) g_get_num_processors ());
  VmoeCpu *cpu = pass_new (model, routing, precision, vmoe_workers_threads (workers));
  cpu->workers = workers;
  return cpu;
}

void
vmoe_cpu_free (VmoeCpu *cpu)
{
  if (!cpu)
    return;
  workspace_free (cpu);
  for (int t = 0; t < vmoe_workers_threads (cpu->workers); t++) {
    vmoe_gemm_scratch_free (cpu->gemm[t]);
    if (cpu->image_passes)
      vmoe_cpu_free (cpu->image_passes[t]);
  }
  g_free (cpu->image_passes);
  g_free (cpu->gemm);
  vmoe_workers_free (cpu->workers);
  vmoe_model_unref (cpu->model);
  g_free (cpu);
}
