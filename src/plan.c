/* The cost model behind `attnreg plan` and the memory check of `solve`.  The memory terms
 * follow the allocations of problem.c, eval.c, hessian.c, grid.c and solver.c one by one;
 * keep them in step when those change (tests/test_plan.py compares with measured RSS). */
#include <math.h>
#include <string.h>

#include "error.h"
#include "memory.h"

/* Peak RSS of a run on a tiny problem (MPI, OpenBLAS, ScaLAPACK runtimes), measured here. */
#define AR_BASELINE_BYTES (16.0 * 1048576.0)
#define AR_AUTO_TILE_MAX 256

void ar_plan_default_grid(int ranks, int *pr, int *pc)
{
  *pr = 1;
  for (int i = 1; i * i <= ranks; i++)
    if (ranks % i == 0) *pr = i;
  *pc = ranks / *pr;
}

int ar_plan_default_nb(int N, int pr, int pc)
{
  int np = pr > pc ? pr : pc, nb = (N + np - 1) / np;
  return nb > 64 ? 64 : nb < 1 ? 1 : nb;
}

/* Doubles of tile work per row (eval.c's tile arrays: S, U, and the r x (...) buffers). */
static double tile_row_doubles(int64_t n, int d, int m)
{
  const double np = d * (d + 1) / 2.0;
  return 2.0 * n + 3.0 * d * d + 3.0 * np + 2.0 * d * m + 7.0 * d + m + 1;
}

/* Bytes of an array from ar_work_alloc: small ones take whole 2 MB pages (memory.c). */
static double huge(double bytes)
{
  const double h = 2097152.0;
  return bytes <= (double)AR_HUGE_MAX ? ceil(bytes / h) * h : bytes;
}

int64_t ar_plan_tile_rows(int64_t n, int d, int m, int ranks, int64_t tile, double tile_mem_mb)
{
  /* Automatic tiles: within the budget and at most 256 rows; larger tiles gain nothing in the
   * GEMMs (measured) and cost page faults on first touch.  Small problems get at most n/8 rows
   * (not below 64): at n = 1024 the tile arrays would otherwise be most of the memory touched,
   * and a 128-row tile solved the bench-solve problem 7% faster than a 256-row one. */
  int64_t t = tile > 0 ? tile : (int64_t)(tile_mem_mb * 1048576.0 / (8.0 * tile_row_doubles(n, d, m)));
  int64_t cap = n / 8 < 64 ? 64 : n / 8 > AR_AUTO_TILE_MAX ? AR_AUTO_TILE_MAX : n / 8;
  if (tile <= 0 && t > cap) t = cap;
  int64_t maxloc = (n + ranks - 1) / ranks; /* the largest local block: the same tile on every rank */
  if (t > maxloc) t = maxloc;
  return t < 1 ? 1 : t;
}

/* Largest local extent of a block-cyclic dimension N over np processes. */
static double max_local(int N, int nb, int np)
{
  int blocks = (N + nb - 1) / nb;
  return (double)((blocks + np - 1) / np) * nb;
}

int ar_plan_compute(int64_t n, int d, int m, int ranks, int pr, int pc, int nb, int64_t tile, double tile_mem_mb,
                    ar_hessian_kind hk, ar_plan *p)
{
  memset(p, 0, sizeof *p);
  AR_CHECK(n >= 1 && d >= 1 && m >= 1 && ranks >= 1, AR_ERR_USAGE, "plan: sizes must be positive");
  if (pr <= 0 || pc <= 0) ar_plan_default_grid(ranks, &pr, &pc);
  AR_CHECK(pr * pc == ranks, AR_ERR_USAGE, "--grid %dx%d needs %d ranks, not %d", pr, pc, pr * pc, ranks);
  const int D = d * d + d * m;
  if (nb <= 0) nb = ar_plan_default_nb(D, pr, pc);
  const double N = (double)n, np = d * (d + 1) / 2.0, nloc = ceil(N / ranks), B = 8.0;
  p->n = n, p->d = d, p->m = m, p->D = D, p->ranks = ranks, p->pr = pr, p->pc = pc, p->nb = nb;
  p->rows_per_rank = (int64_t)nloc;
  p->tile = ar_plan_tile_rows(n, d, m, ranks, tile, tile_mem_mb);
  double lr = max_local(D, nb, pr), lc = max_local(D, nb, pc);
  if (lr > D) lr = D;
  if (lc > D) lc = D;
  p->mem_inputs = B * (nloc * (d + m) + 2 * N * d);
  p->mem_tables = huge(B * N * (2.0 * d + d * d)) + huge(B * N * (d + np)) + B * N * m;
  p->mem_tiles = 2 * huge(B * p->tile * N) + B * p->tile * (tile_row_doubles(n, d, m) - 2.0 * n);
  p->mem_parts = B * (np * np + 2.0 * d * d * d * m + 2.0 * d * d + d * m + 1);
  p->mem_hessian = 2 * huge(B * lr * lc);                  /* the local share and its factor copy */
  p->mem_assembly = (ranks > 1 ? B * (double)D * D : 0) + 12.0 * D; /* reduce-scatter send buffer, index tables */
  p->mem_solver = B * 5.0 * D;
  p->mem_baseline = AR_BASELINE_BYTES;
  p->mem_total = p->mem_inputs + p->mem_tables + p->mem_tiles + p->mem_parts + p->mem_hessian + p->mem_assembly +
                 p->mem_solver + p->mem_baseline;
  p->flops_loss_grad = 2 * N * N * (3.0 * d + m);
  p->flops_hessian = (hk == AR_HESS_GAUSS_NEWTON ? 2.0 : 3.0) * N * N * d * d + N * pow(d, 4) / 2 + 2 * N * pow(d, 3) * m;
  p->flops_trial = 4 * N * N * d;
  p->flops_cholesky = pow(D, 3) / 3 + 2.0 * D * D;
  p->flops_total = p->flops_loss_grad + p->flops_hessian + p->flops_trial + p->flops_cholesky;
  /* Per rank and iteration: two small allreduces (tree: ~2 log2 P messages of the vector),
   * the reduce-scatter of D^2 (each rank sends (P-1)/P of it), the symmetrising transpose
   * (its local share) and the Cholesky panel broadcasts (~D^2/2 over the grid rows and
   * columns).  Estimates, not measurements. */
  const double lg = ranks > 1 ? ceil(log2(ranks)) : 0;
  p->comm_allreduce = B * 2 * lg * (2.0 + 2.0 * d * d + d * m);
  p->comm_hessian = ranks > 1 ? B * (double)D * D * (ranks - 1) / ranks + (ranks > 2 ? B * lr * lc : 0) : 0;
  p->comm_cholesky = ranks > 1 ? B * 0.5 * (double)D * D * (1.0 / pr + 1.0 / pc) + B * D * lg : 0;
  p->comm_total = p->comm_allreduce + p->comm_hessian + p->comm_cholesky;
  return AR_OK;
}
