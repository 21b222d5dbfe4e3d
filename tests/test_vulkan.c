/* Every shader of the Vulkan backend against the CPU backend's op (or a
 * direct double-precision computation) on random data, one dispatch at a
 * time, plus the backend's error paths.  Runs on the device that
 * VMOE_VULKAN_DEVICE names (the tests set "cpu": Mesa's lavapipe) and exits
 * 77 (skipped) when no Vulkan device opens. */
#include "cpu/cpu.h"
#include "vulkan/vk-internal.h"

#include <check.h>
#include <glib/gstdio.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>


#define TOL 1e-5

/* The pipelines are specialised for a model: 5x5 patches + class token = 26
 * tokens, width 32, 2 heads (head size 16), 4 experts, k = 2. */
#define TOKENS 26
#define DIM 32
#define HEADS 2
#define EXPERTS 4
#define TOP_K 2

static VmoeVulkan *vk;
static VmoeModel *model;
static GRand *rng;

static float *
random_floats (size_t n, double scale)
{
  float *x = g_new (float, n);
  for (size_t i = 0; i < n; i++)
    x[i] = (float) g_rand_double_range (rng, -scale, scale);
  return x;
}

static void
write_floats (VmoeVkBuffer buffer, size_t offset, const float *data, size_t n)
{
  GError *error = NULL;
  ck_assert_msg (vmoe_vulkan_test_write (vk, buffer, offset, data, n, &error),
      "%s", error ? error->message : "");
}

static void
read_back (VmoeVkBuffer buffer, size_t offset, void *data, size_t n)
{
  GError *error = NULL;
  ck_assert_msg (vmoe_vulkan_test_read (vk, buffer, offset, data, n, &error),
      "%s", error ? error->message : "");
}

static void
run_shader (VmoeShader shader, const void *push, size_t size, uint32_t gx,
    uint32_t gy, uint32_t gz)
{
  GError *error = NULL;
  ck_assert_msg (vmoe_vulkan_test_dispatch (vk, shader, push, size, gx, gy, gz, &error),
      "%s", error ? error->message : "");
}

static void
assert_close (const float *got, const float *want, size_t n, double tol, const char *what)
{
  for (size_t i = 0; i < n; i++)
    ck_assert_msg (fabs (got[i] - want[i]) <= tol * MAX (1.0, fabs (want[i])),
        "%s[%zu]: gpu %.7g, cpu %.7g", what, i, got[i], want[i]);
}

static void
setup (void)
{
  GError *error = NULL;
  ck_assert (vmoe_vulkan_test_reserve (vk, 1 << 20, 1 << 20, &error));
}

/* C = act(A W^T + b) (+ C), 70 x 45 by 45 -> 83: edge tiles in every
 * direction; the reference is a double-precision loop. */
START_TEST (test_gemm)
{
  const int m = 70, k = 45, n = 83;
  const uint32_t flags[] = { 0, VMOE_GEMM_GELU, VMOE_GEMM_GELU_TANH | VMOE_GEMM_ACCUMULATE };
  float *a = random_floats ((size_t) m * k, 1), *w = random_floats ((size_t) n * k, 0.5);
  float *b = random_floats (n, 1), *c0 = random_floats ((size_t) m * n, 1);
  float *got = g_new (float, (size_t) m * n), *want = g_new (float, (size_t) m * n);
  write_floats (VMOE_VK_WEIGHTS, 0, w, (size_t) n * k);
  write_floats (VMOE_VK_WEIGHTS, 10000, b, n);
  write_floats (VMOE_VK_ACTIVATIONS, 0, a, (size_t) m * k);
  for (guint f = 0; f < G_N_ELEMENTS (flags); f++) {
    write_floats (VMOE_VK_ACTIVATIONS, 50000, c0, (size_t) m * n);
    VmoeGemmPush p = { .m = m, .n = n, .k = k, .a_off = 0, .a_stride = k, .w_off = 0,
      .b_off = f == 0 ? VMOE_VK_NONE : 10000, .c_off = 50000, .c_stride = n,
      .flags = flags[f] };
    run_shader (VMOE_SHADER_GEMM, &p, sizeof p, (n + VMOE_GEMM_TILE - 1) / VMOE_GEMM_TILE,
        (m + VMOE_GEMM_TILE - 1) / VMOE_GEMM_TILE, 1);
    read_back (VMOE_VK_ACTIVATIONS, 50000, got, (size_t) m * n);
    for (int i = 0; i < m; i++)
      for (int j = 0; j < n; j++) {
        double s = f == 0 ? 0 : b[j];
        for (int q = 0; q < k; q++)
          s += (double) a[i * k + q] * w[j * k + q];
        float v = (float) s;
        if (flags[f] & (VMOE_GEMM_GELU | VMOE_GEMM_GELU_TANH))
          vmoe_gelu_forward (&v, 1, flags[f] & VMOE_GEMM_GELU ? VMOE_ACT_GELU
              : VMOE_ACT_GELU_TANH);
        want[i * n + j] = (flags[f] & VMOE_GEMM_ACCUMULATE) ? c0[i * n + j] + v : v;
      }
    assert_close (got, want, (size_t) m * n, 1e-5, "gemm");
  }
  g_free (a), g_free (w), g_free (b), g_free (c0), g_free (got), g_free (want);
}
END_TEST

