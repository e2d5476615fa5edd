/* The fixed-norm search behind the multi-start strategy "norm" (docs/solver.md "Multi-start").
 *
 * Poor stationary points of this problem have nearly uniform attention (a small ||X||), where
 * the model is almost linear; the sharpness of the attention, ||X||, is the lever.  So X is
 * held on a sphere ||X||_F = r while its direction is optimised for the reduced loss
 * L(X, Y*(X)), Y* by least squares (variable projection: at Y* the gradient in Y vanishes, and
 * the reduced gradient is grad_X L(X, Y*)).  Projected gradient descent: the gradient's
 * component tangent to the sphere, a step along it mapped back onto the sphere, an Armijo test
 * on the reduced loss (one forward pass a trial).  The point it ends at is a start for Newton. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

int ar_fixed_norm_search(ar_eval ev, double *X, double *Y, int iters, double *loss, int *evals)
{
  int64_t n;
  int d, m;
  ar_problem_sizes(ar_eval_problem(ev), &n, &d, &m);
  const int dd = d * d, D = dd + d * m;
  double *g, *Xt, *Yt, r = 0;
  AR_MALLOC(g, D);
  AR_MALLOC(Xt, dd);
  AR_MALLOC(Yt, d * m);
  for (int i = 0; i < dd; i++) r += X[i] * X[i];
  r = sqrt(r);
  int err = ar_reduced_loss(ev, X, Y, loss);
  *evals = 1;
  double alpha = 0;
  for (int it = 0; !err && it < iters && r > 0; it++) {
    ar_eval_out out = {.grad = g};
    if ((err = ar_eval_compute(ev, X, Y, AR_HESS_NONE, &out))) break;
    double gx = 0, gt2 = 0;
    for (int i = 0; i < dd; i++) gx += g[i] * X[i];
    for (int i = 0; i < dd; i++) g[i] -= gx / (r * r) * X[i], gt2 += g[i] * g[i]; /* tangent part */
    if (!(gt2 > 1e-30 * fabs(*loss))) break;
    if (alpha <= 0) alpha = 0.1 * r / sqrt(gt2); /* a first step of a tenth of the radius */
    int accepted = 0;
    for (int k = 0; k < 12 && !accepted && !err; k++, alpha *= 0.5) {
      double nrm = 0, ft;
      for (int i = 0; i < dd; i++) Xt[i] = X[i] - alpha * g[i], nrm += Xt[i] * Xt[i];
      for (int i = 0; i < dd; i++) Xt[i] *= r / sqrt(nrm); /* back onto the sphere */
      err = ar_reduced_loss(ev, Xt, Yt, &ft);
      (*evals)++;
      if (!err && isfinite(ft) && ft <= *loss - 1e-4 * alpha * gt2) {
        memcpy(X, Xt, sizeof(double) * dd), memcpy(Y, Yt, sizeof(double) * d * m);
        *loss = ft, accepted = 1;
      }
    }
    if (!accepted) break; /* no decrease along the sphere: a stationary point on it */
    alpha *= 4;           /* undo the last halving and try a longer step next time */
  }
  free(g), free(Xt), free(Yt);
  return err;
}
