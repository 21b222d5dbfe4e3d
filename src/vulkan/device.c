/* Device choice: which physical device a session takes (a GPU, discrete
 * first, unless a CPU device, an index or part of a name is asked for) and
 * the logical device with its compute queue and the features it needs. */
#include "vk-internal.h"

#include <stdlib.h>
#include <string.h>

static gboolean
is_cpu_device (const VkPhysicalDeviceProperties *p)
{
  return p->deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
}

static int
type_rank (VkPhysicalDeviceType type)
{
  switch (type) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 0;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 1;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_OTHER: return 3;
    default: return 4;        /* CPU: only when named */
  }
}

gboolean
vmoe_vk_choose_device (VmoeVulkan *vk, const char *request, gboolean gpu_only, GError **error)
{
  uint32_t count = 0;
  VkResult r = vk->fn.vkEnumeratePhysicalDevices (vk->instance, &count, NULL);
  if (!vmoe_vk_check (r, "listing devices", error))
    return FALSE;
  VkPhysicalDevice *devices = g_new0 (VkPhysicalDevice, MAX (count, 1));
  r = vk->fn.vkEnumeratePhysicalDevices (vk->instance, &count, devices);
  if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
    g_free (devices);
    return vmoe_vk_check (r, "listing devices", error);
  }
  gboolean by_index = request && *request && strspn (request, "0123456789") == strlen (request);
  gboolean want_cpu = request && g_ascii_strcasecmp (request, "cpu") == 0;
  gboolean automatic = !request || !*request || g_ascii_strcasecmp (request, "auto") == 0;
  int best = -1, best_rank = 5;
  GString *seen = g_string_new (NULL);
  for (uint32_t d = 0; d < count; d++) {
    VkPhysicalDeviceProperties p;
    vk->fn.vkGetPhysicalDeviceProperties (devices[d], &p);
    g_string_append_printf (seen, "%s%u: %s%s", d ? ", " : "", d, p.deviceName,
        is_cpu_device (&p) ? " (CPU)" : "");
    int rank = type_rank (p.deviceType);
    gboolean match;
    if (automatic)
      match = !is_cpu_device (&p);
    else if (by_index)
      match = d == (uint32_t) atoi (request);
    else if (want_cpu)
      match = is_cpu_device (&p);
    else {
      char *name = g_ascii_strdown (p.deviceName, -1), *part = g_ascii_strdown (request, -1);
      match = strstr (name, part) != NULL;
      g_free (name);
      g_free (part);
    }
    if (match && (best < 0 || (automatic && rank < best_rank))) {
      best = (int) d;
      best_rank = rank;
    }
  }
  if (best >= 0) {
    vk->physical = devices[best];
    VkPhysicalDeviceMaintenance3Properties maintenance3 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES };
    VkPhysicalDeviceProperties2 props2 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &maintenance3 };
    vk->fn.vkGetPhysicalDeviceProperties2 (vk->physical, &props2);
    vk->props = props2.properties;
    vk->max_allocation = maintenance3.maxMemoryAllocationSize;
    if (gpu_only && is_cpu_device (&vk->props))
      best = -1;
  }
  if (best < 0)
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: no %s device%s%s (devices: %s)%s",
        automatic || gpu_only ? "GPU" : "matching", automatic ? "" : " for ",
        automatic ? "" : request, count ? seen->str : "none",
        automatic ? "; set VMOE_VULKAN_DEVICE=cpu to run on a CPU device" : "");
  g_string_free (seen, TRUE);
  g_free (devices);
  return best >= 0;
}

gboolean
vmoe_vk_create_device (VmoeVulkan *vk, GError **error)
{
  uint32_t n_families = 0;
  vk->fn.vkGetPhysicalDeviceQueueFamilyProperties (vk->physical, &n_families, NULL);
  VkQueueFamilyProperties *families = g_new0 (VkQueueFamilyProperties, MAX (n_families, 1));
  vk->fn.vkGetPhysicalDeviceQueueFamilyProperties (vk->physical, &n_families, families);
  int family = -1;
  /* A compute queue without graphics first: it does not share time with
   * rendering on GPUs that have one. */
  for (uint32_t f = 0; f < n_families; f++) {
    gboolean compute = (families[f].queueFlags & VK_QUEUE_COMPUTE_BIT) != 0;
    gboolean graphics = (families[f].queueFlags & VK_QUEUE_GRAPHICS_BIT) != 0;
    if (compute && (family < 0 || !graphics))
      family = (int) f;
    if (compute && !graphics)
      break;
  }
  g_free (families);
  if (family < 0) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: device %s has no compute queue", vk->props.deviceName);
    return FALSE;
  }
  vk->queue_family = (uint32_t) family;

  VkPhysicalDevice16BitStorageFeatures storage16 = {
    .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES };
  VkPhysicalDeviceFeatures2 features = {
    .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &storage16 };
  vk->fn.vkGetPhysicalDeviceFeatures2 (vk->physical, &features);
  if (vk->fp16 && !storage16.storageBuffer16BitAccess) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: device %s lacks storageBuffer16BitAccess; fp16 weights need it",
        vk->props.deviceName);
    return FALSE;
  }
  VkPhysicalDevice16BitStorageFeatures enable16 = {
    .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES,
    .storageBuffer16BitAccess = vk->fp16 };
  float priority = 1.0f;
  VkDeviceQueueCreateInfo queue = { .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
    .queueFamilyIndex = vk->queue_family, .queueCount = 1, .pQueuePriorities = &priority };
  VkDeviceCreateInfo info = { .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
    .pNext = &enable16, .queueCreateInfoCount = 1, .pQueueCreateInfos = &queue };
  if (!vmoe_vk_check (vk->fn.vkCreateDevice (vk->physical, &info, NULL, &vk->device),
          "creating the device", error))
    return FALSE;
  vk->fn.vkGetDeviceQueue (vk->device, vk->queue_family, 0, &vk->queue);
  vk->fn.vkGetPhysicalDeviceMemoryProperties (vk->physical, &vk->memory_props);
  return TRUE;
}
