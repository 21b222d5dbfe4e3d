/* The profiler ($VMOE_VULKAN_PROFILE): timestamps around each dispatch
 * of the latest recorded batch shape, summed per shader and printed after
 * each call as running means.  Off unless asked for; costs nothing then. */
#include "vk-internal.h"

#include <string.h>

/* Adds the last call's GPU time per shader (profiling only) and prints the
 * running means to stderr. */
void
vmoe_vk_profile_report (VmoeVulkan *vk, int n)
{
  if (!vk->queries || !vk->n_queries)
    return;
  guint64 *stamps = g_new (guint64, 2 * vk->n_queries);
  if (vk->fn.vkGetQueryPoolResults (vk->device, vk->queries, 0, 2 * vk->n_queries,
          2 * vk->n_queries * sizeof (guint64), stamps, sizeof (guint64),
          VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT) == VK_SUCCESS) {
    static const char *names[VMOE_N_SHADERS] = { "gemm", "gemm", "layernorm",
      "attention", "attention-online", "embed", "pool", "route", "experts",
      "preprocess" };
    double total = 0;
    vk->profile_calls++;
    for (uint32_t q = 0; q < vk->n_queries; q++)
      vk->profile_ms[vk->query_shader[q]] += (stamps[2 * q + 1] - stamps[2 * q])
          * (double) vk->props.limits.timestampPeriod / 1e6;
    for (int s = 0; s < VMOE_N_SHADERS; s++)
      total += vk->profile_ms[s];
    GString *line = g_string_new (NULL);
    for (int s = 0; s < VMOE_N_SHADERS; s++)
      if (vk->profile_ms[s] > 0)
        g_string_append_printf (line, " %s %.3f ms (%.0f%%)", names[s],
            vk->profile_ms[s] / vk->profile_calls, 100 * vk->profile_ms[s] / total);
    g_printerr ("vmoe vulkan profile, batch %d, mean of %d calls: dispatches %.3f ms:%s\n",
        n, vk->profile_calls, total / vk->profile_calls, line->str);
    g_string_free (line, TRUE);
  }
  g_free (stamps);
}

void
vmoe_vk_profiler_start (VmoeVulkan *vk)
{
  if (!g_getenv ("VMOE_VULKAN_PROFILE") || !vk->props.limits.timestampComputeAndGraphics)
    return;
  VkQueryPoolCreateInfo qinfo = { .sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
    .queryType = VK_QUERY_TYPE_TIMESTAMP, .queryCount = 2 * VMOE_VK_MAX_PROFILED };
  if (vk->fn.vkCreateQueryPool (vk->device, &qinfo, NULL, &vk->queries) == VK_SUCCESS)
    vk->query_shader = g_new0 (VmoeShader, VMOE_VK_MAX_PROFILED);
  else
    vk->queries = VK_NULL_HANDLE;
}
