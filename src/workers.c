/* Workers wait on a generation counter; a run bumps it, everyone (the caller
 * included) takes item indices from one atomic counter until none are left,
 * and the caller waits until the workers have let go of the run.  Items are
 * taken dynamically because their costs differ (the last block of query rows
 * is short).
 *
 * Waiting spins for a while (VMOE_CPU_SPIN_US, 50 us by default) before it
 * sleeps on a condition variable: a forward pass meets its pool some forty
 * times per image, mostly less than a millisecond apart, and on a virtual
 * machine each futex sleep and wake-up costs tens of microseconds in the
 * kernel (13% of a ViT-Tiny batch-1 profile).  The spin is short so that a
 * core shared with another process (a decoder) is given up soon. */
#include "workers.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <immintrin.h>

/* The spin hands runs over through atomics, which helgrind does not model
 * as synchronisation; its client requests (no-ops outside valgrind) say
 * which store each load synchronises with. */
#if defined(__has_include)
#if __has_include(<valgrind/helgrind.h>)
#include <valgrind/helgrind.h>
#endif
#endif
#ifndef ANNOTATE_HAPPENS_BEFORE
#define ANNOTATE_HAPPENS_BEFORE(obj) ((void) 0)
#define ANNOTATE_HAPPENS_AFTER(obj) ((void) 0)
#endif

/* A child forked from a process with a pool has none of the pool's threads:
 * its runs go serial instead of waiting forever for workers. */
static volatile gint forks_seen;

/* Threads in all pools of the process, callers included.  Spinning pays
 * only while each pool thread has a core of its own: with more (several
 * sessions run at once, each with a pool of all cores) a spinning thread
 * keeps a thread of another pool off its core. */
static atomic_int pooled_threads;
static atomic_int cores;            /* set by the first pool */

static void
count_fork_in_child (void)
{
  forks_seen++;
}

/* Whether a thread's waits spin, decided anew every SPIN_GATE_WAITS waits:
 * not after a window in which the kernel took the thread off its core for
 * another (an involuntary context switch).  Where another process keeps a
 * core busy, a spinning thread holds up the very thread it waits for, which
 * is queued behind the spin for that core: with one core kept busy, spinning
 * made batch-1 passes 9% slower, where on free cores it made them 7%
 * faster. */
#define SPIN_GATE_WAITS 32

typedef struct {
  long switches;               /* the thread's involuntary ones, last seen */
  unsigned waits;
  gboolean open;
} SpinGate;

static gboolean
spin_gate_open (SpinGate *gate)
{
  if (gate->waits++ % SPIN_GATE_WAITS == 0) {
    struct rusage usage;
    getrusage (RUSAGE_THREAD, &usage);
    gate->open = usage.ru_nivcsw == gate->switches;
    gate->switches = usage.ru_nivcsw;
  }
  return gate->open;
}

struct VmoeWorkers {
  int threads;                 /* including the caller */
  gint born_after_forks;       /* forks_seen when the threads started */
  GThread **thread;            /* threads - 1 */
  pid_t *tids;                 /* [threads]: the workers' kernel thread ids
                                  ([0], the caller, varies) */
  unsigned runs;               /* runs that went to the threads */
  gint64 spin_ns;
  /* pthread's rather than GLib's: GMutex is a bare futex on Linux, which
   * race detectors (helgrind, TSan) cannot see as synchronisation. */
  pthread_mutex_t lock;
  pthread_cond_t start, finish;
  atomic_int generation;
  atomic_int busy;             /* workers still inside the current run */
  gboolean quit;               /* under lock, as the two below */
  int sleepers;                /* workers asleep on start */
  gboolean caller_asleep;      /* the caller asleep on finish */
  SpinGate caller_gate;        /* the caller's (one run at a time) */
  int started;                 /* workers that reached their first wait */

  VmoeWorkFunc func;
  void *data;
  int n_items;
  atomic_int next_item;
  _Atomic guint64 claimed;     /* runs of up to CLAIMED_BITS items */
};

typedef struct {
  VmoeWorkers *pool;
  int slot;
} WorkerArg;


