/* PyTorch parity: the C engine against training/vmoe_torch.py on the random
 * models of tests/parity/make_references.py.  Logits must agree to a
 * relative error of 1e-4 on the CPU backend, 1e-3 on Vulkan and 1e-2 with
 * Vulkan's fp16 weights (max |c - ref| / max |ref| per image), and every
 * routing decision exactly: experts, token counts per expert, drops.  An
 * input with "regions" runs its frames with those regions of interest; a
 * case's "yuv_inputs" are I420 or NV12 frames of the encoding they name.
 * The CPU's bf16 precision gets 2e-2 and 1e-2 on gates; an image may route
 * otherwise than PyTorch once per case (docs/cpu.md, and below).
 *
 *   test_parity DIR [cpu|cpu-bf16|vulkan|vulkan-fp16]
 *
 * The Vulkan modes exit 77 (skipped) when no Vulkan device opens; the
 * device is VMOE_VULKAN_DEVICE's (the tests set "cpu": lavapipe). */
#include <check.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"
#include "vmoe/vmoe.h"

static const char *parity_dir;
static VmoeSessionOptions options;
static double logit_tolerance = 1e-4, gate_tolerance = 1e-5, entropy_tolerance = 1e-4;
static double worst_error;         /* per case, printed for the record */
static JsonArray *cases;

static double
relative_error (const float *got, JsonArray *want, int n)
{
  double max_diff = 0, max_ref = 0;
  for (int i = 0; i < n; i++) {
    double ref = json_array_get_double_element (want, i);
    max_diff = MAX (max_diff, fabs (got[i] - ref));
    max_ref = MAX (max_ref, fabs (ref));
  }
  return max_diff / MAX (max_ref, 1e-12);
}

/* Frame i of a "yuv_inputs" entry: make_references.py's yuv_frames
 * layout, [n, height + ceil(height/2), 2 ceil(width/2)] bytes. */
static void
yuv_image (const NpyArray *input, JsonObject *yuv, int i, VmoeImage *img)
{
  static const char *const matrices[] = { "bt601", "bt709", "bt2020" };
  int w = (int) json_object_get_int_member (yuv, "width");
  int h = (int) json_object_get_int_member (yuv, "height");
  size_t stride = (size_t) input->shape[2];
  ck_assert_uint_eq (stride, (size_t) (w + 1) / 2 * 2);
  ck_assert_uint_eq ((size_t) input->shape[1], (size_t) h + (h + 1) / 2);
  const guint8 *frame = (const guint8 *) input->data + (size_t) i * input->shape[1] * stride;
  const guint8 *chroma = frame + (size_t) h * stride;
  gboolean i420 = strcmp (json_object_get_string_member (yuv, "format"), "I420") == 0;
  *img = (VmoeImage) { .format = i420 ? VMOE_PIXEL_I420 : VMOE_PIXEL_NV12,
    .width = w, .height = h, .planes = { frame, chroma, chroma + stride / 2 },
    .strides = { stride, stride, stride },
    .yuv_range = strcmp (json_object_get_string_member (yuv, "yuv_range"), "full") == 0
        ? VMOE_YUV_RANGE_FULL : VMOE_YUV_RANGE_LIMITED };
  if (!i420)
    img->planes[2] = NULL, img->strides[2] = 0;
  const char *matrix = json_object_get_string_member (yuv, "yuv_matrix");
  guint m = 0;
  while (m < G_N_ELEMENTS (matrices) && strcmp (matrix, matrices[m]) != 0)
    m++;
  ck_assert_msg (m < G_N_ELEMENTS (matrices), "unknown matrix %s", matrix);
  img->yuv_matrix = (VmoeYuvMatrix) m;
}

/* regions: NULL, or the input's "regions", one [x, y, w, h] per image;
 * yuv: NULL, or the "yuv_inputs" entry the input is. */
