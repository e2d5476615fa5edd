/* The dense Newton step (step.h): H assembled into the block-cyclic layout by the evaluation
 * (eval.c, hessian.c), H + shift*S factored by ScaLAPACK's Cholesky (grid.c), with S the shape
 * of --shift: I, Marquardt's diagonal, or the inputs' Gram metric.  The factor is kept in its
 * own copy, so chord steps can reuse it while H is re-evaluated elsewhere. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "grid_impl.h"
#include "problem_impl.h"
#include "step.h"

/* The Gram metric's floor, relative to its mean diagonal (1): a rank-deficient input still
 * gets a shift, and directions below the rounding of H are not trusted to the metric alone. */
#define GRAM_FLOOR 1e-8

typedef struct {
  ar_grid grid;
  ar_dmat H;
  int kind;           /* ar_shift_kind */
  double *diag;       /* AR_SHIFT_DIAGONAL: diag H of the last Hessian evaluated */
  double *shiftv;     /* the per-unknown shift of the current factor (identity, diagonal) */
  double shift;       /* the factor's shift (gram: the factor is of H + shift M) */
  double *G;          /* AR_SHIFT_GRAM: G1/mean, G2, G3/mean (d x d each): mean diag M = 1 */
  ar_kron_metric M;
  double *rhs;        /* N: -g */
  double *T;          /* AR_SHIFT_GRAM: 2 d^2, the workspace of dz.M.dz */
} dense;

static int dense_evaluate(ar_stepper *st, const double *z, ar_hessian_kind hk, double *f, double *g)
{
  dense *ds = st->impl;
  AR_CALL(ar_stepper_eval(st, z, hk, ds->H, f, g));
  return hk != AR_HESS_NONE && ds->kind == AR_SHIFT_DIAGONAL ? ar_dmat_diag(ds->H, ds->diag) : AR_OK;
}

static int dense_scale(ar_stepper *st, double *scale)
{
  dense *ds = st->impl;
  return ar_dmat_mean_abs_diag(ds->H, scale);
}

/* This rank's share of the flops of a factorisation or solve of order N on the grid. */
static double share(dense *ds, double flops)
{
  int pr, pc;
  ar_grid_shape(ds->grid, &pr, &pc);
  return flops / (pr * pc);
}

static int dense_factor(ar_stepper *st, double shift, int *not_pd)
{
  dense *ds = st->impl;
  const int N = st->N;
  ds->shift = shift;
  st->res->flops += share(ds, (double)N * N * N / 3); /* counted in the summary's GFLOP/s */
  if (ds->kind == AR_SHIFT_GRAM) return ar_dmat_factor_metric(ds->H, shift, &ds->M, not_pd);
  const int scaled = ds->kind == AR_SHIFT_DIAGONAL;
  double mean = 0;
  if (scaled)
    for (int i = 0; i < N; i++) mean += fabs(ds->diag[i]) / N;
  for (int i = 0; i < N; i++) /* Marquardt's scaling, floored so that a zero diagonal keeps a shift */
    ds->shiftv[i] = scaled && mean > 0 ? shift * fmax(fabs(ds->diag[i]), 1e-8 * mean) / mean : shift;
  return ar_dmat_factor_diag(ds->H, shift, ds->shiftv, not_pd);
}

static int dense_solve(ar_stepper *st, const double *g, double *dz, double *pred, int *indefinite)
{
  *indefinite = 0; /* the factorisation said so already */
  dense *ds = st->impl;
  const int N = st->N;
  for (int i = 0; i < N; i++) ds->rhs[i] = -g[i];
  AR_CALL(ar_dmat_solve(ds->H, ds->rhs, dz));
  st->res->flops += share(ds, 2.0 * N * N);
  /* (H + S) dz = -g with S the diagonal shift, so dz.(H + S).dz = -g.dz and the model's
   * decrease is -g.dz/2 + dz.S.dz / 2. */
  double gdz = 0, dsd = 0;
  for (int i = 0; i < N; i++) gdz += g[i] * dz[i];
  if (ds->kind == AR_SHIFT_GRAM) dsd = ds->shift * ar_kron_metric_quad_work(&ds->M, N, dz, ds->T);
  else
    for (int i = 0; i < N; i++) dsd += ds->shiftv[i] * dz[i] * dz[i];
  *pred = -0.5 * gdz + 0.5 * dsd;
  return AR_OK;
}

