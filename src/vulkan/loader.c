/* The Vulkan loader, opened at run time so that a machine without
 * libvulkan gets a GError instead of a library that fails to load; the one
 * Vulkan instance of the process; the table of Vulkan functions a session
 * calls; and the text of Vulkan's error codes. */
#include "vk-internal.h"

#include <dlfcn.h>
#include <pthread.h>

PFN_vkGetInstanceProcAddr
vmoe_vk_loader (GError **error)
{
  static gsize once = 0;
  static PFN_vkGetInstanceProcAddr get_proc;
  static char *why;
  if (g_once_init_enter (&once)) {
    /* VMOE_VULKAN_LOADER names another loader (tests use a missing one). */
    const char *path = g_getenv ("VMOE_VULKAN_LOADER");
    void *lib = dlopen (path ? path : "libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib)
      get_proc = (PFN_vkGetInstanceProcAddr) dlsym (lib, "vkGetInstanceProcAddr");
    else
      why = g_strdup (dlerror ());
    g_once_init_leave (&once, 1);
  }
  if (!get_proc)
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: no Vulkan loader (libvulkan.so.1): %s; install libvulkan1 "
        "and a driver, or use backend cpu", why ? why : "no vkGetInstanceProcAddr");
  return get_proc;
}

const char *
vmoe_vk_result_text (VkResult r)
{
  switch (r) {
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "out of host memory";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "out of device memory";
    case VK_ERROR_DEVICE_LOST: return "the device was lost";
    case VK_ERROR_INITIALIZATION_FAILED: return "initialization failed";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "incompatible driver";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "a feature is not present";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "an extension is not present";
    case VK_ERROR_TOO_MANY_OBJECTS: return "too many objects";
    case VK_TIMEOUT: return "timed out";
    default: return "error";
  }
}

gboolean
vmoe_vk_check (VkResult r, const char *what, GError **error)
{
  if (r == VK_SUCCESS)
    return TRUE;
  g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND, "vulkan: %s failed: %s (%d)",
      what, vmoe_vk_result_text (r), (int) r);
  return FALSE;
}

/* One Vulkan instance for the process, made on first use and kept: each
 * session makes its own device from it.  Keeping it keeps the drivers
 * loaded, so that probing for a GPU (backend auto) costs one instance per
 * process, and so that LeakSanitizer can still name a driver's one-time
 * allocations at exit (tests/lsan.supp). */
static volatile gboolean forked_after_init;

static void
mark_forked_child (void)
{
  forked_after_init = TRUE;
}

VkInstance
vmoe_vk_shared_instance (PFN_vkGetInstanceProcAddr get_proc, GError **error)
{
  static gsize once = 0;
  static VkInstance instance = VK_NULL_HANDLE;
  static VkResult result = VK_ERROR_INITIALIZATION_FAILED;
  if (forked_after_init) {
    /* The driver's threads and device state did not come along. */
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: this process was forked after Vulkan was set up in its "
        "parent; Vulkan sessions must be made before forking or in a fresh process");
    return VK_NULL_HANDLE;
  }
  if (g_once_init_enter (&once)) {
    pthread_atfork (NULL, NULL, mark_forked_child);
    PFN_vkCreateInstance create_instance =
        (PFN_vkCreateInstance) get_proc (NULL, "vkCreateInstance");
    VkApplicationInfo app = { .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
      .pApplicationName = "vmoe", .pEngineName = "libvmoe",
      .apiVersion = VK_API_VERSION_1_1 };
    VkInstanceCreateInfo info = { .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
      .pApplicationInfo = &app };
    if (create_instance)
      result = create_instance (&info, NULL, &instance);
    g_once_init_leave (&once, 1);
  }
  if (!vmoe_vk_check (result, "creating a Vulkan 1.1 instance", error))
    return VK_NULL_HANDLE;
  return instance;
}

gboolean
vmoe_vk_load_functions (VmoeVulkan *vk, PFN_vkGetInstanceProcAddr get_proc,
    GError **error)
{
#define LOAD(name) \
  vk->fn.name = (PFN_##name) get_proc (vk->instance, #name); \
  if (!vk->fn.name) { \
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND, \
        "vulkan: the loader lacks %s", #name); \
    return FALSE; \
  }
  VMOE_VK_INSTANCE_FUNCS (LOAD)
#undef LOAD
  return TRUE;
}