static gboolean
run_input (VmoeSession *session, const NpyArray *input, JsonArray *regions,
    JsonObject *yuv, int first, int count)
{
  const VmoeConfig *c = vmoe_model_get_config (vmoe_session_get_model (session));
  GError *error = NULL;
  gboolean ok;
  if (input->dtype == NPY_FLOAT32) {
    size_t per_image = (size_t) c->in_channels * c->image_h * c->image_w;
    ok = vmoe_session_run_f32 (session, (const float *) input->data + first * per_image,
        count, &error);
  } else {
    VmoeImage images[16];
    ck_assert_int_le (count, 16);
    for (int i = 0; i < count; i++) {
      if (yuv) {
        yuv_image (input, yuv, first + i, &images[i]);
      } else {
        int h = (int) input->shape[1], w = (int) input->shape[2], ch = (int) input->shape[3];
        vmoe_image_init_packed (&images[i],
            (const guint8 *) input->data + (size_t) (first + i) * h * w * ch, w, h, ch,
            (size_t) w * ch);
      }
    }
    for (int i = 0; regions && i < count; i++) {
      JsonArray *r = json_array_get_array_element (regions, first + i);
      images[i].region.x = (int) json_array_get_int_element (r, 0);
      images[i].region.y = (int) json_array_get_int_element (r, 1);
      images[i].region.width = (int) json_array_get_int_element (r, 2);
      images[i].region.height = (int) json_array_get_int_element (r, 3);
    }
    ok = vmoe_session_run_u8 (session, images, count, &error);
  }
  ck_assert_msg (ok, "run: %s", error ? error->message : "");
  return ok;
}

/* bf16 (docs/cpu.md): the residual stream a router reads is rounded, so
 * a near-tie between two experts, or a token at a full expert's capacity,
 * can route otherwise than PyTorch.  An image routed to other experts is
 * counted, not compared (its logits follow other experts); a case may have
 * one.  Token routing moves single tokens among hundreds of choices (seen:
 * 3 of 4 images of an E3 case with capacity 0.75 moved a token or two), so
 * there the counts are not compared and the logits must still hold. */
static gboolean routing_may_flip;
static guint64 flipped_images;       /* bit i: image i of the current input */

static gboolean
image_routing_differs (const VmoeImageResult *r, JsonObject *expected, int i)
{
  if (!json_object_has_member (expected, "experts"))
    return FALSE;
  JsonArray *experts = json_array_get_array_element (
      json_object_get_array_member (expected, "experts"), i);
  for (int j = 0; j < r->n_experts && j < (int) json_array_get_length (experts); j++)
    if (r->experts[j] != json_array_get_int_element (experts, j))
      return TRUE;
  return FALSE;
}

