/* The cost model behind `attnreg plan` and the memory check of `solve`.  The memory terms
 * follow the allocations of problem.c, ring.c, hessian.c, grid.c and solver.c one by one (keep
 * them in step when those change: tests/test_plan.py compares with measured RSS); the
 * evaluator's arrays are summed from their lists (eval_work.h: eval.c and hessvec.c allocate by
 * the same lists; tests/test_evalmem.c compares). */
#include <math.h>
#include <string.h>

#include "error.h"
#include "eval_work.h"
#include "layout.h"
#include "memory.h"

/* Peak RSS of a run on a tiny problem (MPI, OpenBLAS, ScaLAPACK runtimes), measured here. */
#define AR_BASELINE_BYTES (16.0 * 1048576.0)
#define AR_AUTO_TILE_MAX 256
#define AR_CHUNK_MAX 16384
#define AR_CHUNK_CACHE 1024 /* chunks over a ring: a tile's S and U stay in cache between the GEMMs */
#define AR_FUSE_MAX 4096    /* one rank, n at most this: the whole key set is one chunk (fused) */

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

/* Doubles per key row of a chunk: [A3 | A2 | R23], [A2 | R22], V. */
static double chunk_row_doubles(int d, int m)
{
  return 2.0 * d + (double)d * d + d + d * (d + 1) / 2.0 + m;
}

/* Doubles per query row of a tile besides S and U: E, M, alpha, N and K over pairs, the two
 * Kronecker rows, the rescale factor (eval.c). */
static double tile_row_doubles(int d, int m)
{
  const double np = d * (d + 1) / 2.0;
  return 2.0 * d * d + 2.0 * d * m + d + 2 * np + 1;
}

void ar_plan_tiles(int64_t n, int d, int m, int ranks, int64_t tile, int64_t chunk, double tile_mem_mb,
                   int64_t *rows, int64_t *chunk_rows)
{
  /* Key chunks: a block of the ring cut so that a chunk's tables take at most four tile
   * budgets (and at most AR_CHUNK_MAX rows): bounded, whatever n.  With one rank and n no
   * larger than that (and than AR_FUSE_MAX), the whole key set is one chunk and the passes fuse. */
  const double budget = tile_mem_mb * 1048576.0 / 8.0;
  const int64_t maxblock = (n + ranks - 1) / ranks;
  int64_t c = chunk > 0 ? chunk : (int64_t)(4.0 * budget / chunk_row_doubles(d, m));
  if (chunk <= 0 && c > AR_CHUNK_MAX) c = AR_CHUNK_MAX;
  if (chunk <= 0 && c < 64) c = 64;
  if (c > maxblock) c = maxblock;
  /* Smaller chunks over a ring: at n = 16384, d = 8, 2 ranks, 1024 instead of 8192 keys cut an
   * evaluation with the exact Hessian from 2.70 to 1.88 s, the gradient from 1.86 to 1.38 s
   * (d = 16: 5.94 -> 4.85 s, d = 64 at n = 8192: 24.1 -> 21.3 s); S (tile x chunk) written by
   * the logits GEMM, exponentiated and read by the next GEMM stays in cache.  One rank with n
   * up to AR_FUSE_MAX still fuses (n = 4096, d = 32: 2.18 s fused, 2.42 s in chunks of 1024). */
  if (chunk <= 0 && c > AR_CHUNK_CACHE && !(ranks == 1 && c >= n && n <= AR_FUSE_MAX)) c = AR_CHUNK_CACHE;
  /* Query tiles: S and U (t x c each) and the per-row arrays within the budget, at most 256
   * rows (larger tiles gain nothing in the GEMMs, measured) and for small problems n/8 (not
   * below 64): at n = 1024 a 128-row tile solved the bench-solve problem 7% faster. */
  int64_t t = tile > 0 ? tile : (int64_t)(budget / (2.0 * c + tile_row_doubles(d, m)));
  int64_t cap = n / 8 < 64 ? 64 : n / 8 > AR_AUTO_TILE_MAX ? AR_AUTO_TILE_MAX : n / 8;
  if (tile <= 0 && t > cap) t = cap;
  if (t > maxblock) t = maxblock; /* the largest local block: the same tile on every rank */
  *rows = t < 1 ? 1 : t;
  *chunk_rows = c < 1 ? 1 : c;
}

