/* Splitting a phase's token rows over the session's threads (pass.h). */
#include "pass.h"

/* Slices start on multiples of this many rows, the GEMM path's smallest
 * whole chunk, so that only the last slice of a phase has a padded tail. */
#define SLICE_ROW_ALIGN 8

typedef struct {
  VmoeCpu *cpu;
  const void *arg;
  VmoeRowsFunc func;
  int rows, slices;
} RowsJob;

static int
slice_start (const RowsJob *job, int index)
{
  if (index >= job->slices)
    return job->rows;
  int start = (int) ((gint64) job->rows * index / job->slices);
  return start - start % SLICE_ROW_ALIGN;
}

static void
rows_slice (void *data, int index, int thread)
{
  const RowsJob *job = data;
  int first = slice_start (job, index);
  int end = slice_start (job, index + 1);
  if (end > first)
    job->func (job->cpu, job->arg, first, end - first, job->cpu->gemm[thread]);
}

static int
slices_per_thread (void)
{
  static int per_thread;
  if (!g_atomic_int_get (&per_thread)) {
    const char *env = g_getenv ("VMOE_CPU_SLICES_PER_THREAD");
    g_atomic_int_set (&per_thread, env ? CLAMP (atoi (env), 1, 64) : 1);
  }
  return g_atomic_int_get (&per_thread);
}

void
vmoe_cpu_run_on_rows (VmoeCpu *cpu, int rows, double fmas_per_row,
    VmoeRowsFunc func, const void *arg)
{
  int threads = vmoe_workers_threads (cpu->workers);
  int slices = (int) MIN (threads, rows * fmas_per_row / VMOE_CPU_MIN_SLICE_FMAS);
  if (slices <= 1) {
    func (cpu, arg, 0, rows, cpu->gemm[0]);
    return;
  }
  /* More slices than threads, taken as each thread gets free, let a thread
   * that lost its core to another process (a decoder) hold up the phase by
   * less than its whole share. */
  slices = MIN (slices * slices_per_thread (), (int) (rows * fmas_per_row
          / VMOE_CPU_MIN_SLICE_FMAS));
  slices = MAX (MIN (slices, rows / SLICE_ROW_ALIGN), 2);
  RowsJob job = { cpu, arg, func, rows, slices };
  vmoe_workers_run (cpu->workers, slices, rows_slice, &job);
}
