/* Hessian-vector products without the Hessian, and the pieces of the preconditioner of the
 * matrix-free Newton step (docs/math.md §7).
 *
 * H v is the directional derivative of the gradient along v = (dX, dY) (Pearlmutter's
 * R-operator), computed tile by tile like the gradient, at the point whose per-row state
 * (A1 X, P, lse, C, fu) the evaluator holds (refreshed by a forward pass when it holds another
 * point).  With dots for derivatives along v:
 *
 *   trip A:  dS = (A1 dX) A2^T,  F = exp(S - lse),  sigma_j = f_j . ds_j,
 *            dP = (F o dS) A3 - sigma p,   dC = dP Y + P dY
 *            dfu_j = dc_j . (c_j + b_j) + c_j . dc_j        (fu_j = c_j . (P Y)_j)
 *   trip B:  U = C V^T,  dU = dC V^T + C dV^T  (V = A3 Y, dV = A3 dY),  dF = F o (dS - sigma 1^T)
 *            dW = dF o (U - fu 1^T) + F o (dU - dfu 1^T)
 *   H v = [2 A1^T (dW A2) ; 2 (dP^T C + P^T dC)] + ridge.
 *
 * Gauss-Newton (2 J^T J v): J v = dC, and J^T dC is the gradient formula with C replaced by dC
 * at fixed F and V: W' = F o (dC V^T - fu' 1^T), fu'_j = dc_j . (P Y)_j, H v = [2 A1^T (W' A2);
 * 2 P^T dC].  Each trip is the same ring loop as the gradient's; memory is O(D) beyond it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "memory.h"
#include "trip.h"

struct ar_hessvec_s {
  AR_HESSVEC_WORK(AR_WORK_DECLARE) /* eval_work.h: what each holds, its size */
};

static void hessvec_free(ar_eval ev)
{
  struct ar_hessvec_s *h = ev->hv;
  if (!h) return;
#define FREE(owner, type, name, bucket, when, count, cg) ar_work_free(AR_WORK_AT_##owner(h, name));
  AR_HESSVEC_WORK(FREE)
#undef FREE
  free(h);
  ev->hv = NULL, ev->hv_free = NULL;
}

