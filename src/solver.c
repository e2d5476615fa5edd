/* The solver loop (MATH.md §4): damped Newton with a Levenberg-Marquardt shift.
 *
 *   z = (vec X, vec Y)  [alternating: Y <- least squares, then z = vec X alone]
 *   evaluate f, g, H at z; g0 = |g|; monitor iteration 0   [restart: the saved state instead]
 *   loop:
 *     reason = converged(...)  in the fixed order NaN, gatol, grtol, gttol, ftol, steptol,
 *                              max_it, mu overflow, time limit, signal      -> stop if set
 *     s = mean |diag H| * min(1, |g|/|g0|)        (dimensionless mu; shift -> 0 as g -> 0)
 *     solve (H + mu s I) dz = -g by pdpotrf/pdpotrs;  not positive definite -> raise mu, retry
 *     f_t = L(z + dz) [trusted regime: f, g, H at z + dz at once];
 *     pred = -g.dz - dz.H.dz/2 = (-g.dz + mu s |dz|^2) / 2;  rho = (f - f_t) / pred
 *     rho > eta and f_t finite: accept (z += dz; f, g, H at z), shrink mu (Nielsen's rule)
 *     otherwise: reject, grow mu (x nu, nu doubles)
 *     [alternating, after an accepted X step: Y <- least squares at the new X]
 *     monitor; every K iterations, and on a signal (then stop), write a checkpoint
 * Every decision uses globally reduced numbers (loss, gradient, pdpotrf's info), so every
 * rank takes the same branch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "problem_impl.h"
#include "timing.h"

const char *ar_reason_name(ar_reason r)
{
  switch (r) {
#define AR_REASON_CASE(name, text, conv) case name: return text;
    AR_REASON_MAP(AR_REASON_CASE)
#undef AR_REASON_CASE
  }
  return "UNKNOWN";
}

int ar_reason_converged(ar_reason r)
{
  switch (r) {
#define AR_REASON_CASE(name, text, conv) case name: return conv;
    AR_REASON_MAP(AR_REASON_CASE)
#undef AR_REASON_CASE
  }
  return 0;
}

void ar_solver_options_default(ar_solver_options *o)
{
  memset(o, 0, sizeof *o);
  o->method = AR_METHOD_JOINT;
  o->hessian = AR_HESS_EXACT;
  o->max_iter = 100;
  o->gatol = 0;
  o->grtol = 0;
  o->gttol = 1e-13;
  o->ftol = 0;
  o->steptol = 1e-14;
  o->mu0 = 1e-3;
  o->mu_max = 1e16;
}

/* State of one solve: the current point and everything the helpers share. */
typedef struct {
  ar_problem p;
  ar_eval ev;
  const ar_solver_options *o;
  int d, m, dd, N;          /* N unknowns of the Newton system: the first N entries of z */
  double *z, *zt, *dz, *g, *gt, *rhs;
  double f, f_prev, gnorm, g0norm, mu, nu, rho, pred, step_norm, bnorm2;
  int accepted;
  ar_dmat H;
  ar_solve_result *res;
  double t_start;
} lm_state;

static double norm2(const double *a, int n)
{
  double s = 0;
  for (int i = 0; i < n; i++) s += a[i] * a[i];
  return sqrt(s);
}

static int add_eval(lm_state *s, const double *z, ar_hessian_kind hk, double *f, double *g)
{
  ar_eval_out out = {.grad = g, .hess = hk != AR_HESS_NONE ? s->H : NULL};
  AR_CALL(ar_eval_compute(s->ev, z, z + s->dd, hk, &out));
  *f = out.loss;
  s->res->flops += out.flops;
  s->res->t_kernel += out.t_kernel, s->res->t_hess += out.t_hess, s->res->t_reduce += out.t_reduce;
  return AR_OK;
}

/* f, g, H at s->z; for the alternating method the X block only. */
static int evaluate_point(lm_state *s)
{
  AR_CALL(add_eval(s, s->z, s->o->hessian, &s->f, s->g));
  s->gnorm = norm2(s->g, s->dd + s->d * s->m); /* alternating: g_Y = 0 after the Y step */
  return AR_OK;
}

/* The convergence test, in the fixed order of the reasons (STYLE.md, TAO). */
static ar_reason converged(const lm_state *s, int iter)
{
  const ar_solver_options *o = s->o;
  if (!isfinite(s->f) || !isfinite(s->gnorm)) return AR_DIVERGED_NAN;
  if (s->gnorm <= o->gatol) return AR_CONVERGED_GATOL;
  if (s->gnorm <= o->grtol * s->f) return AR_CONVERGED_GRTOL;
  if (s->gnorm <= o->gttol * s->g0norm) return AR_CONVERGED_GTTOL;
  if (iter > 0 && s->accepted && fabs(s->f_prev - s->f) <= o->ftol * s->f_prev) return AR_CONVERGED_FTOL;
  if (iter > 0 && s->step_norm <= o->steptol * (norm2(s->z, s->N) + o->steptol)) return AR_CONVERGED_STEPTOL;
  if (iter >= o->max_iter) return AR_DIVERGED_MAXITS;
  if (s->mu > o->mu_max) return AR_DIVERGED_MU_OVERFLOW;
  if (o->time_limit > 0 && ar_wtime() - s->t_start >= o->time_limit) return AR_DIVERGED_TIME_LIMIT;
  return AR_REASON_NONE;
}