/* Expert-indexed GEMM: rows listed per expert, entry e reads A row e / 2
 * and writes C row e with expert weights at a stride. */
START_TEST (test_gemm_expert_lists)
{
  const int entries = 90, k = 20, n = 24, div = 2;
  float *a = random_floats ((size_t) entries / div * k, 1);
  float *w = random_floats ((size_t) EXPERTS * n * k, 0.5), *b = random_floats (EXPERTS * n, 1);
  int expert_of[90], counts[EXPERTS] = { 0 }, lists[EXPERTS * 90];
  for (int e = 0; e < entries; e++) {
    /* Expert 3 gets nothing: its workgroups must write nothing. */
    expert_of[e] = e % 7 == 0 ? -1 : (int) g_rand_int_range (rng, 0, 3);
    if (expert_of[e] >= 0)
      lists[expert_of[e] * entries + counts[expert_of[e]]++] = entries - 1 - e;
  }
  /* The lists above name entry entries-1-e; fix expert_of to match. */
  int listed_expert[90];
  for (int e = 0; e < entries; e++)
    listed_expert[entries - 1 - e] = expert_of[e];
  write_floats (VMOE_VK_WEIGHTS, 0, w, (size_t) EXPERTS * n * k);
  write_floats (VMOE_VK_WEIGHTS, 20000, b, EXPERTS * n);
  write_floats (VMOE_VK_ACTIVATIONS, 0, a, (size_t) entries / div * k);
  float *sentinel = g_new (float, (size_t) entries * n);
  for (int i = 0; i < entries * n; i++)
    sentinel[i] = 12345.0f;
  write_floats (VMOE_VK_ACTIVATIONS, 10000, sentinel, (size_t) entries * n);
  write_floats (VMOE_VK_INTEGERS, 0, (const float *) counts, EXPERTS);
  write_floats (VMOE_VK_INTEGERS, 100, (const float *) lists, EXPERTS * entries);
  VmoeGemmPush p = { .m = entries, .n = n, .k = k, .a_off = 0, .a_stride = k, .w_off = 0,
    .b_off = 20000, .c_off = 10000, .c_stride = n,
    .flags = VMOE_GEMM_EXPERT_LISTS | VMOE_GEMM_GELU,
    .w_expert_stride = n * k, .b_expert_stride = n, .list_off = 100, .count_off = 0,
    .list_cap = entries, .a_row_div = div };
  run_shader (VMOE_SHADER_GEMM, &p, sizeof p, 1,
      (entries + VMOE_GEMM_TILE - 1) / VMOE_GEMM_TILE, EXPERTS);
  float *got = g_new (float, (size_t) entries * n);
  read_back (VMOE_VK_ACTIVATIONS, 10000, got, (size_t) entries * n);
  for (int e = 0; e < entries; e++) {
    int x = listed_expert[e];
    for (int j = 0; j < n; j++) {
      float want = 12345.0f;
      if (x >= 0) {
        double s = b[x * n + j];
        for (int q = 0; q < k; q++)
          s += (double) a[(e / div) * k + q] * w[(size_t) x * n * k + j * k + q];
        want = (float) s;
        vmoe_gelu_forward (&want, 1, VMOE_ACT_GELU);
      }
      assert_close (&got[e * n + j], &want, 1, 1e-5, "expert gemm");
    }
  }
  g_free (a), g_free (w), g_free (b), g_free (sentinel), g_free (got);
}
END_TEST