static int hessvec_alloc(ar_eval ev)
{
  if (ev->hv) return AR_OK;
  ar_problem p = ev->p;
  const ar_work_sizes z = {p->nloc, ev->tile, ev->chunk, p->d, p->m, ev->width, p->masked};
  AR_WORK_LOCALS(z);
  struct ar_hessvec_s *h = calloc(1, sizeof *h);
  int err = h ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory (Hessian-vector products)");
#define ALLOC(owner, type, name, bucket, when, count, cg)                                                          \
  if (!err && (when) &&                                                                                           \
      !(AR_WORK_AT_##owner(h, name) = ar_work_alloc(sizeof(type) * (size_t)((count) > 0 ? (count) : 1))))        \
    err = AR_ERROR(AR_ERR_MEM, "out of memory: %s needs %.1f MB", #name,                                          \
                   (double)sizeof(type) * (double)(count) / 1048576.0);
  AR_HESSVEC_WORK(ALLOC)
#undef ALLOC
  ev->hv = h;
  if (h) ev->hv_free = hessvec_free; /* the evaluator's destroy releases them through this */
  return err;
}

/* The per-row state at (X, Y): kept from the last evaluation there, else a forward pass. */
static int state_at(ar_eval ev, const double *X, const double *Y, double *flops)
{
  const int dd = ev->p->d * ev->p->d, D = dd + ev->p->d * ev->p->m;
  if (ev->at_valid && !memcmp(ev->at, X, sizeof(double) * dd) && !memcmp(ev->at + dd, Y, sizeof(double) * (D - dd)))
    return AR_OK;
  double loss;
  return ar_eval_passes(ev, X, Y, ev->p->d, ev->p->d, 0, &loss, flops);
}

/* F and dS of rows [j0, j0 + r) against a chunk, into scores and sdot. */
static void tile_f_ds(ar_eval ev, int64_t j0, int64_t r, const double *kv, int64_t cr, double *flops)
{
  const int d = ev->p->d;
  ar_trip_logits(ev, j0, r, kv, cr, 1, flops);
  ar_gemm(CblasNoTrans, CblasTrans, r, cr, d, 1.0, ev->hv->a1dx + j0 * d, d, kv, ev->width, 0.0, ev->hv->sdot, cr,
          flops);
}

/* Trip A: dP = (F o dS) A3 - sigma p, accumulated in pdot (and sigma). */
static void a_tile(ar_trip *t, int64_t j0, int64_t r, int64_t k0, const double *kv, int64_t cr)
{
  ar_eval ev = t->ev;
  struct ar_hessvec_s *h = ev->hv;
  const int d = ev->p->d, w = ev->width;
  tile_f_ds(ev, j0, r, kv, cr, t->flops);
  for (int64_t j = 0; j < r; j++) {
    double *g = h->sdot + j * cr, s = 0;
    const double *f = ev->scores + j * cr;
    for (int64_t l = 0; l < cr; l++) s += (g[l] *= f[l]);
    h->sig[j0 + j] += s;
  }
  ar_gemm(CblasNoTrans, CblasNoTrans, r, d, cr, 1.0, h->sdot, cr, kv + (w == d ? 0 : d), w, 1.0, h->pdot + j0 * d, d,
          t->flops);
}

static int trip_a(ar_eval ev, double *flops)
{
  memset(ev->hv->pdot, 0, sizeof(double) * ev->p->nloc * ev->p->d);
  memset(ev->hv->sig, 0, sizeof(double) * ev->p->nloc);
  ar_trip t = {ev, flops, NULL, a_tile};
  return ar_trip_run(&t);
}

/* After trip A: dP, dC, dfu per row. */
static void row_derivatives(ar_eval ev, const double *Y, const double *dY, int exact, double *flops)
{
  ar_problem p = ev->p;
  struct ar_hessvec_s *h = ev->hv;
  const int d = p->d, m = p->m, lda = ev->at_lda;
  for (int64_t j = 0; j < p->nloc; j++)
    for (int k = 0; k < d; k++) h->pdot[j * d + k] -= h->sig[j] * ev->fwd[j * lda + k];
  ar_gemm(CblasNoTrans, CblasNoTrans, p->nloc, m, d, 1.0, h->pdot, d, Y, m, 0.0, h->cdot, m, flops);
  ar_gemm(CblasNoTrans, CblasNoTrans, p->nloc, m, d, 1.0, ev->fwd, lda, dY, m, 1.0, h->cdot, m, flops);
  for (int64_t j = 0; j < p->nloc; j++) {
    double s = 0;
    for (int i = 0; i < m; i++) {
      const double c = ev->resid[j * m + i], dc = h->cdot[j * m + i];
      s += dc * (c + p->b[j * m + i]) + (exact ? c * dc : 0);
    }
    h->fudot[j] = s;
  }
}

/* Trip B: dW A2 (exact) or W' A2 (Gauss-Newton), accumulated in wdot. */
typedef struct {
  ar_trip t;
  const double *Y, *dY;
  int exact;
} b_trip;

static void b_chunk(ar_trip *t, const double *kv, int64_t cr)
{
  b_trip *bt = (b_trip *)t;
  ar_eval ev = t->ev;
  const int d = ev->p->d, m = ev->p->m, w = ev->width, a3 = w == d ? 0 : d;
  ar_gemm(CblasNoTrans, CblasNoTrans, cr, m, d, 1.0, kv + a3, w, bt->Y, m, 0.0, ev->vals, m, t->flops);
  if (bt->exact)
    ar_gemm(CblasNoTrans, CblasNoTrans, cr, m, d, 1.0, kv + a3, w, bt->dY, m, 0.0, ev->hv->vdot, m, t->flops);
}

static void b_tile(ar_trip *t, int64_t j0, int64_t r, int64_t k0, const double *kv, int64_t cr)
{
  b_trip *bt = (b_trip *)t;
  ar_eval ev = t->ev;
  struct ar_hessvec_s *h = ev->hv;
  const int d = ev->p->d, m = ev->p->m;
  const double *vals = ev->vals + k0 * m, *vdot = h->vdot + k0 * m;
  const double *C = ev->resid + j0 * m, *dC = h->cdot + j0 * m;
  double *U = ev->cvt, *G = h->sdot;
  if (bt->exact) {
    tile_f_ds(ev, j0, r, kv, cr, t->flops);
    ar_gemm(CblasNoTrans, CblasTrans, r, cr, m, 1.0, C, m, vals, m, 0.0, U, cr, t->flops);
    for (int64_t j = 0; j < r; j++) { /* G = dF o (U - fu) */
      const double sg = h->sig[j0 + j], fu = ev->fu[j0 + j];
      const double *f = ev->scores + j * cr, *u = U + j * cr;
      double *g = G + j * cr;
      for (int64_t l = 0; l < cr; l++) g[l] = f[l] * (g[l] - sg) * (u[l] - fu);
    }
    ar_gemm(CblasNoTrans, CblasTrans, r, cr, m, 1.0, dC, m, vals, m, 0.0, U, cr, t->flops);
    ar_gemm(CblasNoTrans, CblasTrans, r, cr, m, 1.0, C, m, vdot, m, 1.0, U, cr, t->flops);
    for (int64_t j = 0; j < r; j++) { /* G += F o (dU - dfu) */
      const double dfu = h->fudot[j0 + j];
      const double *f = ev->scores + j * cr, *u = U + j * cr;
      double *g = G + j * cr;
      for (int64_t l = 0; l < cr; l++) g[l] += f[l] * (u[l] - dfu);
    }
  } else {
    ar_trip_logits(ev, j0, r, kv, cr, 1, t->flops);
    ar_gemm(CblasNoTrans, CblasTrans, r, cr, m, 1.0, dC, m, vals, m, 0.0, U, cr, t->flops);
    for (int64_t j = 0; j < r; j++) { /* G = F o (dC V^T - fu') */
      const double fu = h->fudot[j0 + j];
      const double *f = ev->scores + j * cr, *u = U + j * cr;
      double *g = G + j * cr;
      for (int64_t l = 0; l < cr; l++) g[l] = f[l] * (u[l] - fu);
    }
  }
  ar_gemm(CblasNoTrans, CblasNoTrans, r, d, cr, 1.0, G, cr, kv, ev->width, 1.0, h->wdot + j0 * d, d, t->flops);
}

static int trip_b(ar_eval ev, const double *Y, const double *dY, int exact, double *flops)
{
  memset(ev->hv->wdot, 0, sizeof(double) * ev->p->nloc * ev->p->d);
  b_trip bt = {{ev, flops, b_chunk, b_tile}, Y, dY, exact};
  return ar_trip_run(&bt.t);
}

int ar_eval_hessvec(ar_eval ev, const double *X, const double *Y, ar_hessian_kind hk, const double *v, double *hv,
                    double *flops)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m, dd = d * d, D = dd + d * m;
  AR_CHECK(hk == AR_HESS_EXACT || hk == AR_HESS_GAUSS_NEWTON, AR_ERR_INTERNAL, "ar_eval_hessvec: kind %d", (int)hk);
  AR_CALL(ar_error_agree(p->comm, hessvec_alloc(ev)));
  AR_CALL(state_at(ev, X, Y, flops));
  struct ar_hessvec_s *h = ev->hv;
  const int exact = hk == AR_HESS_EXACT;
  const double *dX = v, *dY = v + dd;
  ar_gemm(CblasNoTrans, CblasNoTrans, p->nloc, d, d, 1.0, p->a1, d, dX, d, 0.0, h->a1dx, d, flops);
  AR_CALL(trip_a(ev, flops));
  row_derivatives(ev, Y, dY, exact, flops);
  AR_CALL(trip_b(ev, Y, dY, exact, flops));
  memset(hv, 0, sizeof(double) * D);
  ar_gemm(CblasTrans, CblasNoTrans, d, d, p->nloc, 2.0, p->a1, d, h->wdot, d, 0.0, hv, d, flops);
  ar_gemm(CblasTrans, CblasNoTrans, d, m, p->nloc, 2.0, ev->fwd, ev->at_lda, h->cdot, m, 0.0, hv + dd, m, flops);
  if (exact) ar_gemm(CblasTrans, CblasNoTrans, d, m, p->nloc, 2.0, h->pdot, d, ev->resid, m, 1.0, hv + dd, m, flops);
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, hv, D, MPI_DOUBLE, MPI_SUM, p->comm));
  for (int i = 0; i < dd; i++) hv[i] += 2 * ev->opt.lambda_x * v[i];
  for (int i = dd; i < D; i++) hv[i] += 2 * ev->opt.lambda_y * v[i];
  return AR_OK;
}

