/* The matrix-free Newton step (step.h; docs/solver.md "Matrix-free"): preconditioned
 * conjugate gradients on (H + shift I) dz = -g with Hessian-vector products (hessvec.c), so
 * no D x D matrix exists anywhere.
 *
 *   model      the Hessian at the point of the last evaluation that asked for one (its kind,
 *              exact or Gauss-Newton); products recompute what they need at that point
 *   stopping   |r| <= eta |g| with the Eisenstat-Walker forcing term (choice 2: eta_k =
 *              0.9 (|g_k| / |g_k-1|)^2, safeguarded, at most 0.5), so the outer iteration
 *              stays superlinear without solving accurately far from the solution
 *   curvature  p^T (H + shift I) p <= 0 (Steihaug-Toint): a later CG iterate is returned as it
 *              is (a descent direction with a positive model decrease); on the first, the
 *              system is reported indefinite and the solver raises the shift, as it does when
 *              a Cholesky factorisation fails
 *   precond    block diagonal: the Y block exactly, (2 P^T P + shift) (x) I_m (a d x d
 *              Cholesky); the X block by its Kronecker model G1 (x) Nbar + shift I, with
 *              G1 = A1^T A1 and Nbar the mean Gauss-Newton N_j, inverted through the
 *              eigendecompositions of G1 and Nbar (O(d^3) a product).  After whitening G1 = I.
 * Every quantity is global (products end in an allreduce), so every rank takes the same
 * branches. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "lapack.h"
#include "problem_impl.h"
#include "step.h"
#include "timing.h"

typedef struct {
  MPI_Comm comm;        /* the problem's: failures before collective calls are agreed over it */
  int d, m, D, max_iter;
  double fixed_rtol;    /* > 0: stop at |r| <= fixed_rtol |g| instead of the forcing term (tests) */
  double lambda_x, lambda_y;
  ar_hessian_kind kind; /* of the model */
  double *zm;           /* the model point */
  double shift, scale;
  double *G1, *Nbar, *PtP, *U1, *l1, *U2, *l2, *Ly, *T; /* preconditioner (d x d, d) */
  double *x, *r, *zv, *p, *q, *v;                       /* CG vectors (D) */
  double *work;                                         /* dsyev's workspace, lwork doubles */
  int lwork;
  double eta, gnorm_last;                               /* Eisenstat-Walker */
  double t_hv, t_pre;
  int n_hv;
} cg;

/* Eigendecomposition of a symmetric d x d matrix (row-major = column-major: symmetric), with
 * the workspace made in ar_stepper_cg_create.  A is global, so info is the same on every rank;
 * agreed all the same, as Hessian-vector products (collective) follow. */
static int eig(cg *c, const double *A, double *U, double *l)
{
  int d = c->d, info = 0;
  memcpy(U, A, sizeof(double) * d * d);
  dsyev_("V", "U", &d, U, &d, l, c->work, &c->lwork, &info);
  AR_CHECK_AGREE(c->comm, info == 0, AR_ERR_LIB, "dsyev failed (info %d) on the preconditioner", info);
  /* column-major eigenvectors = rows of U in our row-major reading: transpose to columns */
  for (int i = 0; i < d; i++)
    for (int j = i + 1; j < d; j++) {
      double t = U[i * d + j];
      U[i * d + j] = U[j * d + i], U[j * d + i] = t;
    }
  return AR_OK;
}

/* H v + shift v over the N unknowns (v padded with zeros to D for the alternating method). */
static int apply(ar_stepper *st, const double *v, double *out)
{
  cg *c = st->impl;
  memset(c->v, 0, sizeof(double) * c->D);
  memcpy(c->v, v, sizeof(double) * st->N);
  const double t0 = ar_wtime();
  double fl = 0;
  AR_CALL(ar_eval_hessvec(st->ev, c->zm, c->zm + st->dd, c->kind, c->v, c->q, &fl));
  c->t_hv += ar_wtime() - t0, c->n_hv++;
  st->res->flops += fl;
  for (int i = 0; i < st->N; i++) out[i] = c->q[i] + c->shift * v[i];
  return AR_OK;
}

/* out = M^{-1} r: the X block through U1, U2 (V -> U1 [(U1^T V U2) / (l1 l2^T + s)] U2^T), the
 * Y block through the Cholesky factor of 2 P^T P + s (dpotrs' info agreed: products follow). */
