/* Splitting a phase's token rows over the session's threads (pass.h). */
#include "pass.h"

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
  /* As evenly as can be: slices of two sizes at most, which the oneDNN
   * path has a primitive each for where the rows are an image's tokens and
   * the slices all the cores (gemm-onednn.c).  Starts on multiples of its
   * smallest chunk, which left only the last slice a padded tail, made the
   * last thread's share 5% larger on 2 cores (101 of 197 rows). */
  return (int) ((gint64) job->rows * index / job->slices);
}

static void
rows_slice (void *data, int index, int thread)
{
  const RowsJob *job = data;
  int first = slice_start (job, index);
  int end = slice_start (job, index + 1);
  if (end > first)
    job->func (job->cpu, job->arg, first, end - first, thread);
}

void
vmoe_cpu_run_on_rows (VmoeCpu *cpu, int rows, double fmas_per_row,
    VmoeRowsFunc func, const void *arg)
{
  int threads = vmoe_workers_threads (cpu->workers);
  int slices = (int) MIN (threads, rows * fmas_per_row / VMOE_CPU_MIN_SLICE_FMAS);
  if (slices <= 1) {
    func (cpu, arg, 0, rows, 0);
    return;
  }
  /* One slice per thread: more, smaller ones taken as threads get free
   * (meant to let a thread that lost its core to another process hold up a
   * phase by less than its share) were slower with a core kept busy as
   * well as on free cores, at batch 1 and 8 (2 and 4 per thread). */
  slices = MAX (MIN (slices, rows), 2);
  RowsJob job = { cpu, arg, func, rows, slices };
  vmoe_workers_run (cpu->workers, slices, rows_slice, &job);
}