/* The preconditioner's trip: KF = F [A2 | A2 (x) V], the table built per chunk. */
typedef struct {
  ar_trip t;
  const double *Y;
} pre_trip;

static void pre_chunk(ar_trip *t, const double *kv, int64_t cr)
{
  ar_eval ev = t->ev;
  const int d = ev->p->d, m = ev->p->m, w = ev->width, ld = d + d * m;
  ar_gemm(CblasNoTrans, CblasNoTrans, cr, m, d, 1.0, kv + (w == d ? 0 : d), w, ((pre_trip *)t)->Y, m, 0.0, ev->vals, m,
          t->flops);
  for (int64_t l = 0; l < cr; l++) { /* [a2_l | a2_l (x) v_l] */
    double *row = ev->hv->tab_pre + l * ld;
    for (int q = 0; q < d; q++) {
      row[q] = kv[l * w + q];
      for (int i = 0; i < m; i++) row[d + q * m + i] = kv[l * w + q] * ev->vals[l * m + i];
    }
  }
}

static void pre_tile(ar_trip *t, int64_t j0, int64_t r, int64_t k0, const double *kv, int64_t cr)
{
  ar_eval ev = t->ev;
  const int ld = ev->p->d + ev->p->d * ev->p->m;
  ar_trip_logits(ev, j0, r, kv, cr, 1, t->flops);
  ar_gemm(CblasNoTrans, CblasNoTrans, r, ld, cr, 1.0, ev->scores, cr, ev->hv->tab_pre + k0 * ld, ld, 1.0,
          ev->hv->kf + j0 * ld, ld, t->flops);
}

