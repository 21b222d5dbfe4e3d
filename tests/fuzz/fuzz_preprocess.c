/* Pre-processing (docs/design.md, forward pass step 1, Aspect handling and
 * Regions of interest) of random frames: any pixel format, size, stride
 * padding and pixels, any region (negative, huge, empty once clamped, or
 * none), for random model sizes, aspect, crop_pct, mean and std.  Every
 * plane is its own allocation of exactly the bytes its stride and height
 * say, so AddressSanitizer catches a read outside the frame; the output is
 * compared with a plain double-precision reference written from the design
 * text, whose every pixel fetch is bounds-checked against the frame and
 * whose bilinear sources are checked against the region.  Some inputs also
 * send the frame with two or three regions through one CPU session batch
 * (check_batch). */
#include "fuzz-common.h"
#include "vmoe-private.h"

#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

#define MAX_FRAME_SIDE 300
#define MAX_MODEL_SIDE 48

typedef struct {
  VmoeImage image;
  size_t plane_bytes[3];
  /* The image's region clamped to the frame, computed here. */
  VmoeCrop crop;
} Frame;

static int
frame_planes (VmoePixelFormat format)
{
  return format == VMOE_PIXEL_I420 ? 3 : format == VMOE_PIXEL_NV12 ? 2 : 1;
}

/* Bytes a row of plane p holds, from the layouts in include/vmoe/vmoe.h. */
static size_t
row_bytes (VmoePixelFormat format, int width, int p)
{
  static const int packed[] = { 1, 3, 3, 4, 4, 4, 4 };
  int chroma_w = (width + 1) / 2;
  if (p == 0)
    return (size_t) width * (format <= VMOE_PIXEL_ABGR ? packed[format] : 1);
  return (size_t) (format == VMOE_PIXEL_NV12 ? 2 * chroma_w : chroma_w);
}

static uint8_t
fetch (const Frame *f, int p, int x, int y)
{
  const VmoeImage *img = &f->image;
  int rows = p == 0 ? img->height : (img->height + 1) / 2;
  FUZZ_ASSERT (y >= 0 && y < rows && (size_t) x < row_bytes (img->format, img->width, p),
      "reference fetch (%d, %d) outside plane %d", x, y, p);
  size_t at = (size_t) y * img->strides[p] + (size_t) x;
  FUZZ_ASSERT (at < f->plane_bytes[p], "reference fetch past plane %d", p);
  return img->planes[p][at];
}

static uint8_t
round_clamp (double v)
{
  return v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t) floor (v + 0.5);
}

/* The 8-bit RGB of pixel (x, y); YUV with the frame's matrix and range,
 * from the standards' luma weights (docs/design.md step 1). */
static void
reference_rgb (const Frame *f, int x, int y, double rgb[3])
{
  static const int order[][4] = {   /* bytes per pixel, then R, G, B offsets */
    [VMOE_PIXEL_RGB] = { 3, 0, 1, 2 }, [VMOE_PIXEL_BGR] = { 3, 2, 1, 0 },
    [VMOE_PIXEL_RGBA] = { 4, 0, 1, 2 }, [VMOE_PIXEL_BGRA] = { 4, 2, 1, 0 },
    [VMOE_PIXEL_ARGB] = { 4, 1, 2, 3 }, [VMOE_PIXEL_ABGR] = { 4, 3, 2, 1 },
  };
  VmoePixelFormat format = f->image.format;
  if (format == VMOE_PIXEL_GRAY8) {
    rgb[0] = rgb[1] = rgb[2] = fetch (f, 0, x, y);
  } else if (format == VMOE_PIXEL_I420 || format == VMOE_PIXEL_NV12) {
    double luma = fetch (f, 0, x, y), u, v;
    if (format == VMOE_PIXEL_I420) {
      u = fetch (f, 1, x / 2, y / 2);
      v = fetch (f, 2, x / 2, y / 2);
    } else {
      u = fetch (f, 1, x / 2 * 2, y / 2);
      v = fetch (f, 1, x / 2 * 2 + 1, y / 2);
    }
    static const double kr_kb[][2] = { [VMOE_YUV_MATRIX_BT601] = { 0.299, 0.114 },
      [VMOE_YUV_MATRIX_BT709] = { 0.2126, 0.0722 },
      [VMOE_YUV_MATRIX_BT2020] = { 0.2627, 0.0593 } };
    double kr = kr_kb[f->image.yuv_matrix][0], kb = kr_kb[f->image.yuv_matrix][1];
    double kg = 1 - kr - kb;
    gboolean full = f->image.yuv_range == VMOE_YUV_RANGE_FULL;
    /* Y', Pb and Pr scaled to 0..255 and -127.5..127.5 */
    double c = full ? luma : (luma - 16) * 255 / 219;
    double pb = (u - 128) * (full ? 1 : 255.0 / 224), pr = (v - 128) * (full ? 1 : 255.0 / 224);
    rgb[0] = round_clamp (c + 2 * (1 - kr) * pr);
    rgb[1] = round_clamp (c - 2 * kb * (1 - kb) / kg * pb - 2 * kr * (1 - kr) / kg * pr);
    rgb[2] = round_clamp (c + 2 * (1 - kb) * pb);
  } else {
    const int *o = order[format];
    for (int ch = 0; ch < 3; ch++)
      rgb[ch] = fetch (f, 0, o[0] * x + o[1 + ch], y);
  }
}

