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
  /* One slice per thread: more, smaller ones taken as threads get free
   * (meant to let a thread that lost its core to another process hold up a
   * phase by less than its share) were slower with a core kept busy as
   * well as on free cores, at batch 1 and 8 (2 and 4 per thread). */
  slices = MAX (MIN (slices, rows / SLICE_ROW_ALIGN), 2);
  RowsJob job = { cpu, arg, func, rows, slices };
  vmoe_workers_run (cpu->workers, slices, rows_slice, &job);
}