/* One trip F [A2 | A2 (x) V] at (X, Y) into kf (and the forward state at (X, Y)). */
static int pre_pass(ar_eval ev, const double *X, const double *Y, double *flops)
{
  ar_problem p = ev->p;
  AR_CALL(ar_error_agree(p->comm, hessvec_alloc(ev)));
  AR_CALL(state_at(ev, X, Y, flops));
  memset(ev->hv->kf, 0, sizeof(double) * p->nloc * (p->d + p->d * p->m));
  pre_trip pt = {{ev, flops, pre_chunk, pre_tile}, Y};
  return ar_trip_run(&pt.t);
}

/* M_j (d x m) of local row j after pre_pass: KF_j - beta_j (x) (P Y)_j, (P Y)_j = c_j + b_j. */
static void row_m(ar_eval ev, int64_t j, double *Mj)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m;
  const double *kfj = ev->hv->kf + j * (d + d * m);
  for (int q = 0; q < d; q++)
    for (int i = 0; i < m; i++) Mj[q * m + i] = kfj[d + q * m + i] - kfj[q] * (ev->resid[j * m + i] + p->b[j * m + i]);
}

int ar_eval_gn_rows(ar_eval ev, const double *X, const double *Y, double *P, double *M, double *C, double *flops)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m;
  AR_CALL(pre_pass(ev, X, Y, flops));
  for (int64_t j = 0; j < p->nloc; j++) {
    row_m(ev, j, M + j * d * m);
    memcpy(P + j * d, ev->fwd + j * ev->at_lda, sizeof(double) * d);
  }
  memcpy(C, ev->resid, sizeof(double) * p->nloc * m);
  return AR_OK;
}

/* The Kronecker model of the X block, H_xx = sum_j (a1_j a1_j^T) (x) N_j ~ G1 (x) Nbar with
 * G1 = A1^T A1 and Nbar = (1/n) sum_j 2 M_j M_j^T (the Gauss-Newton N_j), and P^T P for the Y
 * block.  M_j = A2^T diag(f_j) V - beta_j (P Y)_j^T comes from one trip: F [A2 | A2 (x) V]. */
int ar_eval_precond(ar_eval ev, const double *X, const double *Y, double *G1, double *Nbar, double *PtP,
                    double *flops)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m;
  AR_CALL(pre_pass(ev, X, Y, flops));
  /* Nbar += 2 M_j M_j^T */
  double *sums = calloc((size_t)3 * d * d, sizeof(double)), *Mj = malloc(sizeof(double) * d * m);
  AR_CHECK(sums && Mj, AR_ERR_MEM, "out of memory (preconditioner)");
  for (int64_t j = 0; j < p->nloc; j++) {
    row_m(ev, j, Mj);
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, d, m, 2.0, Mj, m, 1.0, sums + d * d, d);
  }
  *flops += 2.0 * p->nloc * d * d * m;
  ar_gemm(CblasTrans, CblasNoTrans, d, d, p->nloc, 1.0, p->a1, d, p->a1, d, 0.0, sums, d, flops);
  ar_gemm(CblasTrans, CblasNoTrans, d, d, p->nloc, 1.0, ev->fwd, ev->at_lda, ev->fwd, ev->at_lda, 0.0, sums + 2 * d * d,
          d, flops);
  int rc = MPI_Allreduce(MPI_IN_PLACE, sums, 3 * d * d, MPI_DOUBLE, MPI_SUM, p->comm);
  if (rc == MPI_SUCCESS) {
    for (int a = 0; a < d; a++) /* dsyrk filled the upper triangle */
      for (int b = 0; b < d; b++) sums[d * d + a * d + b] = a <= b ? sums[d * d + a * d + b] : sums[d * d + b * d + a];
    memcpy(G1, sums, sizeof(double) * d * d);
    for (int i = 0; i < d * d; i++) Nbar[i] = sums[d * d + i] / (double)p->n;
    memcpy(PtP, sums + 2 * d * d, sizeof(double) * d * d);
  }
  free(sums), free(Mj);
  AR_CHECK(rc == MPI_SUCCESS, AR_ERR_MPI, "MPI_Allreduce of the preconditioner failed");
  return AR_OK;
}
