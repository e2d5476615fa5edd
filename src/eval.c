/* Loss, gradient and the parts of the joint Hessian, by query-row tiles against key/value
 * column chunks that travel around the ring (docs/math.md §2-§3, docs/layout.md).
 *
 * Each rank holds its rows j of A1, A2, A3, B.  For its query rows it needs every key/value
 * row l: the blocks of A2, A3 come by around the ring (ring.c), and a block is cut into chunks
 * of c rows, for which the per-row tables are built on the fly.  For a tile of r query rows
 * against a chunk (every heavy step is one GEMM):
 *
 *   forward pass (one trip):   S = (A1 X)_t A2_c^T                         r x c logits
 *                              online softmax: running max and sum per row, the accumulator
 *                              rescaled when the max grows (FlashAttention's merge), and
 *                              fwd_t += exp(S - max) [A3 | A2 | R23]_c   (loss, gradient: A3 only)
 *   at the end of the trip:    fwd /= sum -> [P | beta | F R23],  lse = max + log(sum)
 *                              C = P Y - B,  L = ||C||^2,  fu_j = f_j.u_j = c_j.(P Y)_j
 *   backward pass (one trip):  F = exp(S - lse) (S recomputed),  U = C_t V_c^T,  V = A3 Y
 *                              W = F o (U - fu 1^T) = G/2
 *                              bwd_t += W [A2 | R22]_c                  (gradient, GN: A2 only)
 *   then per row tile:         grad_X += 2 A1_t^T (W A2),  grad_Y += 2 P^T C,  P^T P
 *                              alpha = W A2 + fu beta (= A2^T (f o u)),  E = F R23 - beta (x) p,
 *                              M = E Y,  N_j = 2 (M_j M_j^T + T_j) over pairs,
 *                              hpair += K^T N,  t1 += (A1 o C)^T E,  t2 += (A1 o P)^T M.
 *
 * Gauss-Newton drops T_j and t1, and so the R22 columns.  When the whole key set is one chunk
 * (one rank, n <= chunk) both passes are fused per tile and F is used as it is, with no
 * recomputation: then the tables are built once and kept.  The parts are reduced and
 * expanded in hessian.c. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "lapack.h"
#include "memory.h"
#include "eval_impl.h"
#include "softmax.h"
#include "timing.h"

void ar_eval_options_default(ar_eval_options *o)
{
  memset(o, 0, sizeof *o);
  o->tile = 0;
  o->tile_mem_mb = 32; /* small tiles keep a chunk's tables and S in cache between GEMMs */
}

int ar_eval_options_check(const ar_eval_options *o)
{
  AR_CHECK(o->tile >= 0, AR_ERR_USAGE, "--tile: must be >= 1, got %lld", (long long)o->tile);
  AR_CHECK(o->chunk >= 0, AR_ERR_USAGE, "--chunk: must be >= 1, got %lld", (long long)o->chunk);
  AR_CHECK(isfinite(o->tile_mem_mb) && o->tile_mem_mb > 0, AR_ERR_USAGE, "--tile-mem: must be > 0, got %g",
           o->tile_mem_mb);
  AR_CHECK(isfinite(o->lambda_x) && o->lambda_x >= 0, AR_ERR_USAGE, "--lambda-x: must be >= 0, got %g", o->lambda_x);
  AR_CHECK(isfinite(o->lambda_y) && o->lambda_y >= 0, AR_ERR_USAGE, "--lambda-y: must be >= 0, got %g", o->lambda_y);
  return AR_OK;
}

/* A box: rows [j0, j0 + r) against block keys [k0, k0 + kr); partial: some entries masked. */
struct ar_box_s {
  int64_t j0, r, k0, kr;
  int partial;
};

static int eval_alloc(ar_eval ev)
{
  ar_problem p = ev->p;
  const int64_t nl = p->nloc, t = ev->tile, c = ev->chunk;
  const int d = p->d, m = p->m, np = ev->npair, w = ev->width;
  int err = AR_OK;
#define WORK(ptr, cnt)                                                                                     \
  if (!err && !((ptr) = ar_work_alloc(sizeof(double) * (size_t)((cnt) > 0 ? (cnt) : 1))))                \
    err = AR_ERROR(AR_ERR_MEM, "out of memory: %s needs %.1f MB (use more ranks or a smaller --tile-mem)", #ptr, \
                   8.0 * (double)(cnt) / 1048576.0)
  if (w == 2 * d) WORK(ev->kv_own, nl * w);
  WORK(ev->a1x, nl * d);
  WORK(ev->fwd, nl * ev->ld_fwd);
  WORK(ev->bwd, nl * ev->ld_bwd);
  WORK(ev->rmax, nl);
  WORK(ev->rsum, nl);
  WORK(ev->lse, nl);
  WORK(ev->resid, nl * m);
  WORK(ev->fu, nl);
  WORK(ev->tab_fwd, c * ev->ld_fwd);
  WORK(ev->tab_bwd, c * ev->ld_bwd);
  WORK(ev->vals, c * m);
  WORK(ev->scores, t * c);
  WORK(ev->cvt, t * c);
  WORK(ev->rescale, t);
  WORK(ev->E, t * d * d);
  WORK(ev->M, t * d * m);
  WORK(ev->MMt, d * d);
  WORK(ev->alpha, t * d);
  WORK(ev->Npair, t * np);
  WORK(ev->Kpair, t * np);
  WORK(ev->a1c, t * d * m);
  WORK(ev->a1p, t * d * d);
  WORK(ev->parts.hpair, (int64_t)np * np);
  WORK(ev->parts.t1, (int64_t)d * m * d * d);
  WORK(ev->parts.t2, (int64_t)d * d * d * m);
  WORK(ev->parts.ptp, d * d);
  WORK(ev->sums, 1 + 2 * d * d + d * m);
  WORK(ev->at, d * d + d * m);
#undef WORK
  if (!err && p->masked) {
    ev->blk_lo = ar_work_alloc(sizeof(int64_t) * (size_t)(nl > 0 ? nl : 1));
    ev->blk_hi = ar_work_alloc(sizeof(int64_t) * (size_t)(nl > 0 ? nl : 1));
    ev->boxes = ar_work_alloc(sizeof(struct ar_box_s) * (size_t)t);
    if (!ev->blk_lo || !ev->blk_hi || !ev->boxes) err = AR_ERROR(AR_ERR_MEM, "out of memory (mask bounds)");
  }
  return err;
}

