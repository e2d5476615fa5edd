/* Loss, gradient and the parts of the joint Hessian, one softmax row tile at a time.
 *
 * For a tile of r rows j (MATH.md §2-§3; every heavy step is one GEMM):
 *   S = (A1_t X) A2^T,  F = softmax_rows(S)           r x n   (never more than one tile)
 *   F [A3 | A2 | R23] = [P | beta | F R23]            (loss only: F A3 = P)
 *   C = P Y - B_t,  L += ||C||^2
 *   U = C V^T,  W = F o U - F o fu 1^T = G/2,  fu = rowsum(F o U)
 *   W [A2 | R22] = [W A2 | A2^T diag(w_j) A2 over pairs]   (gradient only: W A2)
 *   grad_X += 2 A1_t^T (W A2),  grad_Y += 2 P^T C,  P^T P += P^T P
 * and for the Hessian
 *   alpha = W A2 + fu beta (= A2^T (f o u)),  E = F R23 - beta (x) p,  M = E Y   (E_j, M_j of §3)
 *   N_j = 2 (M_j M_j^T + T_j),  hpair += K^T N (pairs of p and of q),
 *   t1 += (A1 o C)^T E,  t2 += (A1 o P)^T M.
 * Gauss-Newton drops T_j and t1, and so the R22 columns (W A2 alone).  The parts are reduced
 * and expanded in hessian.c.  The two tables [A3 | A2 | R23] and [A2 | R22] depend only on
 * the data: built once, [A2 | R22] at the first exact Hessian. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "memory.h"
#include "problem_impl.h"
#include "softmax.h"
#include "timing.h"

struct ar_eval_s {
  ar_problem p;
  ar_eval_options opt;
  int64_t tile;
  int npair;
  double *t3;    /* n x ld3: [A3 | A2 | R23], R23[l,(q,k)] = a2_lq a3_lk */
  double *t2;    /* n x ld2: [A2 | R22],      R22[l,{q<=q'}] = a2_lq a2_lq' */
  int ld3, ld2, t2_ready, t1_used;
  double *v;     /* n x m:         V = A3 Y */
  /* tile work arrays */
  double *s, *u; /* r x n: S then F; U then FU then G */
  double *t1x, *pt, *ct, *beta, *alpha, *fu;
  double *ft;    /* r x ld3: F [A3 | A2 | R23] */
  double *wt;    /* r x ld2: W [A2 | R22] */
  double *e, *mm, *nsym, *k, *z1, *z2, *mmt;
  ar_hess_parts parts;
  double *red;   /* reduction buffer: loss, grad_X, grad_Y, PtP */
};

void ar_eval_options_default(ar_eval_options *o)
{
  memset(o, 0, sizeof *o);
  o->tile = 0;
  o->tile_mem_mb = 32; /* small tiles keep F in cache between the passes over it */
}

static void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, double alpha,
                 const double *A, int64_t lda, const double *B, int64_t ldb, double beta, double *C, int64_t ldc,
                 double *flops)
{
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
  *flops += 2.0 * (double)M * (double)N * (double)K;
}

