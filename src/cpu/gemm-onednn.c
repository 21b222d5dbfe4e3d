/* The linear layers on oneDNN's matmul primitive (the `onednn` build; see
 * docs/cpu.md).  Each layer's weights are reordered once into the blocked
 * layout oneDNN picks for them (format_tag any), stored with the model and
 * shared by every session on it.  Bias, GELU and the residual add run as the
 * primitive's epilogue (bias and post-ops).
 *
 * Row counts vary from call to call (slices, experts), and a primitive has a
 * fixed M (oneDNN 2.6 runs a run-time M on its reference kernel only), so a
 * call is cut into chunks of 256, 128, ..., 8 rows, the last padded to 8:
 * six primitives per shape and epilogue, made on first use, after as many
 * whole images' rows as it holds (PrimitiveSet's `whole`).  Every chunk
 * shares the weights' layout, and each output row is summed in the same
 * order whatever chunk it lands in and at whichever row of it (checked
 * bit for bit by the ops test "batch"), so an image's result does not depend
 * on its batch.
 *
 * Threads: the session's own pool splits the rows; each call runs on the
 * calling thread with OpenMP set to one thread for its duration (oneDNN's
 * parallel regions then run inline), so oneDNN never starts threads of its
 * own beside the pool's.
 *
 * bf16 (VMOE_PRECISION_BF16): the weights are packed a second time as bf16,
 * and each call rounds its input rows to bf16 (to nearest even) before the
 * matmul, which sums in fp32 and writes fp32 (avx512_core_bf16 only). */
#include "linear.h"
#include "moe.h"
#include "ops.h"

#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <string.h>
#include <sys/mman.h>

#define CHUNK_SIZES 6
#define SMALLEST_CHUNK 8            /* rows; chunk i holds SMALLEST_CHUNK << i */
#define LARGEST_CHUNK (SMALLEST_CHUNK << (CHUNK_SIZES - 1))

/* The primitives of one shape and epilogue, one per chunk size, and one
 * of the rows the layer meets whole (an image's tokens): a single call
 * there beat 128 + 64 + a padded 8 by 4% on one thread (ViT-Tiny batch 1,
 * 197 tokens), as the weights stream once and no rows are padding.  So do
 * the slices of those rows that a pass split over all the machine's cores
 * gives each thread (rows.c cuts them as evenly as it can: two sizes at
 * most); on 2 cores 98 and 99 rows of ViT-Tiny's 197, where chunks made
 * 64 + 32 and 64 + 32 + a padded 8 of an aligned 96 and 101. */
#define SLICE_SIZES 2
typedef struct {
  dnnl_primitive_t chunk[CHUNK_SIZES];
  dnnl_primitive_t whole;           /* NULL: none, or oneDNN took none */
  int whole_rows;
  dnnl_primitive_t slice[SLICE_SIZES];   /* as whole */
  int slice_rows[SLICE_SIZES];
  size_t scratchpad_bytes;          /* the largest of them */
} PrimitiveSet;

/* A layer packed at one precision; weights NULL until a session asks. */
typedef struct {
  void *weights;                    /* in `layout` */
  dnnl_memory_desc_t layout;
  /* Over `weights`; only read by the calls, so shared by their threads. */
  dnnl_memory_t memory;
  /* The primitives of the epilogues the layer is used with, from `sets`. */
  const PrimitiveSet *sets[VMOE_N_EPILOGUES];
} PackedAt;

struct VmoePackedLinear {
  PackedAt at[2];                   /* by VmoePrecision */
};

struct VmoeGemmScratch {
  VmoePrecision precision;          /* the session's */
  float *pad_in, *pad_out;          /* SMALLEST_CHUNK rows of a padded chunk */
  size_t pad_floats;
  guint16 *rounded;                 /* bf16: the call's input rows */
  size_t rounded_len;
  void *scratchpad;
  size_t scratchpad_bytes;
  dnnl_memory_t scratchpad_memory;
  dnnl_stream_t stream;             /* made on first use */
  /* The plain-layout memory objects of the calls' inputs, outputs and
   * biases by role and shape (memory_key), pointed at each call's data:
   * making and freeing them per call was 6% of a batch-1 profile. */
  GHashTable *memories;
};

static GMutex lock;                 /* packing and primitive creation */
static dnnl_engine_t engine;        /* the CPU engine, made once per process */
/* Primitive sets by shape and epilogue, shared by every layer and model of
 * the process that has them, kept for the process's life (a few per
 * shape: a ViT-Tiny Mobile V-MoE holds 8). */