/* ---- the mask (docs/math.md §8, docs/layout.md §6) */

/* Rows of a block (sorted ranges of global rows) below global row x. */
static int64_t rows_below(const int64_t *rg, int nr, int64_t x)
{
  int64_t c = 0;
  for (int i = 0; i < nr && x > rg[2 * i]; i++) c += (x < rg[2 * i + 1] ? x : rg[2 * i + 1]) - rg[2 * i];
  return c;
}

/* The keys each local row may see in the block of ring member `owner`, block-local. */
static void block_bounds(ar_eval ev, int owner)
{
  ar_problem p = ev->p;
  const int64_t *rg;
  const int nr = ar_problem_rank_ranges(p, p->layout.group_first[p->layout.group[p->rank]] + owner, &rg);
  for (int64_t j = 0; j < p->nloc; j++)
    ev->blk_lo[j] = rows_below(rg, nr, p->key_lo[j]), ev->blk_hi[j] = rows_below(rg, nr, p->key_hi[j]);
}

/* The boxes of tile rows [j0, j0 + r) against block keys [c0, c1): the rows whose keys meet
 * the chunk, in runs that are cut where a row's keys do not overlap the box's (the next
 * sequence), where a box would hold more than twice as many entries as unmasked ones
 * (FlashAttention's diagonal tiles are at that ratio), or at a row that sees nothing here.
 * Returns how many (at most r). */
static int tile_boxes(ar_eval ev, int64_t j0, int64_t r, int64_t c0, int64_t c1, struct ar_box_s *bx)
{
  int nb = 0;
  int64_t j = j0;
  const int64_t end = j0 + r;
  while (j < end) {
    int64_t lo = ev->blk_lo[j] > c0 ? ev->blk_lo[j] : c0, hi = ev->blk_hi[j] < c1 ? ev->blk_hi[j] : c1;
    if (lo >= hi) {
      j++;
      continue;
    }
    int64_t a = j++, bl = lo, bh = hi;
    double un = (double)(hi - lo);
    int partial = 0;
    while (j < end) {
      const int64_t l2 = ev->blk_lo[j] > c0 ? ev->blk_lo[j] : c0, h2 = ev->blk_hi[j] < c1 ? ev->blk_hi[j] : c1;
      if (l2 >= h2) break;
      const int64_t nl = l2 < bl ? l2 : bl, nh = h2 > bh ? h2 : bh, rows = j - a + 1;
      if (l2 >= bh || (rows > 8 && (double)rows * (double)(nh - nl) > 2 * (un + (double)(h2 - l2)))) break;
      partial |= nl != bl || nh != bh || l2 != nl || h2 != nh;
      bl = nl, bh = nh, un += (double)(h2 - l2), j++;
    }
    bx[nb++] = (struct ar_box_s){a, j - a, bl, bh - bl, partial};
  }
  return nb;
}

/* Collective: what a trip computes, from the mask alone (no data): boxes, their area, the
 * unmasked pairs, and how evenly the ring's members share each step. */
static int dry_run(ar_eval ev)
{
  ar_problem p = ev->p;
  ar_eval_work *w = &ev->work;
  const int G = p->ring_size;
  double *step = calloc((size_t)G * 2 + 2, sizeof(double));
  int err = step ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory");
  ar_layout_info li;
  ar_problem_layout_info(p, &li);
  w->pairs = p->pairs, w->pairs_total = li.pairs;
  ev->units_trip = 0;
  const int64_t *brows = p->layout.rows + p->layout.group_first[p->layout.group[p->rank]];
  for (int s = 0; s < G && !err; s++) {
    const int owner = (p->ring_rank - s + G) % G; /* the block in hand at step s */
    if (!p->masked) {
      const double tiles = ceil((double)p->nloc / ev->tile), chunks = ceil((double)brows[owner] / ev->chunk);
      step[s] = (double)p->nloc * brows[owner];
      w->boxes += tiles * chunks, ev->units_trip += tiles * chunks;
      continue;
    }
    block_bounds(ev, owner);
    for (int64_t c0 = 0; c0 < brows[owner]; c0 += ev->chunk) {
      const int64_t c1 = c0 + ev->chunk < brows[owner] ? c0 + ev->chunk : brows[owner];
      for (int64_t j0 = 0; j0 < p->nloc; j0 += ev->tile) {
        const int nb = tile_boxes(ev, j0, p->nloc - j0 < ev->tile ? p->nloc - j0 : ev->tile, c0, c1, ev->boxes);
        for (int b = 0; b < nb; b++) step[s] += (double)ev->boxes[b].r * ev->boxes[b].kr;
        w->boxes += nb, ev->units_trip += nb > 0;
      }
    }
  }
  for (int s = 0; s < G; s++) w->area += step[s];
  if (!err) { /* over the ring's steps: the largest and the summed area of each */
    memcpy(step + G, step, sizeof(double) * G);
    AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, step, G, MPI_DOUBLE, MPI_MAX, p->ring));
    AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, step + G, G, MPI_DOUBLE, MPI_SUM, p->ring));
    double smax = 0, savg = 0;
    for (int s = 0; s < G; s++) smax += step[s], savg += step[G + s] / G;
    w->step_efficiency = smax > 0 ? savg / smax : 1;
    double a[2] = {w->area, w->area};
    AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, a, 1, MPI_DOUBLE, MPI_MAX, p->comm));
    AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, a + 1, 1, MPI_DOUBLE, MPI_SUM, p->comm));
    w->area_max = a[0], w->area_avg = a[1] / p->size;
  }
  free(step);
  return err;
}

