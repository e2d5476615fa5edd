/* The solver loop (MATH.md §4): damped Newton with a Levenberg-Marquardt shift, chord steps
 * and a hybrid Gauss-Newton / exact Hessian.
 *
 *   z = (vec X, vec Y)  [alternating: Y <- least squares, then z = vec X alone]
 *   evaluate f, g, H at z; g0 = |g|; monitor iteration 0   [restart: the saved state instead]
 *   loop:
 *     reason = converged(...)  in the fixed order NaN, gatol, grtol, gttol, ftol, steptol,
 *                              max_it, mu overflow, time limit, signal      -> stop if set
 *     H at z (fresh): s = mean |diag H| * min(1, |g|/|g0|)  (dimensionless mu; shift -> 0 as g -> 0)
 *                     factor H + mu s I (pdpotrf); not positive definite -> raise mu, refactor
 *     otherwise (chord step): keep the factor of the last Hessian
 *     solve for dz = -(factor)^{-1} g (pdpotrs)
 *     evaluate at z + dz:  untrusted (the last step was rejected or had rho <= 0.75): f only;
 *                          trusted, a chord step may follow: f and g;  trusted: f, g and H at once
 *     pred = -g.dz - dz.(H + shift I).dz/2 + shift |dz|^2/2 = (-g.dz + shift |dz|^2) / 2
 *     rho = (f - f_t) / pred
 *     rho > 1e-4 and f_t < f: accept (z += dz; f, g, H at z unless already there), shrink mu
 *                             (Nielsen); --hessian auto: Gauss-Newton next while an accepted
 *                             step lowers f by >= 20%, else exact (Fletcher-Xu)
 *     otherwise: reject; a Newton step grows mu (x nu, nu doubles), a chord step only
 *                brings a fresh Hessian at z
 *     [alternating, after an accepted X step: Y <- least squares at the new X]
 *     monitor; every K iterations, and on a signal (then stop), write a checkpoint
 * Chord steps (Shamanskii): near the solution a Newton step followed by K steps with the same
 * factor costs one Hessian and K+1 gradients, and converges with order K+2.  They are taken
 * once steps are trusted and the last step cut |g| at least tenfold (Newton's fast phase).  Every decision
 * uses globally reduced numbers (loss, gradient, pdpotrf's info), so every rank takes the
 * same branch. */
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fault.h"
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
  o->hessian = AR_HESS_AUTO;
  o->chord_steps = 1;
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
  ar_hessian_kind hk;       /* kind for the next Hessian evaluation */
  ar_hessian_kind h_kind;   /* kind of the Hessian last evaluated, which is the one factored */
  int h_fresh;              /* that Hessian is at z (else at zf: the next step is a chord step) */
  int nchord, chord;        /* chord steps with the current factor; this iteration's step was one */
  ar_hessian_kind step_kind; /* kind of the Hessian behind this iteration's step (history) */
  double fact_shift;        /* shift of the current factor */
  double contraction;       /* |g| after / before the last accepted step */
  double *zf;               /* the point whose Hessian is factored */
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

/* f, g, H (of kind hk) at s->z; for the alternating method the X block only. */
static int evaluate_point(lm_state *s, ar_hessian_kind hk)
{
  AR_CALL(add_eval(s, s->z, hk, &s->f, s->g));
  s->gnorm = norm2(s->g, s->dd + s->d * s->m); /* alternating: g_Y = 0 after the Y step */
  s->h_kind = hk, s->h_fresh = 1;
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
  if (iter > 0 && o->ftol > 0 && s->accepted && fabs(s->f_prev - s->f) <= o->ftol * s->f_prev)
    return AR_CONVERGED_FTOL;
  if (iter > 0 && s->step_norm <= o->steptol * (norm2(s->z, s->N) + o->steptol)) return AR_CONVERGED_STEPTOL;
  if (iter >= o->max_iter) return AR_DIVERGED_MAXITS;
  if (s->mu > o->mu_max) return AR_DIVERGED_MU_OVERFLOW;
  if (o->time_limit > 0 && ar_wtime() - s->t_start >= o->time_limit) return AR_DIVERGED_TIME_LIMIT;
  return AR_REASON_NONE;
}

/* Newton step: factor H + mu s I at z, raising mu until it is positive definite; chord step:
 * the factor of an earlier point's Hessian.  Then dz = -(factor)^{-1} g. */