static GHashTable *sets;

static gboolean
check (dnnl_status_t status, const char *what, GError **error)
{
  if (status == dnnl_success)
    return TRUE;
  g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
      "oneDNN: %s failed (status %d)", what, (int) status);
  return FALSE;
}

static gboolean
engine_ensure (GError **error)
{
  return engine || check (dnnl_engine_create (&engine, dnnl_cpu, 0),
      "creating the CPU engine", error);
}

static void
plain_md (dnnl_memory_desc_t *md, int rows, int cols, dnnl_data_type_t type)
{
  dnnl_dims_t dims = { rows, cols };
  dnnl_memory_desc_init_by_tag (md, 2, dims, type, dnnl_ab);
}

static dnnl_data_type_t
data_type (VmoePrecision precision)
{
  return precision == VMOE_PRECISION_BF16 ? dnnl_bf16 : dnnl_f32;
}

/* A matmul of m rows by lin with `weights` as the weights' layout (any, at
 * packing) and the epilogue as post-ops; input and weights at `precision`,
 * bias and output fp32; scratchpad from the caller. */
static gboolean
primitive_desc_new (dnnl_primitive_desc_t *pd, const VmoeLinear *lin, int m,
    const dnnl_memory_desc_t *weights, VmoeEpilogue epilogue,
    VmoePrecision precision, GError **error)
{
  dnnl_memory_desc_t src, bias, dst;
  plain_md (&src, m, lin->in, data_type (precision));
  plain_md (&bias, 1, lin->out, dnnl_f32);
  plain_md (&dst, m, lin->out, dnnl_f32);
  dnnl_matmul_desc_t desc;
  if (!check (dnnl_matmul_desc_init (&desc, &src, weights, lin->bias ? &bias : NULL,
              &dst), "describing a matmul", error))
    return FALSE;
  dnnl_primitive_attr_t attr;
  dnnl_post_ops_t post_ops;
  dnnl_primitive_attr_create (&attr);
  dnnl_post_ops_create (&post_ops);
  dnnl_primitive_attr_set_scratchpad_mode (attr, dnnl_scratchpad_mode_user);
  if (epilogue == VMOE_EPILOGUE_GELU_ERF)
    dnnl_post_ops_append_eltwise (post_ops, 1.0f, dnnl_eltwise_gelu_erf, 0, 0);
  else if (epilogue == VMOE_EPILOGUE_GELU_TANH)
    dnnl_post_ops_append_eltwise (post_ops, 1.0f, dnnl_eltwise_gelu_tanh, 0, 0);
  else if (epilogue == VMOE_EPILOGUE_ADD)
    dnnl_post_ops_append_sum (post_ops, 1.0f);
  dnnl_primitive_attr_set_post_ops (attr, post_ops);
  gboolean ok = check (dnnl_primitive_desc_create (pd, &desc, attr, engine, NULL),
      "creating a matmul", error);
  dnnl_post_ops_destroy (post_ops);
  dnnl_primitive_attr_destroy (attr);
  return ok;
}

static void
primitive_set_free (PrimitiveSet *set)
{
  for (int i = 0; i < CHUNK_SIZES; i++)
    if (set->chunk[i])
      dnnl_primitive_destroy (set->chunk[i]);
  if (set->whole)
    dnnl_primitive_destroy (set->whole);
  for (int i = 0; i < SLICE_SIZES; i++)
    if (set->slice[i])
      dnnl_primitive_destroy (set->slice[i]);
  g_free (set);
}

/* A matmul of m rows of lin in the packed layout, its scratchpad counted
 * into set's; NULL on error. */
static dnnl_primitive_t
set_primitive_new (PrimitiveSet *set, const VmoeLinear *lin, int m,
    VmoeEpilogue epilogue, VmoePrecision precision, GError **error)
{
  dnnl_primitive_desc_t pd;
  if (!primitive_desc_new (&pd, lin, m, &lin->packed->at[precision].layout,
          epilogue, precision, error))
    return NULL;
  const dnnl_memory_desc_t *pad = dnnl_primitive_desc_query_md (pd,
      dnnl_query_scratchpad_md, 0);
  set->scratchpad_bytes = MAX (set->scratchpad_bytes,
      pad ? dnnl_memory_desc_get_size (pad) : 0);
  dnnl_primitive_t primitive = NULL;
  if (!check (dnnl_primitive_create (&primitive, pd), "creating a matmul", error))
    primitive = NULL;
  dnnl_primitive_desc_destroy (pd);
  return primitive;
}