START_TEST (test_layernorm)
{
  /* 7 strided rows (every other row of x) into packed rows. */
  const int rows = 7, dim = 100;
  float *x = random_floats ((size_t) rows * 2 * dim, 3), *w = random_floats (dim, 1),
      *b = random_floats (dim, 1);
  for (int i = 0; i < dim; i++)
    x[i] += 50;                 /* a large mean must not cost precision */
  write_floats (VMOE_VK_ACTIVATIONS, 0, x, (size_t) rows * 2 * dim);
  write_floats (VMOE_VK_WEIGHTS, 0, w, dim);
  write_floats (VMOE_VK_WEIGHTS, dim, b, dim);
  VmoeLayerNormPush p = { .rows = rows, .dim = dim, .in_off = 0, .in_stride = 2 * dim,
    .out_off = 5000, .out_stride = dim, .w_off = 0, .b_off = dim, .eps = 1e-6f };
  run_shader (VMOE_SHADER_LAYERNORM, &p, sizeof p, rows, 1, 1);
  float got[700], want[700], packed[700];
  read_back (VMOE_VK_ACTIVATIONS, 5000, got, (size_t) rows * dim);
  for (int r = 0; r < rows; r++)
    memcpy (packed + r * dim, x + 2 * r * dim, dim * sizeof (float));
  vmoe_layernorm_forward (want, packed, w, b, rows, dim, 1e-6f);
  assert_close (got, want, (size_t) rows * dim, 1e-4, "layernorm");
  g_free (x), g_free (w), g_free (b);
}
END_TEST

/* One attention kernel on n images of t random tokens against the CPU op;
 * groups_x workgroups along the queries. */
static void
check_attention (VmoeShader shader, int n, int t, double scale, uint32_t groups_x,
    const char *what)
{
  size_t qkv_len = (size_t) n * t * 3 * DIM, out_len = (size_t) n * t * DIM;
  float *qkv = random_floats (qkv_len, scale);
  write_floats (VMOE_VK_ACTIVATIONS, 0, qkv, qkv_len);
  VmoeAttentionPush p = { .tokens = t, .dim = DIM, .heads = HEADS, .qkv_off = 0,
    .out_off = 100000 };
  run_shader (shader, &p, sizeof p, groups_x, HEADS, n);
  float *got = g_new (float, out_len), *want = g_new (float, out_len);
  float *scratch = g_new (float, vmoe_attention_scratch_len (n, t, DIM, HEADS, 1,
          VMOE_PRECISION_FP32));
  read_back (VMOE_VK_ACTIVATIONS, 100000, got, out_len);
  vmoe_attention_forward (want, qkv, scratch, NULL, n, t, DIM, HEADS,
      VMOE_PRECISION_FP32);
  assert_close (got, want, out_len, 1e-5, what);
  g_free (qkv), g_free (got), g_free (want), g_free (scratch);
}

START_TEST (test_attention)
{
  /* A workgroup takes a block of queries; one per token covers any block
   * size, and blocks past the last token write nothing. */
  check_attention (VMOE_SHADER_ATTENTION, 3, TOKENS, 2, TOKENS, "attention");
}
END_TEST

/* Shared memory as the shaders declare it, counted by hand:
 * attention.comp with QB = 16, 197 tokens, head size 64 holds qs[16][64],
 * kv[32][65], scores[16][197], partial[128] and row_inv[16] floats;
 * attention_online.comp with head size 64 holds ks and vs of 32 x 16 vec4. */
START_TEST (test_shared_memory_sizes)
{
  ck_assert_uint_eq (vmoe_vk_attention_shared_bytes (16, 197, 64),
      4 * (1024 + 2080 + 3152 + 128 + 16));
  ck_assert_uint_eq (vmoe_vk_attention_shared_bytes (1, 1, 4), 4 * (4 + 160 + 1 + 128 + 1));
  ck_assert_uint_eq (vmoe_vk_attention_online_shared_bytes (64), 2 * 32 * 16 * 16);
}
END_TEST

/* The online-softmax kernel: the model's 26 tokens (one partial chunk of
 * keys, one partial workgroup of queries) and 75 tokens (three chunks, the
 * last partial; this kernel has no token limit), with larger scores. */
