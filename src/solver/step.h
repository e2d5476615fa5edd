/* The Newton-step seam: how the solver loop (solver.c) gets f, g and a step from a model of
 * the Hessian, whatever the linear algebra behind it.
 *
 *   evaluate(z, hk)  f and g at z; with hk != AR_HESS_NONE the model's Hessian becomes the one
 *                    at z, of kind hk (the dense method assembles it; a matrix-free method
 *                    only remembers z)
 *   scale()          mean |diag H| of the current model: the scale of the shift
 *   factor(shift)    prepare solves with H + shift*M (M: the method's shift shape, I for CG,
 *                    --shift for the dense step); *not_pd when that is not positive definite
 *   solve(g)         dz = -(H + shift*M)^{-1} g with the prepared model (also for chord steps,
 *                    where g is taken at another point than H), and the decrease the quadratic
 *                    model of that factor predicts, pred = -g.dz - dz.(H + shift M).dz / 2
 *                    + shift dz.M.dz / 2; *indefinite when the method found H + shift*M not
 *                    positive definite only while solving (the solver then raises the shift)
 *
 * Every operation is collective, and its results are global (identical on every rank), so
 * the loop takes the same branch everywhere.  The first implementation is the dense one
 * (step_dense.c): H assembled block-cyclic, ScaLAPACK Cholesky. */
#ifndef AR_STEP_H
#define AR_STEP_H

#include "attnreg.h"

typedef struct ar_stepper_s ar_stepper;

typedef struct {
  const char *name;
  int (*evaluate)(ar_stepper *st, const double *z, ar_hessian_kind hk, double *f, double *g);
  int (*scale)(ar_stepper *st, double *scale);
  int (*factor)(ar_stepper *st, double shift, int *not_pd);
  int (*solve)(ar_stepper *st, const double *g, double *dz, double *pred, int *indefinite);
  /* Not collective: this method's part of the result (factor/solve times, block size). */
  void (*finish)(ar_stepper *st, ar_solve_result *res);
  void (*destroy)(ar_stepper *st);
} ar_stepper_ops;

struct ar_stepper_s {
  const ar_stepper_ops *ops;
  ar_eval ev;
  int N;                   /* unknowns of the Newton system: the first N entries of z */
  int dd;                  /* d*d: z = [vec_r X (dd); vec_r Y] */
  ar_solve_result *res;    /* evaluation flops and times are added here */
  int iters;               /* inner iterations of the last solve (0 for a direct method) */
  void *impl;
};

/* Collective: f, g (length D), and the Hessian of kind hk into H (NULL when hk is NONE) at z,
 * with the evaluation's flops and times added to st->res.  For the implementations. */
int ar_stepper_eval(ar_stepper *st, const double *z, ar_hessian_kind hk, ar_dmat H, double *f, double *g);

/* Collective: the dense method on grid, N unknowns, ScaLAPACK block size nb (0: default), the
 * shift's shape (ar_shift_kind). */
int ar_stepper_dense_create(ar_eval ev, ar_grid grid, int N, int nb, int shift, ar_solve_result *res,
                            ar_stepper **st);
/* Collective: the matrix-free method (step_cg.c): preconditioned CG with Hessian-vector
 * products, at most max_iter iterations a step; fixed_rtol > 0 replaces the Eisenstat-Walker
 * forcing term by a fixed relative residual (tests compare steps with it). */
int ar_stepper_cg_create(ar_eval ev, int N, int max_iter, double fixed_rtol, ar_solve_result *res, ar_stepper **st);
/* Collective: the row-space Gauss-Newton step (step_rows.c) for n m < D: J J^T (n m x n m)
 * block-cyclic on grid with block size nb (0: default), the joint method (N = D) only; the
 * shift's shape AR_SHIFT_IDENTITY or AR_SHIFT_GRAM (the Gram metric, factored). */
int ar_stepper_rows_create(ar_eval ev, ar_grid grid, int N, int nb, int shift, ar_solve_result *res,
                           ar_stepper **st);
void ar_stepper_destroy(ar_stepper **st); /* not collective; NULLs *st */

#endif
