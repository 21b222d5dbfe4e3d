/* Backend selection: which backends this libvmoe has, how each is named,
 * and the auto fallback.  The one place that knows whether Vulkan is built
 * in; the session only sees the ops table it is handed. */
#include "backend.h"

#include <string.h>

typedef struct {
  VmoeBackend kind;
  const char *name;
  const VmoeBackendOps *ops;      /* NULL: not built into this libvmoe */
  VmoeBackendOpenFunc open;
} BackendEntry;

/* In the order auto tries them. */
static const BackendEntry backends[] = {
#ifdef VMOE_HAVE_VULKAN
  { VMOE_BACKEND_VULKAN, "vulkan", &vmoe_vulkan_backend_ops, vmoe_vulkan_backend_open },
#else
  { VMOE_BACKEND_VULKAN, "vulkan", NULL, NULL },
#endif
  { VMOE_BACKEND_CPU, "cpu", &vmoe_cpu_backend_ops, vmoe_cpu_backend_open },
};

const char *
vmoe_backend_name (VmoeBackend backend)
{
  for (guint i = 0; i < G_N_ELEMENTS (backends); i++)
    if (backends[i].kind == backend)
      return backends[i].name;
  return "auto";
}

gboolean
vmoe_backend_from_string (const char *name, VmoeBackend *backend)
{
  static const VmoeBackend all[] = { VMOE_BACKEND_AUTO, VMOE_BACKEND_CPU,
    VMOE_BACKEND_VULKAN };
  for (guint i = 0; name && i < G_N_ELEMENTS (all); i++) {
    if (strcmp (name, vmoe_backend_name (all[i])) == 0) {
      *backend = all[i];
      return TRUE;
    }
  }
  return FALSE;
}

const char *
vmoe_precision_name (VmoePrecision precision)
{
  return precision == VMOE_PRECISION_BF16 ? "bf16" : "fp32";
}

gboolean
vmoe_precision_from_string (const char *name, VmoePrecision *precision)
{
  static const VmoePrecision all[] = { VMOE_PRECISION_FP32, VMOE_PRECISION_BF16 };
  for (guint i = 0; name && i < G_N_ELEMENTS (all); i++) {
    if (strcmp (name, vmoe_precision_name (all[i])) == 0) {
      *precision = all[i];
      return TRUE;
    }
  }
  return FALSE;
}

gboolean
vmoe_backend_open (VmoeModel *model, VmoeRoutingParams routing,
    const VmoeSessionOptions *options, VmoeBackendInstance *backend, GError **error)
{
  gboolean automatic = options->backend == VMOE_BACKEND_AUTO;
  GError *last_why = NULL;        /* auto: why the last backend tried declined */
  for (guint i = 0; i < G_N_ELEMENTS (backends); i++) {
    const BackendEntry *entry = &backends[i];
    if (!automatic && entry->kind != options->backend)
      continue;
    if (!entry->ops) {
      if (automatic)
        continue;
      g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
          "the %s backend is not built into this libvmoe; use backend cpu",
          entry->name);
      return FALSE;
    }
    GError *why = NULL;
    void *impl = entry->open (model, routing, options, automatic,
        automatic ? &why : error);
    if (impl) {
      g_clear_error (&last_why);
      *backend = (VmoeBackendInstance) { entry->ops, impl };
      return TRUE;
    }
    if (!automatic)
      return FALSE;
    g_debug ("backend auto passes over %s: %s", entry->name, why->message);
    g_clear_error (&last_why);
    last_why = why;
  }
  /* auto ends with the CPU, whose refusal (a precision it cannot run) is
   * what the caller needs to read. */
  if (last_why)
    g_propagate_error (error, last_why);
  else
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "no backend named %d in this libvmoe", (int) options->backend);
  return FALSE;
}

void
vmoe_backend_close (VmoeBackendInstance *backend)
{
  if (backend->impl)
    backend->ops->free (backend->impl);
  *backend = (VmoeBackendInstance) { 0 };
}
