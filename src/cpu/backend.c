/* The CPU backend behind the backend interface: the forward pass of forward.c,
 * plus pre-processing of 8-bit frames into the float input it takes (the
 * Vulkan backend does that step in a shader instead). */
#include "cpu.h"

typedef struct {
  VmoeCpu *cpu;
  const VmoeConfig *config;   /* the model's, which the VmoeCpu keeps alive */
  float *input;               /* [N, C, H, W] for the 8-bit path; made on first use */
  int input_images;           /* images `input` holds */
} VmoeCpuBackend;

void *
vmoe_cpu_backend_open (VmoeModel *model, VmoeRoutingParams routing,
    const VmoeSessionOptions *options, gboolean automatic, GError **error)
{
  (void) automatic;
  VmoeCpu *cpu = vmoe_cpu_new (model, routing, options->threads,
      options->precision, error);
  if (!cpu)
    return NULL;
  VmoeCpuBackend *backend = g_new0 (VmoeCpuBackend, 1);
  backend->cpu = cpu;
  backend->config = &model->config;
  vmoe_cpu_reserve (backend->cpu, 1);
  return backend;
}

static void
cpu_backend_free (void *impl)
{
  VmoeCpuBackend *backend = impl;
  vmoe_cpu_free (backend->cpu);
  g_free (backend->input);
  g_free (backend);
}

static gboolean
cpu_backend_forward_f32 (void *impl, const float *input, int n,
    VmoeRawOutput *out, GError **error)
{
  (void) error;
  VmoeCpuBackend *backend = impl;
  vmoe_cpu_forward (backend->cpu, input, n, out);
  return TRUE;
}

static gboolean
cpu_backend_forward_u8 (void *impl, const VmoeImage *images, int n,
    VmoeRawOutput *out, GError **error)
{
  VmoeCpuBackend *backend = impl;
  const VmoeConfig *c = backend->config;
  size_t per_image = vmoe_config_input_floats (c);
  if (backend->input_images < n) {
    g_free (backend->input);
    backend->input = g_new (float, per_image * n);
    backend->input_images = n;
  }
  for (int i = 0; i < n; i++)
    if (!vmoe_preprocess_image (c, &images[i], i, backend->input + i * per_image, error))
      return FALSE;
  return cpu_backend_forward_f32 (impl, backend->input, n, out, error);
}

static const char *
cpu_backend_device_name (void *impl)
{
  (void) impl;
  return "cpu";
}

const VmoeBackendOps vmoe_cpu_backend_ops = {
  .kind = VMOE_BACKEND_CPU,
  .forward_f32 = cpu_backend_forward_f32,
  .forward_u8 = cpu_backend_forward_u8,
  .device_name = cpu_backend_device_name,
  .free = cpu_backend_free,
};