void ar_eval_work_info(ar_eval ev, ar_eval_work *w) { *w = ev->work; }

int ar_eval_create(ar_problem p, const ar_eval_options *opt, ar_eval *out)
{
  *out = NULL;
  AR_CALL(ar_error_agree(p->comm, ar_eval_options_check(opt)));
  int err = AR_OK;
  ar_eval ev = calloc(1, sizeof *ev);
  if (!ev) err = AR_ERROR(AR_ERR_MEM, "out of memory creating the evaluator");
  if (!err) {
    *out = ev;
    ev->p = p;
    ev->opt = *opt;
    const int d = p->d, m = p->m;
    ev->npair = d * (d + 1) / 2;
    ev->width = p->a3 == p->a2 ? d : 2 * d;
    ev->ld_fwd = 2 * d + d * d, ev->ld_bwd = d + ev->npair;
    ar_plan_tiles(p->n, d, m, p->size, opt->tile, opt->chunk, opt->tile_mem_mb, &ev->tile, &ev->chunk);
    ev->fused = p->size == 1 && ev->chunk >= p->n && !p->masked;
    ev->parts.d = d, ev->parts.m = m, ev->parts.npair = ev->npair;
    /* every BLAS dimension and leading dimension must fit in an int */
    const double big = (double)ev->tile * ev->chunk + (double)ev->chunk * ev->ld_fwd + (double)d * m * d * d;
    if (big > 2147483647.0 || ev->tile > 2147483647 / (d > m ? d : m))
      err = AR_ERROR(AR_ERR_DATA, "tiles too large for 32-bit BLAS indices (tile %lld x %lld, d=%d m=%d)",
                     (long long)ev->tile, (long long)ev->chunk, d, m);
  }
  err = ar_error_agree(p->comm, err);
  if (!err)
    err = ar_ring_create(p->ring, p->layout.rows + p->layout.group_first[p->layout.group[p->rank]], ev->width,
                         &ev->ring);
  if (!err) err = ar_error_agree(p->comm, eval_alloc(ev));
  if (!err) err = dry_run(ev);
  if (!err && ev->kv_own) {
    const int d = p->d;
    for (int64_t j = 0; j < p->nloc; j++)
      for (int q = 0; q < d; q++)
        ev->kv_own[j * 2 * d + q] = p->a2[j * d + q], ev->kv_own[j * 2 * d + d + q] = p->a3[j * d + q];
  }
  err = ar_error_agree(p->comm, err);
  if (err) ar_eval_destroy(out);
  return err;
}

void ar_eval_destroy(ar_eval *pev)
{
  ar_eval ev = *pev;
  if (!ev) return;
  double *work[] = {ev->kv_own, ev->a1x, ev->fwd, ev->bwd, ev->rmax, ev->rsum, ev->lse, ev->resid, ev->fu,
                    ev->tab_fwd, ev->tab_bwd, ev->vals, ev->scores, ev->cvt, ev->rescale, ev->E, ev->M, ev->MMt,
                    ev->alpha, ev->Npair, ev->Kpair, ev->a1c, ev->a1p, ev->parts.hpair, ev->parts.t1,
                    ev->parts.t2, ev->parts.ptp, ev->sums, ev->at};
  for (size_t i = 0; i < sizeof work / sizeof work[0]; i++) ar_work_free(work[i]);
  ar_work_free(ev->blk_lo), ar_work_free(ev->blk_hi), ar_work_free(ev->boxes);
  ar_hess_parts_free(&ev->parts);
  ar_hessvec_free(ev);
  ar_ring_destroy(&ev->ring);
  free(ev);
  *pev = NULL;
}

int64_t ar_eval_tile(ar_eval ev) { return ev->tile; }
int64_t ar_eval_chunk(ar_eval ev) { return ev->chunk; }
ar_problem ar_eval_problem(ar_eval ev) { return ev->p; }
void ar_eval_set_progress(ar_eval ev, ar_progress *p) { ev->prog = p; }
void ar_eval_ridge(ar_eval ev, double *lambda_x, double *lambda_y)
{
  *lambda_x = ev->opt.lambda_x, *lambda_y = ev->opt.lambda_y;
}