static int precondition(ar_stepper *st, const double *r, double *out)
{
  cg *c = st->impl;
  const int d = c->d, m = c->m;
  const double sx = c->shift + 2 * c->lambda_x;
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, d, 1.0, c->U1, d, r, d, 0.0, c->T, d);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0, c->T, d, c->U2, d, 0.0, out, d);
  for (int a = 0; a < d; a++)
    for (int b = 0; b < d; b++) {
      const double den = c->l1[a] * c->l2[b] + sx;
      out[a * d + b] /= den > 0 ? den : 1.0;
    }
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0, c->U1, d, out, d, 0.0, c->T, d);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, d, d, 1.0, c->T, d, c->U2, d, 0.0, out, d);
  if (st->N == d * d) return AR_OK;
  /* Y block: (2 P^T P + s) Y = R for the d x m block; column-major view of row-major R is R^T */
  memcpy(out + d * d, r + d * d, sizeof(double) * d * m);
  for (int k = 0; k < d; k++)
    for (int i = 0; i < m; i++) c->T[i * d + k] = out[d * d + k * m + i];
  int info = 0;
  dpotrs_("L", &d, &m, c->Ly, &d, c->T, &d, &info);
  AR_CHECK_AGREE(c->comm, info == 0, AR_ERR_LIB, "dpotrs: argument %d had an illegal value (preconditioner)", -info);
  for (int k = 0; k < d; k++)
    for (int i = 0; i < m; i++) out[d * d + k * m + i] = c->T[i * d + k];
  return AR_OK;
}

static int cg_evaluate(ar_stepper *st, const double *z, ar_hessian_kind hk, double *f, double *g)
{
  cg *c = st->impl;
  AR_CALL(ar_stepper_eval(st, z, AR_HESS_NONE, NULL, f, g));
  if (hk == AR_HESS_NONE) return AR_OK;
  /* the model becomes the Hessian at z: its point, its kind, the preconditioner's pieces */
  memcpy(c->zm, z, sizeof(double) * c->D);
  c->kind = hk;
  const double t0 = ar_wtime();
  double fl = 0;
  AR_CALL(ar_eval_precond(st->ev, z, z + st->dd, c->G1, c->Nbar, c->PtP, &fl));
  st->res->flops += fl;
  const int d = c->d, m = c->m;
  AR_CALL(eig(c, c->G1, c->U1, c->l1));
  AR_CALL(eig(c, c->Nbar, c->U2, c->l2));
  double tg = 0, tn = 0, tp = 0;
  for (int k = 0; k < d; k++) tg += c->l1[k], tn += c->l2[k], tp += c->PtP[k * d + k];
  /* mean diagonal of the model: the X block's Kronecker trace and the Y block's 2 m tr(P^T P) */
  c->scale = st->N == d * d ? tg * tn / (d * d) + 2 * c->lambda_x
                            : (tg * tn + 2.0 * m * tp + 2 * c->lambda_x * d * d + 2 * c->lambda_y * d * m) / c->D;
  c->t_pre += ar_wtime() - t0;
  return AR_OK;
}

static int cg_scale(ar_stepper *st, double *scale)
{
  *scale = ((cg *)st->impl)->scale;
  return AR_OK;
}

static int cg_factor(ar_stepper *st, double shift, int *not_pd)
{
  cg *c = st->impl;
  const int d = c->d;
  c->shift = shift;
  *not_pd = 0;
  for (int i = 0; i < d * d; i++) c->Ly[i] = 2 * c->PtP[i];
  const double tiny = 1e-14 * (c->scale > 0 ? c->scale : 1);
  for (int k = 0; k < d; k++) c->Ly[k * d + k] += shift + 2 * c->lambda_y + tiny;
  int info = 0;
  dpotrf_("L", &d, c->Ly, &d, &info);
  if (info != 0) { /* P^T P singular and no shift: the identity for this block */
    memset(c->Ly, 0, sizeof(double) * d * d);
    for (int k = 0; k < d; k++) c->Ly[k * d + k] = 1;
  }
  return AR_OK;
}

