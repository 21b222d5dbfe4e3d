// The one descriptor-set layout every vmoe pipeline shares (docs/design.md,
// Backends): each buffer is a large pool and every op finds its tensors by
// element offsets passed in push constants.
#extension GL_GOOGLE_include_directive : require

layout(std430, set = 0, binding = 0) readonly buffer Weights { float W[]; };
layout(std430, set = 0, binding = 1) buffer Activations { float A[]; };
layout(std430, set = 0, binding = 2) buffer Integers { int I[]; };
layout(std430, set = 0, binding = 3) readonly buffer Frames { uint B[]; };

// An offset that names no tensor (an absent bias).
const uint NONE = 0xffffffffu;

// Workgroups beyond 65535 in x spill into y (the guaranteed minimum limit).
uint flat_group_id()
{
  return gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
}