/* The tiles an evaluation will do (a tile against a chunk, or a tile's Hessian parts). */
static void begin_units(ar_eval ev, int want_grad, int want_hess)
{
  const double ntiles = ceil((double)ev->p->nloc / ev->tile);
  ev->units_done = 0;
  ev->units_total = ev->fused ? ntiles : (want_grad ? 2 : 1) * ev->units_trip;
  if (want_hess) ev->units_total += ntiles;
  if (ev->units_total < 1) ev->units_total = 1;
}

/* One tile done (against a chunk, or its Hessian parts): tell the progress reporter. */
void ar_eval_tick(ar_eval ev)
{
  if (!ev->prog) return;
  ev->units_done += 1;
  ar_progress_phase(ev->prog, "evaluation", ev->units_done / ev->units_total);
}

/* Tables of a chunk of key rows kv (rows x width: A2, then A3 unless A3 = A2). */
static void build_tab_fwd(ar_eval ev, const double *kv, int64_t rows)
{
  const int d = ev->p->d, w = ev->width, a3off = w == d ? 0 : d;
  for (int64_t l = 0; l < rows; l++) {
    const double *a2 = kv + l * w, *a3 = a2 + a3off;
    double *t = ev->tab_fwd + l * ev->ld_fwd;
    for (int q = 0; q < d; q++) {
      t[q] = a3[q], t[d + q] = a2[q];
      for (int k = 0; k < d; k++) t[2 * d + q * d + k] = a2[q] * a3[k];
    }
  }
}

static void build_tab_bwd(ar_eval ev, const double *kv, int64_t rows)
{
  const int d = ev->p->d, w = ev->width;
  for (int64_t l = 0; l < rows; l++) {
    const double *a2 = kv + l * w;
    double *t = ev->tab_bwd + l * ev->ld_bwd;
    for (int q = 0; q < d; q++) {
      t[q] = a2[q];
      for (int qq = q; qq < d; qq++) t[d + ar_pair(d, q, qq)] = a2[q] * a2[qq];
    }
  }
}

/* The right-hand side of the forward GEMM for a chunk: the table, or A3 inside kv. */
static const double *fwd_operand(ar_eval ev, const double *kv, int64_t rows, int lda, int *ld)
{
  if (lda == ev->ld_fwd) {
    if (!ev->tab_fwd_ready) build_tab_fwd(ev, kv, rows);
    ev->tab_fwd_ready = ev->fused;
    *ld = ev->ld_fwd;
    return ev->tab_fwd;
  }
  *ld = ev->width;
  return kv + (ev->width == ev->p->d ? 0 : ev->p->d);
}

static const double *bwd_operand(ar_eval ev, const double *kv, int64_t rows, int ldb, int *ld)
{
  if (ldb == ev->ld_bwd) {
    if (!ev->tab_bwd_ready) build_tab_bwd(ev, kv, rows);
    ev->tab_bwd_ready = ev->fused;
    *ld = ev->ld_bwd;
    return ev->tab_bwd;
  }
  *ld = ev->width;
  return kv;
}

/* Rows [j0, j0 + r) after the forward pass: C = P Y - B, L += ||C||^2, fu = c . (P Y). */
static void finish_rows(ar_eval ev, const double *Y, int64_t j0, int64_t r, int lda, double *loss, double *flops)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m;
  double *C = ev->resid + j0 * m;
  memcpy(C, p->b + j0 * m, sizeof(double) * r * m);
  ar_gemm(CblasNoTrans, CblasNoTrans, r, m, d, 1.0, ev->fwd + j0 * lda, lda, Y, m, -1.0, C, m, flops);
  for (int64_t j = 0; j < r; j++) {
    double s = 0, f = 0;
    for (int i = 0; i < m; i++) {
      const double c = C[j * m + i];
      s += c * c, f += c * (c + p->b[(j0 + j) * m + i]); /* P Y = C + B */
    }
    *loss += s;
    ev->fu[j0 + j] = f;
  }
}

/* W = F o (U - fu 1^T) for rows [j0, j0 + r) of a tile (F in scores), then bwd += W T. */
static void backward_tile(ar_eval ev, int64_t j0, int64_t r, const double *vals, int64_t cr, const double *T,
                          int ldt, int ldb, double beta, double *flops)
{
  const int m = ev->p->m;
  ar_gemm(CblasNoTrans, CblasTrans, r, cr, m, 1.0, ev->resid + j0 * m, m, vals, m, 0.0, ev->cvt, cr, flops);
  for (int64_t j = 0; j < r; j++) {
    double *w = ev->scores + j * cr;
    const double *u = ev->cvt + j * cr, fu = ev->fu[j0 + j];
    for (int64_t l = 0; l < cr; l++) w[l] *= u[l] - fu;
  }
  ar_gemm(CblasNoTrans, CblasNoTrans, r, ldb, cr, 1.0, ev->scores, cr, T, ldt, beta, ev->bwd + j0 * ldb, ldb, flops);
}

/* One rank, one chunk: per tile, the softmax rows whole, then forward and backward with F in
 * hand (nothing recomputed). */
