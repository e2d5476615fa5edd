/* What every Newton-step method shares (step.h): the evaluation with its accounting. */
#include <stdlib.h>

#include "error.h"
#include "step.h"

int ar_stepper_eval(ar_stepper *st, const double *z, ar_hessian_kind hk, ar_dmat H, double *f, double *g)
{
  ar_eval_out out = {.grad = g, .hess = hk != AR_HESS_NONE ? H : NULL, .lower_only = 1};
  AR_CALL(ar_eval_compute(st->ev, z, z + st->dd, hk, &out));
  *f = out.loss;
  st->res->flops += out.flops;
  st->res->t_kernel += out.t_kernel, st->res->t_hess += out.t_hess, st->res->t_reduce += out.t_reduce;
  st->res->t_ring += out.t_ring;
  return AR_OK;
}

void ar_stepper_destroy(ar_stepper **pst)
{
  ar_stepper *st = *pst;
  if (!st) return;
  st->ops->destroy(st);
  free(st);
  *pst = NULL;
}
