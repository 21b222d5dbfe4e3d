/* Pre-processing of 8-bit frames (DESIGN.md, Forward pass step 1).
 *
 * Resize and crop are fused: each output pixel of the crop maps to a pixel of
 * the virtual resized image, whose four bilinear source pixels are converted
 * to the model's channels on the fly.  Channel conversion is linear, so
 * converting before interpolating equals converting the source frame first,
 * which is what the PyTorch reference does; no intermediate buffer exists. */
#include "vmoe-private.h"

#include <math.h>

/* Value of model channel `ch` at source pixel p, in [0, 1]. */
static inline float
pixel_channel (const uint8_t *p, int src_channels, int model_channels, int ch)
{
  if (model_channels == 1 && src_channels >= 3)
    return (0.299f * p[0] + 0.587f * p[1] + 0.114f * p[2]) / 255.0f;
  if (src_channels == 1)
    return p[0] / 255.0f;
  return p[ch] / 255.0f;
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
  int h0 = image->height, w0 = image->width, ch_in = image->channels;
  int ht = c->image_h, wt = c->image_w, ch_out = c->in_channels;
  if (!image->data || h0 < 1 || w0 < 1 || h0 > 65536 || w0 > 65536
      || (ch_in != 1 && ch_in != 3 && ch_in != 4)
      || image->stride < (size_t) w0 * ch_in) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "frame %dx%d with %d channels and stride %zu is not a valid 8-bit "
        "image (channels must be 1, 3 or 4)", w0, h0, ch_in, image->stride);
    return FALSE;
  }

  int rh = ht, rw = wt, top = 0, left = 0;
  if (h0 != ht || w0 != wt) {
    double s = MAX ((double) ht / h0, (double) wt / w0) / c->crop_pct;
    rh = MAX (ht, (int) floor (h0 * s + 0.5));
    rw = MAX (wt, (int) floor (w0 * s + 0.5));
    top = (rh - ht) / 2;
    left = (rw - wt) / 2;
  }
  float scale_y = (float) h0 / (float) rh, scale_x = (float) w0 / (float) rw;
  gboolean identity = rh == h0 && rw == w0;

  for (int y = 0; y < ht; y++) {
    int y0, y1;
    float ly;
    source_index (y + top, scale_y, h0, &y0, &y1, &ly);
    const uint8_t *row0 = image->data + (size_t) y0 * image->stride;
    const uint8_t *row1 = image->data + (size_t) y1 * image->stride;
    for (int x = 0; x < wt; x++) {
      int x0, x1;
      float lx;
      source_index (x + left, scale_x, w0, &x0, &x1, &lx);
      for (int ch = 0; ch < ch_out; ch++) {
        float v;
        if (identity) {
          v = pixel_channel (row0 + (size_t) (x + left) * ch_in, ch_in, ch_out, ch);
        } else {
          float a = pixel_channel (row0 + (size_t) x0 * ch_in, ch_in, ch_out, ch);
          float b = pixel_channel (row0 + (size_t) x1 * ch_in, ch_in, ch_out, ch);
          float cc = pixel_channel (row1 + (size_t) x0 * ch_in, ch_in, ch_out, ch);
          float d = pixel_channel (row1 + (size_t) x1 * ch_in, ch_in, ch_out, ch);
          v = (1 - ly) * ((1 - lx) * a + lx * b) + ly * ((1 - lx) * cc + lx * d);
        }
        out[((size_t) ch * ht + y) * wt + x] = (v - c->mean[ch]) / c->std[ch];
      }
    }
  }
  return TRUE;
}