static gboolean
is_chunk_size (int rows)
{
  return rows % SMALLEST_CHUNK == 0
      && (rows / SMALLEST_CHUNK & (rows / SMALLEST_CHUNK - 1)) == 0
      && rows <= LARGEST_CHUNK;
}

/* A primitive of `rows` rows beside the chunks, or NULL where the chunks
 * do as well (one or none of them) or where oneDNN has no kernel of that
 * size for the packed layout: it is only a speed-up. */
static dnnl_primitive_t
set_extra_primitive_new (PrimitiveSet *set, const VmoeLinear *lin, int rows,
    VmoeEpilogue epilogue, VmoePrecision precision)
{
  if (rows <= SMALLEST_CHUNK || is_chunk_size (rows))
    return NULL;
  GError *none = NULL;
  dnnl_primitive_t primitive = set_primitive_new (set, lin, rows, epilogue,
      precision, &none);
  if (none)
    g_debug ("vmoe: no %d-row matmul: %s", rows, none->message);
  g_clear_error (&none);
  return primitive;
}

/* whole_rows: the rows the layer meets whole, 0 for none. */
static PrimitiveSet *
primitive_set_new (const VmoeLinear *lin, VmoeEpilogue epilogue,
    VmoePrecision precision, int whole_rows, GError **error)
{
  PrimitiveSet *set = g_new0 (PrimitiveSet, 1);
  for (int i = 0; i < CHUNK_SIZES; i++)
    if (!(set->chunk[i] = set_primitive_new (set, lin, SMALLEST_CHUNK << i,
                epilogue, precision, error))) {
      primitive_set_free (set);
      return NULL;
    }
  set->whole = set_extra_primitive_new (set, lin, whole_rows, epilogue, precision);
  set->whole_rows = set->whole ? whole_rows : 0;
  int cores = g_get_num_processors ();
  if (whole_rows > 0 && cores > 1)
    for (int i = 0; i < SLICE_SIZES; i++) {
      /* floor and ceiling of whole_rows / cores */
      int rows = (whole_rows + i * (cores - 1)) / cores;
      if (i == 0 || rows != set->slice_rows[0]) {
        set->slice[i] = set_extra_primitive_new (set, lin, rows, epilogue, precision);
        set->slice_rows[i] = set->slice[i] ? rows : 0;
      }
    }
  return set;
}

/* OpenMP at one thread on the calling thread until one_thread_end: oneDNN
 * then runs inline and libgomp starts no threads, which would also hang a
 * fork()ed child that uses OpenMP again (libgomp is not fork-safe).  It must
 * hold when primitives are made too: a primitive plans its threads then, and
 * one made with two ran a two-thread OpenMP team on every call whatever the
 * caller's setting (libgomp's spinning was 11% of the profile). */
static int
one_thread_begin (void)
{
  int threads = omp_get_max_threads ();
  if (threads != 1)
    omp_set_num_threads (1);
  return threads;
}

static void
one_thread_end (int threads)
{
  if (threads != 1)
    omp_set_num_threads (threads);
}

/* Packed weights live in pages of their own, not on the heap: a model
 * loaded and freed again and again (the element's swaps) then gives its
 * memory back to the system every time, where a heap of small per-layer
 * blocks held some of it (the soak's RSS floors rose by up to 2 MB a
 * minute).  Page alignment covers the 64 bytes the kernels want. */