/* (H + mu s I) dz = -g, raising mu until the shifted matrix is positive definite. */
static int compute_step(lm_state *s)
{
  double scale;
  AR_CALL(ar_dmat_mean_abs_diag(s->H, &scale));
  if (!(scale > 0) || !isfinite(scale)) scale = 1;
  /* A shift proportional to |g| near the solution keeps Newton's quadratic rate
   * (Yamashita-Fukushima); far away the gain-ratio rule alone controls mu. */
  if (s->g0norm > 0 && s->gnorm < s->g0norm) scale *= s->gnorm / s->g0norm;
  for (int i = 0; i < s->N; i++) s->rhs[i] = -s->g[i];
  for (;;) {
    int not_pd = 0;
    AR_CALL(ar_dmat_shifted_solve(s->H, s->mu * scale, s->rhs, s->dz, &not_pd));
    if (!not_pd) break;
    s->mu = s->mu < 1e-12 ? 1e-12 : s->mu * 10;
    if (s->mu > s->o->mu_max) {
      memset(s->dz, 0, sizeof(double) * s->N);
      break;
    }
  }
  s->step_norm = norm2(s->dz, s->N);
  double gdz = 0;
  for (int i = 0; i < s->N; i++) gdz += s->g[i] * s->dz[i];
  s->pred = -0.5 * gdz + 0.5 * s->mu * scale * s->step_norm * s->step_norm; /* predicted decrease */
  return AR_OK;
}

/* Loss at z + dz; accept or reject; update mu (Nielsen's rule). */
static int try_step(lm_state *s)
{
  const double pred = s->pred;
  memcpy(s->zt, s->z, sizeof(double) * (s->dd + s->d * s->m));
  for (int i = 0; i < s->N; i++) s->zt[i] += s->dz[i];
  /* Speculation: once steps are trusted (the last one was accepted with rho > 0.75) they are
   * nearly always accepted, so f, g and H are evaluated at the trial point at once, saving the
   * separate evaluation after acceptance; a rejection re-evaluates the current point.  The
   * decision depends only on saved state (accepted, rho), so restarts repeat it. */
  const int spec = s->o->method == AR_METHOD_JOINT && s->accepted && s->rho > 0.75;
  double ft;
  AR_CALL(add_eval(s, s->zt, spec ? s->o->hessian : AR_HESS_NONE, &ft, spec ? s->gt : NULL));
  /* Fault injection for the reliability tests: ATTNREG_INJECT_NAN_TRIAL=K makes the K-th trial
   * loss NaN (same environment on every rank, so every rank sees it). */
  static int trials = 0;
  const char *inject = getenv("ATTNREG_INJECT_NAN_TRIAL");
  if (inject && ++trials == atoi(inject)) ft = NAN;
  s->rho = pred > 0 && isfinite(ft) ? (s->f - ft) / pred : -INFINITY;
  s->accepted = s->step_norm > 0 && isfinite(ft) && ft < s->f && s->rho > 1e-4;
  if (!s->accepted) {
    s->mu = (s->mu < 1e-12 ? 1e-12 : s->mu) * s->nu;
    s->nu *= 2;
    return spec ? evaluate_point(s) : AR_OK; /* spec overwrote H: restore it at z */
  }
  double shrink = 1 - pow(2 * s->rho - 1, 3);
  s->mu *= shrink > 1.0 / 3 ? shrink : 1.0 / 3;
  if (s->mu < 1e-15) s->mu = 0; /* pure Newton near the solution: quadratic convergence */
  s->nu = 2;
  s->f_prev = s->f;
  memcpy(s->z, s->zt, sizeof(double) * (s->dd + s->d * s->m));
  if (s->o->method == AR_METHOD_ALTERNATING) AR_CALL(ar_solve_least_squares_y(s->ev, s->z, s->z + s->dd));
  if (!spec) return evaluate_point(s);
  s->f = ft;
  memcpy(s->g, s->gt, sizeof(double) * (s->dd + s->d * s->m));
  s->gnorm = norm2(s->g, s->dd + s->d * s->m);
  return AR_OK;
}