static double dot(const double *a, const double *b, int n)
{
  double s = 0;
  for (int i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

/* Eisenstat-Walker, choice 2 (gamma 0.9, alpha 2), safeguarded, in [1e-10, 0.5]; the same g
 * (a rejected step, a chord step) keeps the last eta. */
static double forcing(cg *c, double gnorm)
{
  if (c->gnorm_last > 0 && gnorm != c->gnorm_last) {
    const double prev = c->eta, ratio = gnorm / c->gnorm_last;
    c->eta = 0.9 * ratio * ratio;
    if (0.9 * prev * prev > 0.1 && c->eta < 0.9 * prev * prev) c->eta = 0.9 * prev * prev;
  }
  if (c->eta > 0.5) c->eta = 0.5;
  if (c->eta < 1e-10) c->eta = 1e-10;
  c->gnorm_last = gnorm;
  return c->eta;
}

static int cg_solve(ar_stepper *st, const double *g, double *dz, double *pred, int *indefinite)
{
  cg *c = st->impl;
  const int N = st->N;
  const double gnorm = sqrt(dot(g, g, N)), tol = (c->fixed_rtol > 0 ? c->fixed_rtol : forcing(c, gnorm)) * gnorm;
  *indefinite = 0;
  memset(c->x, 0, sizeof(double) * N);
  for (int i = 0; i < N; i++) c->r[i] = -g[i];
  AR_CALL(precondition(st, c->r, c->zv));
  memcpy(c->p, c->zv, sizeof(double) * N);
  double rz = dot(c->r, c->zv, N);
  int k = 0;
  for (; k < c->max_iter && sqrt(dot(c->r, c->r, N)) > tol; k++) {
    AR_CALL(apply(st, c->p, c->q));
    const double pq = dot(c->p, c->q, N);
    if (!(pq > 0)) { /* negative curvature along p */
      if (k == 0) *indefinite = 1;
      break;
    }
    const double alpha = rz / pq;
    for (int i = 0; i < N; i++) c->x[i] += alpha * c->p[i], c->r[i] -= alpha * c->q[i];
    AR_CALL(precondition(st, c->r, c->zv));
    const double rz_new = dot(c->r, c->zv, N), beta = rz_new / rz;
    rz = rz_new;
    for (int i = 0; i < N; i++) c->p[i] = c->zv[i] + beta * c->p[i];
  }
  st->iters = k;
  memcpy(dz, c->x, sizeof(double) * N);
  /* a CG iterate x satisfies x^T (H + shift I) x = -g^T x, so the model's decrease is as for
   * an exact solve: -g.dz/2 + shift |dz|^2 / 2 */
  *pred = -0.5 * dot(g, dz, N) + 0.5 * c->shift * dot(dz, dz, N);
  return AR_OK;
}

static void cg_finish(ar_stepper *st, ar_solve_result *res)
{
  cg *c = st->impl;
  res->nb = 0;
  res->t_factor = c->t_pre; /* the preconditioner's pass and eigendecompositions */
  res->t_solve = c->t_hv;   /* the Hessian-vector products */
  res->hessvecs = c->n_hv;
}

static void cg_destroy(ar_stepper *st)
{
  cg *c = st->impl;
  if (!c) return;
  double *a[] = {c->zm, c->G1, c->Nbar, c->PtP, c->U1, c->l1, c->U2, c->l2, c->Ly, c->T,
                 c->x,  c->r,  c->zv,   c->p,   c->q,  c->v, c->work};
  for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) free(a[i]);
  free(c);
}

static const ar_stepper_ops cg_ops = {"cg", cg_evaluate, cg_scale, cg_factor, cg_solve, cg_finish, cg_destroy};

int ar_stepper_cg_create(ar_eval ev, int N, int max_iter, double fixed_rtol, ar_solve_result *res, ar_stepper **out)
{
  *out = NULL;
  ar_problem p = ar_eval_problem(ev);
  ar_stepper *st = calloc(1, sizeof *st);
  cg *c = calloc(1, sizeof *c);
  if (st) st->impl = c, st->ops = &cg_ops, *out = st; /* ar_stepper_destroy frees the rest */
  else free(c);
  /* every allocation here, so that no failure on one rank is left for the collective calls of a
   * solve; one rank short of memory fails them all */
  AR_CHECK_AGREE(p->comm, st && c, AR_ERR_MEM, "out of memory (matrix-free step)");
  const int d = p->d, m = p->m;
  st->ev = ev, st->N = N, st->dd = d * d, st->res = res;
  c->comm = p->comm;
  c->d = d, c->m = m, c->D = d * d + d * m, c->max_iter = max_iter, c->eta = 0.5, c->fixed_rtol = fixed_rtol;
  ar_eval_ridge(ev, &c->lambda_x, &c->lambda_y);
  const size_t D = c->D, dd = (size_t)d * d, w = dd > (size_t)d * m ? dd : (size_t)d * m;
  c->zm = calloc(D, sizeof(double));
  c->G1 = calloc(dd, sizeof(double)), c->Nbar = calloc(dd, sizeof(double)), c->PtP = calloc(dd, sizeof(double));
  c->U1 = calloc(dd, sizeof(double)), c->U2 = calloc(dd, sizeof(double)), c->Ly = calloc(dd, sizeof(double));
  c->l1 = calloc(d, sizeof(double)), c->l2 = calloc(d, sizeof(double)), c->T = calloc(w, sizeof(double));
  c->x = calloc(D, sizeof(double)), c->r = calloc(D, sizeof(double)), c->zv = calloc(D, sizeof(double));
  c->p = calloc(D, sizeof(double)), c->q = calloc(D, sizeof(double)), c->v = calloc(D, sizeof(double));
  /* dsyev's workspace: its own query on a d x d matrix (U1 as scratch) */
  int info = 0, query = -1, dd_ = d;
  double lw = 0;
  if (c->U1 && c->l1) dsyev_("V", "U", &dd_, c->U1, &dd_, c->l1, &lw, &query, &info);
  c->lwork = info == 0 && lw > 1 ? (int)lw : 3 * d;
  c->work = calloc(c->lwork > 1 ? c->lwork : 1, sizeof(double));
  AR_CHECK_AGREE(p->comm,
                 c->zm && c->G1 && c->Nbar && c->PtP && c->U1 && c->U2 && c->Ly && c->l1 && c->l2 && c->T && c->x &&
                     c->r && c->zv && c->p && c->q && c->v && c->work,
                 AR_ERR_MEM, "out of memory (matrix-free step vectors)");
  return AR_OK;
}