static void *
packed_weights_alloc (size_t bytes)
{
  void *p = mmap (NULL, MAX (bytes, 1), PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static void
packed_weights_free (PackedAt *packed)
{
  if (packed->memory)
    dnnl_memory_destroy (packed->memory);
  packed->memory = NULL;
  if (packed->weights)
    munmap (packed->weights, MAX (dnnl_memory_desc_get_size (&packed->layout), 1));
  packed->weights = NULL;
}

/* Reorders lin's weights (out, in) row-major, i.e. (in, out) in tag ba, into
 * the layout a 256-row matmul at `precision` picks; every chunk size takes
 * that layout.  Called inside one_thread_begin. */
static gboolean
pack_linear (VmoeLinear *lin, VmoePrecision precision, GError **error)
{
  dnnl_memory_desc_t any, plain;
  dnnl_dims_t dims = { lin->in, lin->out };
  dnnl_memory_desc_init_by_tag (&any, 2, dims, data_type (precision),
      dnnl_format_tag_any);
  dnnl_memory_desc_init_by_tag (&plain, 2, dims, dnnl_f32, dnnl_ba);
  dnnl_primitive_desc_t pd;
  if (!primitive_desc_new (&pd, lin, LARGEST_CHUNK, &any, VMOE_EPILOGUE_STORE,
          precision, error))
    return FALSE;
  if (!lin->packed)
    lin->packed = g_new0 (VmoePackedLinear, 1);
  PackedAt *packed = &((VmoePackedLinear *) lin->packed)->at[precision];
  packed->layout = *dnnl_primitive_desc_query_md (pd, dnnl_query_weights_md, 0);
  dnnl_primitive_desc_destroy (pd);
  void *weights = packed_weights_alloc (dnnl_memory_desc_get_size (&packed->layout));
  if (!weights) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "out of memory for %zu bytes of packed weights",
        dnnl_memory_desc_get_size (&packed->layout));
    return FALSE;
  }

  dnnl_primitive_desc_t reorder_pd;
  dnnl_primitive_t reorder = NULL;
  dnnl_memory_t from = NULL, to = NULL;
  dnnl_stream_t stream = NULL;
  gboolean ok = check (dnnl_reorder_primitive_desc_create (&reorder_pd, &plain,
          engine, &packed->layout, engine, NULL), "planning a weight reorder", error);
  if (ok) {
    ok = check (dnnl_primitive_create (&reorder, reorder_pd), "reordering weights",
        error);
    dnnl_primitive_desc_destroy (reorder_pd);
  }
  ok = ok && check (dnnl_memory_create (&from, &plain, engine, (void *) lin->weight),
      "reordering weights", error)
      && check (dnnl_memory_create (&to, &packed->layout, engine, weights),
      "reordering weights", error)
      && check (dnnl_stream_create (&stream, engine, dnnl_stream_default_flags),
      "reordering weights", error);
  if (ok) {
    dnnl_exec_arg_t args[] = { { DNNL_ARG_FROM, from }, { DNNL_ARG_TO, to } };
    ok = check (dnnl_primitive_execute (reorder, stream, 2, args), "reordering weights",
        error) && check (dnnl_stream_wait (stream), "reordering weights", error);
  }
  if (stream)
    dnnl_stream_destroy (stream);
  if (from)
    dnnl_memory_destroy (from);
  if (reorder)
    dnnl_primitive_destroy (reorder);
  packed->weights = weights;
  packed->memory = to;
  if (!ok) {
    packed_weights_free (packed);
    return FALSE;
  }
  return TRUE;
}

/* The shared set of lin's shape with the epilogue, made if new. */
static const PrimitiveSet *
primitive_set_get (const VmoeLinear *lin, VmoeEpilogue epilogue,
    VmoePrecision precision, int whole_rows, GError **error)
{
  if (!sets)
    sets = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  char *key = g_strdup_printf ("%d %d %d %d %d %d", lin->in, lin->out,
      lin->bias != NULL, (int) epilogue, (int) precision, whole_rows);
  PrimitiveSet *set = g_hash_table_lookup (sets, key);
  if (!set && (set = primitive_set_new (lin, epilogue, precision, whole_rows, error)))
    g_hash_table_insert (sets, g_steal_pointer (&key), set);
  g_free (key);
  return set;
}

static void
packed_linear_free (VmoeLinear *lin)
{
  VmoePackedLinear *packed = (VmoePackedLinear *) lin->packed;
  if (!packed)
    return;
  for (guint p = 0; p < G_N_ELEMENTS (packed->at); p++)
    packed_weights_free (&packed->at[p]);
  g_free (packed);
  lin->packed = NULL;
}

typedef gboolean (*LinearFunc) (VmoeModel *model, VmoeLinear *lin,
    VmoeEpilogue epilogue, VmoePrecision precision, GError **error);

/* Calls func on every linear layer of the model, with the epilogue the
 * forward pass (forward.c, moe.c, linear.c) runs it with. */