static void fused_pass(ar_eval ev, const double *Y, int lda, int ldb, int want_grad, double *loss, double *flops)
{
  ar_problem p = ev->p;
  const int64_t n = p->n;
  const int d = p->d, m = p->m;
  int ldt, ldt2;
  const double *kv = ev->kv_own ? ev->kv_own : p->a2;
  const double *T = fwd_operand(ev, kv, n, lda, &ldt), *T2 = NULL;
  if (want_grad && Y) {
    T2 = bwd_operand(ev, kv, n, ldb, &ldt2);
    ar_gemm(CblasNoTrans, CblasNoTrans, n, m, d, 1.0, kv + (ev->width == d ? 0 : d), ev->width, Y, m, 0.0, ev->vals, m,
         flops);
  }
  for (int64_t j0 = 0; j0 < p->nloc; j0 += ev->tile) {
    const int64_t r = p->nloc - j0 < ev->tile ? p->nloc - j0 : ev->tile;
    ar_gemm(CblasNoTrans, CblasTrans, r, n, d, 1.0, ev->a1x + j0 * d, d, kv, ev->width, 0.0, ev->scores, n, flops);
    ar_softmax_rows_lse(ev->scores, r, n, ev->lse + j0);
    ev->exps += (double)r * (double)n;
    ar_gemm(CblasNoTrans, CblasNoTrans, r, lda, n, 1.0, ev->scores, n, T, ldt, 0.0, ev->fwd + j0 * lda, lda, flops);
    if (Y) finish_rows(ev, Y, j0, r, lda, loss, flops);
    if (T2) backward_tile(ev, j0, r, ev->vals, n, T2, ldt2, ldb, 0.0, flops);
    ar_eval_tick(ev);
  }
}

int ar_eval_trip(ar_trip *t)
{
  ar_eval ev = t->ev;
  ar_problem p = ev->p;
  AR_CALL(ar_ring_start(ev->ring, ev->kv_own ? ev->kv_own : p->a2));
  while (ar_ring_active(ev->ring)) {
    int64_t first, rows;
    int owner;
    const double *block = ar_ring_block(ev->ring, &first, &rows, &owner);
    if (p->masked) block_bounds(ev, owner);
    for (int64_t c0 = 0; c0 < rows; c0 += ev->chunk) {
      const int64_t cr = rows - c0 < ev->chunk ? rows - c0 : ev->chunk;
      const double *kv = block + c0 * ev->width;
      int chunk_ready = 0;
      for (int64_t j0 = 0; j0 < p->nloc; j0 += ev->tile) {
        const int64_t r = p->nloc - j0 < ev->tile ? p->nloc - j0 : ev->tile;
        if (!p->masked) {
          if (!chunk_ready && t->chunk) t->chunk(t, kv, cr);
          chunk_ready = 1, ev->box_kb = c0, ev->box_partial = 0;
          t->tile(t, j0, r, 0, kv, cr);
        } else {
          const int nb = tile_boxes(ev, j0, r, c0, c0 + cr, ev->boxes);
          for (int b = 0; b < nb; b++) { /* a chunk no box needs costs nothing, not even its tables */
            const struct ar_box_s *x = &ev->boxes[b];
            if (!chunk_ready && t->chunk) t->chunk(t, kv, cr);
            chunk_ready = 1, ev->box_kb = x->k0, ev->box_partial = x->partial;
            t->tile(t, x->j0, x->r, x->k0 - c0, block + x->k0 * ev->width, x->kr);
          }
          if (nb == 0) continue;
        }
        ar_ring_progress(ev->ring);
        ar_eval_tick(ev);
      }
    }
    AR_CALL(ar_ring_next(ev->ring));
  }
  return AR_OK;
}

void ar_eval_logits(ar_eval ev, int64_t j0, int64_t r, const double *kv, int64_t cr, int probs, double *flops)
{
  const int d = ev->p->d;
  ar_gemm(CblasNoTrans, CblasTrans, r, cr, d, 1.0, ev->a1x + j0 * d, d, kv, ev->width, 0.0, ev->scores, cr, flops);
  if (ev->box_partial) /* the keys a row may not see: -inf, so that their exponentials are 0 */
    for (int64_t j = 0; j < r; j++) {
      double *row = ev->scores + j * cr;
      const int64_t lo = ev->blk_lo[j0 + j] - ev->box_kb, hi = ev->blk_hi[j0 + j] - ev->box_kb;
      for (int64_t l = 0; l < lo && l < cr; l++) row[l] = -INFINITY;
      for (int64_t l = hi > 0 ? hi : 0; l < cr; l++) row[l] = -INFINITY;
    }
  if (probs) ar_softmax_exp_shifted(ev->scores, r, cr, ev->lse + j0), ev->exps += (double)r * (double)cr;
}

double ar_eval_exps(ar_eval ev) { return ev->exps; }

/* Forward trip: online softmax, fwd = F [A3 | A2 | R23] (or F A3). */
typedef struct {
  ar_trip t;
  int lda, ldt;
  const double *T; /* the chunk's right-hand side */
} fwd_trip;

static void fwd_chunk(ar_trip *t, const double *kv, int64_t cr)
{
  fwd_trip *f = (fwd_trip *)t;
  f->T = fwd_operand(t->ev, kv, cr, f->lda, &f->ldt);
}

static void fwd_tile(ar_trip *t, int64_t j0, int64_t r, int64_t k0, const double *kv, int64_t cr)
{
  fwd_trip *f = (fwd_trip *)t;
  ar_eval ev = t->ev;
  const int lda = f->lda;
  ar_eval_logits(ev, j0, r, kv, cr, 0, t->flops);
  ar_softmax_online(ev->scores, r, cr, ev->rmax + j0, ev->rsum + j0, ev->rescale);
  ev->exps += (double)r * (double)cr;
  for (int64_t j = 0; j < r; j++)
    if (ev->rescale[j] != 1.0)
      for (int k = 0; k < lda; k++) ev->fwd[(j0 + j) * lda + k] *= ev->rescale[j];
  ar_gemm(CblasNoTrans, CblasNoTrans, r, lda, cr, 1.0, ev->scores, cr, f->T + k0 * f->ldt, f->ldt, 1.0,
          ev->fwd + j0 * lda, lda, t->flops);
}

