/* The machine's OpenBLAS sgemm rate on one GEMM shape, the yardstick of
 * bench/cpu_vs_torch.py.  Prints one JSON object.
 *
 *   vmoe-sgemm M N K [SECONDS]   (C[M,N] = A[M,K] B[K,N], as y = x W^T) */
#include <cblas.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>

int
main (int argc, char **argv)
{
  if (argc < 4) {
    fprintf (stderr, "usage: vmoe-sgemm M N K [SECONDS]\n");
    return 1;
  }
  int m = atoi (argv[1]), n = atoi (argv[2]), k = atoi (argv[3]);
  double seconds = argc > 4 ? g_ascii_strtod (argv[4], NULL) : 3.0;
  if (m < 1 || n < 1 || k < 1 || !(seconds > 0)) {
    fprintf (stderr, "vmoe-sgemm: M, N, K and SECONDS must be positive\n");
    return 1;
  }
  float *a = g_new (float, (size_t) m * k), *w = g_new (float, (size_t) n * k);
  float *c = g_new (float, (size_t) m * n);
  for (size_t i = 0; i < (size_t) m * k; i++)
    a[i] = (float) (i % 7) * 0.1f;
  for (size_t i = 0; i < (size_t) n * k; i++)
    w[i] = (float) (i % 5) * 0.1f;
  /* Same call the engine makes: row-major x times transposed weights. */
  cblas_sgemm (CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1, a, k, w, k, 0, c, n);
  gint64 start = g_get_monotonic_time ();
  long calls = 0;
  double elapsed;
  do {
    cblas_sgemm (CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1, a, k, w, k, 0, c, n);
    calls++;
    elapsed = (g_get_monotonic_time () - start) / 1e6;
  } while (elapsed < seconds);
  printf ("{\"m\": %d, \"n\": %d, \"k\": %d, \"gflops\": %.3f}\n", m, n, k,
      2.0 * m * n * k * calls / elapsed / 1e9);
  g_free (a);
  g_free (w);
  g_free (c);
  return 0;
}