START_TEST (test_attention_online)
{
  const int token_counts[] = { TOKENS, 75 };
  for (guint c = 0; c < G_N_ELEMENTS (token_counts); c++) {
    int t = token_counts[c];
    check_attention (VMOE_SHADER_ATTENTION_ONLINE, 2, t, 3 + c,
        (t + VMOE_ATTENTION_ONLINE_ROWS - 1) / VMOE_ATTENTION_ONLINE_ROWS,
        "online attention");
  }
}
END_TEST

START_TEST (test_embed)
{
  /* im2col of 2 images of 3 x 20 x 20 in 4x4 patches, then the assembly of
   * class token + patch rows + positions. */
  const int n = 2, c = 3, side = 20, patch = 4, np = 25, len = c * patch * patch;
  float *img = random_floats ((size_t) n * c * side * side, 1);
  write_floats (VMOE_VK_ACTIVATIONS, 0, img, (size_t) n * c * side * side);
  VmoeEmbedPush p = { .mode = VMOE_EMBED_IM2COL, .images = n, .channels = c,
    .height = side, .width = side, .patch_size = patch, .dim = DIM, .tokens = TOKENS,
    .class_token = 1, .src_off = 0, .dst_off = 10000, .cls_off = 0, .pos_off = 0 };
  run_shader (VMOE_SHADER_EMBED, &p, sizeof p, (n * np * len + 255) / 256, 1, 1);
  float *got = g_new (float, (size_t) n * np * len);
  read_back (VMOE_VK_ACTIVATIONS, 10000, got, (size_t) n * np * len);
  for (int i = 0; i < n; i++)
    for (int pi = 0; pi < np; pi++)
      for (int ch = 0; ch < c; ch++)
        for (int ky = 0; ky < patch; ky++)
          for (int kx = 0; kx < patch; kx++) {
            float want = img[((i * c + ch) * side + (pi / 5) * patch + ky) * side
                + (pi % 5) * patch + kx];
            float have = got[(i * np + pi) * len + (ch * patch + ky) * patch + kx];
            ck_assert_float_eq (have, want);
          }
  float *rows = random_floats ((size_t) n * np * DIM, 1), *cls = random_floats (DIM, 1);
  float *pos = random_floats (TOKENS * DIM, 1);
  write_floats (VMOE_VK_ACTIVATIONS, 20000, rows, (size_t) n * np * DIM);
  write_floats (VMOE_VK_WEIGHTS, 0, cls, DIM);
  write_floats (VMOE_VK_WEIGHTS, 100, pos, TOKENS * DIM);
  VmoeEmbedPush q = { .mode = VMOE_EMBED_ASSEMBLE, .images = n, .channels = c,
    .height = side, .width = side, .patch_size = patch, .dim = DIM, .tokens = TOKENS,
    .class_token = 1, .src_off = 20000, .dst_off = 30000, .cls_off = 0, .pos_off = 100 };
  run_shader (VMOE_SHADER_EMBED, &q, sizeof q, (n * TOKENS * DIM + 255) / 256, 1, 1);
  float *x = g_new (float, (size_t) n * TOKENS * DIM);
  read_back (VMOE_VK_ACTIVATIONS, 30000, x, (size_t) n * TOKENS * DIM);
  for (int i = 0; i < n; i++)
    for (int t = 0; t < TOKENS; t++)
      for (int d = 0; d < DIM; d++) {
        float v = t == 0 ? cls[d] : rows[(i * np + t - 1) * DIM + d];
        ck_assert_float_eq_tol (x[(i * TOKENS + t) * DIM + d], v + pos[t * DIM + d], 1e-6);
      }
  g_free (img), g_free (got), g_free (rows), g_free (cls), g_free (pos), g_free (x);
}
END_TEST

START_TEST (test_pool)
{
  const int n = 3;
  float *x = random_floats ((size_t) n * TOKENS * DIM, 1);
  write_floats (VMOE_VK_ACTIVATIONS, 0, x, (size_t) n * TOKENS * DIM);
  VmoePoolPush p = { .images = n, .tokens = TOKENS, .first = 1, .count = TOKENS - 1,
    .dim = DIM, .in_off = 0, .out_off = 9000 };
  run_shader (VMOE_SHADER_POOL, &p, sizeof p, (n * DIM + 63) / 64, 1, 1);
  float got[3 * DIM];
  read_back (VMOE_VK_ACTIVATIONS, 9000, got, (size_t) n * DIM);
  for (int i = 0; i < n; i++)
    for (int d = 0; d < DIM; d++) {
      double s = 0;
      for (int t = 1; t < TOKENS; t++)
        s += x[(i * TOKENS + t) * DIM + d];
      ck_assert_float_eq_tol (got[i * DIM + d], s / (TOKENS - 1), 1e-5);
    }
  g_free (x);
}
END_TEST