int ar_eval_create(ar_problem p, const ar_eval_options *opt, ar_eval *out)
{
  *out = NULL;
  int err = AR_OK;
  ar_eval ev = calloc(1, sizeof *ev);
  if (!ev) err = AR_ERROR(AR_ERR_MEM, "out of memory creating the evaluator");
  if (!err) {
    *out = ev;
    ev->p = p;
    ev->opt = *opt;
    const int64_t n = p->n;
    const int d = p->d, m = p->m, npair = d * (d + 1) / 2;
    ev->npair = npair;
    const int64_t t = ar_plan_tile_rows(n, d, m, p->size, opt->tile, opt->tile_mem_mb);
    ev->tile = t;
    /* int overflow guard for BLAS: every GEMM dimension and leading dimension must fit in int */
    if ((double)n * d * d > 2147483647.0 || (double)t * n > 9.0e15 || (double)d * d * m > 2147483647.0)
      err = AR_ERROR(AR_ERR_DATA, "problem too large for 32-bit BLAS indices (n=%lld d=%d m=%d)", (long long)n, d, m);
  }
  if (!err) {
    const int64_t n = p->n, r = ev->tile;
    const int d = p->d, m = p->m, np = ev->npair;
#define ALLOC(ptr, cnt) \
  if (!err && !((ptr) = calloc((cnt) > 0 ? (size_t)(cnt) : 1, sizeof(double)))) \
    err = AR_ERROR(AR_ERR_MEM, "out of memory: %s needs %.1f MB (reduce --tile or n)", #ptr, 8.0 * (double)(cnt) / 1048576.0)
/* the large arrays come from ar_work_alloc (memory.c) */
#define WORK(ptr, cnt) \
  if (!err && !((ptr) = ar_work_alloc(sizeof(double) * (size_t)(cnt)))) \
    err = AR_ERROR(AR_ERR_MEM, "out of memory: %s needs %.1f MB (reduce --tile or n)", #ptr, 8.0 * (double)(cnt) / 1048576.0)
    ev->ld3 = 2 * d + d * d, ev->ld2 = d + np;
    WORK(ev->t3, n * ev->ld3);
    WORK(ev->t2, n * ev->ld2);
    ALLOC(ev->v, n * m);
    WORK(ev->s, r * n);
    WORK(ev->u, r * n);
    ALLOC(ev->t1x, r * d);
    ALLOC(ev->pt, r * d);
    ALLOC(ev->ct, r * m);
    ALLOC(ev->ft, r * ev->ld3);
    ALLOC(ev->wt, r * ev->ld2);
    ALLOC(ev->beta, r * d);
    ALLOC(ev->alpha, r * d);
    ALLOC(ev->fu, r);
    ALLOC(ev->e, r * d * d);
    ALLOC(ev->mm, r * d * m);
    ALLOC(ev->nsym, r * np);
    ALLOC(ev->k, r * np);
    ALLOC(ev->z1, r * d * m);
    ALLOC(ev->z2, r * d * d);
    ALLOC(ev->mmt, d * d);
    ALLOC(ev->parts.hpair, (int64_t)np * np);
    ALLOC(ev->parts.t1, (int64_t)d * m * d * d);
    ALLOC(ev->parts.t2, (int64_t)d * d * d * m);
    ALLOC(ev->parts.ptp, d * d);
    ALLOC(ev->red, 1 + 2 * d * d + d * m);
#undef ALLOC
#undef WORK
    ev->parts.d = d, ev->parts.m = m, ev->parts.npair = np;
    if (!err) {
      const double *a2 = p->a2, *a3 = p->a3;
      for (int64_t l = 0; l < n; l++) {
        double *t3 = ev->t3 + l * ev->ld3;
        for (int q = 0; q < d; q++) {
          t3[q] = a3[l * d + q], t3[d + q] = a2[l * d + q];
          for (int k = 0; k < d; k++) t3[2 * d + q * d + k] = a2[l * d + q] * a3[l * d + k];
        }
      }
    }
  }
  err = ar_error_agree(p->comm, err);
  if (err) ar_eval_destroy(out);
  return err;
}

void ar_eval_destroy(ar_eval *pev)
{
  ar_eval ev = *pev;
  if (!ev) return;
  double *work[] = {ev->t3, ev->t2, ev->s, ev->u};
  for (size_t i = 0; i < sizeof work / sizeof work[0]; i++) ar_work_free(work[i]);
  double *bufs[] = {ev->v, ev->t1x, ev->pt, ev->ct, ev->ft, ev->wt, ev->beta,
                    ev->alpha, ev->fu, ev->e, ev->mm, ev->nsym, ev->k, ev->z1, ev->z2, ev->mmt,
                    ev->parts.hpair, ev->parts.t1, ev->parts.t2, ev->parts.ptp, ev->red};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
  ar_hess_parts_free(&ev->parts);
  free(ev);
  *pev = NULL;
}

int64_t ar_eval_tile(ar_eval ev) { return ev->tile; }

ar_problem ar_eval_problem(ar_eval ev) { return ev->p; }

/* [A2 | R22] is only needed by the exact Hessian: built at its first use, so a Gauss-Newton
 * or gradient-only run never touches (and never faults in) its pages. */
static void build_t2(ar_eval ev)
{
  const int64_t n = ev->p->n;
  const int d = ev->p->d;
  const double *a2 = ev->p->a2;
  for (int64_t l = 0; l < n; l++) {
    double *t2 = ev->t2 + l * ev->ld2;
    for (int q = 0; q < d; q++) {
      t2[q] = a2[l * d + q];
      for (int qq = q; qq < d; qq++) t2[d + ar_pair(d, q, qq)] = a2[l * d + q] * a2[l * d + qq];
    }
  }
  ev->t2_ready = 1;
}

/* Forward pass of one tile: F (in ev->s) and P = F A3 (in ev->pt); with_hess: also
 * beta = F A2 and F R23 (in ev->ft), from one GEMM against [A3 | A2 | R23]. */
static void tile_forward(ar_eval ev, const double *X, const double *a1t, int64_t r, int with_hess, double *flops)
{
  ar_problem p = ev->p;
  const int64_t n = p->n;
  const int d = p->d, ld3 = ev->ld3;
  gemm(CblasNoTrans, CblasNoTrans, r, d, d, 1.0, a1t, d, X, d, 0.0, ev->t1x, d, flops);
  gemm(CblasNoTrans, CblasTrans, r, n, d, 1.0, ev->t1x, d, p->a2, d, 0.0, ev->s, n, flops);
  ar_softmax_rows(ev->s, r, n);
  if (!with_hess) {
    gemm(CblasNoTrans, CblasNoTrans, r, d, n, 1.0, ev->s, n, ev->t3, ld3, 0.0, ev->pt, d, flops);
    return;
  }
  gemm(CblasNoTrans, CblasNoTrans, r, ld3, n, 1.0, ev->s, n, ev->t3, ld3, 0.0, ev->ft, ld3, flops);
  for (int64_t j = 0; j < r; j++)
    for (int q = 0; q < d; q++) ev->pt[j * d + q] = ev->ft[j * ld3 + q], ev->beta[j * d + q] = ev->ft[j * ld3 + d + q];
}

/* Hessian parts of one tile (ft, wt, P, beta, alpha, C, fu already there). */
static void tile_hessian(ar_eval ev, const double *Y, const double *a1t, int64_t r, ar_hessian_kind hk,
                         double *flops)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m, np = ev->npair, dd = d * d, dm = d * m;
  const int exact = hk == AR_HESS_EXACT;
  double *E = ev->e, *M = ev->mm;
  for (int64_t j = 0; j < r; j++) {
    const double *fr23 = ev->ft + j * ev->ld3 + 2 * d;
    for (int q = 0; q < d; q++)
      for (int k = 0; k < d; k++) E[j * dd + q * d + k] = fr23[q * d + k] - ev->beta[j * d + q] * ev->pt[j * d + k];
  }
  gemm(CblasNoTrans, CblasNoTrans, r * d, m, d, 1.0, E, d, Y, m, 0.0, M, m, flops);
  /* N_j over symmetric pairs, and K_j = a1_j a1_j^T over symmetric pairs */
  for (int64_t j = 0; j < r; j++) {
    const double *Mj = M + j * dm, *al = ev->alpha + j * d, *be = ev->beta + j * d, *a1j = a1t + j * d;
    double *Nj = ev->nsym + j * np, *Kj = ev->k + j * np, fu = ev->fu[j], *mmt = ev->mmt;
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, d, m, 1.0, Mj, m, 0.0, mmt, d); /* M_j M_j^T */
    for (int q = 0; q < d; q++)
      for (int qq = q; qq < d; qq++) {
        double t = exact ? ev->wt[j * ev->ld2 + d + ar_pair(d, q, qq)] - al[q] * be[qq] - be[q] * al[qq] +
                               2 * fu * be[q] * be[qq]
                         : 0.0;
        Nj[ar_pair(d, q, qq)] = 2 * (mmt[q * d + qq] + t);
        Kj[ar_pair(d, q, qq)] = a1j[q] * a1j[qq];
      }
    *flops += (double)np * (2.0 * m + 8); /* dsyrk + the pair loop */
  }
  gemm(CblasTrans, CblasNoTrans, np, np, r, 1.0, ev->k, np, ev->nsym, np, 1.0, ev->parts.hpair, np, flops);
  /* H_xy terms: Z1[j,(p,i)] = a1_jp C[j,i] (exact only), Z2[j,(p,k)] = a1_jp P[j,k] */
  for (int64_t j = 0; j < r; j++)
    for (int pp = 0; pp < d; pp++) {
      double a = a1t[j * d + pp];
      if (exact)
        for (int i = 0; i < m; i++) ev->z1[j * dm + pp * m + i] = a * ev->ct[j * m + i];
      for (int k = 0; k < d; k++) ev->z2[j * dd + pp * d + k] = a * ev->pt[j * d + k];
    }
  if (exact) gemm(CblasTrans, CblasNoTrans, dm, dd, r, 1.0, ev->z1, dm, E, dd, 1.0, ev->parts.t1, dd, flops);
  gemm(CblasTrans, CblasNoTrans, dd, dm, r, 1.0, ev->z2, dd, M, dm, 1.0, ev->parts.t2, dm, flops);
}

