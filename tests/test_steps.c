/* The Newton-step methods behind the seam (src/solver/step.h) give the same step: the dense
 * Cholesky, matrix-free CG (solved tightly) and, for the Gauss-Newton Hessian, the row-space step
 * (J^T (J J^T + s/2 I)^{-1} c) on the same shifted system, for the Gauss-Newton
 * Hessian (positive semidefinite: a convex model) and the exact one with a shift that makes it
 * positive definite, on the reference cases and a whitened one, on this rank count.  And at a
 * point where the exact Hessian is indefinite without a shift, CG either reports the system
 * indefinite (negative curvature at once) or returns a step with a positive predicted
 * decrease, never a failure.  Usage: test_steps REFDIR */
#include <string.h>

#include "attnreg.h"
#include "step.h"
#include "testutil.h"

static double dot(const double *a, const double *b, int n)
{
  double s = 0;
  for (int i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

static void compare(const char *name, ar_problem prob, const double *z, ar_hessian_kind hk, double rel_shift)
{
  int64_t n;
  int d, m;
  ar_problem_sizes(prob, &n, &d, &m);
  const int D = d * d + d * m;
  ar_grid g;
  TU_OK(ar_grid_create(MPI_COMM_WORLD, 0, 0, &g));
  ar_eval_options eo;
  ar_eval_options_default(&eo);
  eo.tile = 3, eo.chunk = 4;
  ar_eval ev;
  TU_OK(ar_eval_create(prob, &eo, &ev));
  ar_solve_result res = {0};
  ar_stepper *dense, *cg;
  TU_OK(ar_stepper_dense_create(ev, g, D, 0, AR_SHIFT_IDENTITY, &res, &dense));
  TU_OK(ar_stepper_cg_create(ev, D, 20 * D, 1e-13, &res, &cg));
  double f1, f2, scale, pred1, pred2, *g1 = malloc(sizeof(double) * D), *g2 = malloc(sizeof(double) * D);
  double *dz1 = malloc(sizeof(double) * D), *dz2 = malloc(sizeof(double) * D);
  TU_OK(dense->ops->evaluate(dense, z, hk, &f1, g1));
  TU_OK(cg->ops->evaluate(cg, z, hk, &f2, g2));
  TU_CHECK(f1 == f2 && tu_relerr(g2, g1, D) <= 1e-14, "%s: the methods evaluate differently", name);
  TU_OK(dense->ops->scale(dense, &scale));
  double shift = rel_shift * scale;
  int not_pd = 1, indef = 0;
  for (int k = 0; not_pd && k < 20; k++, shift *= 10) /* as the solver does: raise it until H + shift I is PD */
    TU_OK(dense->ops->factor(dense, shift, &not_pd));
  shift /= 10;
  TU_CHECK(!not_pd, "%s: H + %.3g I is not positive definite", name, shift);
  TU_OK(dense->ops->solve(dense, g1, dz1, &pred1, &indef));
  TU_OK(cg->ops->factor(cg, shift, &not_pd));
  TU_OK(cg->ops->solve(cg, g2, dz2, &pred2, &indef));
  TU_CHECK(!indef, "%s: CG found the positive definite system indefinite", name);
  const double e = tu_relerr(dz2, dz1, D);
  TU_CHECK(e <= 1e-8, "%s %s shift %.2g: CG step vs Cholesky step: relative error %.3g (%d CG iterations)", name,
           hk == AR_HESS_EXACT ? "exact" : "gauss-newton", rel_shift, e, cg->iters);
  TU_CHECK(fabs(pred2 - pred1) <= 1e-8 * fabs(pred1), "%s: predicted decrease %.17g vs %.17g", name, pred2, pred1);
  TU_CHECK(cg->iters > 0 && dense->iters == 0, "%s: iteration counts %d, %d", name, cg->iters, dense->iters);
  double erows = 0;
  if (hk == AR_HESS_GAUSS_NEWTON) { /* the row-space step: J J^T, n m x n m, whatever n m is against D */
    ar_stepper *rows;
    double f3, scale3, pred3;
    TU_OK(ar_stepper_rows_create(ev, g, D, 0, AR_SHIFT_IDENTITY, &res, &rows));
    TU_OK(rows->ops->evaluate(rows, z, hk, &f3, g2));
    TU_CHECK(f3 == f1 && tu_relerr(g2, g1, D) <= 1e-14, "%s: the row-space step evaluates differently", name);
    TU_OK(rows->ops->scale(rows, &scale3));
    TU_CHECK(fabs(scale3 - scale) <= 1e-12 * scale, "%s: mean |diag H| %.17g (rows) vs %.17g", name, scale3, scale);
    TU_OK(rows->ops->factor(rows, shift, &not_pd));
    TU_CHECK(!not_pd, "%s: J J^T + shift/2 I is not positive definite", name);
    TU_OK(rows->ops->solve(rows, g2, dz2, &pred3, &indef));
    erows = tu_relerr(dz2, dz1, D);
    TU_CHECK(erows <= 1e-9, "%s shift %.2g: row-space step vs Cholesky step: relative error %.3g", name, rel_shift,
             erows);
    TU_CHECK(fabs(pred3 - pred1) <= 1e-9 * fabs(pred1), "%s: rows' predicted decrease %.17g vs %.17g", name, pred3,
             pred1);
    ar_stepper_destroy(&rows);
  }
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0)
    printf("  %-28s %-12s shift %.0e: |dz_cg - dz_chol| %.2e, %d CG iterations; |dz_rows - dz_chol| %.2e\n", name,
           hk == AR_HESS_EXACT ? "exact" : "gauss-newton", rel_shift, e, cg->iters, erows);
  free(g1), free(g2), free(dz1), free(dz2);
  ar_stepper_destroy(&dense);
  ar_stepper_destroy(&cg);
  ar_eval_destroy(&ev);
  ar_grid_destroy(&g);
}

/* At z, without a shift: if the exact Hessian is indefinite there, CG must not fail. */
static void indefinite(const char *name, ar_problem prob, const double *z, int *seen_indefinite)
{
  int64_t n;
  int d, m;
  ar_problem_sizes(prob, &n, &d, &m);
  const int D = d * d + d * m;
  ar_grid g;
  TU_OK(ar_grid_create(MPI_COMM_WORLD, 0, 0, &g));
  ar_eval_options eo;
  ar_eval_options_default(&eo);
  ar_eval ev;
  TU_OK(ar_eval_create(prob, &eo, &ev));
  ar_solve_result res = {0};
  ar_stepper *dense, *cg;
  TU_OK(ar_stepper_dense_create(ev, g, D, 0, AR_SHIFT_IDENTITY, &res, &dense));
  TU_OK(ar_stepper_cg_create(ev, D, 20 * D, 1e-13, &res, &cg));
  double f, pred = 0, *gr = malloc(sizeof(double) * D), *dz = malloc(sizeof(double) * D);
  int not_pd = 0, indef = 0;
  TU_OK(dense->ops->evaluate(dense, z, AR_HESS_EXACT, &f, gr));
  TU_OK(dense->ops->factor(dense, 0.0, &not_pd));
  TU_OK(cg->ops->evaluate(cg, z, AR_HESS_EXACT, &f, gr));
  TU_OK(cg->ops->factor(cg, 0.0, &indef));
  TU_OK(cg->ops->solve(cg, gr, dz, &pred, &indef));
  if (not_pd) {
    *seen_indefinite += 1;
    TU_CHECK(indef || (pred > 0 && dot(gr, dz, D) < 0), "%s: indefinite H: CG gave pred %.3g, g.dz %.3g", name, pred,
             dot(gr, dz, D));
  }
  free(gr), free(dz);
  ar_stepper_destroy(&dense);
  ar_stepper_destroy(&cg);
  ar_eval_destroy(&ev);
  ar_grid_destroy(&g);
}

int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  if (argc < 2) {
    fprintf(stderr, "usage: test_steps REFDIR\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  static const char *cases[] = {"tiny", "rect", "selfattn", "peaked"};
  int seen = 0;
  for (int c = 0; c < 4; c++) {
    char dir[1024], store[4 * 4096];
    snprintf(dir, sizeof dir, "%s/%s", argv[1], cases[c]);
    ar_data_paths ps = {0};
    TU_OK(ar_data_paths_from_dir(dir, &ps, store));
    ar_problem prob, white;
    TU_OK(ar_problem_load(MPI_COMM_WORLD, &ps, NULL, &prob));
    int64_t n;
    int d, m;
    ar_problem_sizes(prob, &n, &d, &m);
    const int D = d * d + d * m;
    double *z = malloc(sizeof(double) * D);
    for (int i = 0; i < D; i++) z[i] = 0.5 * ar_normal(5, c, i);
    compare(cases[c], prob, z, AR_HESS_GAUSS_NEWTON, 1e-3);
    compare(cases[c], prob, z, AR_HESS_EXACT, 1.0);
    const char *names[3] = {ps.a1, ps.a2, ps.a3};
    ar_whitening w;
    TU_OK(ar_whiten(prob, names, &white, &w));
    char wname[64];
    snprintf(wname, sizeof wname, "%s (whitened)", cases[c]);
    compare(wname, white, z, AR_HESS_GAUSS_NEWTON, 1e-3);
    for (int t = 0; t < 4; t++) { /* random points: the exact Hessian is often indefinite there */
      for (int i = 0; i < D; i++) z[i] = 2.0 * ar_normal(17, 10 * c + t, i);
      indefinite(cases[c], prob, z, &seen);
    }
    free(z);
    ar_whitening_destroy(&w);
    ar_problem_destroy(&white);
    ar_problem_destroy(&prob);
  }
  TU_CHECK(seen > 0, "no indefinite exact Hessian among the random points: the negative-curvature check is vacuous");
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) printf("  indefinite exact Hessians met: %d of 16 points\n", seen);
  int rc = tu_finish("test_steps");
  MPI_Finalize();
  return rc;
}