static int compute_step(lm_state *s)
{
  s->chord = !s->h_fresh;
  s->step_kind = s->h_kind;
  if (s->chord) {
    s->nchord++;
  } else {
    double scale;
    AR_CALL(ar_dmat_mean_abs_diag(s->H, &scale));
    if (!(scale > 0) || !isfinite(scale)) scale = 1;
    /* A shift proportional to |g| near the solution keeps Newton's quadratic rate
     * (Yamashita-Fukushima); far away the gain-ratio rule alone controls mu. */
    if (s->g0norm > 0 && s->gnorm < s->g0norm) scale *= s->gnorm / s->g0norm;
    int not_pd = 1;
    while (not_pd && s->mu <= s->o->mu_max) {
      AR_CALL(ar_dmat_factor(s->H, s->mu * scale, &not_pd));
      if (not_pd) s->mu = s->mu < 1e-12 ? 1e-12 : s->mu * 10;
    }
    s->nchord = 0;
    s->fact_shift = s->mu * scale;
    memcpy(s->zf, s->z, sizeof(double) * (s->dd + s->d * s->m));
    if (not_pd) { /* mu overflow: no step */
      memset(s->dz, 0, sizeof(double) * s->N);
      s->step_norm = s->pred = 0;
      return AR_OK;
    }
  }
  for (int i = 0; i < s->N; i++) s->rhs[i] = -s->g[i];
  AR_CALL(ar_dmat_solve(s->H, s->rhs, s->dz));
  s->step_norm = norm2(s->dz, s->N);
  double gdz = 0;
  for (int i = 0; i < s->N; i++) gdz += s->g[i] * s->dz[i];
  s->pred = -0.5 * gdz + 0.5 * s->fact_shift * s->step_norm * s->step_norm; /* predicted decrease */
  return AR_OK;
}

/* Loss at z + dz; accept or reject; update mu (Nielsen's rule). */
static int try_step(lm_state *s)
{
  const double pred = s->pred;
  const int D = s->dd + s->d * s->m;
  memcpy(s->zt, s->z, sizeof(double) * D);
  for (int i = 0; i < s->N; i++) s->zt[i] += s->dz[i];
  /* Once steps are trusted (the last one was accepted with rho > 0.75) they are nearly always
   * accepted, so the gradient, and the Hessian unless a chord step comes next, are evaluated
   * at the trial point in the same pass (a rejection re-evaluates the current point).  The
   * decisions depend only on saved state, so restarts repeat them. */
  const int trusted = s->o->method == AR_METHOD_JOINT && s->accepted && s->rho > 0.75;
  /* A chord step pays off in Newton's fast phase: when the last step cut |g| tenfold.  Like
   * the --hessian auto switch, this is decided from the previous step (the trial's own rho and
   * |g| are known only after it); a chord step that then fails costs one f, g evaluation. */
  const int chord_next = trusted && s->nchord < s->o->chord_steps && s->contraction <= 0.1;
  const ar_hessian_kind thk = trusted && !chord_next ? s->hk : AR_HESS_NONE;
  double ft;
  AR_CALL(add_eval(s, s->zt, thk, &ft, trusted ? s->gt : NULL));
  if (ar_fault("nan-trial")) ft = NAN; /* test hook (fault.h): every rank, as ft is global */
  s->rho = pred > 0 && isfinite(ft) ? (s->f - ft) / pred : -INFINITY;
  /* At the rounding floor of f the predicted decrease is below f's resolution and rho is
   * noise: a step that does not raise f beyond rounding is taken (rho counted as 1), so Newton
   * can still drive the gradient down.  f = sum c_i^2 with each residual c_i rounded relative
   * to |B|: its error is of order eps (f + sqrt(f |B|^2)). */
  const double fl = 64 * DBL_EPSILON * (fabs(s->f) + sqrt(fabs(s->f) * s->bnorm2));
  const int at_floor = isfinite(ft) && pred <= fl && ft <= s->f + fl;
  if (at_floor) s->rho = 1;
  s->accepted = s->step_norm > 0 && isfinite(ft) && (at_floor || (ft < s->f && s->rho > 1e-4));
  if (!s->accepted) {
    if (s->chord) return evaluate_point(s, s->hk); /* the old model failed here: a fresh Hessian */
    s->mu = (s->mu < 1e-12 ? 1e-12 : s->mu) * s->nu;
    s->nu *= 2;
    return thk != AR_HESS_NONE ? evaluate_point(s, s->h_kind) : AR_OK; /* the trial overwrote H */
  }
  double shrink = 1 - pow(2 * s->rho - 1, 3);
  s->mu *= shrink > 1.0 / 3 ? shrink : 1.0 / 3;
  if (s->mu < 1e-15) s->mu = 0; /* pure Newton near the solution: quadratic convergence */
  s->nu = 2;
  if (s->o->hessian == AR_HESS_AUTO) /* Fletcher-Xu: Gauss-Newton while it lowers f fast */
    s->hk = s->f - ft >= 0.2 * s->f ? AR_HESS_GAUSS_NEWTON : AR_HESS_EXACT;
  s->f_prev = s->f;
  memcpy(s->z, s->zt, sizeof(double) * D);
  if (s->o->method == AR_METHOD_ALTERNATING) AR_CALL(ar_solve_least_squares_y(s->ev, s->z, s->z + s->dd));
  const double gnorm_before = s->gnorm;
  if (!trusted) {
    AR_CALL(evaluate_point(s, s->hk));
  } else {
    s->f = ft;
    memcpy(s->g, s->gt, sizeof(double) * D);
    s->gnorm = norm2(s->g, D);
    s->h_fresh = thk != AR_HESS_NONE;
    if (s->h_fresh) s->h_kind = thk;
  }
  s->contraction = gnorm_before > 0 ? s->gnorm / gnorm_before : 1;
  return AR_OK;
}