static void dense_finish(ar_stepper *st, ar_solve_result *res)
{
  dense *ds = st->impl;
  int nf;
  ar_dmat_times(ds->H, &res->t_factor, &res->t_solve, &nf);
  res->nb = ar_dmat_nb(ds->H);
}

static void dense_destroy(ar_stepper *st)
{
  dense *ds = st->impl;
  if (ds) ar_dmat_destroy(&ds->H), free(ds->diag), free(ds->shiftv), free(ds->G), free(ds->rhs), free(ds->T);
  free(ds);
}

/* Collective: the Gram metric of the inputs, M = G1 (x) G2 on X, G3 (x) I_m on Y with
 * G_k = A_k^T A_k (one allreduce each), scaled to mean diagonal 1.  In the whitened variables
 * (A_k = Q_k R_k, G_k = R_k^T R_k) it is the identity: a shift mu s M here is the shift
 * whitening would apply, so the step sees the inputs' conditioning through H alone. */
static int gram_metric(dense *ds, ar_problem p, int N)
{
  const int d = p->d, m = p->m, dd = d * d;
  ds->G = calloc((size_t)3 * dd, sizeof(double)), ds->T = calloc((size_t)2 * dd, sizeof(double));
  AR_CHECK_AGREE(p->comm, ds->G && ds->T, AR_ERR_MEM, "out of memory (Gram metric)");
  const double *A[3] = {p->a1, p->a2, p->a3};
  for (int k = 0; k < 3; k++) {
    double *G = ds->G + (size_t)k * dd;
    if (p->nloc > 0) cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, (int)p->nloc, 1.0, A[k], d, 0.0, G, d);
    for (int i = 0; i < d; i++)
      for (int j = 0; j < i; j++) G[i * d + j] = G[j * d + i];
  }
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, ds->G, 3 * dd, MPI_DOUBLE, MPI_SUM, p->comm));
  double tr[3] = {0, 0, 0};
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < d; i++) tr[k] += ds->G[(size_t)k * dd + i * d + i];
  const double mean = (tr[0] * tr[1] + (N > dd ? (double)m * tr[2] : 0)) / N;
  AR_CHECK(mean > 0 && isfinite(mean), AR_ERR_DATA, "--shift gram: the inputs are all zero (use --shift identity)");
  for (int i = 0; i < dd; i++) ds->G[i] /= mean, ds->G[2 * dd + i] /= mean;
  ds->M = (ar_kron_metric){d, m, ds->G, ds->G + dd, ds->G + 2 * dd, GRAM_FLOOR};
  return AR_OK;
}

static const ar_stepper_ops dense_ops = {"cholesky", dense_evaluate, dense_scale, dense_factor, dense_solve,
                                         dense_finish, dense_destroy};

int ar_stepper_dense_create(ar_eval ev, ar_grid grid, int N, int nb, int shift, ar_solve_result *res,
                            ar_stepper **out)
{
  *out = NULL;
  ar_problem p = ar_eval_problem(ev);
  ar_stepper *st = calloc(1, sizeof *st);
  dense *ds = calloc(1, sizeof *ds);
  if (ds)
    ds->diag = calloc(N, sizeof(double)), ds->shiftv = calloc(N, sizeof(double)), ds->rhs = calloc(N, sizeof(double));
  if (st) st->ops = &dense_ops, st->impl = ds, *out = st; /* ar_stepper_destroy frees the rest */
  else if (ds) free(ds->diag), free(ds->shiftv), free(ds->rhs), free(ds);
  /* one rank short of memory fails them all, before the collective calls below */
  AR_CHECK_AGREE(p->comm, st && ds && ds->diag && ds->shiftv && ds->rhs, AR_ERR_MEM, "out of memory (dense step)");
  st->ev = ev, st->N = N, st->res = res, st->dd = p->d * p->d;
  ds->grid = grid, ds->kind = shift;
  if (shift == AR_SHIFT_GRAM) AR_CALL(gram_metric(ds, p, N));
  return ar_dmat_create(grid, N, nb, &ds->H);
}
