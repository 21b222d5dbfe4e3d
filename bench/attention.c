/* The CPU backend's attention alone at fp32 and at bf16 (docs/cpu.md,
 * "Precision: fp32 and bf16"), the two alternated call by call on the
 * calling thread, on the same random q, k, v, so that both see the same
 * machine.  Prints one JSON object per precision:
 *
 *   ms: the median wall time of a call;
 *   ms_on_cpu: the median of the thread's own CPU time per call, which other
 *     processes sharing the cores lower far less than they lower ms.
 *
 *   vmoe-attention-bench [IMAGES [TOKENS DIM HEADS [CALLS]]]
 *
 * Defaults: 8 images of ViT-Tiny's attention (197 tokens, D = 192, 3
 * heads), 200 calls each.  bf16 is left out where it does not run. */
#include "cpu/attention.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double
thread_cpu_ms (void)
{
  struct timespec t;
  clock_gettime (CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int
compare_doubles (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

static double
median (double *values, int n)
{
  qsort (values, n, sizeof *values, compare_doubles);
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

static int
argument (int argc, char **argv, int i, int fallback)
{
  if (argc <= i)
    return fallback;
  int value = atoi (argv[i]);
  if (value <= 0) {
    fprintf (stderr, "vmoe-attention-bench: %s is not a positive count\n", argv[i]);
    exit (1);
  }
  return value;
}

int
main (int argc, char **argv)
{
  int images = argument (argc, argv, 1, 8), tokens = argument (argc, argv, 2, 197);
  int dim = argument (argc, argv, 3, 192), heads = argument (argc, argv, 4, 3);
  int calls = argument (argc, argv, 5, 200);
  if (dim % heads) {
    fprintf (stderr, "vmoe-attention-bench: DIM %d is not a multiple of HEADS %d\n",
        dim, heads);
    return 1;
  }
  int precisions = vmoe_attention_bf16_available () ? 2 : 1;
  const VmoePrecision precision[2] = { VMOE_PRECISION_FP32, VMOE_PRECISION_BF16 };
  size_t qkv_len = (size_t) images * tokens * 3 * dim;
  float *qkv = g_new (float, qkv_len);
  float *out = g_new (float, (size_t) images * tokens * dim);
  GRand *rand = g_rand_new_with_seed (1);
  for (size_t i = 0; i < qkv_len; i++)
    qkv[i] = (float) g_rand_double_range (rand, -2, 2);
  g_rand_free (rand);
  float *scratch[2];
  double *ms[2], *ms_on_cpu[2];
  for (int p = 0; p < precisions; p++) {
    scratch[p] = g_new (float, vmoe_attention_scratch_len (images, tokens, dim,
            heads, 1, precision[p]));
    ms[p] = g_new (double, calls);
    ms_on_cpu[p] = g_new (double, calls);
  }
  for (int c = -1; c < calls; c++)        /* call -1 warms up */
    for (int p = 0; p < precisions; p++) {
      gint64 start = g_get_monotonic_time ();
      double start_on_cpu = thread_cpu_ms ();
      vmoe_attention_forward (out, qkv, scratch[p], NULL, images, tokens, dim,
          heads, precision[p]);
      if (c >= 0) {
        ms[p][c] = (g_get_monotonic_time () - start) / 1e3;
        ms_on_cpu[p][c] = thread_cpu_ms () - start_on_cpu;
      }
    }
  for (int p = 0; p < precisions; p++) {
    printf ("{\"precision\": \"%s\", \"images\": %d, \"tokens\": %d, \"dim\": %d, "
        "\"heads\": %d, \"calls\": %d, \"ms\": %.3f, \"ms_on_cpu\": %.3f}\n",
        vmoe_precision_name (precision[p]), images, tokens, dim, heads, calls,
        median (ms[p], calls), median (ms_on_cpu[p], calls));
    g_free (scratch[p]), g_free (ms[p]), g_free (ms_on_cpu[p]);
  }
  g_free (out), g_free (qkv);
  return 0;
}
