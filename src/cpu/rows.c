/* Splitting a phase's token rows over the session's threads (pass.h). */
#include "pass.h"

typedef struct {
  VmoeCpu *cpu;
  const void *arg;
  VmoeRowsFunc func;
  int rows, slices;
} RowsJob;

static void
rows_slice (void *data, int index, int thread)
{
  const RowsJob *job = data;
  int first = (int) ((gint64) job->rows * index / job->slices);
  int end = (int) ((gint64) job->rows * (index + 1) / job->slices);
  job->func (job->cpu, job->arg, first, end - first, job->cpu->gemm[thread]);
}

void
vmoe_cpu_run_on_rows (VmoeCpu *cpu, int rows, double fmas_per_row,
    VmoeRowsFunc func, const void *arg)
{
  int slices = (int) MIN (vmoe_workers_threads (cpu->workers),
      rows * fmas_per_row / VMOE_CPU_MIN_SLICE_FMAS);
  if (slices <= 1) {
    func (cpu, arg, 0, rows, cpu->gemm[0]);
    return;
  }
  RowsJob job = { cpu, arg, func, rows, slices };
  vmoe_workers_run (cpu->workers, slices, rows_slice, &job);
}