/* Checks one image's result against its reference entry. */
static void
check_image (const char *what, const VmoeConfig *c, const VmoeImageResult *r,
    JsonObject *expected, int i)
{
  if (routing_may_flip && image_routing_differs (r, expected, i)) {
    printf ("%s image %d: routed otherwise than PyTorch (bf16)\n", what, i);
    flipped_images |= G_GUINT64_CONSTANT (1) << i;
    return;
  }
  JsonArray *logits = json_array_get_array_element (
      json_object_get_array_member (expected, "logits"), i);
  double err = relative_error (r->logits, logits, c->num_classes);
  worst_error = MAX (worst_error, err);
  ck_assert_msg (err <= logit_tolerance, "%s image %d: relative logit error %g", what, i, err);

  if (json_object_has_member (expected, "experts")) {
    JsonArray *experts = json_array_get_array_element (
        json_object_get_array_member (expected, "experts"), i);
    JsonArray *gates = json_array_get_array_element (
        json_object_get_array_member (expected, "gates"), i);
    ck_assert_int_eq (r->n_experts, (int) json_array_get_length (experts));
    for (int j = 0; j < r->n_experts; j++) {
      ck_assert_msg (r->experts[j] == json_array_get_int_element (experts, j),
          "%s image %d: expert %d is %d, PyTorch chose %" G_GINT64_FORMAT, what, i, j,
          r->experts[j], json_array_get_int_element (experts, j));
      ck_assert_double_eq_tol (r->gates[j], json_array_get_double_element (gates, j),
          gate_tolerance);
    }
  }
  if (json_object_has_member (expected, "tokens_per_expert")) {
    JsonArray *tpe = json_array_get_array_element (
        json_object_get_array_member (expected, "tokens_per_expert"), i);
    JsonArray *dropped = json_array_get_array_element (
        json_object_get_array_member (expected, "dropped"), i);
    ck_assert_int_eq (r->n_layers, (int) json_array_get_length (tpe));
    for (int l = 0; l < r->n_layers; l++) {
      /* One entry per MoE block and E3 member: the member's E/M experts. */
      JsonArray *counts = json_array_get_array_element (tpe, l);
      ck_assert_int_eq (json_array_get_length (counts), c->num_experts / c->ensemble_members);
      ck_assert_int_eq (r->layers[l].block, c->moe_layers[l / c->ensemble_members]);
      ck_assert_int_eq (r->layers[l].member, l % c->ensemble_members);
      for (int e = 0; e < (int) json_array_get_length (counts) && !routing_may_flip; e++)
        ck_assert_msg (r->layers[l].tokens_per_expert[e]
            == json_array_get_int_element (counts, e),
            "%s image %d layer %d: expert %d got %d tokens, PyTorch %" G_GINT64_FORMAT,
            what, i, l, e, r->layers[l].tokens_per_expert[e],
            json_array_get_int_element (counts, e));
      if (!routing_may_flip)
        ck_assert_int_eq (r->layers[l].dropped, json_array_get_int_element (dropped, l));
    }
  }
  ck_assert_int_eq (r->n_members, c->ensemble_members);
  if (json_object_has_member (expected, "member_classes")) {
    JsonArray *classes = json_array_get_array_element (
        json_object_get_array_member (expected, "member_classes"), i);
    ck_assert_int_eq (r->n_members, (int) json_array_get_length (classes));
    for (int m = 0; m < r->n_members; m++)
      ck_assert_msg (r->member_classes[m] == json_array_get_int_element (classes, m),
          "%s image %d: member %d's top-1 is %d, PyTorch's %" G_GINT64_FORMAT, what, i,
          m, r->member_classes[m], json_array_get_int_element (classes, m));
    double entropy = json_array_get_double_element (
        json_object_get_array_member (expected, "entropy"), i);
    ck_assert_msg (fabs (r->entropy - entropy) <= entropy_tolerance,
        "%s image %d: entropy %g, PyTorch %g", what, i, r->entropy, entropy);
    ck_assert_double_eq_tol (r->disagreement, json_array_get_double_element (
            json_object_get_array_member (expected, "disagreement"), i), 1e-6);
  }
}

/* Every region of an input, all on its first frame, in one batch (the
 * Vulkan backend uploads that frame once): each result must equal the same
 * region run alone, within the logit tolerance (the CPU's GEMM blocking
 * depends on the batch size) and with the same experts. */
static void
check_regions_of_one_frame (VmoeSession *batched, VmoeSession *single,
    const NpyArray *input, JsonArray *regions, const char *what)
{
  const VmoeConfig *c = vmoe_model_get_config (vmoe_session_get_model (batched));
  int n = (int) json_array_get_length (regions);
  int h = (int) input->shape[1], w = (int) input->shape[2], ch = (int) input->shape[3];
  VmoeImage images[16];
  ck_assert_int_le (n, 16);
  for (int i = 0; i < n; i++) {
    JsonArray *r = json_array_get_array_element (regions, i);
    vmoe_image_init_packed (&images[i], input->data, w, h, ch, (size_t) w * ch);
    images[i].region.x = (int) json_array_get_int_element (r, 0);
    images[i].region.y = (int) json_array_get_int_element (r, 1);
    images[i].region.width = (int) json_array_get_int_element (r, 2);
    images[i].region.height = (int) json_array_get_int_element (r, 3);
  }
  GError *error = NULL;
  ck_assert_msg (vmoe_session_run_u8 (batched, images, n, &error), "%s: %s", what,
      error ? error->message : "");
  for (int i = 0; i < n; i++) {
    ck_assert_msg (vmoe_session_run_u8 (single, &images[i], 1, &error), "%s: %s", what,
        error ? error->message : "");
    const VmoeImageResult *alone = vmoe_session_get_result (single, 0);
    const VmoeImageResult *in_batch = vmoe_session_get_result (batched, i);
    double max_diff = 0, max_ref = 1e-12;
    for (int k = 0; k < c->num_classes; k++) {
      max_diff = MAX (max_diff, fabs (in_batch->logits[k] - alone->logits[k]));
      max_ref = MAX (max_ref, fabs (alone->logits[k]));
    }
    ck_assert_msg (max_diff / max_ref <= logit_tolerance,
        "%s: region %d of one shared frame: relative logit error %g in the batch "
        "against alone", what, i, max_diff / max_ref);
    ck_assert_int_eq (in_batch->n_experts, alone->n_experts);
    for (int j = 0; j < alone->n_experts; j++)
      ck_assert_int_eq (in_batch->experts[j], alone->experts[j]);
  }
}