static gboolean
each_linear (VmoeModel *model, LinearFunc func, VmoePrecision p, GError **error)
{
  const VmoeConfig *c = &model->config;
  VmoeEpilogue gelu = c->act == VMOE_ACT_GELU ? VMOE_EPILOGUE_GELU_ERF
      : VMOE_EPILOGUE_GELU_TANH;
  if (!func (model, &model->patch_embed, VMOE_EPILOGUE_STORE, p, error)
      || !func (model, &model->head, VMOE_EPILOGUE_STORE, p, error))
    return FALSE;
  if (c->routing == VMOE_ROUTING_IMAGE
      && !func (model, &model->router, VMOE_EPILOGUE_STORE, VMOE_PRECISION_FP32, error))
    return FALSE;
  for (int b = 0; b < c->depth; b++) {
    VmoeBlock *block = &model->blocks[b];
    /* Dense and shared MLPs add into the residual, experts store; routers run
   * in fp32 at any precision. */
    VmoeMlp *adding[] = { block->is_moe ? NULL : &block->mlp,
      block->has_shared ? &block->shared : NULL };
    if (!func (model, &block->qkv, VMOE_EPILOGUE_STORE, p, error)
        || !func (model, &block->proj, VMOE_EPILOGUE_ADD, p, error))
      return FALSE;
    for (guint i = 0; i < G_N_ELEMENTS (adding); i++)
      if (adding[i] && (!func (model, &adding[i]->fc1, gelu, p, error)
              || !func (model, &adding[i]->fc2, VMOE_EPILOGUE_ADD, p, error)))
        return FALSE;
    if (!block->is_moe)
      continue;
    if (c->routing == VMOE_ROUTING_TOKEN
        && !func (model, &block->router, VMOE_EPILOGUE_STORE, VMOE_PRECISION_FP32,
            error))
      return FALSE;
    for (int e = 0; e < c->num_experts; e++)
      if (!func (model, &block->experts[e].fc1, gelu, p, error)
          || !func (model, &block->experts[e].fc2, VMOE_EPILOGUE_STORE, p, error))
        return FALSE;
  }
  return TRUE;
}

static gboolean
free_linear (VmoeModel *model, VmoeLinear *lin, VmoeEpilogue epilogue,
    VmoePrecision precision, GError **error)
{
  packed_linear_free (lin);
  return TRUE;
}

/* Packs lin at `precision` unless it is, and gives its stored weights' pages
 * back right after, one layer at a time, so that the two copies of all
 * layers are never resident together (docs/cpu.md, Memory).  The pass reads
 * only the packed copy; a later reader (another precision's packing, the
 * Vulkan backend) faults the stored bytes in again from the file. */
static gboolean
pack_if_needed (VmoeModel *model, VmoeLinear *lin, VmoeEpilogue epilogue,
    VmoePrecision precision, GError **error)
{
  if (!lin->packed || !lin->packed->at[precision].weights) {
    if (!pack_linear (lin, precision, error))
      return FALSE;
    if (!vmoe_cpu_moe_reads_stored (model, lin))
      vmoe_model_release_stored (model, lin->weight,
          (size_t) lin->in * lin->out * sizeof (float));
  }
  PackedAt *packed = &((VmoePackedLinear *) lin->packed)->at[precision];
  /* The rows a pass over one image gives the layer at once: its patches,
   * its tokens (an expert's too, where the image's tokens all go to it);
   * the head and the router see a row per image. */
  const VmoeConfig *c = &model->config;
  int whole_rows = lin == &model->patch_embed ? vmoe_config_patches (c)
      : lin == &model->head || lin == &model->router ? 0 : vmoe_config_tokens (c);
  if (!packed->sets[epilogue])
    packed->sets[epilogue] = primitive_set_get (lin, epilogue, precision, whole_rows,
        error);
  return packed->sets[epilogue] != NULL;
}

/* NULL where oneDNN can run `precision` natively here, else why not. */
static const char *
precision_unsupported (VmoePrecision precision)
{
  dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa ();
  if (precision == VMOE_PRECISION_BF16
      && (isa & dnnl_cpu_isa_avx512_core_bf16) != dnnl_cpu_isa_avx512_core_bf16)
    return "precision bf16 needs a CPU with avx512_bf16 (oneDNN's "
        "avx512_core_bf16), which this one lacks (or DNNL_MAX_CPU_ISA hides); "
        "use fp32";
  return NULL;
}

