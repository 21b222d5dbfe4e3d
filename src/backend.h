/* The interface between a session and the backend that runs its forward
 * pass.  A session holds one VmoeBackendInstance and calls it through the
 * ops table, so it knows no backend by name; vmoe_backend_open picks the
 * backend the options ask for (auto falls back to the CPU).  Each backend
 * owns its device state and workspace; the session owns the raw-output
 * buffers and turns them into results. */
#ifndef VMOE_BACKEND_H
#define VMOE_BACKEND_H

#include "vmoe-private.h"

/* What a backend computes for a batch of n images; sized by the session.
 * M is the model's ensemble_members (1 without E3); member m of image i is
 * row i*M + m, and its experts are [m*E/M, (m+1)*E/M).  The session turns
 * the members' logits into the ensemble's. */
typedef struct {
  float *logits;              /* [n, M, num_classes]: each member's */
  int *experts;               /* [n, M, k] image routing, global indices */
  float *gates;               /* [n, M, k] */
  int *tokens_per_expert;     /* [n, n_moe_layers, M, E/M] token routing */
  int *dropped;               /* [n, n_moe_layers, M] */
} VmoeRawOutput;

/* Routing as a session runs it: the model's, or the caller's overrides. */
typedef struct {
  int top_k;
  double capacity_ratio;
} VmoeRoutingParams;

/* `impl` is the backend's own state (VmoeCpuBackend, VmoeVulkan).  The
 * forward functions grow the backend's workspace to n images as needed. */
typedef struct {
  VmoeBackend kind;
  gboolean (*forward_f32) (void *impl, const float *input, int n,
      VmoeRawOutput *out, GError **error);
  gboolean (*forward_u8) (void *impl, const VmoeImage *images, int n,
      VmoeRawOutput *out, GError **error);
  const char *(*device_name) (void *impl);
  void (*free) (void *impl);
} VmoeBackendOps;

typedef struct {
  const VmoeBackendOps *ops;
  void *impl;
} VmoeBackendInstance;

/* Opens a backend of one kind; `automatic` says the caller asked for auto,
 * where a backend may decline (a CPU-only Vulkan device) and the next one
 * is tried.  Returns the backend's state, or NULL with `error` set. */
typedef void *(*VmoeBackendOpenFunc) (VmoeModel *model, VmoeRoutingParams routing,
    const VmoeSessionOptions *options, gboolean automatic, GError **error);

/* Opens the backend options->backend names: cpu, vulkan, or auto (Vulkan on
 * a GPU when built in, else the CPU, quietly). */
gboolean vmoe_backend_open (VmoeModel *model, VmoeRoutingParams routing,
    const VmoeSessionOptions *options, VmoeBackendInstance *backend, GError **error);
void vmoe_backend_close (VmoeBackendInstance *backend);

/* The backends, each in its own files. */
extern const VmoeBackendOps vmoe_cpu_backend_ops;
void *vmoe_cpu_backend_open (VmoeModel *model, VmoeRoutingParams routing,
    const VmoeSessionOptions *options, gboolean automatic, GError **error);
#ifdef VMOE_HAVE_VULKAN
extern const VmoeBackendOps vmoe_vulkan_backend_ops;
void *vmoe_vulkan_backend_open (VmoeModel *model, VmoeRoutingParams routing,
    const VmoeSessionOptions *options, gboolean automatic, GError **error);
#endif

#endif