/* Image routing: router on the class token, softmax, top-2, normalised
 * gates, the decision copied to every token's entries. */
START_TEST (test_route_image)
{
  const int n = 5;
  float *x = random_floats ((size_t) n * TOKENS * DIM, 1);
  float *w = random_floats (EXPERTS * DIM, 1), *b = random_floats (EXPERTS, 1);
  write_floats (VMOE_VK_ACTIVATIONS, 0, x, (size_t) n * TOKENS * DIM);
  write_floats (VMOE_VK_WEIGHTS, 0, w, EXPERTS * DIM);
  write_floats (VMOE_VK_WEIGHTS, 500, b, EXPERTS);
  for (int mean = 0; mean < 2; mean++) {
    VmoeRoutePush p = { .mode = VMOE_ROUTE_IMAGE, .images = n, .tokens = TOKENS,
      .dim = DIM, .experts = EXPERTS, .k = TOP_K, .x_off = 0, .w_off = 0, .b_off = 500,
      .router_mean = mean, .normalize_gates = 1, .entry_expert_off = 0,
      .entry_gate_off = 50000, .out_experts_off = 5000, .out_gates_off = 60000,
      .members = 1 };
    run_shader (VMOE_SHADER_ROUTE, &p, sizeof p, 1, 1, 1);
    int experts[5 * TOP_K], entries[5 * TOKENS * TOP_K];
    float gates[5 * TOP_K], entry_gates[5 * TOKENS * TOP_K];
    read_back (VMOE_VK_INTEGERS, 5000, experts, n * TOP_K);
    read_back (VMOE_VK_ACTIVATIONS, 60000, gates, n * TOP_K);
    read_back (VMOE_VK_INTEGERS, 0, entries, n * TOKENS * TOP_K);
    read_back (VMOE_VK_ACTIVATIONS, 50000, entry_gates, n * TOKENS * TOP_K);
    for (int i = 0; i < n; i++) {
      float probs[EXPERTS], top[TOP_K];
      int index[TOP_K];
      for (int e = 0; e < EXPERTS; e++) {
        double s = b[e];
        for (int d = 0; d < DIM; d++) {
          double r = 0;
          if (mean) {
            for (int t = 0; t < TOKENS; t++)
              r += x[(i * TOKENS + t) * DIM + d];
            r /= TOKENS;
          } else {
            r = x[i * TOKENS * DIM + d];
          }
          s += w[e * DIM + d] * r;
        }
        probs[e] = (float) s;
      }
      vmoe_softmax_rows (probs, 1, EXPERTS);
      vmoe_topk (probs, EXPERTS, TOP_K, index, top);
      for (int j = 0; j < TOP_K; j++) {
        ck_assert_int_eq (experts[i * TOP_K + j], index[j]);
        ck_assert_float_eq_tol (gates[i * TOP_K + j], top[j] / (top[0] + top[1]), 1e-5);
        for (int t = 0; t < TOKENS; t++) {
          ck_assert_int_eq (entries[(i * TOKENS + t) * TOP_K + j], index[j]);
          ck_assert_float_eq (entry_gates[(i * TOKENS + t) * TOP_K + j],
              gates[i * TOP_K + j]);
        }
      }
    }
  }
  g_free (x), g_free (w), g_free (b);
}
END_TEST

/* Token routing against vmoe_assign_tokens: softmax, top-2, capacity and
 * BPR order, with many exact ties among the top-1 probabilities. */