/* Bytes an array from ar_work_alloc occupies (memory.c): small ones on the heap, mid-sized
 * ones in whole 2 MB pages. */
static double work(double bytes) { return ar_work_placed(bytes); }

void ar_work_model(const ar_work_sizes *z, int list, double bytes[AR_WORK_NBUCKETS])
{
  AR_WORK_LOCALS(*z);
  for (int b = 0; b < AR_WORK_NBUCKETS; b++) bytes[b] = 0;
#define COUNT(owner, type, name, bucket, when, count, cg)                                                          \
  if (when) bytes[bucket] += work((double)sizeof(type) * (double)(list == AR_WORK_EVAL_CG ? (cg) : (count)));
  if (list == AR_WORK_HESSVEC) {
    AR_HESSVEC_WORK(COUNT)
  } else {
    AR_EVAL_WORK(COUNT)
  }
#undef COUNT
}

/* Largest local extent of a block-cyclic dimension N over np processes. */
static double max_local(int N, int nb, int np)
{
  int blocks = (N + nb - 1) / nb;
  double l = (double)((blocks + np - 1) / np) * nb;
  return l > N ? N : l;
}

/* Conjugate-gradient iterations per Newton step that the model assumes for the matrix-free
 * method (the real head, whitened, took ... measured: see README). */
#define AR_CG_ITERS_MODEL 50

static void plan_memory(ar_plan *p, double lr, double lc)
{
  const double B = 8.0, nloc = (double)p->rows_per_rank, d = p->d, m = p->m;
  const double D = p->D, N = (double)p->n;
  const int masked = p->nseg > 1 || p->causal, rows = p->linear_solver == AR_LINSOLVE_ROWS;
  const int cg = p->linear_solver == AR_LINSOLVE_CG || rows; /* rows: the evaluator as for CG (gradient, one trip) */
  /* the evaluator's arrays (eval_work.h), the kv rows as [A2 | A3]: with A3 = A2 they are fewer */
  const ar_work_sizes z = {p->rows_per_rank, p->tile, p->chunk, p->d, p->m, 2 * p->d, masked};
  double ev[AR_WORK_NBUCKETS], hv[AR_WORK_NBUCKETS] = {0};
  /* the matrix-free method: no Hessian, no parts (their arrays are never touched), the
   * products' arrays (hessvec.c) */
  ar_work_model(&z, cg ? AR_WORK_EVAL_CG : AR_WORK_EVAL, ev);
  if (cg) ar_work_model(&z, AR_WORK_HESSVEC, hv);
  p->mem_inputs = B * nloc * (3 * d + m); /* A1, A2, A3, B: this rank's rows */
  /* own [A2 | A3] rows, and the ring's two buffers (ring.c) */
  p->mem_ring = ev[AR_WORK_RING] + (p->max_group > 1 ? 2 * work(B * nloc * 2 * d) : 0);
  p->mem_rows = ev[AR_WORK_ROWS] + hv[AR_WORK_ROWS];
  p->mem_chunk = ev[AR_WORK_CHUNK] + hv[AR_WORK_CHUNK];
  p->mem_tiles = ev[AR_WORK_TILES] + hv[AR_WORK_TILES];
  p->mem_parts = ev[AR_WORK_PARTS] + hv[AR_WORK_PARTS];
  if (rows) { /* J J^T (n m x n m) and its factor, lr x lc locally; every row's pieces (step_rows.c) */
    p->mem_hessian = 2 * work(B * lr * lc);
    p->mem_assembly = 0;
    p->mem_solver = B * (N * (2 * d + 2 * d * m + 2 * m + 2 * N) + (lr + lc) * d + 6.0 * D);
  } else if (cg) {
    p->mem_hessian = 0;
    p->mem_assembly = 0;
    p->mem_solver = B * (14.0 * D + 10.0 * d * d); /* the CG vectors */
  } else {
    p->mem_hessian = 2 * work(B * lr * lc); /* the local share and its factor copy */
    const double panel = B * D * D < AR_ASSEMBLY_BYTES ? B * D * D : AR_ASSEMBLY_BYTES;
    p->mem_assembly = (p->ranks > 1 ? panel : 0) + 12.0 * D; /* reduce-scatter panel, index tables */
    p->mem_solver = B * 6.0 * D;
  }
  if (masked) p->mem_rows += 2 * B * nloc; /* per row its keys, globally (problem.c) */
  p->mem_baseline = AR_BASELINE_BYTES;
  p->mem_total = p->mem_inputs + p->mem_ring + p->mem_rows + p->mem_chunk + p->mem_tiles + p->mem_parts +
                 p->mem_hessian + p->mem_assembly + p->mem_solver + p->mem_baseline;
}

