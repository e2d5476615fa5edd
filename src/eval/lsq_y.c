/* The least-squares Y at X (docs/math.md §5): the normal equations (P^T P + lambda_y I) Y = P^T B
 * from one forward pass (ar_eval_normal_equations), solved on every rank alike, and the reduced
 * loss L(X, Y(X)) that the fixed-norm search of multi-start minimises.  Public API only. */
#include <stdlib.h>
#include <string.h>

#include "attnreg.h"
#include "error.h"
#include "lapack.h"

/* Y from the normal equations (P^T P + lambda_y I) Y = P^T B; a singular P^T P gets a tiny
 * shift.  Same inputs on every rank and a deterministic LAPACK: every rank gets the same Y. */
static int solve_normal(int d, int m, double lambda_y, const double *A, const double *Bt, double *Y)
{
  double *B;
  AR_MALLOC(B, d * (d > m ? d : m));
  double tr = 0;
  for (int k = 0; k < d; k++) tr += A[k * d + k];
  int err = AR_OK;
  for (int attempt = 0; !err && attempt < 2; attempt++) {
    double shift = lambda_y + (attempt ? 1e-12 * tr / d + 1e-300 : 0);
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
  int d, m;
  double lambda_x, lambda_y;
  ar_problem_sizes(ar_eval_problem(ev), NULL, &d, &m);
  ar_eval_ridge(ev, &lambda_x, &lambda_y);
  double *A, *Bt;
  AR_MALLOC(A, d * d);
  AR_MALLOC(Bt, d * m);
  int err = ar_eval_normal_equations(ev, X, A, Bt);
  if (!err) err = solve_normal(d, m, lambda_y, A, Bt, Y);
  /* L = |B|^2 - 2 tr(Y^T P^T B) + tr(Y^T P^T P Y) + lx |X|^2 + ly |Y|^2 */
  double l = ar_problem_bnorm2(ar_eval_problem(ev)), rx = 0;
  for (int k = 0; !err && k < d; k++)
    for (int i = 0; i < m; i++) {
      double py = 0;
      for (int kk = 0; kk < d; kk++) py += A[k * d + kk] * Y[kk * m + i];
      l += Y[k * m + i] * (py - 2 * Bt[k * m + i]) + lambda_y * Y[k * m + i] * Y[k * m + i];
    }
  for (int i = 0; i < d * d; i++) rx += X[i] * X[i];
  *loss = l + lambda_x * rx;
  free(A), free(Bt);
  return err;
}
