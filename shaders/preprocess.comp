#version 450
// Pre-processing of 8-bit frames on the GPU (docs/design.md, Forward pass step
// 1), the same computation as src/preprocess.c: each output pixel of the
// crop samples the virtual resized frame bilinearly (half-pixel centres),
// converting its four source pixels to the model's channels (YUV to 8-bit
// RGB first, with the frame's coefficients from src/yuv-encoding.c), then
// normalises.  The raw frame planes sit in the byte buffer; per-image
// geometry, pixel layout (the table in src/pixel-format.c) and YUV
// coefficients in the integer buffer.  A region is sampled in place:
// source indices are clamped to the crop (P_WIDTH x P_HEIGHT), and pixels
// read at their frame coordinates (crop + P_ORIGIN), so YUV chroma is the
// frame's own.
#include "common.glsl"
layout(local_size_x = 16, local_size_y = 16) in;

// Pixel kinds: the values of VmoePixelKind.
const int KIND_GRAY = 0, KIND_RGB = 1, KIND_YUV = 2;
// Layout of one image's parameters in I (FRAME_PARAMS ints each), as
// VMOE_FRAME_* in src/vulkan/vk-push.h.
const uint P_KIND = 0u, P_WIDTH = 1u, P_HEIGHT = 2u, P_PLANE = 3u,
           P_STRIDE = 6u, P_TOP = 9u, P_LEFT = 10u, P_SCALE_Y = 11u,
           P_SCALE_X = 12u, P_IDENTITY = 13u, P_BYTES_PER_PIXEL = 14u,
           P_RED = 15u, P_GREEN = 16u, P_BLUE = 17u, P_CHROMA_BYTES = 18u,
           P_U_PLANE = 19u, P_U_OFFSET = 20u, P_V_PLANE = 21u,
           P_V_OFFSET = 22u, P_ORIGIN_X = 23u, P_ORIGIN_Y = 24u,
           P_YUV_Y_OFFSET = 25u, P_YUV_Y_SCALE = 26u, P_YUV_R_V = 27u,
           P_YUV_G_U = 28u, P_YUV_G_V = 29u, P_YUV_B_U = 30u,
           FRAME_PARAMS = 31u;

layout(push_constant) uniform Params {
  uint params_off, out_off, height, width, channels;
  float mean0, mean1, mean2, std0, std1, std2;
} p;

uint frame_byte(uint offset)
{
  return (B[offset >> 2] >> ((offset & 3u) * 8u)) & 0xffu;
}

float clamp_round(float v)
{
  return v <= 0.0 ? 0.0 : v >= 255.0 ? 255.0 : floor(v + 0.5);
}

float param_float(uint prm, uint index)
{
  return intBitsToFloat(I[prm + index]);
}

vec3 yuv_to_rgb(uint prm, float y, float u, float v)
{
  float c = param_float(prm, P_YUV_Y_SCALE) * (y - param_float(prm, P_YUV_Y_OFFSET));
  float d = u - 128.0, e = v - 128.0;
  return vec3(clamp_round(c + param_float(prm, P_YUV_R_V) * e),
              clamp_round(c - param_float(prm, P_YUV_G_U) * d - param_float(prm, P_YUV_G_V) * e),
              clamp_round(c + param_float(prm, P_YUV_B_U) * d));
}

// The model-channel values of pixel (x, y) of the crop in [0, 1].
vec3 pixel_values(uint prm, uint cx, uint cy)
{
  uint x = cx + uint(I[prm + P_ORIGIN_X]), y = cy + uint(I[prm + P_ORIGIN_Y]);
  int kind = I[prm + P_KIND];
  uint plane0 = uint(I[prm + P_PLANE]), stride0 = uint(I[prm + P_STRIDE]);
  uint row = plane0 + y * stride0;
  vec3 rgb;
  if (kind == KIND_GRAY) {
    float g = float(frame_byte(row + x)) / 255.0;
    return vec3(g);
  } else if (kind == KIND_RGB) {
    uint o = row + uint(I[prm + P_BYTES_PER_PIXEL]) * x;
    rgb = vec3(frame_byte(o + uint(I[prm + P_RED])), frame_byte(o + uint(I[prm + P_GREEN])),
               frame_byte(o + uint(I[prm + P_BLUE])));
  } else {
    uint u_plane = uint(I[prm + P_U_PLANE]), v_plane = uint(I[prm + P_V_PLANE]);
    uint chroma = x / 2u * uint(I[prm + P_CHROMA_BYTES]);
    uint u = uint(I[prm + P_PLANE + u_plane]) + (y / 2u) * uint(I[prm + P_STRIDE + u_plane])
        + chroma + uint(I[prm + P_U_OFFSET]);
    uint v = uint(I[prm + P_PLANE + v_plane]) + (y / 2u) * uint(I[prm + P_STRIDE + v_plane])
        + chroma + uint(I[prm + P_V_OFFSET]);
    rgb = yuv_to_rgb(prm, float(frame_byte(row + x)), float(frame_byte(u)), float(frame_byte(v)));
  }
  if (p.channels == 1u)
    return vec3((0.299 * rgb.r + 0.587 * rgb.g + 0.114 * rgb.b) / 255.0);
  return rgb / 255.0;
}

void source_index(uint d, float scale, uint len, out uint i0, out uint i1, out float lambda)
{
  float s = max(scale * (float(d) + 0.5) - 0.5, 0.0);
  uint i = min(uint(s), len - 1u);
  i0 = i;
  i1 = i < len - 1u ? i + 1u : i;
  lambda = s - float(i);
}

void main()
{
  uint x = gl_GlobalInvocationID.x, y = gl_GlobalInvocationID.y, img = gl_WorkGroupID.z;
  if (x >= p.width || y >= p.height)
    return;
  uint prm = p.params_off + img * FRAME_PARAMS;
  uint top = uint(I[prm + P_TOP]), left = uint(I[prm + P_LEFT]);
  vec3 v;
  if (I[prm + P_IDENTITY] != 0) {
    v = pixel_values(prm, x + left, y + top);
  } else {
    uint x0, x1, y0, y1;
    float lx, ly;
    source_index(y + top, intBitsToFloat(I[prm + P_SCALE_Y]), uint(I[prm + P_HEIGHT]), y0, y1, ly);
    source_index(x + left, intBitsToFloat(I[prm + P_SCALE_X]), uint(I[prm + P_WIDTH]), x0, x1, lx);
    vec3 a = pixel_values(prm, x0, y0), b = pixel_values(prm, x1, y0);
    vec3 c = pixel_values(prm, x0, y1), d = pixel_values(prm, x1, y1);
    v = (1.0 - ly) * ((1.0 - lx) * a + lx * b) + ly * ((1.0 - lx) * c + lx * d);
  }
  vec3 mean = vec3(p.mean0, p.mean1, p.mean2), std_ = vec3(p.std0, p.std1, p.std2);
  uint plane = p.height * p.width;
  for (uint c = 0u; c < p.channels; c++)
    A[p.out_off + (img * p.channels + c) * plane + y * p.width + x] = (v[c] - mean[c]) / std_[c];
}
