/* Pre-processing of 8-bit frames (docs/design.md, Forward pass step 1,
 * Aspect handling and Regions of interest).
 *
 * A region is sampled in place: its pixels are addressed at their frame
 * coordinates (so a YUV pixel takes the chroma sample of its 2x2 block in
 * the frame, exactly the RGB the whole frame has there) while the bilinear
 * source indices are clamped to the region.
 *
 * Resize and crop are fused: each output pixel of the crop maps to a pixel of
 * the virtual resized image, whose four bilinear source pixels are converted
 * to the model's channels on the fly.  Channel conversion is linear, so
 * converting before interpolating equals converting the source frame first,
 * which is what the PyTorch reference does; no intermediate buffer exists.
 * YUV pixels become 8-bit RGB first, with the frame's matrix and range,
 * exactly as if the frame had been converted to RGB beforehand. */
#include "vmoe-private.h"

#include <math.h>

void
vmoe_image_init_packed (VmoeImage *image, const uint8_t *data, int width,
    int height, int channels, size_t stride)
{
  static const VmoePixelFormat formats[] = { VMOE_PIXEL_GRAY8, VMOE_PIXEL_GRAY8,
    VMOE_PIXEL_GRAY8, VMOE_PIXEL_RGB, VMOE_PIXEL_RGBA };
  *image = (VmoeImage) { .format = formats[CLAMP (channels, 0, 4)],
    .width = width, .height = height, .planes = { data }, .strides = { stride } };
  /* A channel count the engine does not take makes the frame invalid. */
  if (channels != 1 && channels != 3 && channels != 4)
    image->width = -1;
}

static inline uint8_t
clamp_round (float v)
{
  return v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t) (v + 0.5f);
}

static inline void
yuv_to_rgb (const VmoeYuvCoefficients *k, int y, int u, int v, uint8_t rgb[3])
{
  float c = k->y_scale * ((float) y - k->y_offset);
  float d = (float) (u - 128), e = (float) (v - 128);
  rgb[0] = clamp_round (c + k->r_v * e);
  rgb[1] = clamp_round (c - k->g_u * d - k->g_v * e);
  rgb[2] = clamp_round (c + k->b_u * d);
}

/* The model-channel values of pixel (x, y) in [0, 1]: luma for a 1-channel
 * model, RGB for a 3-channel one (gray repeated). */
static inline void
pixel_values (const VmoeImage *img, const VmoePixelLayout *layout,
    const VmoeYuvCoefficients *yuv, int x, int y, int model_channels, float *out)
{
  const uint8_t *row = img->planes[0] + (size_t) y * img->strides[0];
  uint8_t rgb[3];
  if (layout->kind == VMOE_PIXEL_KIND_GRAY) {
    for (int c = 0; c < model_channels; c++)
      out[c] = row[x] / 255.0f;
    return;
  }
  if (layout->kind == VMOE_PIXEL_KIND_RGB) {
    const uint8_t *pixel = row + (size_t) x * layout->bytes_per_pixel;
    rgb[0] = pixel[layout->red], rgb[1] = pixel[layout->green], rgb[2] = pixel[layout->blue];
  } else {
    size_t chroma = (size_t) (x / 2) * layout->chroma_bytes;
    const uint8_t *u = img->planes[layout->u_plane]
        + (size_t) (y / 2) * img->strides[layout->u_plane] + chroma + layout->u_offset;
    const uint8_t *v = img->planes[layout->v_plane]
        + (size_t) (y / 2) * img->strides[layout->v_plane] + chroma + layout->v_offset;
    yuv_to_rgb (yuv, row[x], *u, *v, rgb);
  }
  if (model_channels == 1) {
    out[0] = (0.299f * rgb[0] + 0.587f * rgb[1] + 0.114f * rgb[2]) / 255.0f;
  } else {
    for (int c = 0; c < 3; c++)
      out[c] = rgb[c] / 255.0f;
  }
}

/* Bytes of one row of a chroma plane (2x2-subsampled). */
static size_t
chroma_row_bytes (const VmoeImage *img, const VmoePixelLayout *layout)
{
  return (size_t) (img->width + 1) / 2 * layout->chroma_bytes;
}