static int forward_trip(ar_eval ev, int lda, double *flops)
{
  ar_problem p = ev->p;
  for (int64_t j = 0; j < p->nloc; j++) ev->rmax[j] = -INFINITY, ev->rsum[j] = 0;
  memset(ev->fwd, 0, sizeof(double) * p->nloc * lda);
  fwd_trip f = {{ev, flops, fwd_chunk, fwd_tile}, lda, 0, NULL};
  AR_CALL(ar_eval_trip(&f.t));
  for (int64_t j = 0; j < p->nloc; j++) {
    const double s = 1.0 / ev->rsum[j];
    for (int k = 0; k < lda; k++) ev->fwd[j * lda + k] *= s;
    ev->lse[j] = ev->rmax[j] + log(ev->rsum[j]);
  }
  return AR_OK;
}

/* Backward trip: F recomputed from the saved log-sum-exp, bwd = W [A2 | R22] (or W A2). */
typedef struct {
  ar_trip t;
  const double *Y, *T;
  int ldb, ldt;
} bwd_trip;

static void bwd_chunk(ar_trip *t, const double *kv, int64_t cr)
{
  bwd_trip *b = (bwd_trip *)t;
  ar_eval ev = t->ev;
  const int d = ev->p->d, m = ev->p->m, w = ev->width;
  b->T = bwd_operand(ev, kv, cr, b->ldb, &b->ldt);
  ar_gemm(CblasNoTrans, CblasNoTrans, cr, m, d, 1.0, kv + (w == d ? 0 : d), w, b->Y, m, 0.0, ev->vals, m, t->flops);
}

static void bwd_tile(ar_trip *t, int64_t j0, int64_t r, int64_t k0, const double *kv, int64_t cr)
{
  bwd_trip *b = (bwd_trip *)t;
  ar_eval_logits(t->ev, j0, r, kv, cr, 1, t->flops);
  backward_tile(t->ev, j0, r, t->ev->vals + k0 * t->ev->p->m, cr, b->T + k0 * b->ldt, b->ldt, b->ldb, 1.0, t->flops);
}

static int backward_trip(ar_eval ev, const double *Y, int ldb, double *flops)
{
  memset(ev->bwd, 0, sizeof(double) * ev->p->nloc * ldb);
  bwd_trip b = {{ev, flops, bwd_chunk, bwd_tile}, Y, NULL, ldb, 0};
  return ar_eval_trip(&b.t);
}

/* Hessian parts of rows [j0, j0 + r) (fwd, bwd, C, fu, alpha already there). */
static void tile_hessian(ar_eval ev, const double *Y, int64_t j0, int64_t r, int lda, int ldb, ar_hessian_kind hk,
                         double *flops)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m, np = ev->npair, dd = d * d, dm = d * m;
  const int exact = hk == AR_HESS_EXACT;
  const double *a1t = p->a1 + j0 * d, *fwd = ev->fwd + j0 * lda, *C = ev->resid + j0 * m;
  double *E = ev->E, *M = ev->M;
  for (int64_t j = 0; j < r; j++) { /* E_j = F R23 - beta p^T */
    const double *fr23 = fwd + j * lda + 2 * d, *P = fwd + j * lda, *beta = fwd + j * lda + d;
    for (int q = 0; q < d; q++)
      for (int k = 0; k < d; k++) E[j * dd + q * d + k] = fr23[q * d + k] - beta[q] * P[k];
  }
  ar_gemm(CblasNoTrans, CblasNoTrans, r * d, m, d, 1.0, E, d, Y, m, 0.0, M, m, flops);
  /* N_j and K_j = a1_j a1_j^T over symmetric pairs */
  for (int64_t j = 0; j < r; j++) {
    const double *Mj = M + j * dm, *al = ev->alpha + j * d, *be = fwd + j * lda + d, *a1j = a1t + j * d;
    const double *wr22 = ev->bwd + (j0 + j) * ldb + d, fu = ev->fu[j0 + j];
    double *Nj = ev->Npair + j * np, *Kj = ev->Kpair + j * np, *mmt = ev->MMt;
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, d, m, 1.0, Mj, m, 0.0, mmt, d); /* M_j M_j^T */
    for (int q = 0; q < d; q++)
      for (int qq = q; qq < d; qq++) {
        const int pq = ar_pair(d, q, qq);
        double t = exact ? wr22[pq] - al[q] * be[qq] - be[q] * al[qq] + 2 * fu * be[q] * be[qq] : 0.0; /* T_j */
        Nj[pq] = 2 * (mmt[q * d + qq] + t);
        Kj[pq] = a1j[q] * a1j[qq];
      }
    *flops += (double)np * (2.0 * m + 8); /* dsyrk + the pair loop */
  }
  ar_gemm(CblasTrans, CblasNoTrans, np, np, r, 1.0, ev->Kpair, np, ev->Npair, np, 1.0, ev->parts.hpair, np, flops);
  /* H_xy terms: a1c[j,(p,i)] = a1_jp C[j,i] (exact only), a1p[j,(p,k)] = a1_jp P[j,k] */
  for (int64_t j = 0; j < r; j++)
    for (int pp = 0; pp < d; pp++) {
      const double a = a1t[j * d + pp];
      if (exact)
        for (int i = 0; i < m; i++) ev->a1c[j * dm + pp * m + i] = a * C[j * m + i];
      for (int k = 0; k < d; k++) ev->a1p[j * dd + pp * d + k] = a * fwd[j * lda + k];
    }
  if (exact) ar_gemm(CblasTrans, CblasNoTrans, dm, dd, r, 1.0, ev->a1c, dm, E, dd, 1.0, ev->parts.t1, dd, flops);
  ar_gemm(CblasTrans, CblasNoTrans, dd, dm, r, 1.0, ev->a1p, dd, M, dm, 1.0, ev->parts.t2, dm, flops);
}