gboolean
vmoe_cpu_gemm_prepare (VmoeModel *model, VmoePrecision precision, GError **error)
{
  g_mutex_lock (&lock);
  int threads = one_thread_begin ();
  gboolean ok = engine_ensure (error);
  const char *why = ok ? precision_unsupported (precision) : NULL;
  if (why) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND, "%s", why);
    ok = FALSE;
  }
  ok = ok && each_linear (model, pack_if_needed, precision, error);
  one_thread_end (threads);
  g_mutex_unlock (&lock);
  return ok;
}

void
vmoe_cpu_weights_free (VmoeModel *model)
{
  if (model->blocks)
    each_linear (model, free_linear, VMOE_PRECISION_FP32, NULL);
}

VmoeGemmScratch *
vmoe_gemm_scratch_new (VmoePrecision precision)
{
  VmoeGemmScratch *scratch = g_new0 (VmoeGemmScratch, 1);
  scratch->precision = precision;
  return scratch;
}

void
vmoe_gemm_scratch_free (VmoeGemmScratch *scratch)
{
  if (!scratch)
    return;
  g_free (scratch->pad_in);
  g_free (scratch->pad_out);
  g_free (scratch->rounded);
  g_free (scratch->scratchpad);
  if (scratch->scratchpad_memory)
    dnnl_memory_destroy (scratch->scratchpad_memory);
  if (scratch->memories)
    g_hash_table_destroy (scratch->memories);
  if (scratch->stream)
    dnnl_stream_destroy (scratch->stream);
  g_free (scratch);
}

#ifdef VMOE_HAVE_BF16_INTRINSICS
#include <immintrin.h>

/* round_to_bf16 with vcvtneps2bf16, 16 floats an instruction (bf16 runs
 * only on CPUs that have it: precision_unsupported).  It also rounds to
 * nearest even, but flushes subnormals (below 1.2e-38) to zero, as the
 * bf16 attention does.  The integer loop below took 4.8% of a batch-8
 * bf16 profile. */