int ar_eval_compute(ar_eval ev, const double *X, const double *Y, ar_hessian_kind hk, ar_eval_out *out)
{
  ar_problem p = ev->p;
  const int64_t n = p->n;
  const int d = p->d, m = p->m, dd = d * d, dm = d * m;
  AR_CHECK(hk == AR_HESS_NONE || hk == AR_HESS_EXACT || hk == AR_HESS_GAUSS_NEWTON, AR_ERR_INTERNAL,
           "ar_eval_compute: Hessian kind %d (auto is a solver choice)", (int)hk);
  const int want_grad = out->grad != NULL || hk != AR_HESS_NONE;
  double flops = 0, t0 = ar_wtime();
  double *red = ev->red, *gX = red + 1, *gY = red + 1 + dd, *ptp = red + 1 + dd + dm;
  memset(red, 0, sizeof(double) * (1 + 2 * dd + dm));
  if (hk != AR_HESS_NONE) {
    memset(ev->parts.hpair, 0, sizeof(double) * ev->npair * ev->npair);
    if (hk == AR_HESS_EXACT || ev->t1_used) /* Gauss-Newton: t1 stays 0 (calloc) */
      memset(ev->parts.t1, 0, sizeof(double) * dd * dm);
    ev->t1_used = hk == AR_HESS_EXACT;
    memset(ev->parts.t2, 0, sizeof(double) * dd * dm);
  }
  if (hk == AR_HESS_EXACT && !ev->t2_ready) build_t2(ev);
  gemm(CblasNoTrans, CblasNoTrans, n, m, d, 1.0, p->a3, d, Y, m, 0.0, ev->v, m, &flops);
  double t_hess = 0;
  for (int64_t j0 = 0; j0 < p->nloc; j0 += ev->tile) {
    const int64_t r = p->nloc - j0 < ev->tile ? p->nloc - j0 : ev->tile;
    const double *a1t = p->a1 + j0 * d, *bt = p->b + j0 * m;
    tile_forward(ev, X, a1t, r, hk != AR_HESS_NONE, &flops);
    double *C = ev->ct;
    memcpy(C, bt, sizeof(double) * r * m);
    gemm(CblasNoTrans, CblasNoTrans, r, m, d, 1.0, ev->pt, d, Y, m, -1.0, C, m, &flops);
    for (int64_t i = 0; i < r * m; i++) red[0] += C[i] * C[i];
    if (!want_grad) continue;
    double *F = ev->s, *U = ev->u;
    gemm(CblasNoTrans, CblasTrans, r, n, m, 1.0, C, m, ev->v, m, 0.0, U, n, &flops);
    for (int64_t j = 0; j < r; j++) {
      double s = 0;
      for (int64_t l = 0; l < n; l++) s += (U[j * n + l] *= F[j * n + l]);
      ev->fu[j] = s;
    }
    for (int64_t j = 0; j < r; j++)
      for (int64_t l = 0; l < n; l++) U[j * n + l] -= F[j * n + l] * ev->fu[j]; /* W = G / 2 */
    const int ld2 = ev->ld2;
    if (hk == AR_HESS_EXACT) /* W [A2 | R22]; otherwise W A2 alone */
      gemm(CblasNoTrans, CblasNoTrans, r, ld2, n, 1.0, U, n, ev->t2, ld2, 0.0, ev->wt, ld2, &flops);
    else
      gemm(CblasNoTrans, CblasNoTrans, r, d, n, 1.0, U, n, p->a2, d, 0.0, ev->wt, ld2, &flops);
    gemm(CblasTrans, CblasNoTrans, d, d, r, 2.0, a1t, d, ev->wt, ld2, 1.0, gX, d, &flops);
    if (hk != AR_HESS_NONE)
      for (int64_t j = 0; j < r; j++)
        for (int q = 0; q < d; q++) ev->alpha[j * d + q] = ev->wt[j * ld2 + q] + ev->fu[j] * ev->beta[j * d + q];
    gemm(CblasTrans, CblasNoTrans, d, m, r, 2.0, ev->pt, d, C, m, 1.0, gY, m, &flops);
    gemm(CblasTrans, CblasNoTrans, d, d, r, 1.0, ev->pt, d, ev->pt, d, 1.0, ptp, d, &flops);
    if (hk != AR_HESS_NONE) {
      double th = ar_wtime();
      tile_hessian(ev, Y, a1t, r, hk, &flops);
      t_hess += ar_wtime() - th;
    }
  }
  double t1 = ar_wtime();
  const int nred = want_grad ? 1 + 2 * dd + dm : 1;
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, red, nred, MPI_DOUBLE, MPI_SUM, p->comm));
  double lx = ev->opt.lambda_x, ly = ev->opt.lambda_y, rx = 0, ry = 0;
  for (int i = 0; i < dd; i++) rx += X[i] * X[i];
  for (int i = 0; i < dm; i++) ry += Y[i] * Y[i];
  out->loss = red[0] + lx * rx + ly * ry;
  if (out->grad) {
    for (int i = 0; i < dd; i++) out->grad[i] = gX[i] + 2 * lx * X[i];
    for (int i = 0; i < dm; i++) out->grad[dd + i] = gY[i] + 2 * ly * Y[i];
  }
  double t2 = ar_wtime(), t_hred = 0;
  if (hk != AR_HESS_NONE) {
    memcpy(ev->parts.ptp, ptp, sizeof(double) * dd); /* already global: hessian.c adds it once */
    AR_CALL(ar_hess_assemble(p->comm, &ev->parts, lx, ly, out->hess, &t_hred));
  }
  double t3 = ar_wtime();
  out->flops = flops;
  out->t_kernel = (t1 - t0) - t_hess;
  out->t_hess = t_hess + (t3 - t2) - t_hred;
  out->t_reduce = (t2 - t1) + t_hred;
  return AR_OK;
}

