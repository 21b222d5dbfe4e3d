/* A fork-join pool for the CPU backend's own loops (attention), which do not
 * go through OpenBLAS and would otherwise run on one core. */
#ifndef VMOE_WORKERS_H
#define VMOE_WORKERS_H

#include <glib.h>

typedef struct VmoeWorkers VmoeWorkers;

/* Runs item (data, index, thread) for each index in [0, n_items); thread is
 * the slot, in [0, threads), of whoever runs it, for per-thread scratch. */
typedef void (*VmoeWorkFunc) (void *data, int index, int thread);

/* threads counts the caller, so 1 (or less) starts no thread at all. */
VmoeWorkers *vmoe_workers_new (int threads);
void vmoe_workers_free (VmoeWorkers *workers);
int vmoe_workers_threads (const VmoeWorkers *workers);
/* Returns when every item has run.  NULL workers run them all in the
 * caller.  One run at a time per pool (a pool belongs to one session). */
void vmoe_workers_run (VmoeWorkers *workers, int n_items, VmoeWorkFunc func,
    void *data);
/* Runs so far that went to the pool's threads (not run serially). */
unsigned vmoe_workers_runs (const VmoeWorkers *workers);
/* Nanoseconds the pool's threads, the calling thread as its caller, have
 * spent runnable but queued for a core (the kernel's schedstat), in all;
 * -1 without threads, or where the kernel does not say. */
gint64 vmoe_workers_queued_ns (const VmoeWorkers *workers);

#endif