START_TEST (test_route_tokens)
{
  const int n = 4, rows = n * TOKENS;
  float *logits = random_floats ((size_t) rows * EXPERTS, 2);
  for (int r = 0; r < rows; r += 3)       /* repeated rows: tied probabilities */
    memcpy (logits + (size_t) r * EXPERTS, logits, EXPERTS * sizeof (float));
  for (int bpr = 0; bpr < 2; bpr++) {
    int capacity = vmoe_token_capacity (TOP_K, TOKENS, 0.5, EXPERTS, 1);
    write_floats (VMOE_VK_ACTIVATIONS, 0, logits, (size_t) rows * EXPERTS);
    VmoeRoutePush p = { .mode = VMOE_ROUTE_TOKEN, .images = n, .tokens = TOKENS,
      .dim = DIM, .experts = EXPERTS, .k = TOP_K, .probs_off = 0,
      .entry_expert_off = 0, .entry_gate_off = 20000, .order_off = 5000,
      .out_counts_off = 8000, .out_dropped_off = 9000, .layer = 1, .layers = 2,
      .capacity = (uint32_t) capacity, .bpr = (uint32_t) bpr, .members = 1 };
    run_shader (VMOE_SHADER_ROUTE, &p, sizeof p, 1, 1, 1);
    int assigned[4 * TOKENS * TOP_K], counts[4 * 2 * EXPERTS], dropped[4 * 2];
    float gates[4 * TOKENS * TOP_K];
    read_back (VMOE_VK_INTEGERS, 0, assigned, rows * TOP_K);
    read_back (VMOE_VK_ACTIVATIONS, 20000, gates, rows * TOP_K);
    read_back (VMOE_VK_INTEGERS, 8000, counts, n * 2 * EXPERTS);
    read_back (VMOE_VK_INTEGERS, 9000, dropped, n * 2);
    float *probs = g_memdup2 (logits, (size_t) rows * EXPERTS * sizeof (float));
    vmoe_softmax_rows (probs, rows, EXPERTS);
    for (int i = 0; i < n; i++) {
      int choice[TOKENS * TOP_K], want[TOKENS * TOP_K], order[TOKENS], want_counts[EXPERTS];
      float choice_p[TOKENS * TOP_K];
      for (int t = 0; t < TOKENS; t++)
        vmoe_topk (probs + (size_t) (i * TOKENS + t) * EXPERTS, EXPERTS, TOP_K,
            choice + t * TOP_K, choice_p + t * TOP_K);
      int want_dropped = vmoe_assign_tokens (choice, choice_p, TOKENS, TOP_K, EXPERTS,
          capacity, bpr, order, want, want_counts);
      ck_assert_int_gt (want_dropped, 0);
      ck_assert_int_eq (dropped[i * 2 + 1], want_dropped);
      for (int e = 0; e < EXPERTS; e++)
        ck_assert_int_eq (counts[(i * 2 + 1) * EXPERTS + e], want_counts[e]);
      for (int a = 0; a < TOKENS * TOP_K; a++) {
        ck_assert_int_eq (assigned[i * TOKENS * TOP_K + a], want[a]);
        ck_assert_float_eq_tol (gates[i * TOKENS * TOP_K + a], choice_p[a], 1e-6);
      }
    }
    g_free (probs);
  }
  g_free (logits);
}
END_TEST

/* Lists hold exactly each expert's entries; combine adds the gated expert
 * outputs of a row's routed entries to it. */
START_TEST (test_lists_and_combine)
{
  const int rows = 40, k = TOP_K;
  int expert_of[80], zero[EXPERTS] = { 0 };
  for (int a = 0; a < rows * k; a++)
    expert_of[a] = (int) g_rand_int_range (rng, -1, EXPERTS);
  float *gate = random_floats ((size_t) rows * k, 1), *y = random_floats ((size_t) rows * k * DIM, 1);
  float *x = random_floats ((size_t) rows * DIM, 1);
  write_floats (VMOE_VK_INTEGERS, 0, (const float *) expert_of, rows * k);
  write_floats (VMOE_VK_INTEGERS, 1000, (const float *) zero, EXPERTS);
  write_floats (VMOE_VK_ACTIVATIONS, 0, gate, rows * k);
  write_floats (VMOE_VK_ACTIVATIONS, 1000, y, (size_t) rows * k * DIM);
  write_floats (VMOE_VK_ACTIVATIONS, 10000, x, (size_t) rows * DIM);
  VmoeExpertsPush p = { .mode = VMOE_EXPERTS_LISTS, .rows = rows, .k = k, .dim = DIM,
    .entry_expert_off = 0, .entry_gate_off = 0, .count_off = 1000, .list_off = 2000,
    .list_cap = 100, .y_off = 1000, .x_off = 10000 };
  run_shader (VMOE_SHADER_EXPERTS, &p, sizeof p, 1, 1, 1);
  int counts[EXPERTS], lists[EXPERTS * 100];
  read_back (VMOE_VK_INTEGERS, 1000, counts, EXPERTS);
  read_back (VMOE_VK_INTEGERS, 2000, lists, EXPERTS * 100);
  for (int e = 0; e < EXPERTS; e++) {
    int want = 0;
    for (int a = 0; a < rows * k; a++)
      want += expert_of[a] == e;
    ck_assert_int_eq (counts[e], want);
    for (int j = 0; j < counts[e]; j++)
      ck_assert_int_eq (expert_of[lists[e * 100 + j]], e);
  }
  p.mode = VMOE_EXPERTS_COMBINE;
  run_shader (VMOE_SHADER_EXPERTS, &p, sizeof p, (rows * DIM + 255) / 256, 1, 1);
  float got[40 * DIM];
  read_back (VMOE_VK_ACTIVATIONS, 10000, got, (size_t) rows * DIM);
  for (int r = 0; r < rows; r++)
    for (int d = 0; d < DIM; d++) {
      double want = x[r * DIM + d];
      for (int j = 0; j < k; j++)
        if (expert_of[r * k + j] >= 0)
          want += gate[r * k + j] * y[(r * k + j) * DIM + d];
      ck_assert_float_eq_tol (got[r * DIM + d], want, 1e-5);
    }
  g_free (gate), g_free (y), g_free (x);
}
END_TEST