/* The mask's layout on `ranks` ranks: rows of the most loaded rank, rings, unmasked pairs. */
static int plan_layout(ar_plan *p, const ar_mask *mask)
{
  const double N = (double)p->n;
  p->nseg = 1, p->groups = 1, p->max_group = p->ranks;
  p->rows_per_rank = (p->n + p->ranks - 1) / p->ranks;
  p->pairs_total = N * N, p->pairs_max = (double)p->rows_per_rank * N, p->pairs_avg = N * N / p->ranks;
  if (!mask || !(mask->causal || (mask->nseg > 1 && mask->offsets))) return AR_OK;
  if (mask->nseg > 1) AR_CALL(ar_mask_check("--segments", p->n, mask->offsets, mask->nseg));
  ar_layout L;
  AR_CALL(ar_layout_make(p->n, mask, p->ranks, &L));
  const int64_t one[2] = {0, p->n};
  const ar_mask m = {mask->nseg > 1 ? mask->nseg : 1, mask->nseg > 1 ? mask->offsets : one, mask->causal, 0};
  p->nseg = m.nseg, p->causal = m.causal, p->groups = L.ngroups, p->zigzag = L.zigzag;
  p->max_group = 0, p->rows_per_rank = 0, p->pairs_total = 0, p->pairs_max = 0;
  for (int g = 0; g < L.ngroups; g++) p->max_group = L.group_size[g] > p->max_group ? L.group_size[g] : p->max_group;
  for (int r = 0; r < L.size; r++) {
    double w = 0;
    for (int i = L.first[r]; i < L.first[r + 1]; i++)
      for (int64_t a = L.ranges[2 * i], b = L.ranges[2 * i + 1]; a < b;) {
        const int64_t s = ar_mask_segment(&m, a), e = m.offsets[s + 1] < b ? m.offsets[s + 1] : b;
        w += ar_mask_pairs(a, e, m.offsets[s], m.offsets[s + 1], m.causal);
        a = e;
      }
    p->pairs_total += w, p->pairs_max = w > p->pairs_max ? w : p->pairs_max;
    p->rows_per_rank = L.rows[r] > p->rows_per_rank ? L.rows[r] : p->rows_per_rank;
  }
  p->pairs_avg = p->pairs_total / p->ranks;
  ar_layout_free(&L);
  return AR_OK;
}

