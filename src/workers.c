/* Workers wait on a generation counter; a run bumps it, everyone (the caller
 * included) takes item indices from one atomic counter until none are left,
 * and the caller waits until the workers have let go of the run.  Items are
 * taken dynamically because their costs differ (the last block of query rows
 * is short). */
#include "workers.h"

#include <pthread.h>

/* A child forked from a process with a pool has none of the pool's threads:
 * its runs go serial instead of waiting forever for workers. */
static volatile gint forks_seen;

static void
count_fork_in_child (void)
{
  forks_seen++;
}

struct VmoeWorkers {
  int threads;                 /* including the caller */
  gint born_after_forks;       /* forks_seen when the threads started */
  GThread **thread;            /* threads - 1 */
  /* pthread's rather than GLib's: GMutex is a bare futex on Linux, which
   * race detectors (helgrind, TSan) cannot see as synchronisation. */
  pthread_mutex_t lock;
  pthread_cond_t start, finish;
  guint64 generation;
  gboolean quit;
  int busy;                    /* workers still inside the current run */
  int started;                 /* workers that reached their first wait */

  VmoeWorkFunc func;
  void *data;
  int n_items;
  gint next_item;
};

typedef struct {
  VmoeWorkers *pool;
  int slot;
} WorkerArg;

static void
take_items (VmoeWorkers *w, int slot)
{
  for (;;) {
    int index = g_atomic_int_add (&w->next_item, 1);
    if (index >= w->n_items)
      return;
    w->func (w->data, index, slot);
  }
}

static gpointer
worker_main (gpointer arg_ptr)
{
  WorkerArg *arg = arg_ptr;
  VmoeWorkers *w = arg->pool;
  int slot = arg->slot;
  g_free (arg);
  guint64 seen = 0;
  pthread_mutex_lock (&w->lock);
  w->started++;
  pthread_cond_signal (&w->finish);
  pthread_mutex_unlock (&w->lock);
  for (;;) {
    pthread_mutex_lock (&w->lock);
    while (w->generation == seen && !w->quit)
      pthread_cond_wait (&w->start, &w->lock);
    if (w->quit) {
      pthread_mutex_unlock (&w->lock);
      return NULL;
    }
    seen = w->generation;
    pthread_mutex_unlock (&w->lock);

    take_items (w, slot);

    pthread_mutex_lock (&w->lock);
    if (--w->busy == 0)
      pthread_cond_signal (&w->finish);
    pthread_mutex_unlock (&w->lock);
  }
}

VmoeWorkers *
vmoe_workers_new (int threads)
{
  static gsize fork_handler_set = 0;
  if (g_once_init_enter (&fork_handler_set)) {
    pthread_atfork (NULL, NULL, count_fork_in_child);
    g_once_init_leave (&fork_handler_set, 1);
  }
  VmoeWorkers *w = g_new0 (VmoeWorkers, 1);
  w->threads = MAX (threads, 1);
  w->born_after_forks = forks_seen;
  pthread_mutex_init (&w->lock, NULL);
  pthread_cond_init (&w->start, NULL);
  pthread_cond_init (&w->finish, NULL);
  w->thread = g_new0 (GThread *, w->threads);
  for (int i = 1; i < w->threads; i++) {
    WorkerArg *arg = g_new (WorkerArg, 1);
    arg->pool = w;
    arg->slot = i;
    GError *error = NULL;
    w->thread[i - 1] = g_thread_try_new ("vmoe-worker", worker_main, arg, &error);
    if (!w->thread[i - 1]) {
      /* The process is out of threads (a limit, or another process holding
       * thousands): run on the ones there are rather than abort. */
      g_debug ("vmoe: %d of %d worker threads: %s", i, w->threads, error->message);
      g_error_free (error);
      g_free (arg);
      w->threads = i;
      break;
    }
  }
  /* A thread's start-up (GLib's and the C library's per-thread set-up,
   * allocations included) is over before the pool is handed out: nothing
   * of it lands in the first runs. */
  pthread_mutex_lock (&w->lock);
  while (w->started < w->threads - 1)
    pthread_cond_wait (&w->finish, &w->lock);
  pthread_mutex_unlock (&w->lock);
  return w;
}

void
vmoe_workers_free (VmoeWorkers *w)
{
  if (!w)
    return;
  if (w->born_after_forks == forks_seen) {
    pthread_mutex_lock (&w->lock);
    w->quit = TRUE;
    pthread_cond_broadcast (&w->start);
    pthread_mutex_unlock (&w->lock);
    for (int i = 0; i < w->threads - 1; i++)
      g_thread_join (w->thread[i]);
    pthread_mutex_destroy (&w->lock);
    pthread_cond_destroy (&w->start);
    pthread_cond_destroy (&w->finish);
  }
  /* else a forked child: its copies of the threads never ran, so their
   * handles cannot be joined, and the condition variables still count the
   * parent's waiters, so destroying them would wait for ever. */
  g_free (w->thread);
  g_free (w);
}

int
vmoe_workers_threads (const VmoeWorkers *w)
{
  return w ? w->threads : 1;
}

void
vmoe_workers_run (VmoeWorkers *w, int n_items, VmoeWorkFunc func, void *data)
{
  if (!w || w->threads == 1 || n_items <= 1 || w->born_after_forks != forks_seen) {
    for (int i = 0; i < n_items; i++)
      func (data, i, 0);
    return;
  }
  pthread_mutex_lock (&w->lock);
  w->func = func;
  w->data = data;
  w->n_items = n_items;
  g_atomic_int_set (&w->next_item, 0);
  w->busy = w->threads - 1;
  w->generation++;
  pthread_cond_broadcast (&w->start);
  pthread_mutex_unlock (&w->lock);

  take_items (w, 0);

  pthread_mutex_lock (&w->lock);
  while (w->busy > 0)
    pthread_cond_wait (&w->finish, &w->lock);
  pthread_mutex_unlock (&w->lock);
}