/* The backend's own errors: a batch beyond the device's buffer limits and a
 * device that does not exist; each a GError, the session still usable. */
START_TEST (test_errors)
{
  GError *error = NULL;
  VmoeRoutingParams routing = { TOP_K, 1.0 };
  ck_assert (vmoe_vulkan_new (model, routing, "no-such-device", FALSE, FALSE, &error) == NULL);
  ck_assert_msg (strstr (error->message, "no matching device"), "%s", error->message);
  g_clear_error (&error);
  /* 'cpu' names a CPU device, which the auto backend refuses. */
  ck_assert (vmoe_vulkan_new (model, routing, "cpu", TRUE, FALSE, &error) == NULL);
  ck_assert_msg (strstr (error->message, "no GPU device"), "%s", error->message);
  g_clear_error (&error);

  VmoeVulkan *other = vmoe_vulkan_new (model, routing, NULL, FALSE, FALSE, &error);
  ck_assert_msg (other != NULL, "%s", error ? error->message : "");
  const VmoeConfig *c = vmoe_model_get_config (model);
  int big = 65536;
  size_t per_image = (size_t) c->in_channels * c->image_h * c->image_w;
  float *input = g_new0 (float, per_image * 2);
  VmoeRawOutput out = { 0 };
  out.logits = g_new (float, 2 * c->num_classes);
  out.experts = g_new (int, 2 * TOP_K);
  out.gates = g_new (float, 2 * TOP_K);
  ck_assert (!vmoe_vulkan_forward_f32 (other, input, big, &out, &error));
  ck_assert_msg (strstr (error->message, "maxStorageBufferRange")
      || strstr (error->message, "too large") || strstr (error->message, "memory"),
      "%s", error->message);
  g_clear_error (&error);
  /* ...and a batch that fits still runs afterwards. */
  ck_assert_msg (vmoe_vulkan_forward_f32 (other, input, 2, &out, &error), "%s",
      error ? error->message : "");
  g_free (input), g_free (out.logits), g_free (out.experts), g_free (out.gates);
  vmoe_vulkan_free (other);

  /* A child forked after Vulkan was set up gets an error, not a hang. */
  pid_t pid = fork ();
  if (pid == 0) {
    GError *child_error = NULL;
    VmoeVulkan *child = vmoe_vulkan_new (model, routing, NULL, FALSE, FALSE, &child_error);
    _exit (!child && child_error && strstr (child_error->message, "forked") ? 0 : 1);
  }
  int status = 0;
  ck_assert_int_eq (waitpid (pid, &status, 0), pid);
  ck_assert (WIFEXITED (status) && WEXITSTATUS (status) == 0);
}
END_TEST

/* A lost device fails the call that meets it and every later call, each
 * with a GError that says so, and the session still frees cleanly.  The
 * loss is injected where the driver would report it (the submission). */