static gint64
now_ns (void)
{
  struct timespec t;
  clock_gettime (CLOCK_MONOTONIC, &t);
  return (gint64) t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Spins until *counter is (or, with until_equal false, is no longer)
 * value, for at most the pool's spin budget; returns whether it happened. */
static gboolean
spin (const VmoeWorkers *w, SpinGate *gate, atomic_int *counter, int value,
    gboolean until_equal)
{
  gint64 start = 0;
  if (atomic_load_explicit (&pooled_threads, memory_order_relaxed)
      > atomic_load_explicit (&cores, memory_order_relaxed)
      || !spin_gate_open (gate))
    return (atomic_load_explicit (counter, memory_order_acquire) == value)
        == until_equal;
  for (int i = 0;; i++) {
    gboolean equal = atomic_load_explicit (counter, memory_order_acquire) == value;
    if (equal == until_equal)
      return TRUE;
    if (i % 64 == 0) {
      if (i == 0)
        start = now_ns ();
      else if (now_ns () - start > w->spin_ns)
        return FALSE;
    }
    _mm_pause ();
  }
}

/* Runs of up to this many items claim them in a bit mask, each thread
 * starting from its own share: a pass split by rows then gives each thread
 * the same rows phase after phase, and they stay in its cache (ViT-Tiny on
 * 2 cores, against whichever thread came first taking the first slice:
 * batch 1 dense about 1% faster, Mobile V-MoE level, batch 8 about 2%).  A
 * thread that comes late finds its share taken by the others. */
#define CLAIMED_BITS 64

static void
take_items (VmoeWorkers *w, int slot)
{
  int n = w->n_items;
  if (n <= CLAIMED_BITS) {
    int first = (int) ((gint64) slot * n / w->threads);
    for (int k = 0; k < n; k++) {
      int index = (first + k) % n;
      guint64 bit = (guint64) 1 << index;
      if (!(atomic_fetch_or (&w->claimed, bit) & bit))
        w->func (w->data, index, slot);
    }
    return;
  }
  for (;;) {
    int index = atomic_fetch_add (&w->next_item, 1);
    if (index >= n)
      return;
    w->func (w->data, index, slot);
  }
}

/* Returns the new generation, or the old one if the pool is quitting. */
static int
wait_for_run (VmoeWorkers *w, SpinGate *gate, int seen)
{
  if (!spin (w, gate, &w->generation, seen, FALSE)) {
    pthread_mutex_lock (&w->lock);
    w->sleepers++;
    while (atomic_load (&w->generation) == seen && !w->quit)
      pthread_cond_wait (&w->start, &w->lock);
    w->sleepers--;
    gboolean quit = w->quit;
    pthread_mutex_unlock (&w->lock);
    if (quit)
      return seen;
  }
  ANNOTATE_HAPPENS_AFTER (&w->generation);
  return atomic_load_explicit (&w->generation, memory_order_acquire);
}

static gpointer
worker_main (gpointer arg_ptr)
{
  WorkerArg *arg = arg_ptr;
  VmoeWorkers *w = arg->pool;
  int slot = arg->slot;
  g_free (arg);
  int seen = 0;
  SpinGate gate = { 0 };
  w->tids[slot] = (pid_t) syscall (SYS_gettid);
  pthread_mutex_lock (&w->lock);
  w->started++;
  pthread_cond_signal (&w->finish);
  pthread_mutex_unlock (&w->lock);
  for (;;) {
    int generation = wait_for_run (w, &gate, seen);
    if (generation == seen)
      return NULL;
    seen = generation;

    take_items (w, slot);

    ANNOTATE_HAPPENS_BEFORE (&w->busy);
    if (atomic_fetch_sub_explicit (&w->busy, 1, memory_order_acq_rel) == 1) {
      pthread_mutex_lock (&w->lock);
      if (w->caller_asleep)
        pthread_cond_signal (&w->finish);
      pthread_mutex_unlock (&w->lock);
    }
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
  const char *spin_us = g_getenv ("VMOE_CPU_SPIN_US");
  w->spin_ns = spin_us ? g_ascii_strtoll (spin_us, NULL, 10) * 1000 : 50000;
  pthread_mutex_init (&w->lock, NULL);
  pthread_cond_init (&w->start, NULL);
  pthread_cond_init (&w->finish, NULL);
  w->thread = g_new0 (GThread *, w->threads);
  w->tids = g_new0 (pid_t, w->threads);
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
  if (atomic_load (&cores) == 0)
    atomic_store (&cores, (int) g_get_num_processors ());
  atomic_fetch_add (&pooled_threads, w->threads);
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
    atomic_fetch_sub (&pooled_threads, w->threads);
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
  g_free (w->tids);
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
  w->runs++;
  w->func = func;
  w->data = data;
  w->n_items = n_items;
  atomic_store (&w->next_item, 0);
  atomic_store (&w->claimed, 0);
  atomic_store (&w->busy, w->threads - 1);
  ANNOTATE_HAPPENS_BEFORE (&w->generation);
  pthread_mutex_lock (&w->lock);
  atomic_fetch_add_explicit (&w->generation, 1, memory_order_release);
  if (w->sleepers > 0)
    pthread_cond_broadcast (&w->start);
  pthread_mutex_unlock (&w->lock);

  take_items (w, 0);

  if (!spin (w, &w->caller_gate, &w->busy, 0, TRUE)) {
    pthread_mutex_lock (&w->lock);
    w->caller_asleep = TRUE;
    while (atomic_load (&w->busy) > 0)
      pthread_cond_wait (&w->finish, &w->lock);
    w->caller_asleep = FALSE;
    pthread_mutex_unlock (&w->lock);
  }
  ANNOTATE_HAPPENS_AFTER (&w->busy);
}

unsigned
vmoe_workers_runs (const VmoeWorkers *w)
{
  return w ? w->runs : 0;
}

/* The second field of a thread's schedstat: nanoseconds it has spent
 * runnable but queued for a core.  Read into a buffer on the stack, as a
 * forward pass allocates nothing. */
static gint64
queued_ns (const char *schedstat)
{
  int fd = open (schedstat, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  char text[128];
  ssize_t len = read (fd, text, sizeof text - 1);
  close (fd);
  if (len <= 0)
    return -1;
  text[len] = '\0';
  char *end, *queued;
  g_ascii_strtoull (text, &queued, 10);       /* time on a core */
  if (queued == text)
    return -1;
  guint64 ns = g_ascii_strtoull (queued, &end, 10);
  return end == queued ? -1 : (gint64) MIN (ns, G_MAXINT64);
}

gint64
vmoe_workers_queued_ns (const VmoeWorkers *w)
{
  if (!w || w->threads == 1 || w->born_after_forks != forks_seen)
    return -1;
  gint64 total = queued_ns ("/proc/thread-self/schedstat");
  for (int i = 1; i < w->threads && total >= 0; i++) {
    char path[64];
    snprintf (path, sizeof path, "/proc/self/task/%d/schedstat", (int) w->tids[i]);
    gint64 ns = queued_ns (path);
    total = ns < 0 ? -1 : total + ns;
  }
  return total;
}