static int record(lm_state *s, int iter)
{
  ar_solve_result *r = s->res;
  ar_iter_info it = {iter, s->f, s->f / s->bnorm2, s->gnorm, s->mu, s->rho, s->step_norm, ar_wtime() - s->t_start,
                     s->accepted};
  if (iter == 0) it.rho = it.step_norm = 0, it.accepted = 1;
  ar_iter_info *h = realloc(r->history, sizeof *h * (iter + 1));
  AR_CALL(ar_error_agree(s->p->comm, h ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory for the history")));
  r->history = h;
  h[iter] = it;
  r->iterations = iter;
  if (s->o->monitor) s->o->monitor(&it, s->o->monitor_ctx);
  return AR_OK;
}

/* A signal seen by any rank stops every rank (one reduction: all take the same branch). */
static int interrupted(lm_state *s)
{
  int mine = s->o->interrupt && *s->o->interrupt, any = 0;
  MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, s->p->comm);
  return any;
}

static int checkpoint(lm_state *s, int iter)
{
  if (!s->o->checkpoint) return AR_OK;
  ar_solver_state st = {iter, s->accepted, s->mu, s->nu, s->f_prev, s->g0norm, s->step_norm, s->rho,
                        s->dd + s->d * s->m, s->z, s->res->history};
  return s->o->checkpoint(&st, s->o->checkpoint_ctx);
}

/* Start: iteration 0 at the given point, or the restored state of a checkpoint. */
static int start(lm_state *s, int *iter)
{
  const ar_solver_state *r = s->o->resume;
  if (!r) {
    if (s->o->method == AR_METHOD_ALTERNATING) AR_CALL(ar_solve_least_squares_y(s->ev, s->z, s->z + s->dd));
    AR_CALL(evaluate_point(s));
    s->g0norm = s->gnorm;
    *iter = 0;
    return record(s, 0);
  }
  AR_CHECK(r->D == s->dd + s->d * s->m, AR_ERR_DATA, "restart state has %d unknowns, the problem %d", r->D,
           s->dd + s->d * s->m);
  memcpy(s->z, r->z, sizeof(double) * r->D);
  s->mu = r->mu, s->nu = r->nu, s->f_prev = r->f_prev, s->g0norm = r->g0norm, s->step_norm = r->step_norm;
  s->rho = r->rho, s->accepted = r->accepted;
  AR_CALL(evaluate_point(s));
  ar_iter_info *h = malloc(sizeof *h * (r->iter + 1));
  AR_CALL(ar_error_agree(s->p->comm, h ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory for the history")));
  memcpy(h, r->history, sizeof *h * (r->iter + 1));
  s->res->history = h;
  s->res->iterations = *iter = r->iter;
  return AR_OK;
}

static int solve_loop(lm_state *s)
{
  int iter;
  ar_reason reason;
  AR_CALL(start(s, &iter));
  while (!(reason = converged(s, iter))) {
    if (interrupted(s)) {
      reason = AR_DIVERGED_SIGNAL;
      AR_CALL(checkpoint(s, iter));
      break;
    }
    iter++;
    AR_CALL(compute_step(s));
    if (s->mu > s->o->mu_max) s->accepted = 0;
    else AR_CALL(try_step(s));
    AR_CALL(record(s, iter));
    if (s->o->checkpoint_every > 0 && iter % s->o->checkpoint_every == 0) AR_CALL(checkpoint(s, iter));
  }
  s->res->reason = reason;
  return AR_OK;
}

int ar_solve(ar_problem p, ar_eval ev, ar_grid grid, const ar_solver_options *o, double *X, double *Y,
             ar_solve_result *res)
{
  memset(res, 0, sizeof *res);
  lm_state s = {.p = p, .ev = ev, .o = o, .d = p->d, .m = p->m, .dd = p->d * p->d, .mu = o->mu0, .nu = 2,
                .bnorm2 = p->bnorm2 > 0 ? p->bnorm2 : 1, .res = res, .t_start = ar_wtime()};
  const int D = s.dd + s.d * s.m;
  s.N = o->method == AR_METHOD_ALTERNATING ? s.dd : D;
  int err = ar_dmat_create(grid, s.N, o->nb, &s.H);
  s.z = calloc(D, sizeof(double)), s.zt = calloc(D, sizeof(double)), s.g = calloc(D, sizeof(double));
  s.dz = calloc(D, sizeof(double)), s.rhs = calloc(D, sizeof(double)), s.gt = calloc(D, sizeof(double));
  if (!err && !(s.z && s.zt && s.g && s.dz && s.rhs && s.gt)) err = AR_ERROR(AR_ERR_MEM, "out of memory (solver vectors)");
  err = ar_error_agree(p->comm, err);
  if (!err) {
    memcpy(s.z, X, sizeof(double) * s.dd);
    memcpy(s.z + s.dd, Y, sizeof(double) * s.d * s.m);
    err = solve_loop(&s);
  }
  if (!err) {
    memcpy(X, s.z, sizeof(double) * s.dd);
    memcpy(Y, s.z + s.dd, sizeof(double) * s.d * s.m);
    res->loss = s.f, res->rel_loss = s.f / s.bnorm2, res->grad_norm = s.gnorm;
    int nf;
    ar_dmat_times(s.H, &res->t_factor, &res->t_solve, &nf);
    res->nb = ar_dmat_nb(s.H);
  }
  res->t_total = ar_wtime() - s.t_start;
  ar_dmat_destroy(&s.H);
  free(s.z), free(s.zt), free(s.g), free(s.dz), free(s.rhs), free(s.gt);
  return err;
}