int ar_plan_compute(int64_t n, int d, int m, int ranks, int pr, int pc, int nb, int64_t tile, int64_t chunk,
                    double tile_mem_mb, ar_hessian_kind hk, int ls, const ar_mask *mask, ar_plan *p)
{
  if (ls == AR_LINSOLVE_AUTO)
    ls = ar_plan_linear_solver(n, d, m, ranks, pr, pc, nb, tile, chunk, tile_mem_mb, hk, 0, mask, 1);
  memset(p, 0, sizeof *p);
  AR_CHECK(n >= 1 && d >= 1 && m >= 1 && ranks >= 1, AR_ERR_USAGE, "plan: sizes must be positive");
  if (pr <= 0 || pc <= 0) ar_plan_default_grid(ranks, &pr, &pc);
  AR_CHECK(pr * pc == ranks, AR_ERR_USAGE, "--grid %dx%d needs %d ranks, not %d", pr, pc, pr * pc, ranks);
  AR_CHECK((double)d * d + (double)d * m < 2147483647.0, AR_ERR_USAGE, "plan: D = d*d + d*m is too large");
  const int D = d * d + d * m;
  const double N = (double)n, NM = N * m;
  AR_CHECK(ls != AR_LINSOLVE_ROWS || NM <= 2147483647.0 / 2, AR_ERR_USAGE, "plan: n m is too large for the row-space step");
  const int K = ls == AR_LINSOLVE_ROWS ? (int)NM : D; /* the order of the matrix factored */
  if (nb <= 0) nb = ar_plan_default_nb(K, pr, pc);
  p->n = n, p->d = d, p->m = m, p->D = D, p->ranks = ranks, p->pr = pr, p->pc = pc, p->nb = nb;
  AR_CALL(plan_layout(p, mask));
  ar_plan_tiles(n, d, m, ranks, tile, chunk, tile_mem_mb, &p->tile, &p->chunk);
  p->fused = ranks == 1 && p->chunk >= n && p->nseg == 1 && !p->causal;
  p->linear_solver = ls;
  plan_memory(p, max_local(K, nb, pr), max_local(K, nb, pc));
  /* Flops (eval.c counts the same GEMMs): logits, P (and beta, F R23), U, W A2 (and W R22);
   * without fusion the backward pass recomputes the logits.  A2 = the unmasked pairs (n^2
   * without a mask); the boxes of masked tiles add at most as many again on their diagonal. */
  const double A2 = p->pairs_total;
  const double recompute = p->fused ? 0 : 2 * A2 * d;
  p->flops_loss_grad = 2 * A2 * (3.0 * d + m) + recompute;
  p->flops_hessian = (hk == AR_HESS_GAUSS_NEWTON ? 2.0 : 3.0) * A2 * d * d + N * pow(d, 4) / 2 + 2 * N * pow(d, 3) * m;
  p->flops_trial = 4 * A2 * d;
  p->flops_cholesky = pow(D, 3) / 3 + 2.0 * D * D;
  /* a product: trip A (S, dS, (F o dS) A3), trip B (S, dS, U, dU, dW A2; Gauss-Newton: S, U', W' A2);
   * the preconditioner: S, F [A2 | A2 (x) V], sum M_j M_j^T */
  p->flops_hessvec = hk == AR_HESS_GAUSS_NEWTON ? A2 * (10.0 * d + 2 * m) : A2 * (12.0 * d + 6 * m);
  p->flops_precond = 2 * A2 * (2.0 * d + (double)d * m) + 2 * N * d * d * m;
  p->cg_iters = AR_CG_ITERS_MODEL;
  if (ls == AR_LINSOLVE_CG) {
    p->flops_hessian = p->flops_precond + p->cg_iters * p->flops_hessvec;
    p->flops_cholesky = 0;
  } else if (ls == AR_LINSOLVE_ROWS) { /* J's pieces (the preconditioner's trip), J J^T, its Cholesky */
    p->flops_hessian = p->flops_precond + 2 * NM * NM * d + 4 * N * N * d;
    p->flops_cholesky = pow(NM, 3) / 3 + 2.0 * NM * NM;
  }
  p->flops_total = p->flops_loss_grad + p->flops_hessian + p->flops_trial + p->flops_cholesky;
  /* Per rank and iteration: three trips of the ring (the trial's forward pass, the forward and
   * backward passes at the new point), each passing on (P-1) blocks of 2d doubles a row; two
   * small allreduces (tree: ~2 log2 P messages); the Hessian reduce-scatter of its lower
   * triangle (each rank sends (P-1)/P of D^2/2); the Cholesky panel broadcasts (~D^2/2
   * over the grid rows and columns).  Estimates, not measurements. */
  const double lg = ranks > 1 ? ceil(log2(ranks)) : 0, B = 8.0, steps = p->max_group - 1.0; /* blocks a trip receives */
  p->comm_ring = 3.0 * steps * (double)p->rows_per_rank * 2 * d * B;
  p->comm_allreduce = B * 2 * lg * (2.0 + 2.0 * d * d + d * m);
  p->comm_hessian = ranks > 1 ? B * 0.5 * (double)D * D * (ranks - 1) / ranks : 0; /* the lower triangle */
  p->comm_cholesky = ranks > 1 ? B * 0.5 * (double)D * D * (1.0 / pr + 1.0 / pc) + B * D * lg : 0;
  if (ls == AR_LINSOLVE_ROWS) { /* one trip for J's pieces, their allgather, the Cholesky of J J^T */
    p->comm_ring += steps * (double)p->rows_per_rank * 2 * d * B;
    p->comm_hessian = B * N * (d + (double)d * m + m);
    p->comm_cholesky = ranks > 1 ? B * 0.5 * NM * NM * (1.0 / pr + 1.0 / pc) + B * NM * lg : 0;
  }
  if (ls == AR_LINSOLVE_CG) { /* two trips and an allreduce of D per product, one trip for the preconditioner */
    p->comm_ring += (2.0 * p->cg_iters + 1) * steps * (double)p->rows_per_rank * 2 * d * B;
    p->comm_hessian = B * 2 * lg * D * p->cg_iters;
    p->comm_cholesky = 0;
  }
  p->comm_total = p->comm_ring + p->comm_allreduce + p->comm_hessian + p->comm_cholesky;
  return AR_OK;
}