/* Per row tile after both passes: gradient sums, P^T P, and the Hessian parts. */
static void finish_gradient(ar_eval ev, const double *Y, int lda, int ldb, ar_hessian_kind hk, double *flops,
                            double *t_hess)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m, dd = d * d;
  double *gX = ev->sums + 1, *gY = gX + dd, *ptp = gY + d * m;
  for (int64_t j0 = 0; j0 < p->nloc; j0 += ev->tile) {
    const int64_t r = p->nloc - j0 < ev->tile ? p->nloc - j0 : ev->tile;
    const double *a1t = p->a1 + j0 * d, *P = ev->fwd + j0 * lda, *C = ev->resid + j0 * m, *WA2 = ev->bwd + j0 * ldb;
    ar_gemm(CblasTrans, CblasNoTrans, d, d, r, 2.0, a1t, d, WA2, ldb, 1.0, gX, d, flops);
    ar_gemm(CblasTrans, CblasNoTrans, d, m, r, 2.0, P, lda, C, m, 1.0, gY, m, flops);
    ar_gemm(CblasTrans, CblasNoTrans, d, d, r, 1.0, P, lda, P, lda, 1.0, ptp, d, flops);
    if (hk == AR_HESS_NONE) continue;
    const double th = ar_wtime();
    for (int64_t j = 0; j < r; j++) /* alpha = A2^T (f o u) = W A2 + fu beta */
      for (int q = 0; q < d; q++) ev->alpha[j * d + q] = WA2[j * ldb + q] + ev->fu[j0 + j] * P[j * lda + d + q];
    tile_hessian(ev, Y, j0, r, lda, ldb, hk, flops);
    *t_hess += ar_wtime() - th;
    ar_eval_tick(ev);
  }
}

/* Collective: the forward pass (and the backward one if want_grad) into fwd, bwd, C, fu. */
int ar_eval_passes(ar_eval ev, const double *X, const double *Y, int lda, int ldb, int want_grad, double *loss,
                  double *flops)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m;
  ar_gemm(CblasNoTrans, CblasNoTrans, p->nloc, d, d, 1.0, p->a1, d, X, d, 0.0, ev->a1x, d, flops);
  *loss = 0;
  /* the per-row state is that of this point from here on (Hessian-vector products reuse it) */
  ev->at_valid = Y != NULL, ev->at_lda = lda;
  memcpy(ev->at, X, sizeof(double) * d * d);
  if (Y) memcpy(ev->at + d * d, Y, sizeof(double) * d * m);
  if (ev->fused) {
    fused_pass(ev, Y, lda, ldb, want_grad, loss, flops);
    return AR_OK;
  }
  AR_CALL(forward_trip(ev, lda, flops));
  if (Y)
    for (int64_t j0 = 0; j0 < p->nloc; j0 += ev->tile)
      finish_rows(ev, Y, j0, p->nloc - j0 < ev->tile ? p->nloc - j0 : ev->tile, lda, loss, flops);
  if (want_grad) AR_CALL(backward_trip(ev, Y, ldb, flops));
  return AR_OK;
}

int ar_eval_compute(ar_eval ev, const double *X, const double *Y, ar_hessian_kind hk, ar_eval_out *out)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m, dd = d * d, dm = d * m;
  AR_CHECK(hk == AR_HESS_NONE || hk == AR_HESS_EXACT || hk == AR_HESS_GAUSS_NEWTON, AR_ERR_INTERNAL,
           "ar_eval_compute: Hessian kind %d (auto is a solver choice)", (int)hk);
  const int want_grad = out->grad != NULL || hk != AR_HESS_NONE;
  const int lda = hk != AR_HESS_NONE ? ev->ld_fwd : d, ldb = hk == AR_HESS_EXACT ? ev->ld_bwd : d;
  double flops = 0, t_hess = 0, t0 = ar_wtime(), ring0 = ar_ring_wait_seconds(ev->ring);
  double *sums = ev->sums, *gX = sums + 1, *gY = sums + 1 + dd;
  memset(sums, 0, sizeof(double) * (1 + 2 * dd + dm));
  if (hk != AR_HESS_NONE) {
    memset(ev->parts.hpair, 0, sizeof(double) * ev->npair * ev->npair);
    if (hk == AR_HESS_EXACT || ev->t1_used) memset(ev->parts.t1, 0, sizeof(double) * dd * dm); /* GN: stays 0 */
    ev->t1_used = hk == AR_HESS_EXACT;
    memset(ev->parts.t2, 0, sizeof(double) * dd * dm);
  }
  begin_units(ev, want_grad, hk != AR_HESS_NONE);
  AR_CALL(ar_eval_passes(ev, X, Y, lda, ldb, want_grad, &sums[0], &flops));
  if (want_grad) finish_gradient(ev, Y, lda, ldb, hk, &flops, &t_hess);
  double t1 = ar_wtime();
  const int nred = want_grad ? 1 + 2 * dd + dm : 1;
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, sums, nred, MPI_DOUBLE, MPI_SUM, p->comm));
  double lx = ev->opt.lambda_x, ly = ev->opt.lambda_y, rx = 0, ry = 0;
  for (int i = 0; i < dd; i++) rx += X[i] * X[i];
  for (int i = 0; i < dm; i++) ry += Y[i] * Y[i];
  out->loss = sums[0] + lx * rx + ly * ry;
  if (out->grad) {
    for (int i = 0; i < dd; i++) out->grad[i] = gX[i] + 2 * lx * X[i];
    for (int i = 0; i < dm; i++) out->grad[dd + i] = gY[i] + 2 * ly * Y[i];
  }
  double t2 = ar_wtime(), t_hred = 0;
  if (hk != AR_HESS_NONE) {
    memcpy(ev->parts.ptp, gY + dm, sizeof(double) * dd); /* already global: hessian.c adds it once */
    AR_CALL(ar_hess_assemble(p->comm, &ev->parts, lx, ly, out->hess, out->lower_only, &t_hred));
  }
  double t3 = ar_wtime();
  out->flops = flops;
  out->t_ring = ar_ring_wait_seconds(ev->ring) - ring0;
  out->t_kernel = (t1 - t0) - t_hess - out->t_ring;
  out->t_hess = t_hess + (t3 - t2) - t_hred;
  out->t_reduce = (t2 - t1) + t_hred;
  return AR_OK;
}

