/* The YUV-to-RGB coefficients of each YUV matrix and range, written once and
 * derived from the matrix's luma weights Kr and Kb (docs/design.md step 1):
 * the CPU pre-processing (preprocess.c) uses them, and the Vulkan shader
 * gets them in each frame's parameters, so no constant is duplicated. */
#include "vmoe-private.h"

static const struct { double kr, kb; } luma_weights[] = {
  [VMOE_YUV_MATRIX_BT601] = { 0.299, 0.114 },
  [VMOE_YUV_MATRIX_BT709] = { 0.2126, 0.0722 },
  [VMOE_YUV_MATRIX_BT2020] = { 0.2627, 0.0593 },
};

gboolean
vmoe_yuv_coefficients (VmoeYuvMatrix matrix, VmoeYuvRange range,
    VmoeYuvCoefficients *out)
{
  if ((int) matrix < 0 || (int) matrix >= (int) G_N_ELEMENTS (luma_weights)
      || (range != VMOE_YUV_RANGE_LIMITED && range != VMOE_YUV_RANGE_FULL))
    return FALSE;
  double kr = luma_weights[matrix].kr, kb = luma_weights[matrix].kb, kg = 1 - kr - kb;
  gboolean full = range == VMOE_YUV_RANGE_FULL;
  /* Limited range maps Y 16..235 and chroma 16..240 onto 0..255 and
   * -127.5..127.5; full range is already there. */
  double y_scale = full ? 1 : 255.0 / 219, c_scale = full ? 1 : 255.0 / 224;
  *out = (VmoeYuvCoefficients) {
    .y_offset = full ? 0 : 16, .y_scale = (float) y_scale,
    .r_v = (float) (2 * (1 - kr) * c_scale),
    .g_u = (float) (2 * kb * (1 - kb) / kg * c_scale),
    .g_v = (float) (2 * kr * (1 - kr) / kg * c_scale),
    .b_u = (float) (2 * (1 - kb) * c_scale) };
  return TRUE;
}