START_TEST (test_device_lost)
{
  GError *error = NULL;
  VmoeRoutingParams routing = { TOP_K, 1.0 };
  VmoeVulkan *other = vmoe_vulkan_new (model, routing, NULL, FALSE, FALSE, &error);
  ck_assert_msg (other != NULL, "%s", error ? error->message : "");
  const VmoeConfig *c = vmoe_model_get_config (model);
  float *input = random_floats ((size_t) c->in_channels * c->image_h * c->image_w, 9);
  VmoeRawOutput out = { 0 };
  out.logits = g_new (float, c->num_classes);
  out.experts = g_new (int, TOP_K);
  out.gates = g_new (float, TOP_K);
  vmoe_vulkan_test_lose_device_after (other, 1);
  ck_assert_msg (vmoe_vulkan_forward_f32 (other, input, 1, &out, &error), "%s",
      error ? error->message : "");
  ck_assert (!vmoe_vulkan_forward_f32 (other, input, 1, &out, &error));
  ck_assert_msg (strstr (error->message, "the device was lost"), "%s", error->message);
  g_clear_error (&error);
  ck_assert (!vmoe_vulkan_forward_f32 (other, input, 1, &out, &error));
  ck_assert_msg (strstr (error->message, "lost earlier; create a new session"), "%s",
      error->message);
  g_clear_error (&error);
  g_free (input), g_free (out.logits), g_free (out.experts), g_free (out.gates);
  vmoe_vulkan_free (other);
}
END_TEST

int
main (void)
{
  char *config = g_strdup_printf ("{\"format\": \"vmoe\", \"version\": 1, "
      "\"image_size\": [20, 20], \"patch_size\": 4, \"in_channels\": 3, "
      "\"embed_dim\": %d, \"depth\": 2, \"num_heads\": %d, \"mlp_dim\": 64, "
      "\"num_classes\": 3, \"labels\": [\"a\", \"b\", \"c\"], \"moe\": {"
      "\"layers\": [1], \"num_experts\": %d, \"top_k\": %d, \"routing\": \"image\"}}",
      DIM, HEADS, EXPERTS, TOP_K);
  char *path = g_build_filename (g_get_tmp_dir (), "vmoe-test-vulkan.safetensors", NULL);
  GError *error = NULL;
  if (vmoe_random_model_write (config, 7, path, &error))
    model = vmoe_model_load (path, &error);
  if (!model) {
    fprintf (stderr, "test_vulkan: %s\n", error->message);
    return 1;
  }
  VmoeRoutingParams routing = { TOP_K, 1.0 };
  vk = vmoe_vulkan_new (model, routing, NULL, FALSE, FALSE, &error);
  if (!vk) {
    printf ("test_vulkan: skipped, no Vulkan device: %s\n", error->message);
    g_error_free (error);
    vmoe_model_unref (model);
    g_unlink (path);
    g_free (path);
    g_free (config);
    return 77;
  }
  printf ("test_vulkan: device %s\n", vmoe_vulkan_device_name (vk));
  rng = g_rand_new_with_seed (5);

  Suite *s = suite_create ("vulkan");
  TCase *tc = tcase_create ("shaders");
  tcase_set_timeout (tc, 120);
  tcase_add_checked_fixture (tc, setup, NULL);
  tcase_add_test (tc, test_gemm);
  tcase_add_test (tc, test_gemm_expert_lists);
  tcase_add_test (tc, test_layernorm);
  tcase_add_test (tc, test_attention);
  tcase_add_test (tc, test_attention_online);
  tcase_add_test (tc, test_shared_memory_sizes);
  tcase_add_test (tc, test_embed);
  tcase_add_test (tc, test_pool);
  tcase_add_test (tc, test_route_image);
  tcase_add_test (tc, test_route_tokens);
  tcase_add_test (tc, test_lists_and_combine);
  tcase_add_test (tc, test_errors);
  tcase_add_test (tc, test_device_lost);
  suite_add_tcase (s, tc);
  SRunner *runner = srunner_create (s);
  /* One process: the Vulkan device is not fork-safe. */
  srunner_set_fork_status (runner, CK_NOFORK);
  srunner_run_all (runner, CK_VERBOSE);
  int failed = srunner_ntests_failed (runner);
  srunner_free (runner);
  vmoe_vulkan_free (vk);
  vmoe_model_unref (model);
  g_rand_free (rng);
  g_unlink (path);
  g_free (path);
  g_free (config);
  return failed ? 1 : 0;
}