int ar_eval_normal_equations(ar_eval ev, const double *X, double *PtP, double *PtB)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m;
  double flops = 0, loss;
  memset(PtP, 0, sizeof(double) * d * d);
  memset(PtB, 0, sizeof(double) * d * m);
  begin_units(ev, 0, 0);
  AR_CALL(ar_eval_passes(ev, X, NULL, d, d, 0, &loss, &flops)); /* P alone */
  ar_gemm(CblasTrans, CblasNoTrans, d, d, p->nloc, 1.0, ev->fwd, d, ev->fwd, d, 1.0, PtP, d, &flops);
  ar_gemm(CblasTrans, CblasNoTrans, d, m, p->nloc, 1.0, ev->fwd, d, p->b, m, 1.0, PtB, m, &flops);
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, PtP, d * d, MPI_DOUBLE, MPI_SUM, p->comm));
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, PtB, d * m, MPI_DOUBLE, MPI_SUM, p->comm));
  return AR_OK;
}

/* Y from the normal equations (P^T P + lambda_y I) Y = P^T B; a singular P^T P gets a tiny
 * shift.  Same inputs on every rank and a deterministic LAPACK: every rank gets the same Y. */
static int solve_normal(ar_eval ev, const double *A, const double *Bt, double *Y)
{
  const int d = ev->p->d, m = ev->p->m;
  double *B;
  AR_MALLOC(B, d * (d > m ? d : m));
  double tr = 0;
  for (int k = 0; k < d; k++) tr += A[k * d + k];
  int err = AR_OK;
  for (int attempt = 0; !err && attempt < 2; attempt++) {
    double shift = ev->opt.lambda_y + (attempt ? 1e-12 * tr / d + 1e-300 : 0);
    memcpy(B, A, sizeof(double) * d * d);
    for (int k = 0; k < d; k++) B[k * d + k] += shift;
    for (int k = 0; k < d; k++)
      for (int i = 0; i < m; i++) Y[i * d + k] = Bt[k * m + i]; /* column-major d x m right-hand side */
    int info = 0;
    dposv_("L", &d, &m, B, &d, Y, &d, &info);
    if (info < 0) err = AR_ERROR(AR_ERR_LIB, "dposv: argument %d had an illegal value", -info);
    if (info == 0) break;
    if (attempt == 1) err = AR_ERROR(AR_ERR_NUMERIC, "least-squares Y: P^T P is singular (dposv info %d)", info);
  }
  if (!err) {
    memcpy(B, Y, sizeof(double) * d * m);
    for (int k = 0; k < d; k++)
      for (int i = 0; i < m; i++) Y[k * m + i] = B[i * d + k];
  }
  free(B);
  return err;
}

int ar_solve_least_squares_y(ar_eval ev, const double *X, double *Y)
{
  double loss;
  return ar_reduced_loss(ev, X, Y, &loss);
}

int ar_reduced_loss(ar_eval ev, const double *X, double *Y, double *loss)
{
  const int d = ev->p->d, m = ev->p->m;
  double *A, *Bt;
  AR_MALLOC(A, d * d);
  AR_MALLOC(Bt, d * m);
  int err = ar_eval_normal_equations(ev, X, A, Bt);
  if (!err) err = solve_normal(ev, A, Bt, Y);
  /* L = |B|^2 - 2 tr(Y^T P^T B) + tr(Y^T P^T P Y) + lx |X|^2 + ly |Y|^2 */
  double l = ev->p->bnorm2, rx = 0;
  for (int k = 0; !err && k < d; k++)
    for (int i = 0; i < m; i++) {
      double py = 0;
      for (int kk = 0; kk < d; kk++) py += A[k * d + kk] * Y[kk * m + i];
      l += Y[k * m + i] * (py - 2 * Bt[k * m + i]) + ev->opt.lambda_y * Y[k * m + i] * Y[k * m + i];
    }
  for (int i = 0; i < d * d; i++) rx += X[i] * X[i];
  *loss = l + ev->opt.lambda_x * rx;
  free(A), free(Bt);
  return err;
}
