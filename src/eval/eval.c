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
 * expanded in hessian.c.  The walk over blocks, chunks, tiles and mask boxes is trip.c's; the
 * work arrays are listed in eval_work.h; the least-squares Y is lsq_y.c's. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "hash.h"
#include "memory.h"
#include "softmax.h"
#include "timing.h"
#include "trip.h"

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

static int eval_alloc(ar_eval ev)
{
  ar_problem p = ev->p;
  const ar_work_sizes z = {p->nloc, ev->tile, ev->chunk, p->d, p->m, ev->width, p->masked};
  AR_WORK_LOCALS(z);
  int err = AR_OK;
#define ALLOC(owner, type, name, bucket, when, count, cg)                                                          \
  if (!err && (when) &&                                                                                           \
      !(AR_WORK_AT_##owner(ev, name) = ar_work_alloc(sizeof(type) * (size_t)((count) > 0 ? (count) : 1))))       \
    err = AR_ERROR(AR_ERR_MEM, "out of memory: %s needs %.1f MB (use more ranks or a smaller --tile-mem)",         \
                   #name, (double)sizeof(type) * (double)(count) / 1048576.0);
  AR_EVAL_WORK(ALLOC)
#undef ALLOC
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
  if (!err) err = ar_trip_dry_run(ev);
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
#define FREE(owner, type, name, bucket, when, count, cg) ar_work_free(AR_WORK_AT_##owner(ev, name));
  AR_EVAL_WORK(FREE)
#undef FREE
  ar_hess_parts_free(&ev->parts);
  if (ev->hv_free) ev->hv_free(ev); /* hessvec.c's arrays, if it made them */
  free(ev->hrow_w);
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

/* The next run [*a, *a + len) of rows in the Hessian's sample at or after j, before end (its
 * length returned; 0: none).  Without a sample every row is in it.  The sample is drawn in units
 * of 64 global rows, so a tile holds a few long runs. */
static int64_t sample_run(ar_eval ev, int64_t j, int64_t end, int64_t *a)
{
  if (!ev->hrow_w) {
    *a = j;
    return end - j;
  }
  while (j < end && ev->hrow_w[j] == 0) j++;
  int64_t b = j;
  while (b < end && ev->hrow_w[b] != 0) b++;
  *a = j;
  return b - j;
}

/* out[rows j0 .. j0 + r) = S T + beta out, S (r x cr) the tile's weights: the first d columns
 * (the gradient's) for every row, the others (the Hessian's wide tables) only on the rows in
 * the sample, so that their cost is in proportion to it. */
static void tile_gemm(ar_eval ev, int64_t j0, int64_t r, int64_t cr, const double *S, const double *T, int ldt,
                      double beta, double *out, int ld, double *flops)
{
  const int d = ev->p->d;
  int64_t a = j0, len = ld > d ? sample_run(ev, j0, j0 + r, &a) : r;
  if (len == r) { /* every row: one GEMM */
    ar_gemm(CblasNoTrans, CblasNoTrans, r, ld, cr, 1.0, S, cr, T, ldt, beta, out + j0 * ld, ld, flops);
    return;
  }
  ar_gemm(CblasNoTrans, CblasNoTrans, r, d, cr, 1.0, S, cr, T, ldt, beta, out + j0 * ld, ld, flops);
  for (; len > 0; len = sample_run(ev, a + len, j0 + r, &a))
    ar_gemm(CblasNoTrans, CblasNoTrans, len, ld - d, cr, 1.0, S + (a - j0) * cr, cr, T + d, ldt, beta,
            out + a * ld + d, ld, flops);
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
  tile_gemm(ev, j0, r, cr, ev->scores, T, ldt, beta, ev->bwd, ldb, flops);
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
    tile_gemm(ev, j0, r, n, ev->scores, T, ldt, 0.0, ev->fwd, lda, flops);
    if (Y) finish_rows(ev, Y, j0, r, lda, loss, flops);
    if (T2) backward_tile(ev, j0, r, ev->vals, n, T2, ldt2, ldb, 0.0, flops);
    ar_trip_tick(ev);
  }
}

double ar_eval_exps(ar_eval ev) { return ev->exps; }

int ar_eval_set_hessian_rows(ar_eval ev, const double *w)
{
  ar_problem p = ev->p;
  if (!w) {
    free(ev->hrow_w), ev->hrow_w = NULL;
    return AR_OK;
  }
  if (!ev->hrow_w) ev->hrow_w = malloc(sizeof(double) * (p->nloc > 0 ? p->nloc : 1));
  AR_CHECK(ev->hrow_w, AR_ERR_MEM, "out of memory (Hessian sample)");
  memcpy(ev->hrow_w, w, sizeof(double) * p->nloc);
  return AR_OK;
}

/* Units of AR_SAMPLE_UNIT global rows, each in the sample with probability fraction by a hash
 * of (seed, unit): the same sample whatever the rank count and layout; every sampled row
 * weighs n / (rows sampled), so the sampled row sum estimates the full one. */
#define AR_SAMPLE_UNIT 64
int ar_eval_set_hessian_sample(ar_eval ev, double fraction, uint64_t seed, double *sampled)
{
  ar_problem p = ev->p;
  if (sampled) *sampled = 1;
  if (!(fraction < 1)) return ar_eval_set_hessian_rows(ev, NULL);
  double *w = malloc(sizeof(double) * (p->nloc > 0 ? p->nloc : 1)), count = 0;
  AR_CHECK_AGREE(p->comm, w, AR_ERR_MEM, "out of memory (Hessian sample)");
  const uint64_t cut = (uint64_t)(fraction * 18446744073709551616.0);
  int64_t j = 0;
  for (int i = 0; i < p->nranges; i++)
    for (int64_t g = p->ranges[2 * i]; g < p->ranges[2 * i + 1]; g++, j++) {
      const uint64_t h = ar_mix64(ar_mix64(seed * 0x9e3779b97f4a7c15ULL + 0x5a3d) ^ (uint64_t)(g / AR_SAMPLE_UNIT));
      w[j] = h < cut ? 1.0 : 0.0;
      count += w[j];
    }
  MPI_Allreduce(MPI_IN_PLACE, &count, 1, MPI_DOUBLE, MPI_SUM, p->comm);
  if (count < 1) { /* an empty sample: the full Hessian */
    free(w);
    return ar_eval_set_hessian_rows(ev, NULL);
  }
  for (int64_t k = 0; k < p->nloc; k++) w[k] *= (double)p->n / count;
  if (sampled) *sampled = count / (double)p->n;
  const int err = ar_eval_set_hessian_rows(ev, w);
  free(w);
  return ar_error_agree(p->comm, err);
}

/* Forward trip: online softmax, fwd = F [A3 | A2 | R23] (or F A3). */
typedef struct {
  ar_trip t;
  int lda, ldt;
  const double *T; /* the chunk's right-hand side */
} fwd_trip;

static void fwd_chunk(ar_trip *t, const double *kv, int64_t cr)
{
  fwd_trip *ft = (fwd_trip *)t;
  ft->T = fwd_operand(t->ev, kv, cr, ft->lda, &ft->ldt);
}

static void fwd_tile(ar_trip *t, int64_t j0, int64_t r, int64_t k0, const double *kv, int64_t cr)
{
  fwd_trip *ft = (fwd_trip *)t;
  ar_eval ev = t->ev;
  const int lda = ft->lda;
  ar_trip_logits(ev, j0, r, kv, cr, 0, t->flops);
  ar_softmax_online(ev->scores, r, cr, ev->rmax + j0, ev->rsum + j0, ev->rescale);
  ev->exps += (double)r * (double)cr;
  for (int64_t j = 0; j < r; j++)
    if (ev->rescale[j] != 1.0)
      for (int k = 0; k < lda; k++) ev->fwd[(j0 + j) * lda + k] *= ev->rescale[j];
  tile_gemm(ev, j0, r, cr, ev->scores, ft->T + k0 * ft->ldt, ft->ldt, 1.0, ev->fwd, lda, t->flops);
}

static int forward_trip(ar_eval ev, int lda, double *flops)
{
  ar_problem p = ev->p;
  for (int64_t j = 0; j < p->nloc; j++) ev->rmax[j] = -INFINITY, ev->rsum[j] = 0;
  memset(ev->fwd, 0, sizeof(double) * p->nloc * lda);
  fwd_trip ft = {{ev, flops, fwd_chunk, fwd_tile}, lda, 0, NULL};
  AR_CALL(ar_trip_run(&ft.t));
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
  bwd_trip *bt = (bwd_trip *)t;
  ar_eval ev = t->ev;
  const int d = ev->p->d, m = ev->p->m, w = ev->width;
  bt->T = bwd_operand(ev, kv, cr, bt->ldb, &bt->ldt);
  ar_gemm(CblasNoTrans, CblasNoTrans, cr, m, d, 1.0, kv + (w == d ? 0 : d), w, bt->Y, m, 0.0, ev->vals, m, t->flops);
}

static void bwd_tile(ar_trip *t, int64_t j0, int64_t r, int64_t k0, const double *kv, int64_t cr)
{
  bwd_trip *bt = (bwd_trip *)t;
  ar_trip_logits(t->ev, j0, r, kv, cr, 1, t->flops);
  backward_tile(t->ev, j0, r, t->ev->vals + k0 * t->ev->p->m, cr, bt->T + k0 * bt->ldt, bt->ldt, bt->ldb, 1.0,
                t->flops);
}

static int backward_trip(ar_eval ev, const double *Y, int ldb, double *flops)
{
  memset(ev->bwd, 0, sizeof(double) * ev->p->nloc * ldb);
  bwd_trip bt = {{ev, flops, bwd_chunk, bwd_tile}, Y, NULL, ldb, 0};
  return ar_trip_run(&bt.t);
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
    const double w = ev->hrow_w ? ev->hrow_w[j0 + j] : 1.0; /* the row's weight in the sample */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, d, m, 1.0, Mj, m, 0.0, mmt, d); /* M_j M_j^T */
    for (int q = 0; q < d; q++)
      for (int qq = q; qq < d; qq++) {
        const int pq = ar_pair(d, q, qq);
        double t = exact ? wr22[pq] - al[q] * be[qq] - be[q] * al[qq] + 2 * fu * be[q] * be[qq] : 0.0; /* T_j */
        Nj[pq] = 2 * (mmt[q * d + qq] + t);
        Kj[pq] = w * a1j[q] * a1j[qq];
      }
    *flops += (double)np * (2.0 * m + 8); /* dsyrk + the pair loop */
  }
  ar_gemm(CblasTrans, CblasNoTrans, np, np, r, 1.0, ev->Kpair, np, ev->Npair, np, 1.0, ev->parts.hpair, np, flops);
  /* H_xy terms: a1c[j,(p,i)] = a1_jp C[j,i] (exact only), a1p[j,(p,k)] = a1_jp P[j,k] */
  for (int64_t j = 0; j < r; j++)
    for (int pp = 0; pp < d; pp++) {
      const double a = a1t[j * d + pp] * (ev->hrow_w ? ev->hrow_w[j0 + j] : 1.0);
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
    int64_t a, len; /* the Hessian parts of the tile's rows in the sample, run by run */
    for (len = sample_run(ev, j0, j0 + r, &a); len > 0; len = sample_run(ev, a + len, j0 + r, &a)) {
      for (int64_t j = 0; j < len; j++) /* alpha = A2^T (f o u) = W A2 + fu beta */
        for (int q = 0; q < d; q++)
          ev->alpha[j * d + q] = ev->bwd[(a + j) * ldb + q] + ev->fu[a + j] * ev->fwd[(a + j) * lda + d + q];
      tile_hessian(ev, Y, a, len, lda, ldb, hk, flops);
    }
    *t_hess += ar_wtime() - th;
    ar_trip_tick(ev);
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
