/* The byte layout of each VmoePixelFormat, written once: the CPU
 * pre-processing (preprocess.c), the frame checks, the Vulkan shader (which
 * gets each frame's layout in its per-image parameters) and, through the
 * public accessors, the element read it from here. */
#include "vmoe-private.h"

static const VmoePixelLayout layouts[] = {
  [VMOE_PIXEL_GRAY8] = { .kind = VMOE_PIXEL_KIND_GRAY, .planes = 1, .bytes_per_pixel = 1 },
  [VMOE_PIXEL_RGB] = { .kind = VMOE_PIXEL_KIND_RGB, .planes = 1, .bytes_per_pixel = 3,
    .red = 0, .green = 1, .blue = 2 },
  [VMOE_PIXEL_BGR] = { .kind = VMOE_PIXEL_KIND_RGB, .planes = 1, .bytes_per_pixel = 3,
    .red = 2, .green = 1, .blue = 0 },
  [VMOE_PIXEL_RGBA] = { .kind = VMOE_PIXEL_KIND_RGB, .planes = 1, .bytes_per_pixel = 4,
    .red = 0, .green = 1, .blue = 2 },
  [VMOE_PIXEL_BGRA] = { .kind = VMOE_PIXEL_KIND_RGB, .planes = 1, .bytes_per_pixel = 4,
    .red = 2, .green = 1, .blue = 0 },
  [VMOE_PIXEL_ARGB] = { .kind = VMOE_PIXEL_KIND_RGB, .planes = 1, .bytes_per_pixel = 4,
    .red = 1, .green = 2, .blue = 3 },
  [VMOE_PIXEL_ABGR] = { .kind = VMOE_PIXEL_KIND_RGB, .planes = 1, .bytes_per_pixel = 4,
    .red = 3, .green = 2, .blue = 1 },
  /* Y, then U and V planes of one byte per 2x2 pixels */
  [VMOE_PIXEL_I420] = { .kind = VMOE_PIXEL_KIND_YUV, .planes = 3, .bytes_per_pixel = 1,
    .chroma_bytes = 1, .u_plane = 1, .u_offset = 0, .v_plane = 2, .v_offset = 0 },
  /* Y, then one plane of U, V byte pairs per 2x2 pixels */
  [VMOE_PIXEL_NV12] = { .kind = VMOE_PIXEL_KIND_YUV, .planes = 2, .bytes_per_pixel = 1,
    .chroma_bytes = 2, .u_plane = 1, .u_offset = 0, .v_plane = 1, .v_offset = 1 },
};

const VmoePixelLayout *
vmoe_pixel_layout (VmoePixelFormat format)
{
  if ((int) format < 0 || (int) format >= (int) G_N_ELEMENTS (layouts))
    return NULL;
  return &layouts[format];
}

int
vmoe_pixel_format_bytes_per_pixel (VmoePixelFormat format)
{
  const VmoePixelLayout *layout = vmoe_pixel_layout (format);
  return layout ? layout->bytes_per_pixel : 0;
}

gboolean
vmoe_pixel_format_rgb_offsets (VmoePixelFormat format, int offsets[3])
{
  const VmoePixelLayout *layout = vmoe_pixel_layout (format);
  if (!layout || layout->kind != VMOE_PIXEL_KIND_RGB)
    return FALSE;
  offsets[0] = layout->red;
  offsets[1] = layout->green;
  offsets[2] = layout->blue;
  return TRUE;
}