static gboolean
image_is_valid (const VmoeImage *img)
{
  const VmoePixelLayout *layout = vmoe_pixel_layout (img->format);
  if (!layout || img->width < 1 || img->height < 1 || img->width > VMOE_IMAGE_MAX_SIDE
      || img->height > VMOE_IMAGE_MAX_SIDE || !img->planes[0]
      || img->strides[0] < (size_t) img->width * layout->bytes_per_pixel)
    return FALSE;
  for (int plane = 1; plane < layout->planes; plane++)
    if (!img->planes[plane] || img->strides[plane] < chroma_row_bytes (img, layout))
      return FALSE;
  return TRUE;
}

gboolean
vmoe_image_check (const VmoeImage *image, GError **error)
{
  VmoeYuvCoefficients unused;
  if (!vmoe_yuv_coefficients (image->yuv_matrix, image->yuv_range, &unused)) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "YUV matrix %d or range %d is not a VmoeYuvMatrix or VmoeYuvRange",
        (int) image->yuv_matrix, (int) image->yuv_range);
    return FALSE;
  }
  if (image_is_valid (image))
    return TRUE;
  g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
      "frame %dx%d of pixel format %d has missing planes or too small "
      "strides, or is not a frame the engine takes", image->width,
      image->height, (int) image->format);
  return FALSE;
}

gboolean
vmoe_image_crop (const VmoeImage *image, int index, VmoeCrop *crop, GError **error)
{
  GError *frame_error = NULL;
  if (!vmoe_image_check (image, &frame_error)) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT, "image %d: %s",
        index, frame_error->message);
    g_error_free (frame_error);
    return FALSE;
  }
  int rx = image->region.x, ry = image->region.y;
  int rw = image->region.width, rh = image->region.height;
  if (rw == 0 || rh == 0) {
    *crop = (VmoeCrop) { 0, 0, image->width, image->height };
    return TRUE;
  }
  /* 64-bit: x + width may overflow an int. */
  gint64 x0 = CLAMP ((gint64) rx, 0, image->width), x1 = CLAMP ((gint64) rx + rw, 0, image->width);
  gint64 y0 = CLAMP ((gint64) ry, 0, image->height), y1 = CLAMP ((gint64) ry + rh, 0, image->height);
  if (x1 <= x0 || y1 <= y0) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "image %d: region x %d, y %d, width %d, height %d is empty once clamped "
        "to the %dx%d frame", index, rx, ry, rw, rh, image->width, image->height);
    return FALSE;
  }
  *crop = (VmoeCrop) { (int) x0, (int) y0, (int) (x1 - x0), (int) (y1 - y0) };
  return TRUE;
}

size_t
vmoe_image_plane_bytes (const VmoeImage *img, int plane)
{
  const VmoePixelLayout *layout = vmoe_pixel_layout (img->format);
  if (plane >= layout->planes)
    return 0;
  if (plane == 0)
    return (size_t) (img->height - 1) * img->strides[0]
        + (size_t) img->width * layout->bytes_per_pixel;
  return (size_t) ((img->height + 1) / 2 - 1) * img->strides[plane]
      + chroma_row_bytes (img, layout);
}

/* Source coordinates are computed in float as scale * (d + 0.5): exact
 * half-pixel centres need d + 0.5 to be a float, so the virtual resized
 * frame may not be larger than this on a side.  Only frames of extreme
 * aspect ratio or a tiny crop_pct come near it (a 4K frame for a 224x224
 * model resizes to 455x256 at crop_pct 0.875). */
#define MAX_RESIZED_SIDE (1 << 23)

/* The sides of the virtual resized frame (docs/design.md, Step 1), in double so
 * that any configuration and frame size can be measured before the int
 * geometry is computed. */
static void
resized_sides (const VmoeConfig *c, int w0, int h0, double *rh, double *rw)
{
  int ht = c->image_h, wt = c->image_w;
  if ((h0 == ht && w0 == wt) || c->aspect == VMOE_ASPECT_STRETCH) {
    *rh = ht, *rw = wt;
    return;
  }
  double s = MAX ((double) ht / h0, (double) wt / w0) / c->crop_pct;
  *rh = MAX (ht, floor (h0 * s + 0.5));
  *rw = MAX (wt, floor (w0 * s + 0.5));
}