static int record(lm_state *s, int iter)
{
  ar_solve_result *r = s->res;
  ar_iter_info it = {iter,        s->f,       s->f / s->bnorm2, s->gnorm, s->mu, s->rho, s->step_norm,
                     ar_wtime() - s->t_start, s->accepted, s->step_kind, s->chord};
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
  ar_solver_state st = {iter,      s->accepted, s->mu,      s->nu,        s->f_prev,  s->g0norm, s->step_norm,
                        s->rho,    s->h_kind,   s->hk,      s->h_fresh,   s->nchord,  s->fact_shift, s->contraction,
                        s->dd + s->d * s->m,    s->z,       s->zf,        s->res->history};
  return s->o->checkpoint(&st, s->o->checkpoint_ctx);
}

/* Start: iteration 0 at the given point, or the restored state of a checkpoint.  A state
 * saved before a chord step gets its factor back: the Hessian at zf, factored with the same
 * shift (the same arithmetic, so on the same ranks the continuation is identical). */
static int start(lm_state *s, int *iter)
{
  const ar_solver_state *r = s->o->resume;
  const int D = s->dd + s->d * s->m;
  if (!r) {
    if (s->o->method == AR_METHOD_ALTERNATING) AR_CALL(ar_solve_least_squares_y(s->ev, s->z, s->z + s->dd));
    AR_CALL(evaluate_point(s, s->hk));
    s->g0norm = s->gnorm;
    s->step_kind = s->h_kind;
    *iter = 0;
    return record(s, 0);
  }
  AR_CHECK(r->D == D, AR_ERR_DATA, "restart state has %d unknowns, the problem %d", r->D, D);
  memcpy(s->z, r->z, sizeof(double) * D);
  memcpy(s->zf, r->zf, sizeof(double) * D);
  s->mu = r->mu, s->nu = r->nu, s->f_prev = r->f_prev, s->g0norm = r->g0norm, s->step_norm = r->step_norm;
  s->rho = r->rho, s->accepted = r->accepted, s->hk = r->hk_next, s->nchord = r->nchord;
  s->fact_shift = r->fact_shift, s->contraction = r->contraction;
  if (r->h_fresh) {
    AR_CALL(evaluate_point(s, r->h_kind));
  } else {
    double fz;
    int not_pd = 0;
    AR_CALL(add_eval(s, s->zf, r->h_kind, &fz, s->gt));
    AR_CALL(ar_dmat_factor(s->H, s->fact_shift, &not_pd));
    if (!not_pd) {
      AR_CALL(add_eval(s, s->z, AR_HESS_NONE, &s->f, s->g));
      s->gnorm = norm2(s->g, D);
      s->h_kind = r->h_kind, s->h_fresh = 0;
    } else { /* on other ranks the rebuilt Hessian may round differently: a Newton step instead */
      AR_CALL(evaluate_point(s, s->hk));
      s->nchord = 0;
    }
  }
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
    if (ar_fault("signal")) raise(SIGUSR1); /* test hook: a signal at this iteration boundary */
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
                .hk = o->hessian == AR_HESS_AUTO ? AR_HESS_GAUSS_NEWTON : o->hessian, .contraction = 1,
                .bnorm2 = p->bnorm2 > 0 ? p->bnorm2 : 1, .res = res, .t_start = ar_wtime()};
  const int D = s.dd + s.d * s.m;
  s.N = o->method == AR_METHOD_ALTERNATING ? s.dd : D;
  int err = ar_dmat_create(grid, s.N, o->nb, &s.H);
  s.z = calloc(D, sizeof(double)), s.zt = calloc(D, sizeof(double)), s.g = calloc(D, sizeof(double));
  s.dz = calloc(D, sizeof(double)), s.rhs = calloc(D, sizeof(double)), s.gt = calloc(D, sizeof(double));
  s.zf = calloc(D, sizeof(double));
  if (!err && !(s.z && s.zt && s.g && s.dz && s.rhs && s.gt && s.zf)) err = AR_ERROR(AR_ERR_MEM, "out of memory (solver vectors)");
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
  free(s.z), free(s.zt), free(s.g), free(s.dz), free(s.rhs), free(s.gt), free(s.zf);
  return err;
}