static __attribute__ ((target ("avx512f,avx512bw,avx512vl,avx512bf16"))) void
round_to_bf16_vcvt (guint16 *out, const float *in, size_t n)
{
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256 ((__m256i *) (out + i),
        (__m256i) _mm512_cvtneps_pbh (_mm512_loadu_ps (in + i)));
  if (i < n) {
    __mmask16 tail = (__mmask16) ((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16 (out + i, tail,
        (__m256i) _mm512_cvtneps_pbh (_mm512_maskz_loadu_ps (tail, in + i)));
  }
}
#else
/* bf16 of each float, rounded to nearest even; NaN stays NaN. */
static VMOE_VECTOR_CLONES void
round_to_bf16_loop (guint16 *out, const float *in, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    guint32 bits;
    memcpy (&bits, &in[i], sizeof bits);
    guint32 rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    gboolean is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
    out[i] = (guint16) (is_nan ? (bits >> 16) | 0x40u : rounded);
  }
}
#endif

static void
round_to_bf16 (guint16 *out, const float *in, size_t n)
{
#ifdef VMOE_HAVE_BF16_INTRINSICS
  round_to_bf16_vcvt (out, in, n);
#else
  round_to_bf16_loop (out, in, n);
#endif
}

typedef enum { ROLE_SRC, ROLE_DST, ROLE_BIAS } MemoryRole;

static guint64
memory_key (MemoryRole role, int rows, int cols, dnnl_data_type_t type)
{
  return (guint64) role | (guint64) type << 4 | (guint64) rows << 12
      | (guint64) cols << 36;
}

static void
memory_destroy (gpointer memory)
{
  dnnl_memory_destroy (memory);
}

static void
plain_memory_add (VmoeGemmScratch *scratch, MemoryRole role, int rows, int cols,
    dnnl_data_type_t type)
{
  guint64 key = memory_key (role, rows, cols, type);
  if (g_hash_table_contains (scratch->memories, &key))
    return;
  dnnl_memory_desc_t md;
  dnnl_memory_t memory;
  plain_md (&md, rows, cols, type);
  dnnl_memory_create (&memory, &md, engine, DNNL_MEMORY_NONE);
  g_hash_table_insert (scratch->memories, g_memdup2 (&key, sizeof key), memory);
}

/* scratch's memory object for a plain rows x cols `type` matrix in `role`,
 * pointed at data.  The first call of a shape makes them for every chunk
 * size at once, so that later calls allocate nothing whatever their rows. */
static dnnl_memory_t
plain_memory (VmoeGemmScratch *scratch, MemoryRole role, int rows, int cols,
    dnnl_data_type_t type, const void *data)
{
  if (!scratch->memories)
    scratch->memories = g_hash_table_new_full (g_int64_hash, g_int64_equal,
        g_free, memory_destroy);
  guint64 key = memory_key (role, rows, cols, type);
  dnnl_memory_t memory = g_hash_table_lookup (scratch->memories, &key);
  if (!memory) {
    if (role != ROLE_BIAS)
      for (int i = 0; i < CHUNK_SIZES; i++)
        plain_memory_add (scratch, role, SMALLEST_CHUNK << i, cols, type);
    plain_memory_add (scratch, role, rows, cols, type);   /* a whole chunk's, a bias */
    memory = g_hash_table_lookup (scratch->memories, &key);
  }
  /* With the call's stream: without one, oneDNN makes a stream for its
   * zero-padding check on every call. */
  dnnl_memory_set_data_handle_v2 (memory, (void *) data, scratch->stream);
  return memory;
}

static void
execute_chunk (dnnl_primitive_t primitive, const VmoeLinear *lin, int m,
    VmoePrecision precision, const void *in, float *out, VmoeGemmScratch *scratch)
{
  dnnl_exec_arg_t args[5] = {
    { DNNL_ARG_SRC, plain_memory (scratch, ROLE_SRC, m, lin->in,
          data_type (precision), in) },
    { DNNL_ARG_WEIGHTS, lin->packed->at[precision].memory },
    { DNNL_ARG_DST, plain_memory (scratch, ROLE_DST, m, lin->out, dnnl_f32, out) },
    { DNNL_ARG_SCRATCHPAD, scratch->scratchpad_memory } };
  int n_args = 4;
  if (lin->bias)
    args[n_args++] = (dnnl_exec_arg_t) { DNNL_ARG_BIAS,
      plain_memory (scratch, ROLE_BIAS, 1, lin->out, dnnl_f32, lin->bias) };
  dnnl_primitive_execute (primitive, scratch->stream, n_args, args);
  dnnl_stream_wait (scratch->stream);
}

/* Grows scratch for a call of `rows` rows of lin with `set`. */
static void
scratch_reserve (VmoeGemmScratch *scratch, const VmoeLinear *lin, int rows,
    VmoePrecision precision, const PrimitiveSet *set)
{
  size_t pad_floats = (size_t) SMALLEST_CHUNK * MAX (lin->in, lin->out);
  if (scratch->pad_floats < pad_floats) {
    g_free (scratch->pad_in);
    g_free (scratch->pad_out);
    scratch->pad_in = g_new0 (float, pad_floats);
    scratch->pad_out = g_new0 (float, pad_floats);
    scratch->pad_floats = pad_floats;
  }
  size_t rounded_len = precision == VMOE_PRECISION_BF16
      ? (size_t) rows * lin->in : 0;
  if (scratch->rounded_len < rounded_len) {
    g_free (scratch->rounded);
    scratch->rounded = g_new (guint16, rounded_len);
    scratch->rounded_len = rounded_len;
  }
  if (scratch->scratchpad_bytes < set->scratchpad_bytes
      || !scratch->scratchpad_memory) {
    g_free (scratch->scratchpad);
    if (scratch->scratchpad_memory)
      dnnl_memory_destroy (scratch->scratchpad_memory);
    scratch->scratchpad_bytes = MAX (scratch->scratchpad_bytes, set->scratchpad_bytes);
    scratch->scratchpad = g_malloc (MAX (scratch->scratchpad_bytes, 1));
    dnnl_memory_desc_t pad_md;
    dnnl_dims_t pad_dims = { (dnnl_dim_t) MAX (scratch->scratchpad_bytes, 1) };
    dnnl_memory_desc_init_by_tag (&pad_md, 1, pad_dims, dnnl_u8, dnnl_a);
    dnnl_memory_create (&scratch->scratchpad_memory, &pad_md, engine,
        scratch->scratchpad);
  }
  if (!scratch->stream)
    dnnl_stream_create (&scratch->stream, engine, dnnl_stream_default_flags);
}

static void
linear_forward_at (VmoeGemmScratch *scratch, VmoePrecision precision, float *out,
    const float *inp, const VmoeLinear *lin, int rows, VmoeEpilogue epilogue)
{
  if (rows == 0)
    return;
  const PrimitiveSet *set = lin->packed->at[precision].sets[epilogue];
  g_assert (set);                   /* each_linear lists every use */
  scratch_reserve (scratch, lin, rows, precision, set);
  const char *src = (const char *) inp;
  size_t row_bytes = (size_t) lin->in * sizeof (float);
  if (precision == VMOE_PRECISION_BF16) {
    round_to_bf16 (scratch->rounded, inp, (size_t) rows * lin->in);
    src = (const char *) scratch->rounded;
    row_bytes = (size_t) lin->in * sizeof (guint16);
  }
  int threads = one_thread_begin ();
  int done = 0;
  for (; set->whole && rows - done >= set->whole_rows; done += set->whole_rows)
    execute_chunk (set->whole, lin, set->whole_rows, precision,
        src + done * row_bytes, out + (size_t) done * lin->out, scratch);
  for (int i = 0; i < SLICE_SIZES; i++)
    if (set->slice[i] && rows - done == set->slice_rows[i]) {
      execute_chunk (set->slice[i], lin, rows - done, precision,
          src + done * row_bytes, out + (size_t) done * lin->out, scratch);
      done = rows;
    }
  while (rows - done >= SMALLEST_CHUNK) {
    int i = CHUNK_SIZES - 1;
    while ((SMALLEST_CHUNK << i) > rows - done)
      i--;
    execute_chunk (set->chunk[i], lin, SMALLEST_CHUNK << i, precision,
        src + done * row_bytes, out + (size_t) done * lin->out, scratch);
    done += SMALLEST_CHUNK << i;
  }
  int tail = rows - done;
  if (tail > 0) {
    float *tail_out = out + (size_t) done * lin->out;
    memcpy (scratch->pad_in, src + done * row_bytes, tail * row_bytes);
    if (epilogue == VMOE_EPILOGUE_ADD)
      memcpy (scratch->pad_out, tail_out, (size_t) tail * lin->out * sizeof (float));
    execute_chunk (set->chunk[0], lin, SMALLEST_CHUNK, precision, scratch->pad_in,
        scratch->pad_out, scratch);
    memcpy (tail_out, scratch->pad_out, (size_t) tail * lin->out * sizeof (float));
  }
  one_thread_end (threads);
}

void
vmoe_linear_forward (VmoeGemmScratch *scratch, float *out, const float *inp,
    const VmoeLinear *lin, int rows, VmoeEpilogue epilogue)
{
  linear_forward_at (scratch, scratch->precision, out, inp, lin, rows, epilogue);
}

void
vmoe_linear_forward_fp32 (VmoeGemmScratch *scratch, float *out, const float *inp,
    const VmoeLinear *lin, int rows, VmoeEpilogue epilogue)
{
  linear_forward_at (scratch, VMOE_PRECISION_FP32, out, inp, lin, rows, epilogue);
}

const char *
vmoe_cpu_gemm_describe (VmoePrecision precision, GError **error)
{
  static char described[2][96];
  g_mutex_lock (&lock);
  int threads = one_thread_begin ();
  const char *why = NULL;
  if (!described[precision][0] && engine_ensure (error)
      && !(why = precision_unsupported (precision))) {
    /* What a ViT-Tiny layer gets (planned, not run). */
    VmoeLinear lin = { NULL, NULL, 192, 192, NULL };
    dnnl_memory_desc_t any;
    dnnl_dims_t dims = { lin.in, lin.out };
    dnnl_memory_desc_init_by_tag (&any, 2, dims, data_type (precision),
        dnnl_format_tag_any);
    dnnl_primitive_desc_t pd;
    if (primitive_desc_new (&pd, &lin, LARGEST_CHUNK, &any, VMOE_EPILOGUE_STORE,
            precision, error)) {
      const char *impl = NULL;
      dnnl_primitive_desc_query (pd, dnnl_query_impl_info_str, 0, &impl);
      const dnnl_version_t *v = dnnl_version ();
      g_snprintf (described[precision], sizeof described[precision],
          "oneDNN %d.%d.%d %s", v->major, v->minor, v->patch, impl ? impl : "?");
      dnnl_primitive_desc_destroy (pd);
    }
  }
  if (why)
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND, "%s", why);
  one_thread_end (threads);
  g_mutex_unlock (&lock);
  return described[precision][0] ? described[precision] : NULL;
}
