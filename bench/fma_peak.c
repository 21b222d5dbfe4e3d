/* The machine's fp32 FMA peak, the yardstick of bench/cpu_vs_onnxruntime.py's
 * "share of peak": every thread runs chains of fused multiply-adds on
 * registers only (no loads or stores to wait for), with the CPU's widest
 * vectors (AVX-512, else AVX2 + FMA).  Prints one JSON object:
 *
 *   gflops: the rate reached, FLOPs over wall time, summed over the threads;
 *   gflops_on_cpu: FLOPs over each thread's own CPU time, summed: what the
 *     cores reach while they run the loop, the peak itself, which other
 *     processes sharing the cores lower far less than they lower gflops
 *     (with no more threads than cores: more would count a core twice).
 *
 *   vmoe-fma-peak [THREADS [SECONDS]]   (THREADS 0 or absent: one per core) */
#include <glib.h>
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

/* Twelve independent chains: enough to keep two FMA pipes of four cycles'
 * latency busy, few enough to stay in AVX2's sixteen registers beside the
 * two constants. */
#define CHAINS(X) X (0) X (1) X (2) X (3) X (4) X (5) X (6) X (7) X (8) X (9) X (10) X (11)
#define N_CHAINS 12
#define ROUNDS_PER_CHECK 100000

/* acc = acc * 0.999999 + 1e-6 settles near 1: no overflow and no denormals
 * to slow a pipe down, however long it runs.  The chains start apart so that
 * the compiler cannot merge them into one.  Each ISA's function defines
 * VEC_TYPE, VEC_SET1, VEC_FMADD and VEC_ADD for it. */
#define FMA_LOOP(VEC, REDUCE)                                                  \
  VEC mul = VEC_SET1 (0.999999f), add = VEC_SET1 (1e-6f);                      \
  CHAINS (DECLARE)                                                             \
  long rounds = 0;                                                             \
  gint64 start = g_get_monotonic_time (), now;                                 \
  do {                                                                         \
    for (int r = 0; r < ROUNDS_PER_CHECK; r++) {                               \
      CHAINS (STEP)                                                            \
    }                                                                          \
    rounds += ROUNDS_PER_CHECK;                                                \
    now = g_get_monotonic_time ();                                             \
  } while ((now - start) < seconds * 1e6);                                     \
  VEC sum = acc0;                                                              \
  CHAINS (SUM)                                                                 \
  *checksum = REDUCE (sum);                                                    \
  return 2.0 * N_CHAINS * (sizeof (VEC) / sizeof (float)) * rounds;

#define DECLARE(i) VEC_TYPE acc##i = VEC_SET1 ((float) (i) / N_CHAINS);
#define STEP(i) acc##i = VEC_FMADD (acc##i, mul, add);
#define SUM(i) sum = VEC_ADD (sum, acc##i);

__attribute__((target ("avx512f"))) static double
fma_flops_avx512 (double seconds, float *checksum)
{
#define VEC_TYPE __m512
#define VEC_SET1 _mm512_set1_ps
#define VEC_FMADD _mm512_fmadd_ps
#define VEC_ADD _mm512_add_ps
  FMA_LOOP (__m512, _mm512_reduce_add_ps)
#undef VEC_TYPE
#undef VEC_SET1
#undef VEC_FMADD
#undef VEC_ADD
}

__attribute__((target ("avx2,fma"))) static float
reduce_avx2 (__m256 v)
{
  float lanes[8];
  _mm256_storeu_ps (lanes, v);
  float s = 0;
  for (int i = 0; i < 8; i++)
    s += lanes[i];
  return s;
}

__attribute__((target ("avx2,fma"))) static double
fma_flops_avx2 (double seconds, float *checksum)
{
#define VEC_TYPE __m256
#define VEC_SET1 _mm256_set1_ps
#define VEC_FMADD _mm256_fmadd_ps
#define VEC_ADD _mm256_add_ps
  FMA_LOOP (__m256, reduce_avx2)
#undef VEC_TYPE
#undef VEC_SET1
#undef VEC_FMADD
#undef VEC_ADD
}

typedef struct {
  double seconds;
  gboolean avx512;
  double gflops, gflops_on_cpu;
  float checksum;
} Worker;

static double
thread_cpu_seconds (void)
{
  struct timespec t;
  clock_gettime (CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static gpointer
run_worker (gpointer data)
{
  Worker *w = data;
  gint64 start = g_get_monotonic_time ();
  double cpu_start = thread_cpu_seconds ();
  double flops = w->avx512 ? fma_flops_avx512 (w->seconds, &w->checksum)
                           : fma_flops_avx2 (w->seconds, &w->checksum);
  w->gflops_on_cpu = flops / (thread_cpu_seconds () - cpu_start) / 1e9;
  w->gflops = flops / ((g_get_monotonic_time () - start) / 1e6) / 1e9;
  return NULL;
}

int
main (int argc, char **argv)
{
  guint64 threads_arg = 0;
  double seconds = 1.0;
  char *end = NULL;
  if (argc > 2)
    seconds = g_ascii_strtod (argv[2], &end);
  if (argc > 3 || (argc > 1 && !g_ascii_string_to_unsigned (argv[1], 10, 0, 1024,
              &threads_arg, NULL)) || (end && *end) || !(seconds > 0 && seconds < 3600)) {
    fprintf (stderr, "usage: vmoe-fma-peak [THREADS (0 to 1024) [SECONDS (positive)]]\n");
    return 1;
  }
  int threads = (int) threads_arg;
  if (threads == 0)
    threads = (int) g_get_num_processors ();
  __builtin_cpu_init ();
  gboolean avx512 = __builtin_cpu_supports ("avx512f");
  if (!avx512 && !(__builtin_cpu_supports ("avx2") && __builtin_cpu_supports ("fma"))) {
    fprintf (stderr, "vmoe-fma-peak: this CPU has neither AVX-512 nor AVX2 with FMA\n");
    return 1;
  }
  Worker *workers = g_new0 (Worker, threads);
  GThread **handles = g_new (GThread *, threads);
  for (int i = 0; i < threads; i++) {
    workers[i] = (Worker) { .seconds = seconds, .avx512 = avx512 };
    handles[i] = g_thread_new ("fma-peak", run_worker, &workers[i]);
  }
  double total = 0, total_on_cpu = 0;
  GString *each = g_string_new (NULL), *each_on_cpu = g_string_new (NULL);
  for (int i = 0; i < threads; i++) {
    g_thread_join (handles[i]);
    total += workers[i].gflops;
    total_on_cpu += workers[i].gflops_on_cpu;
    g_string_append_printf (each, "%s%.3f", i ? ", " : "", workers[i].gflops);
    g_string_append_printf (each_on_cpu, "%s%.3f", i ? ", " : "", workers[i].gflops_on_cpu);
  }
  /* The checksum keeps the chains' results alive: every lane settles near 1. */
  printf ("{\"isa\": \"%s\", \"threads\": %d, \"gflops\": %.3f, \"gflops_on_cpu\": %.3f, "
      "\"per_thread\": [%s], \"per_thread_on_cpu\": [%s], \"checksum\": %.1f}\n",
      avx512 ? "avx512f" : "avx2+fma", threads, total, total_on_cpu, each->str,
      each_on_cpu->str, workers[0].checksum);
  g_string_free (each, TRUE);
  g_string_free (each_on_cpu, TRUE);
  g_free (handles);
  g_free (workers);
  return 0;
}