/* Channel ch of the model's input at source pixel (x, y), in [0, 1]. */
static double
reference_value (const Frame *f, int channels, int ch, int x, int y)
{
  double rgb[3];
  reference_rgb (f, x, y, rgb);
  if (channels == 3)
    return rgb[ch] / 255;
  if (f->image.format == VMOE_PIXEL_GRAY8)
    return rgb[0] / 255;
  return (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255;
}

/* PyTorch's interpolate(align_corners=False) source of index d. */
static void
reference_source (int d, int src_len, int dst_len, int *i0, int *i1, double *lambda)
{
  double s = (d + 0.5) * src_len / dst_len - 0.5;
  if (s < 0)
    s = 0;
  *i0 = MIN ((int) floor (s), src_len - 1);
  *i1 = MIN (*i0 + 1, src_len - 1);
  *lambda = s - *i0;
  FUZZ_ASSERT (*i0 >= 0 && *i1 < src_len, "reference source %d, %d outside 0..%d",
      *i0, *i1, src_len - 1);
}

/* The region clamped to the frame in 64 bits; FALSE when that is empty.
 * A width or height of 0 is the whole frame. */
static gboolean
reference_crop (const VmoeImage *img, VmoeCrop *crop)
{
  gint64 x = img->region.x, y = img->region.y;
  gint64 w = img->region.width, h = img->region.height;
  if (w == 0 || h == 0) {
    *crop = (VmoeCrop) { 0, 0, img->width, img->height };
    return TRUE;
  }
  gint64 left = CLAMP (x, 0, img->width), right = CLAMP (x + w, 0, img->width);
  gint64 top = CLAMP (y, 0, img->height), bottom = CLAMP (y + h, 0, img->height);
  *crop = (VmoeCrop) { (int) left, (int) top, (int) (right - left), (int) (bottom - top) };
  return right > left && bottom > top;
}

/* The resize engine refuses: past this side its float source coordinates
 * lose the half-pixel centres (src/preprocess.c). */
#define MAX_RESIZED_SIDE (1 << 23)

/* The virtual resized crop's sides; the model's for stretch and for a crop
 * of the model's size. */
static void
reference_resized (const Frame *f, const VmoeConfig *c, double *rh, double *rw)
{
  int h0 = f->crop.height, w0 = f->crop.width, ht = c->image_h, wt = c->image_w;
  if ((h0 == ht && w0 == wt) || c->aspect == VMOE_ASPECT_STRETCH) {
    *rh = ht, *rw = wt;
    return;
  }
  double s = MAX ((double) ht / h0, (double) wt / w0) / c->crop_pct;
  *rh = MAX (ht, floor (h0 * s + 0.5));
  *rw = MAX (wt, floor (w0 * s + 0.5));
}

static double
reference_pixel (const Frame *f, const VmoeConfig *c, int ch, int x, int y)
{
  double resized_h, resized_w;
  reference_resized (f, c, &resized_h, &resized_w);
  int rh = (int) resized_h, rw = (int) resized_w;
  int top = (rh - c->image_h) / 2, left = (rw - c->image_w) / 2;
  int y0, y1, x0, x1;
  double ly, lx;
  /* The crop is a frame of its own size whose pixels keep their frame
   * coordinates (YUV chroma pairs with the frame's 2x2 blocks). */
  reference_source (y + top, f->crop.height, rh, &y0, &y1, &ly);
  reference_source (x + left, f->crop.width, rw, &x0, &x1, &lx);
  x0 += f->crop.x, x1 += f->crop.x, y0 += f->crop.y, y1 += f->crop.y;
  int channels = c->in_channels;
  return (1 - ly) * ((1 - lx) * reference_value (f, channels, ch, x0, y0)
          + lx * reference_value (f, channels, ch, x1, y0))
      + ly * ((1 - lx) * reference_value (f, channels, ch, x0, y1)
          + lx * reference_value (f, channels, ch, x1, y1));
}

/* A region coordinate or side: mostly near the frame, sometimes an extreme
 * int or any int, and 0 (the whole frame for a side) when the input has
 * run out. */
static int
fuzz_region_int (FuzzInput *in)
{
  static const int extremes[] = { INT_MIN, INT_MIN + 1, -MAX_FRAME_SIDE - 1, -1, 1,
    INT_MAX - MAX_FRAME_SIDE, INT_MAX - 1, INT_MAX };
  switch (fuzz_take (in, 1) % 4) {
  case 0:
    return 0;
  case 1:
    return fuzz_int (in, -16, MAX_FRAME_SIDE + 16);
  case 2:
    return extremes[fuzz_take (in, 1) % G_N_ELEMENTS (extremes)];
  default:
    return (int) (int32_t) (uint32_t) fuzz_take (in, 4);
  }
}

/* A normalisation constant of either sign, 1/64 to 16 in magnitude. */
static float
fuzz_norm (FuzzInput *in)
{
  int v = fuzz_int (in, 1, 1024);
  return (fuzz_take (in, 1) & 1 ? -1.0f : 1.0f) * (float) v / 64.0f;
}

/* Runs vmoe_preprocess on frame f (its region included) and checks the
 * outcome and every output value against the reference.  Returns the
 * output, or NULL when the engine refused, as it must, an empty region or
 * an oversized resize. */
static float *
check_preprocess (Frame *f, const VmoeConfig *config)
{
  const VmoeImage *img = &f->image;
  size_t out_count = (size_t) config->in_channels * config->image_h * config->image_w;
  float *out = g_new (float, out_count);
  GError *error = NULL;
  gboolean ok = vmoe_preprocess (config, img, out, &error);
  fuzz_check_outcome (ok, error);
  gboolean empty = !reference_crop (img, &f->crop);
  double resized_h = 0, resized_w = 0;
  if (!empty)
    reference_resized (f, config, &resized_h, &resized_w);
  gboolean too_large = resized_h > MAX_RESIZED_SIDE || resized_w > MAX_RESIZED_SIDE;
  FUZZ_ASSERT (ok == !(empty || too_large), "a %dx%d frame of format %d, region x %d, "
      "y %d, width %d, height %d (%s), aspect %d, resized to %.0fx%.0f: %s",
      img->width, img->height, (int) img->format, img->region.x, img->region.y,
      img->region.width, img->region.height, empty ? "empty" : "not empty",
      (int) config->aspect, resized_w, resized_h, ok ? "accepted" : error->message);
  FUZZ_ASSERT (ok || error->code == VMOE_ERROR_INVALID_ARGUMENT,
      "refused with error code %d: %s", error->code, error->message);
  g_clear_error (&error);
  if (!ok) {
    g_free (out);
    return NULL;
  }

  /* YUV frames are rounded to 8-bit RGB first: a value that lands on .5
   * may round either way in float and double. */
  double tolerance = img->format >= VMOE_PIXEL_I420 ? 1.0 / 255 + 1e-4 : 1e-4;
  size_t plane = (size_t) config->image_h * config->image_w;
  for (int ch = 0; ch < config->in_channels; ch++) {
    for (int y = 0; y < config->image_h; y++) {
      for (int x = 0; x < config->image_w; x++) {
        float v = out[ch * plane + (size_t) y * config->image_w + x];
        FUZZ_ASSERT (isfinite (v), "output (%d, %d, %d) is %g", ch, y, x, v);
        double got = (double) v * config->std[ch] + config->mean[ch];
        double want = reference_pixel (f, config, ch, x, y);
        FUZZ_ASSERT (fabs (got - want) <= tolerance,
            "pixel (%d, %d, %d) of a %dx%d frame (format %d), crop %dx%d at (%d, %d), "
            "to %dx%d, aspect %d, crop_pct %.17g: %.6f, the reference %.6f", ch, y, x,
            img->width, img->height, (int) img->format, f->crop.width, f->crop.height,
            f->crop.x, f->crop.y, config->image_w, config->image_h, (int) config->aspect,
            config->crop_pct, got, want);
      }
    }
  }
  return out;
}

/* The batch check's models: tiny, non-square, one per aspect, made once. */
static VmoeSession *
batch_session (VmoeAspect aspect)
{
  static VmoeSession *sessions[2];
  if (sessions[aspect])
    return sessions[aspect];
  char *config = g_strdup_printf ("{\"format\": \"vmoe\", \"version\": 1, "
      "\"image_size\": [8, 12], \"patch_size\": 4, \"in_channels\": 3, "
      "\"embed_dim\": 8, \"depth\": 1, \"num_heads\": 2, \"mlp_dim\": 8, "
      "\"num_classes\": 3, \"labels\": [\"a\", \"b\", \"c\"], "
      "\"mean\": [0.5, 0.4, 0.3], \"std\": [0.2, 0.3, 0.25], \"crop_pct\": 0.75, "
      "\"aspect\": \"%s\"}", aspect == VMOE_ASPECT_STRETCH ? "stretch" : "crop");
  int fd = memfd_create ("fuzz-preprocess", 0);
  FUZZ_ASSERT (fd >= 0, "memfd_create failed");
  char *path = g_strdup_printf ("/proc/self/fd/%d", fd);
  GError *error = NULL;
  gboolean ok = vmoe_random_model_write (config, 1, path, &error);
  FUZZ_ASSERT (ok, "the batch model was not written: %s", error->message);
  VmoeModel *model = vmoe_model_load (path, &error);
  FUZZ_ASSERT (model, "the batch model does not load: %s", error->message);
  close (fd);
  g_free (path);
  g_free (config);
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_CPU;
  options.threads = 1;
  sessions[aspect] = vmoe_session_new (model, &options, &error);
  FUZZ_ASSERT (sessions[aspect], "no CPU session: %s", error->message);
  vmoe_model_unref (model);
  return sessions[aspect];
}

#define MAX_BATCH 3

/* The frame's regions as one vmoe_session_run_u8 batch of images sharing
 * its planes: it fails, naming the first image with an empty region, if
 * any region is empty; otherwise each image's logits are those of its
 * region pre-processed alone (checked against the reference above) and run
 * through vmoe_session_run_f32. */
static void
check_batch (Frame *frames, int n, VmoeAspect aspect)
{
  VmoeSession *session = batch_session (aspect);
  const VmoeConfig *config = vmoe_model_get_config (vmoe_session_get_model (session));
  size_t per_image = (size_t) config->in_channels * config->image_h * config->image_w;
  float *inputs = g_new (float, per_image * n);
  VmoeImage images[MAX_BATCH];
  int first_refused = -1;
  for (int i = 0; i < n; i++) {
    float *out = check_preprocess (&frames[i], config);
    if (out)
      memcpy (inputs + per_image * i, out, per_image * sizeof *out);
    else if (first_refused < 0)
      first_refused = i;
    g_free (out);
    images[i] = frames[i].image;
  }
  GError *error = NULL;
  gboolean ok = vmoe_session_run_u8 (session, images, n, &error);
  fuzz_check_outcome (ok, error);
  if (first_refused >= 0) {
    char *name = g_strdup_printf ("image %d:", first_refused);
    FUZZ_ASSERT (!ok && error->code == VMOE_ERROR_INVALID_ARGUMENT
        && g_str_has_prefix (error->message, name),
        "a batch whose image %d is refused alone: %s", first_refused,
        ok ? "accepted" : error->message);
    g_free (name);
  } else {
    FUZZ_ASSERT (ok, "a batch of regions that pre-process alone: %s", error->message);
  }
  g_clear_error (&error);
  if (ok) {
    int classes = config->num_classes;
    float *logits = g_new (float, (size_t) classes * n);
    for (int i = 0; i < n; i++)
      memcpy (logits + (size_t) classes * i, vmoe_session_get_result (session, i)->logits,
          classes * sizeof *logits);
    ok = vmoe_session_run_f32 (session, inputs, n, &error);
    FUZZ_ASSERT (ok, "the pre-processed batch does not run: %s", error->message);
    for (int i = 0; i < n; i++) {
      const float *want = vmoe_session_get_result (session, i)->logits;
      for (int k = 0; k < classes; k++)
        FUZZ_ASSERT (fabsf (logits[classes * i + k] - want[k]) <= 1e-5f * (1 + fabsf (want[k])),
            "image %d of %d, class %d: %g from the frame, %g from its pre-processing",
            i, n, k, logits[classes * i + k], want[k]);
    }
    g_free (logits);
  }
  g_free (inputs);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  FuzzInput in = { data, size };
  VmoeConfig config = { 0 };
  config.in_channels = fuzz_take (&in, 1) & 1 ? 3 : 1;
  config.image_h = fuzz_int (&in, 1, MAX_MODEL_SIDE);
  config.image_w = fuzz_int (&in, 1, MAX_MODEL_SIDE);
  /* crop_pct is any double the config accepts, (0, 1]. */
  uint64_t crop_bits = fuzz_take (&in, 8);
  memcpy (&config.crop_pct, &crop_bits, sizeof config.crop_pct);
  if (!(config.crop_pct > 0 && config.crop_pct <= 1))
    config.crop_pct = 1.0;
  for (int ch = 0; ch < config.in_channels; ch++) {
    config.mean[ch] = fuzz_norm (&in);
    config.std[ch] = fuzz_norm (&in);
  }

  Frame f = { 0 };
  VmoeImage *img = &f.image;
  img->format = (VmoePixelFormat) fuzz_int (&in, 0, VMOE_PIXEL_NV12);
  img->width = fuzz_int (&in, 1, MAX_FRAME_SIDE);
  img->height = fuzz_int (&in, 1, MAX_FRAME_SIDE);
  int planes = frame_planes (img->format);
  for (int p = 0; p < planes; p++) {
    int rows = p == 0 ? img->height : (img->height + 1) / 2;
    size_t row = row_bytes (img->format, img->width, p);
    img->strides[p] = row + (size_t) fuzz_int (&in, 0, 15);
    f.plane_bytes[p] = (size_t) (rows - 1) * img->strides[p] + row;
  }
  /* Drawn after the frame so that an input that ends early is the whole
   * frame with aspect crop. */
  config.aspect = fuzz_take (&in, 1) & 1 ? VMOE_ASPECT_STRETCH : VMOE_ASPECT_CROP;
  img->region.x = fuzz_region_int (&in);
  img->region.y = fuzz_region_int (&in);
  img->region.width = fuzz_region_int (&in);
  img->region.height = fuzz_region_int (&in);
  /* With bit 0 set, the frame also goes through a batch with this region
   * and one or two more. */
  int batch_flags = (int) fuzz_take (&in, 1);
  int n_batch = batch_flags & 1 ? 2 + (batch_flags >> 1) % (MAX_BATCH - 1) : 0;
  /* The YUV encoding from the same byte's high bits, valid ones only
   * (test_ops has the invalid), so that the committed inputs keep their
   * meaning; zero is BT.601 limited range, as before. */
  img->yuv_matrix = (VmoeYuvMatrix) ((batch_flags >> 4 & 3) % 3);
  img->yuv_range = batch_flags >> 6 & 1 ? VMOE_YUV_RANGE_FULL : VMOE_YUV_RANGE_LIMITED;
  Frame batch[MAX_BATCH];
  for (int i = 0; i < n_batch; i++) {
    batch[i] = f;
    if (i > 0) {
      batch[i].image.region.x = fuzz_region_int (&in);
      batch[i].image.region.y = fuzz_region_int (&in);
      batch[i].image.region.width = fuzz_region_int (&in);
      batch[i].image.region.height = fuzz_region_int (&in);
    }
  }
  /* The rest of the input is the pixels, repeated to fill every plane. */
  uint8_t *owned[3] = { NULL };
  for (int p = 0; p < planes; p++) {
    owned[p] = g_malloc (f.plane_bytes[p]);
    for (size_t i = 0; i < f.plane_bytes[p]; i++)
      owned[p][i] = in.size ? in.data[i % in.size] : (uint8_t) (i * 37 + p);
    img->planes[p] = owned[p];
  }

  /* The planes are only filled now: the batch's frames share them. */
  for (int i = 0; i < n_batch; i++)
    memcpy (batch[i].image.planes, img->planes, sizeof img->planes);
  g_free (check_preprocess (&f, &config));
  if (n_batch)
    check_batch (batch, n_batch, config.aspect);
  for (int p = 0; p < planes; p++)
    g_free (owned[p]);
  return 0;
}