START_TEST (test_case)
{
  JsonObject *test = json_array_get_object_element (cases, _i);
  const char *name = json_object_get_string_member (test, "name");
  char *model_path = g_build_filename (parity_dir,
      json_object_get_string_member (test, "model"), NULL);
  GError *error = NULL;
  VmoeModel *model = vmoe_model_load (model_path, &error);
  ck_assert_msg (model != NULL, "%s: %s", name, error ? error->message : "");
  const VmoeConfig *c = vmoe_model_get_config (model);
  VmoeSession *batched = vmoe_session_new (model, &options, &error);
  VmoeSession *single = batched ? vmoe_session_new (model, &options, &error) : NULL;
  ck_assert_msg (batched && single, "%s: %s", name, error ? error->message : "");

  worst_error = 0;
  int flips = 0;
  JsonArray *inputs = json_object_get_array_member (test, "inputs");
  JsonArray *yuv_inputs = json_object_get_array_member (test, "yuv_inputs");
  guint n_packed = json_array_get_length (inputs);
  for (guint k = 0; k < n_packed + json_array_get_length (yuv_inputs); k++) {
    JsonObject *yuv = k < n_packed ? NULL
        : json_array_get_object_element (yuv_inputs, k - n_packed);
    JsonObject *expected = yuv ? yuv : json_array_get_object_element (inputs, k);
    char *input_path = g_build_filename (parity_dir,
        json_object_get_string_member (expected, "file"), NULL);
    NpyArray input;
    ck_assert_msg (npy_load (input_path, &input, &error), "%s", error ? error->message : "");
    int n = (int) input.shape[0];
    char *what = g_strdup_printf ("%s/%s", name,
        json_object_get_string_member (expected, "kind"));
    JsonArray *regions = json_object_has_member (expected, "regions")
        ? json_object_get_array_member (expected, "regions") : NULL;
    ck_assert_int_le (n, 64);
    flipped_images = 0;
    /* The whole batch at once... */
    run_input (batched, &input, regions, yuv, 0, n);
    for (int i = 0; i < n; i++)
      check_image (what, c, vmoe_session_get_result (batched, i), expected, i);
    /* ...and each image alone: a frame's result never depends on the batch. */
    for (int i = 0; i < n; i++) {
      run_input (single, &input, regions, yuv, i, 1);
      const VmoeImageResult *r = vmoe_session_get_result (single, 0);
      check_image (what, c, r, expected, i);
    }
    if (regions && !yuv)
      check_regions_of_one_frame (batched, single, &input, regions, what);
    flips += __builtin_popcountll (flipped_images);
    g_free (what);
    npy_clear (&input);
    g_free (input_path);
  }
  printf ("%s (%s): worst relative logit error %.3g\n", name,
      vmoe_session_get_device (batched), worst_error);
  ck_assert_msg (flips <= 1, "%s: %d images routed otherwise than PyTorch", name, flips);
  vmoe_session_free (batched);
  vmoe_session_free (single);
  vmoe_model_unref (model);
  g_free (model_path);
}
END_TEST

/* YUV frames with many regions in one batch: the session's backend
 * against a CPU session (whose YUV regions and encodings test_ops checks
 * by hand), all regions of each frame in one batch, each region with an
 * encoding of its own (the Vulkan backend uploads the frame once but takes
 * the encoding per image).  The frames are 33 x 27, so chroma rows and
 * columns are rounded up, and the regions sit at odd and even offsets,
 * reach past edges and are 1 pixel wide. */
