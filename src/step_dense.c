/* The dense Newton step (step.h): H assembled into the block-cyclic layout by the evaluation
 * (eval.c, hessian.c), H + shift*I factored by ScaLAPACK's Cholesky (grid.c).  The factor is
 * kept in its own copy, so chord steps can reuse it while H is re-evaluated elsewhere. */
#include <math.h>
#include <stdlib.h>

#include "error.h"
#include "step.h"

typedef struct {
  ar_grid grid;
  ar_dmat H;
  int scaled;         /* AR_SHIFT_DIAGONAL: the shift is shift * max(|H_ii|, floor) / mean |H_ii| */
  double *diag;       /* diag H of the last Hessian evaluated (scaled only) */
  double *shiftv;     /* the per-unknown shift of the current factor */
} dense;

static int dense_evaluate(ar_stepper *st, const double *z, ar_hessian_kind hk, double *f, double *g)
{
  dense *ds = st->impl;
  AR_CALL(ar_stepper_eval(st, z, hk, ds->H, f, g));
  return hk != AR_HESS_NONE && ds->scaled ? ar_dmat_diag(ds->H, ds->diag) : AR_OK;
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
  double mean = 0;
  if (ds->scaled)
    for (int i = 0; i < N; i++) mean += fabs(ds->diag[i]) / N;
  for (int i = 0; i < N; i++) /* Marquardt's scaling, floored so that a zero diagonal keeps a shift */
    ds->shiftv[i] = ds->scaled && mean > 0 ? shift * fmax(fabs(ds->diag[i]), 1e-8 * mean) / mean : shift;
  st->res->flops += share(ds, (double)N * N * N / 3); /* counted in the summary's GFLOP/s */
  return ar_dmat_factor_diag(ds->H, shift, ds->shiftv, not_pd);
}

static int dense_solve(ar_stepper *st, const double *g, double *dz, double *pred, int *indefinite)
{
  *indefinite = 0; /* the factorisation said so already */
  dense *ds = st->impl;
  const int N = st->N;
  double *rhs;
  AR_MALLOC(rhs, N);
  for (int i = 0; i < N; i++) rhs[i] = -g[i];
  int err = ar_dmat_solve(ds->H, rhs, dz);
  st->res->flops += share(ds, 2.0 * N * N);
  free(rhs);
  AR_CALL(err);
  /* (H + S) dz = -g with S the diagonal shift, so dz.(H + S).dz = -g.dz and the model's
   * decrease is -g.dz/2 + dz.S.dz / 2. */
  double gdz = 0, dsd = 0;
  for (int i = 0; i < N; i++) gdz += g[i] * dz[i], dsd += ds->shiftv[i] * dz[i] * dz[i];
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
  if (ds) ar_dmat_destroy(&ds->H), free(ds->diag), free(ds->shiftv);
  free(ds);
}

static const ar_stepper_ops dense_ops = {"cholesky", dense_evaluate, dense_scale, dense_factor, dense_solve,
                                         dense_finish, dense_destroy};

int ar_stepper_dense_create(ar_eval ev, ar_grid grid, int N, int nb, int shift, ar_solve_result *res,
                            ar_stepper **out)
{
  *out = NULL;
  ar_stepper *st;
  AR_MALLOC(st, 1);
  st->ops = &dense_ops, st->ev = ev, st->N = N, st->res = res;
  int d;
  ar_problem_sizes(ar_eval_problem(ev), NULL, &d, NULL);
  st->dd = d * d;
  dense *ds = calloc(1, sizeof *ds);
  st->impl = ds;
  *out = st;
  AR_CHECK(ds, AR_ERR_MEM, "out of memory (dense step)");
  ds->grid = grid, ds->scaled = shift == AR_SHIFT_DIAGONAL;
  ds->diag = calloc(N, sizeof(double)), ds->shiftv = calloc(N, sizeof(double));
  AR_CHECK(ds->diag && ds->shiftv, AR_ERR_MEM, "out of memory (dense step)");
  return ar_dmat_create(grid, N, nb, &ds->H);
}