int ar_plan_linear_solver(int64_t n, int d, int m, int ranks, int pr, int pc, int nb, int64_t tile, int64_t chunk,
                          double tile_mem_mb, ar_hessian_kind hk, double budget, const ar_mask *mask, int rows_ok)
{
  ar_plan dense, cg, rows;
  if (ar_plan_compute(n, d, m, ranks, pr, pc, nb, tile, chunk, tile_mem_mb, hk, AR_LINSOLVE_CHOLESKY, mask, &dense) ||
      ar_plan_compute(n, d, m, ranks, pr, pc, nb, tile, chunk, tile_mem_mb, hk, AR_LINSOLVE_CG, mask, &cg))
    return AR_LINSOLVE_CHOLESKY; /* bad sizes: the caller reports them */
  /* fewer outputs than unknowns: the Gauss-Newton Hessian is singular (rank <= n m), and the
   * row-space step is exact and the cheapest */
  if (rows_ok && (double)n * m < (double)d * d + (double)d * m &&
      !ar_plan_compute(n, d, m, ranks, pr, pc, nb, tile, chunk, tile_mem_mb, hk, AR_LINSOLVE_ROWS, mask, &rows) &&
      (budget <= 0 || rows.mem_total <= budget))
    return AR_LINSOLVE_ROWS;
  const int dense_fits = budget <= 0 || dense.mem_total <= budget, cg_fits = budget <= 0 || cg.mem_total <= budget;
  if (dense_fits != cg_fits) return dense_fits ? AR_LINSOLVE_CHOLESKY : AR_LINSOLVE_CG;
  return dense.flops_hessian + dense.flops_cholesky <= cg.flops_hessian ? AR_LINSOLVE_CHOLESKY : AR_LINSOLVE_CG;
}