START_TEST (test_yuv_regions_match_cpu)
{
  char *path = g_build_filename (parity_dir, "image_k1.safetensors", NULL);
  GError *error = NULL;
  VmoeModel *model = vmoe_model_load (path, &error);
  ck_assert_msg (model != NULL, "%s", error ? error->message : "");
  const VmoeConfig *c = vmoe_model_get_config (model);
  VmoeSessionOptions cpu_options;
  vmoe_session_options_init (&cpu_options);
  cpu_options.backend = VMOE_BACKEND_CPU;
  VmoeSession *session = vmoe_session_new (model, &options, &error);
  VmoeSession *cpu = session ? vmoe_session_new (model, &cpu_options, &error) : NULL;
  ck_assert_msg (session && cpu, "%s", error ? error->message : "");

  enum { W = 33, H = 27, CW = (W + 1) / 2, CH = (H + 1) / 2 };
  guint8 y[H * W], u[CH * CW], v[CH * CW], uv[CH * CW * 2];
  GRand *rand = g_rand_new_with_seed (12);
  for (int i = 0; i < H * W; i++)
    y[i] = (guint8) (40 + (i % W) * 4 + g_rand_int_range (rand, 0, 40));
  for (int i = 0; i < CH * CW; i++) {
    u[i] = uv[2 * i] = (guint8) g_rand_int_range (rand, 60, 200);
    v[i] = uv[2 * i + 1] = (guint8) g_rand_int_range (rand, 60, 200);
  }
  g_rand_free (rand);
  VmoeImage frames[2] = {
    { .format = VMOE_PIXEL_I420, .width = W, .height = H, .planes = { y, u, v },
      .strides = { W, CW, CW } },
    { .format = VMOE_PIXEL_NV12, .width = W, .height = H, .planes = { y, uv },
      .strides = { W, 2 * CW } } };
  const int regions[][4] = { { 1, 3, 20, 15 }, { 2, 2, 31, 25 }, { -4, 11, 9, 40 },
    { 32, 0, 1, 27 }, { 5, 7, 1, 1 }, { 0, 0, 0, 0 } };
  const struct { VmoeYuvMatrix matrix; VmoeYuvRange range; } encodings[] = {
    { VMOE_YUV_MATRIX_BT709, VMOE_YUV_RANGE_LIMITED },
    { VMOE_YUV_MATRIX_BT601, VMOE_YUV_RANGE_FULL },
    { VMOE_YUV_MATRIX_BT2020, VMOE_YUV_RANGE_FULL },
    { VMOE_YUV_MATRIX_BT601, VMOE_YUV_RANGE_LIMITED },
  };
  enum { R = G_N_ELEMENTS (regions) };
  for (int f = 0; f < 2; f++) {
    VmoeImage images[R];
    for (int i = 0; i < R; i++) {
      images[i] = frames[f];
      images[i].yuv_matrix = encodings[(i + f) % G_N_ELEMENTS (encodings)].matrix;
      images[i].yuv_range = encodings[(i + f) % G_N_ELEMENTS (encodings)].range;
      images[i].region.x = regions[i][0], images[i].region.y = regions[i][1];
      images[i].region.width = regions[i][2], images[i].region.height = regions[i][3];
    }
    ck_assert_msg (vmoe_session_run_u8 (session, images, R, &error), "%s", error ? error->message : "");
    ck_assert_msg (vmoe_session_run_u8 (cpu, images, R, &error), "%s", error ? error->message : "");
    for (int i = 0; i < R; i++) {
      const VmoeImageResult *got = vmoe_session_get_result (session, i);
      const VmoeImageResult *want = vmoe_session_get_result (cpu, i);
      double max_diff = 0, max_ref = 1e-12;
      for (int k = 0; k < c->num_classes; k++) {
        max_diff = MAX (max_diff, fabs (got->logits[k] - want->logits[k]));
        max_ref = MAX (max_ref, fabs (want->logits[k]));
      }
      ck_assert_msg (max_diff / max_ref <= logit_tolerance,
          "format %d region %d: relative logit error %g against the CPU",
          frames[f].format, i, max_diff / max_ref);
      ck_assert_int_eq (got->experts[0], want->experts[0]);
    }
  }
  vmoe_session_free (session);
  vmoe_session_free (cpu);
  vmoe_model_unref (model);
  g_free (path);
}
END_TEST

