/* The state of one CPU session's forward pass, and how its row-wise phases
 * are split over the session's threads: the token rows of the batch are cut
 * into one slice per thread, and each thread runs everything that is row by
 * row (LayerNorm, the linear layers, GELU, residuals, a whole dense MLP) on
 * its slice without waiting for the others; they meet only where a row needs
 * other rows (attention, routing). */
#ifndef VMOE_CPU_PASS_H
#define VMOE_CPU_PASS_H

#include "backend.h"
#include "workers.h"
#include "cpu/linear.h"

typedef struct VmoeCpu VmoeCpu;

/* Work goes to other threads only in pieces worth waking a thread for (tens
 * of microseconds): about 0.1 ms of multiply-adds.  Small models (the
 * shipped 28x28 one) then run on the calling thread alone, where they were
 * 2.4x faster than split.  Attention splits from twice this. */
#define VMOE_CPU_MIN_SLICE_FMAS (4.0 * 1024 * 1024)

struct VmoeCpu {
  VmoeModel *model;
  VmoeRoutingParams routing;
  VmoePrecision precision;
  int reserved;               /* images the workspace holds */
  VmoeWorkers *workers;
  VmoeGemmScratch **gemm;     /* one per thread of `workers` */
  /* One single-threaded pass per group of a batch split by image, a group
   * per thread of `workers` (forward.c); made on first use, each with its
   * own workspace. */
  VmoeCpu **image_passes;
  /* Passes split by rows under contention (forward.c): how many more run
   * on the calling thread alone, and whether such a pass meets the pool
   * at all (a small model's does not). */
  int alone_passes;
  int contended_splits;       /* split passes in a row that queued long */
  gboolean split_meets_pool;
  int tokens, dim, hidden_dim;

  float *x;                   /* [N, T, D] residual stream */
  float *z;                   /* [N, T, D] LayerNorm output */
  float *qkv;                 /* [N, T, 3D] */
  float *attn;                /* [N, T, D] */
  float *hidden;              /* [N*T*k, M] MLP hidden */
  float *attention_scratch;   /* vmoe_attention_scratch_len () */
  float *patches;             /* [N*Np, C*P*P]: shares hidden's memory (the
                                 embedding is done before any MLP runs) */
  float *gather_in, *gather_out;  /* [N*T*k, D] rows of one expert */
  float *router_probs;        /* [N*T, E] (image routing: [N, E]) */
  float *router_input;        /* [N, D] */
  float *pooled;              /* [N, D] */
  int *rows;                  /* [N*T*k] gathered row indices */
  float *row_weights;         /* [N*T*k] */
  int *choice;                /* [N*T*k] token routing choices */
  float *choice_p;            /* [N*T*k] */
  int *assigned;              /* [N*T*k] expert, or -1 if dropped */
  int *order;                 /* [T] */
};

/* Work on the token rows [first, first + count); arg is what the phase
 * needs besides the pass; thread is the running thread's index into the
 * pass's per-thread scratch (gemm, attention's scores). */
typedef void (*VmoeRowsFunc) (VmoeCpu *cpu, const void *arg, int first, int count,
    int thread);

/* Runs func on one slice of [0, rows) per thread and returns when all are
 * done; fmas_per_row is what the phase costs a row. */
void vmoe_cpu_run_on_rows (VmoeCpu *cpu, int rows, double fmas_per_row,
    VmoeRowsFunc func, const void *arg);

#endif