gboolean
vmoe_frame_check (const VmoeConfig *c, const VmoeImage *image, int index,
    VmoeCrop *crop, GError **error)
{
  if (!vmoe_image_crop (image, index, crop, error))
    return FALSE;
  double rh, rw;
  resized_sides (c, crop->width, crop->height, &rh, &rw);
  if (rh <= MAX_RESIZED_SIDE && rw <= MAX_RESIZED_SIDE)
    return TRUE;
  g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
      "image %d: a %dx%d crop resizes to %.0fx%.0f for this model (crop_pct %g), "
      "over the %d-pixel limit on a side", index, crop->width, crop->height, rw, rh,
      c->crop_pct, MAX_RESIZED_SIDE);
  return FALSE;
}

void
vmoe_resize_geometry (const VmoeConfig *c, int w0, int h0, VmoeResizeGeometry *g)
{
  double resized_h, resized_w;
  resized_sides (c, w0, h0, &resized_h, &resized_w);
  int rh = (int) resized_h, rw = (int) resized_w;
  int top = (rh - c->image_h) / 2, left = (rw - c->image_w) / 2;
  *g = (VmoeResizeGeometry) { .top = top, .left = left,
    .scale_y = (float) h0 / (float) rh, .scale_x = (float) w0 / (float) rw,
    .identity = rh == h0 && rw == w0 };
}

/* Source coordinate of destination index d under half-pixel bilinear
 * sampling, as PyTorch's interpolate(align_corners=False) computes it. */
static inline void
source_index (int d, float scale, int src_len, int *i0, int *i1, float *lambda)
{
  float s = scale * ((float) d + 0.5f) - 0.5f;
  if (s < 0)
    s = 0;
  int i = (int) s;
  if (i > src_len - 1)
    i = src_len - 1;
  *i0 = i;
  *i1 = i < src_len - 1 ? i + 1 : i;
  *lambda = s - (float) i;
}

gboolean
vmoe_preprocess (const VmoeConfig *c, const VmoeImage *image, float *out,
    GError **error)
{
  return vmoe_preprocess_image (c, image, 0, out, error);
}

gboolean
vmoe_preprocess_image (const VmoeConfig *c, const VmoeImage *image, int index,
    float *out, GError **error)
{
  VmoeCrop crop;
  if (!vmoe_frame_check (c, image, index, &crop, error))
    return FALSE;
  int h0 = crop.height, w0 = crop.width, ox = crop.x, oy = crop.y;
  int ht = c->image_h, wt = c->image_w, ch_out = c->in_channels;

  VmoeResizeGeometry g;
  vmoe_resize_geometry (c, w0, h0, &g);
  int top = g.top, left = g.left;
  float scale_y = g.scale_y, scale_x = g.scale_x;
  gboolean identity = g.identity;
  const VmoePixelLayout *layout = vmoe_pixel_layout (image->format);
  VmoeYuvCoefficients yuv;
  vmoe_yuv_coefficients (image->yuv_matrix, image->yuv_range, &yuv);
  size_t plane = (size_t) ht * wt;

  for (int y = 0; y < ht; y++) {
    int y0, y1;
    float ly;
    source_index (y + top, scale_y, h0, &y0, &y1, &ly);
    for (int x = 0; x < wt; x++) {
      float v[3];
      if (identity) {
        pixel_values (image, layout, &yuv, ox + x + left, oy + y + top, ch_out, v);
      } else {
        int x0, x1;
        float lx, a[3], b[3], cc[3], d[3];
        source_index (x + left, scale_x, w0, &x0, &x1, &lx);
        pixel_values (image, layout, &yuv, ox + x0, oy + y0, ch_out, a);
        pixel_values (image, layout, &yuv, ox + x1, oy + y0, ch_out, b);
        pixel_values (image, layout, &yuv, ox + x0, oy + y1, ch_out, cc);
        pixel_values (image, layout, &yuv, ox + x1, oy + y1, ch_out, d);
        for (int ch = 0; ch < ch_out; ch++)
          v[ch] = (1 - ly) * ((1 - lx) * a[ch] + lx * b[ch])
              + ly * ((1 - lx) * cc[ch] + lx * d[ch]);
      }
      for (int ch = 0; ch < ch_out; ch++)
        out[ch * plane + (size_t) y * wt + x] = (v[ch] - c->mean[ch]) / c->std[ch];
    }
  }
  return TRUE;
}