/* Whether a Vulkan session opens on the dense case's model; says why not. */
static gboolean
vulkan_opens (void)
{
  char *path = g_build_filename (parity_dir, "dense.safetensors", NULL);
  GError *error = NULL;
  VmoeModel *model = vmoe_model_load (path, &error);
  VmoeSession *session = model ? vmoe_session_new (model, &options, &error) : NULL;
  if (!session)
    printf ("test_parity: skipped, no Vulkan session: %s\n", error->message);
  else
    printf ("test_parity: Vulkan device %s%s\n", vmoe_session_get_device (session),
        options.fp16 ? ", fp16 weights" : "");
  g_clear_error (&error);
  vmoe_session_free (session);
  vmoe_model_unref (model);
  g_free (path);
  return session != NULL;
}

int
main (int argc, char **argv)
{
  parity_dir = argc > 1 ? argv[1] : g_getenv ("VMOE_PARITY_DIR");
  const char *mode = argc > 2 ? argv[2] : "cpu";
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_CPU;
  if (g_str_has_prefix (mode, "vulkan")) {
    options.backend = VMOE_BACKEND_VULKAN;
    options.fp16 = strcmp (mode, "vulkan-fp16") == 0;
    logit_tolerance = options.fp16 ? 1e-2 : 1e-3;
    gate_tolerance = options.fp16 ? 2e-3 : 1e-5;   /* docs/vulkan.md, fp16 */
    entropy_tolerance = options.fp16 ? 1e-2 : 1e-3;
  } else if (strcmp (mode, "cpu-bf16") == 0) {
    options.precision = VMOE_PRECISION_BF16;
    routing_may_flip = TRUE;
    logit_tolerance = 2e-2;
    gate_tolerance = 1e-2;
    entropy_tolerance = 2e-2;
  } else if (strcmp (mode, "cpu") != 0) {
    parity_dir = NULL;
  }
  if (!parity_dir) {
    fprintf (stderr, "usage: test_parity DIR [cpu|cpu-bf16|vulkan|vulkan-fp16] "
        "(DIR: the output of make_references.py)\n");
    return 1;
  }
  if (options.backend == VMOE_BACKEND_VULKAN && !vulkan_opens ()) 
    return 77;
  GError *no_bf16 = NULL;
  if (options.precision == VMOE_PRECISION_BF16
      && !vmoe_cpu_gemm_describe (options.precision, &no_bf16)) {
    printf ("test_parity: skipped: %s\n", no_bf16->message);
    g_error_free (no_bf16);
    return 77;
  }
  char *expected_path = g_build_filename (parity_dir, "expected.json", NULL);
  JsonParser *parser = json_parser_new ();
  GError *error = NULL;
  if (!json_parser_load_from_file (parser, expected_path, &error)) {
    fprintf (stderr, "test_parity: %s\n", error->message);
    return 1;
  }
  cases = json_object_get_array_member (
      json_node_get_object (json_parser_get_root (parser)), "cases");
  int n_cases = (int) json_array_get_length (cases);
  if (n_cases < 15) {
    fprintf (stderr, "test_parity: only %d cases in %s\n", n_cases, expected_path);
    return 1;
  }

  Suite *s = suite_create ("parity");
  TCase *tc = tcase_create ("pytorch");
  tcase_set_timeout (tc, 120);
  tcase_add_loop_test (tc, test_case, 0, n_cases);
  tcase_add_test (tc, test_yuv_regions_match_cpu);
  suite_add_tcase (s, tc);
  SRunner *runner = srunner_create (s);
  /* A Vulkan instance (made by the probe above, kept for the process) does
   * not survive fork(): run the Vulkan modes in this process. */
  if (options.backend == VMOE_BACKEND_VULKAN)
    srunner_set_fork_status (runner, CK_NOFORK);
  srunner_run_all (runner, CK_VERBOSE);
  int failed = srunner_ntests_failed (runner);
  srunner_free (runner);
  g_object_unref (parser);
  g_free (expected_path);
  return failed ? 1 : 0;
}