int ar_eval_normal_equations(ar_eval ev, const double *X, double *PtP, double *PtB)
{
  ar_problem p = ev->p;
  const int d = p->d, m = p->m;
  double flops = 0;
  memset(PtP, 0, sizeof(double) * d * d);
  memset(PtB, 0, sizeof(double) * d * m);
  for (int64_t j0 = 0; j0 < p->nloc; j0 += ev->tile) {
    const int64_t r = p->nloc - j0 < ev->tile ? p->nloc - j0 : ev->tile;
    tile_forward(ev, X, p->a1 + j0 * d, r, 0, &flops);
    gemm(CblasTrans, CblasNoTrans, d, d, r, 1.0, ev->pt, d, ev->pt, d, 1.0, PtP, d, &flops);
    gemm(CblasTrans, CblasNoTrans, d, m, r, 1.0, ev->pt, d, p->b + j0 * m, m, 1.0, PtB, m, &flops);
  }
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, PtP, d * d, MPI_DOUBLE, MPI_SUM, p->comm));
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, PtB, d * m, MPI_DOUBLE, MPI_SUM, p->comm));
  return AR_OK;
}

extern void dposv_(const char *uplo, const int *n, const int *nrhs, double *a, const int *lda, double *b,
                   const int *ldb, int *info);

int ar_solve_least_squares_y(ar_eval ev, const double *X, double *Y)
{
  const int d = ev->p->d, m = ev->p->m;
  double *A, *B, *Bt;
  AR_MALLOC(A, d * d);
  AR_MALLOC(B, d * (d > m ? d : m));
  AR_MALLOC(Bt, d * m);
  int err = ar_eval_normal_equations(ev, X, A, Bt);
  double tr = 0;
  for (int k = 0; k < d; k++) tr += A[k * d + k];
  /* Same inputs on every rank and a deterministic LAPACK: every rank gets the same Y. */
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
  free(A), free(B), free(Bt);
  return err;
}
