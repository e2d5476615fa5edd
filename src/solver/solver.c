/* The solver loop (docs/solver.md): damped Newton with a Levenberg-Marquardt shift, chord steps
 * and a hybrid Gauss-Newton / exact Hessian.
 *
 *   z = (vec X, vec Y)  [alternating: Y <- least squares, then z = vec X alone]
 *   evaluate f, g, H at z; g0 = |g|; monitor iteration 0   [restart: the saved state instead]
 *   loop:
 *     reason = converged(...)  in the fixed order NaN, gatol, grtol, gttol, loss target, ftol, steptol, floor,
 *                              max_it, mu overflow, time limit, signal      -> stop if set
 *     H at z (fresh): s = mean |diag H| * min(1, |g|/|g0|)  (dimensionless mu; shift -> 0 as g -> 0)
 *                     factor H + mu s M (pdpotrf; M: --shift, by default the inputs' Gram
 *                     metric, I in whitened variables); not positive definite -> raise mu, refactor
 *     otherwise (chord step): keep the factor of the last Hessian
 *     solve for dz = -(factor)^{-1} g (pdpotrs)
 *     evaluate at z + dz:  untrusted (the last step was rejected or had rho <= 0.75): f only;
 *                          trusted, a chord step may follow: f and g;  trusted: f, g and H at once
 *     pred = -g.dz - dz.(H + shift M).dz/2 + shift dz.M.dz/2 = (-g.dz + shift dz.M.dz) / 2
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
#include "step.h"
#include "timing.h"

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
  o->floor_iters = 2;
  o->hessian_sample = 1;
  o->mu0 = 1e-3;
  o->mu_max = 1e16;
  o->linear_solver = AR_LINSOLVE_AUTO;
  o->cg_max_iter = 500;
  o->shift = AR_SHIFT_GRAM;
}

int ar_solver_options_check(const ar_solver_options *o)
{
  AR_CHECK(ar_method_name(o->method), AR_ERR_USAGE, "--method: %d is not a method", (int)o->method);
  AR_CHECK(o->hessian == AR_HESS_EXACT || o->hessian == AR_HESS_GAUSS_NEWTON || o->hessian == AR_HESS_AUTO,
           AR_ERR_USAGE, "--hessian: must be auto, exact or gauss-newton");
  AR_CHECK(o->chord_steps >= 0, AR_ERR_USAGE, "--chord-steps: must be >= 0, got %d", o->chord_steps);
  AR_CHECK(o->chord_steps <= 1000, AR_ERR_USAGE, "--chord-steps %d: at most 1000", o->chord_steps);
  AR_CHECK(o->max_iter >= 1, AR_ERR_USAGE, "--max-iter: must be >= 1, got %lld", (long long)o->max_iter);
  AR_CHECK(o->max_iter < (1 << 24), AR_ERR_USAGE, "--max-iter %lld: at most %d", (long long)o->max_iter, (1 << 24) - 1);
  const struct {
    const char *name;
    double v;
  } nonneg[] = {{"time-limit", o->time_limit}, {"gatol", o->gatol}, {"grtol", o->grtol}, {"gttol", o->gttol},
                {"ftol", o->ftol}, {"steptol", o->steptol}, {"loss-target", o->loss_target}, {"mu0", o->mu0}, {"mu-max", o->mu_max}};
  for (size_t i = 0; i < sizeof nonneg / sizeof nonneg[0]; i++)
    AR_CHECK(isfinite(nonneg[i].v) && nonneg[i].v >= 0, AR_ERR_USAGE, "--%s: must be >= 0, got %g", nonneg[i].name,
             nonneg[i].v);
  AR_CHECK(o->nb >= 0, AR_ERR_USAGE, "--nb: must be >= 1, got %d", o->nb);
  AR_CHECK(ar_linear_solver_name(o->linear_solver), AR_ERR_USAGE, "--linear-solver: %d is not a solver",
           o->linear_solver);
  AR_CHECK(ar_shift_name(o->shift), AR_ERR_USAGE, "--shift: %d is not a shift kind", o->shift);
  AR_CHECK(o->hessian_sample > 0 && o->hessian_sample <= 1, AR_ERR_USAGE,
           "--hessian-sample: must be in (0, 1], got %g", o->hessian_sample);
  AR_CHECK(o->floor_iters >= 0, AR_ERR_USAGE, "--floor-iters: must be >= 0, got %d", o->floor_iters);
  AR_CHECK(o->cg_max_iter >= 1, AR_ERR_USAGE, "--cg-max-iter: must be >= 1, got %d", o->cg_max_iter);
  AR_CHECK(o->checkpoint_every >= 0, AR_ERR_USAGE, "--checkpoint-every: must be >= 0, got %d", o->checkpoint_every);
  return AR_OK;
}

/* One solve: the state a checkpoint saves (st), and the working data of the loop. */
typedef struct {
  ar_solver_state st;       /* iter, mu, ..., z, zf (the point whose Hessian is factored), history */
  ar_problem p;
  const ar_solver_options *o;
  ar_stepper *step;         /* the Newton-step method (step.h) */
  int d, m, dd, N, D;       /* N unknowns of the Newton system: the first N entries of z */
  double *zt, *dz, *g, *gt;
  double f, gnorm, pred, bnorm2;
  int chord;                /* this iteration's step reused an earlier factor */
  int cg_iters;             /* inner iterations of this iteration's step (matrix-free) */
  ar_hessian_kind step_kind; /* kind of the Hessian behind this iteration's step (history) */
  ar_solve_result *res;
  double t_start, t_iter_start, t_last_iter; /* seconds: the solve's and this iteration's start, the last's length */
} lm_state;

static double norm2(const double *a, int n)
{
  double s = 0;
  for (int i = 0; i < n; i++) s += a[i] * a[i];
  return sqrt(s);
}

/* f, g, H (of kind hk) at z; for the alternating method H is the X block only. */
static int evaluate_point(lm_state *s, ar_hessian_kind hk)
{
  AR_CALL(s->step->ops->evaluate(s->step, s->st.z, hk, &s->f, s->g));
  s->gnorm = norm2(s->g, s->D); /* alternating: g_Y = 0 after the Y step */
  s->st.h_kind = hk, s->st.h_fresh = 1;
  return AR_OK;
}

/* The convergence test, in the fixed order of the reasons (STYLE.md, TAO). */
static ar_reason converged(const lm_state *s)
{
  const ar_solver_options *o = s->o;
  const ar_solver_state *st = &s->st;
  if (!isfinite(s->f) || !isfinite(s->gnorm)) return AR_DIVERGED_NAN;
  if (s->gnorm <= o->gatol) return AR_CONVERGED_GATOL;
  if (s->gnorm <= o->grtol * s->f) return AR_CONVERGED_GRTOL;
  if (s->gnorm <= o->gttol * st->g0norm) return AR_CONVERGED_GTTOL;
  if (o->loss_target > 0 && s->f <= o->loss_target * s->bnorm2) return AR_CONVERGED_LOSS_TARGET;
  if (st->iter > 0 && o->ftol > 0 && st->accepted && fabs(st->f_prev - s->f) <= o->ftol * st->f_prev)
    return AR_CONVERGED_FTOL;
  if (st->iter > 0 && st->step_norm <= o->steptol * (norm2(st->z, s->N) + o->steptol)) return AR_CONVERGED_STEPTOL;
  if (o->floor_iters > 0 && st->nfloor >= o->floor_iters) return AR_CONVERGED_FLOOR;
  if (st->iter >= o->max_iter) return AR_DIVERGED_MAXITS;
  if (st->mu > o->mu_max) return AR_DIVERGED_MU_OVERFLOW;
  /* the time limit: stop when it is reached, or before an iteration that, by the last one's
   * duration, would not finish within it */
  const double now = ar_wtime() - s->t_start, last = st->iter > 0 ? s->t_last_iter : 0;
  if (o->time_limit > 0 && (now >= o->time_limit || now + last > o->time_limit)) return AR_DIVERGED_TIME_LIMIT;
  return AR_REASON_NONE;
}

/* The one place mu changes.  Not positive definite: x10 (from at least 1e-12).  Rejected: x nu,
 * nu doubling.  Accepted with gain ratio rho: Nielsen's factor max(1/3, 1 - (2 rho - 1)^3),
 * and 0 once tiny (pure Newton near the solution: quadratic convergence). */
typedef enum { MU_NOT_PD, MU_REJECTED, MU_ACCEPTED } mu_event;

static void update_mu(ar_solver_state *st, mu_event e)
{
  if (e == MU_NOT_PD) {
    st->mu = st->mu < 1e-12 ? 1e-12 : st->mu * 10;
  } else if (e == MU_REJECTED) {
    st->mu = (st->mu < 1e-12 ? 1e-12 : st->mu) * st->nu;
    st->nu *= 2;
  } else {
    double shrink = 1 - pow(2 * st->rho - 1, 3);
    st->mu *= shrink > 1.0 / 3 ? shrink : 1.0 / 3;
    if (st->mu < 1e-15) st->mu = 0;
    st->nu = 2;
  }
}

/* Factor H + mu s M at z (M: the stepper's shift shape), raising mu until it is positive definite, with
 * s = mean |diag H| * min(1, |g| / |g0|): a shift proportional to |g| near the solution keeps
 * Newton's quadratic rate (Yamashita-Fukushima); far away the gain-ratio rule controls mu. */
static int factor_shifted(lm_state *s, int *not_pd)
{
  ar_solver_state *st = &s->st;
  double scale;
  AR_CALL(s->step->ops->scale(s->step, &scale));
  if (!(scale > 0) || !isfinite(scale)) scale = 1;
  if (st->g0norm > 0 && s->gnorm < st->g0norm) scale *= s->gnorm / st->g0norm;
  *not_pd = 1;
  ar_progress_phase(s->o->progress, "Cholesky factorisation", -1);
  while (*not_pd && st->mu <= s->o->mu_max) {
    AR_CALL(s->step->ops->factor(s->step, st->mu * scale, not_pd));
    if (*not_pd) update_mu(st, MU_NOT_PD);
  }
  st->nchord = 0;
  st->fact_shift = st->mu * scale;
  memcpy(st->zf, st->z, sizeof(double) * s->D);
  return AR_OK;
}

/* Newton step: a new factor at z; chord step: the factor of an earlier point's Hessian.  A
 * method that finds the system indefinite only while solving (matrix-free CG) gets a larger
 * shift, as a failed factorisation does; a chord step then gives way to a fresh Hessian. */
static int compute_step(lm_state *s)
{
  ar_solver_state *st = &s->st;
  s->chord = !st->h_fresh;
  s->step_kind = st->h_kind;
  if (s->chord) st->nchord++;
  for (;;) {
    int not_pd = 0, indefinite = 0;
    if (!s->chord) AR_CALL(factor_shifted(s, &not_pd));
    if (!not_pd) {
      AR_CALL(s->step->ops->solve(s->step, s->g, s->dz, &s->pred, &indefinite));
      s->cg_iters += s->step->iters;
      if (!indefinite) break;
      if (!s->chord) {
        update_mu(st, MU_NOT_PD);
        if (st->mu <= s->o->mu_max) continue;
      }
    }
    memset(s->dz, 0, sizeof(double) * s->N); /* mu overflow, or an indefinite chord model: no step */
    st->step_norm = s->pred = 0;
    return AR_OK;
  }
  st->step_norm = norm2(s->dz, s->N);
  return AR_OK;
}

/* What to evaluate at the trial point.  Once steps are trusted (the last one was accepted
 * with rho > 0.75) they are nearly always accepted, so the gradient, and the Hessian unless a
 * chord step comes next, are evaluated there in the same pass (a rejection re-evaluates the
 * current point).  A chord step pays off in Newton's fast phase: when the last step cut |g|
 * tenfold.  Like the --hessian auto switch this is decided from the previous step (the
 * trial's own rho and |g| are known only after it), so restarts repeat the decisions. */
static ar_hessian_kind trial_hessian(const lm_state *s, int *trusted)
{
  const ar_solver_state *st = &s->st;
  *trusted = s->o->method == AR_METHOD_JOINT && st->accepted && st->rho > 0.75;
  const int chord_next = *trusted && st->nchord < s->o->chord_steps && st->contraction <= 0.1;
  return *trusted && !chord_next ? (ar_hessian_kind)st->hk_next : AR_HESS_NONE;
}

/* At the rounding floor of f the predicted decrease is below f's resolution and rho is
 * noise: a step that does not raise f beyond rounding is taken (rho counted as 1), so Newton
 * can still drive the gradient down.  f = sum c_i^2 with each residual c_i rounded relative
 * to |B|: its error is of order eps (f + sqrt(f |B|^2)). */
static int at_rounding_floor(const lm_state *s, double ft)
{
  const double fl = 64 * DBL_EPSILON * (fabs(s->f) + sqrt(fabs(s->f) * s->bnorm2));
  return isfinite(ft) && s->pred <= fl && ft <= s->f + fl;
}

/* Fletcher-Xu (--hessian auto): Gauss-Newton while an accepted step lowers f by >= 20 %. */
static int next_hessian(const lm_state *s, double ft)
{
  if (s->o->hessian != AR_HESS_AUTO) return s->st.hk_next;
  return s->f - ft >= 0.2 * s->f ? AR_HESS_GAUSS_NEWTON : AR_HESS_EXACT;
}

/* Move to the trial point zt (f = ft there; g and H too when the trial evaluated them). */
static int accept(lm_state *s, double ft, int trusted, ar_hessian_kind thk)
{
  ar_solver_state *st = &s->st;
  update_mu(st, MU_ACCEPTED);
  st->hk_next = next_hessian(s, ft);
  st->f_prev = s->f;
  memcpy(st->z, s->zt, sizeof(double) * s->D);
  if (s->o->method == AR_METHOD_ALTERNATING) AR_CALL(ar_solve_least_squares_y(s->step->ev, st->z, st->z + s->dd));
  const double gnorm_before = s->gnorm;
  if (!trusted) {
    AR_CALL(evaluate_point(s, st->hk_next));
  } else {
    s->f = ft;
    memcpy(s->g, s->gt, sizeof(double) * s->D);
    s->gnorm = norm2(s->g, s->D);
    st->h_fresh = thk != AR_HESS_NONE;
    if (st->h_fresh) st->h_kind = thk;
  }
  st->contraction = gnorm_before > 0 ? s->gnorm / gnorm_before : 1;
  return AR_OK;
}

/* Stay at z.  A failed chord step brings a fresh Hessian (the old model failed here); a failed
 * Newton step raises mu, and re-evaluates H at z if the trial overwrote it. */
static int reject(lm_state *s, ar_hessian_kind thk)
{
  if (s->chord) return evaluate_point(s, s->st.hk_next);
  update_mu(&s->st, MU_REJECTED);
  return thk != AR_HESS_NONE ? evaluate_point(s, s->st.h_kind) : AR_OK;
}

/* Evaluate z + dz and accept or reject it by the gain ratio rho = (f - f_t) / pred. */
static int try_step(lm_state *s)
{
  ar_solver_state *st = &s->st;
  for (int i = 0; i < s->D; i++) s->zt[i] = st->z[i] + (i < s->N ? s->dz[i] : 0);
  int trusted;
  const ar_hessian_kind thk = trial_hessian(s, &trusted);
  double ft;
  AR_CALL(s->step->ops->evaluate(s->step, s->zt, thk, &ft, trusted ? s->gt : NULL));
  if (ar_fault("nan-trial")) ft = NAN; /* test hook (fault.h): every rank, as ft is global */
  st->rho = s->pred > 0 && isfinite(ft) ? (s->f - ft) / s->pred : -INFINITY;
  const int floor = at_rounding_floor(s, ft);
  if (floor) st->rho = 1;
  st->nfloor = floor && st->step_norm > 0 ? st->nfloor + 1 : 0;
  st->accepted = st->step_norm > 0 && isfinite(ft) && (floor || (ft < s->f && st->rho > 1e-4));
  return st->accepted ? accept(s, ft, trusted, thk) : reject(s, thk);
}

/* The sub-sampled Hessian (--hessian-sample): the Hessians of an iteration come from the rows
 * of a sample of fraction hess_frac (one seed: the samples of growing fractions are nested, and
 * the same on any rank count and on a restart, where hess_frac is the saved one). */
static int set_sample(lm_state *s)
{
  if (s->o->hessian_sample >= 1) return AR_OK;
  return ar_eval_set_hessian_sample(s->step->ev, s->st.hess_frac, 1, NULL);
}

/* Sub-sampled Newton keeps its local rate only with a sample that grows near the solution: at
 * the start of an iteration, double the fraction if the last step was rejected, if its model was
 * poor (rho <= 0.75: the sampled Hessian's error shows), or if, with |g| below |g0| (the local
 * phase), |g| fell less than fourfold (that error now rules the rate).  (Growing only after
 * trusted steps, rho > 0.75, left a sample of 1/16 at a linear rate, ~4x an iteration with rho
 * 0.45-0.6, on planted problems: n = 65536, d = 8, and n = 16384, d = 32.) */
static int grow_sample(lm_state *s)
{
  ar_solver_state *st = &s->st;
  const int local = s->gnorm < st->g0norm;
  if (st->iter > 1 && st->hess_frac < 1 &&
      (!st->accepted || st->rho <= 0.75 || (local && st->contraction > 0.25)))
    st->hess_frac = st->hess_frac * 2 < 1 ? st->hess_frac * 2 : 1;
  return set_sample(s);
}

static int record(lm_state *s)
{
  const ar_solver_state *st = &s->st;
  ar_solve_result *r = s->res;
  const int iter = st->iter;
  ar_iter_info it = {.iter = iter, .loss = s->f, .rel_loss = s->f / s->bnorm2, .grad_norm = s->gnorm, .mu = st->mu,
                     .rho = st->rho, .step_norm = st->step_norm, .seconds = ar_wtime() - s->t_start,
                     .accepted = st->accepted, .hessian = s->step_kind, .chord = s->chord,
                     .cg_iters = s->cg_iters, .hessian_sample = st->hess_frac};
  if (iter == 0) it.rho = it.step_norm = 0, it.accepted = 1;
  ar_iter_info *h = realloc(r->history, sizeof *h * (iter + 1));
  AR_CALL(ar_error_agree(s->p->comm, h ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory for the history")));
  r->history = s->st.history = h;
  h[iter] = it;
  r->iterations = iter;
  if (s->o->monitor) s->o->monitor(&it, s->o->monitor_ctx);
  return AR_OK;
}

/* A signal seen by any rank stops every rank (one reduction: all take the same branch). */
static int interrupted(lm_state *s)
{
  int mine = s->o->interrupt && *s->o->interrupt, any = 0;
  AR_CALL_MPI(MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, s->p->comm));
  return any;
}

static int checkpoint(lm_state *s)
{
  return s->o->checkpoint ? s->o->checkpoint(&s->st, s->o->checkpoint_ctx) : AR_OK;
}

/* Restore a checkpoint's state.  A state saved before a chord step gets its factor back: the
 * Hessian at zf, factored with the same shift (the same arithmetic, so on the same ranks the
 * continuation is identical). */
static int resume(lm_state *s, const ar_solver_state *r)
{
  ar_solver_state *st = &s->st;
  AR_CHECK(r->D == s->D, AR_ERR_DATA, "restart state has %d unknowns, the problem %d", r->D, s->D);
  double *z = st->z, *zf = st->zf;
  *st = *r;
  st->z = z, st->zf = zf, st->history = NULL;
  memcpy(st->z, r->z, sizeof(double) * s->D);
  memcpy(st->zf, r->zf, sizeof(double) * s->D);
  AR_CALL(set_sample(s));
  if (r->h_fresh) {
    AR_CALL(evaluate_point(s, r->h_kind));
  } else {
    double fz;
    int not_pd = 0;
    AR_CALL(s->step->ops->evaluate(s->step, st->zf, r->h_kind, &fz, s->gt));
    AR_CALL(s->step->ops->factor(s->step, st->fact_shift, &not_pd));
    if (!not_pd) {
      AR_CALL(s->step->ops->evaluate(s->step, st->z, AR_HESS_NONE, &s->f, s->g));
      s->gnorm = norm2(s->g, s->D);
      st->h_kind = r->h_kind, st->h_fresh = 0;
    } else { /* on other ranks the rebuilt Hessian may round differently: a Newton step instead */
      AR_CALL(evaluate_point(s, st->hk_next));
      st->nchord = 0;
    }
  }
  ar_iter_info *h = malloc(sizeof *h * (r->iter + 1));
  AR_CALL(ar_error_agree(s->p->comm, h ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory for the history")));
  memcpy(h, r->history, sizeof *h * (r->iter + 1));
  s->res->history = st->history = h;
  s->res->iterations = r->iter;
  return AR_OK;
}

/* Iteration 0 at the given point, or the restored state of a checkpoint. */
static int start(lm_state *s)
{
  if (s->o->resume) return resume(s, s->o->resume);
  if (s->o->method == AR_METHOD_ALTERNATING)
    AR_CALL(ar_solve_least_squares_y(s->step->ev, s->st.z, s->st.z + s->dd));
  s->st.hess_frac = s->o->hessian_sample;
  AR_CALL(set_sample(s));
  AR_CALL(evaluate_point(s, s->st.hk_next));
  s->st.g0norm = s->gnorm;
  s->step_kind = s->st.h_kind;
  s->st.iter = 0;
  return record(s);
}

static int solve_loop(lm_state *s)
{
  ar_reason reason;
  AR_CALL(start(s));
  while (!(reason = converged(s))) {
    if (interrupted(s)) {
      reason = AR_DIVERGED_SIGNAL;
      AR_CALL(checkpoint(s));
      break;
    }
    s->st.iter++;
    s->cg_iters = 0;
    s->t_iter_start = ar_wtime();
    if (ar_fault("signal")) raise(SIGUSR1); /* test hook: a signal at this iteration boundary */
    AR_CALL(grow_sample(s));
    AR_CALL(compute_step(s));
    if (s->st.mu > s->o->mu_max) s->st.accepted = 0;
    else AR_CALL(try_step(s));
    s->t_last_iter = ar_wtime() - s->t_iter_start;
    AR_CALL(record(s));
    if (s->o->stop && s->o->stop(&s->res->history[s->st.iter], s->o->stop_ctx)) {
      reason = AR_STOPPED_EARLY;
      break;
    }
    if (s->o->checkpoint_every > 0 && s->st.iter % s->o->checkpoint_every == 0) AR_CALL(checkpoint(s));
  }
  s->res->reason = reason;
  return AR_OK;
}

int ar_solve(ar_problem p, ar_eval ev, ar_grid grid, const ar_solver_options *o, double *X, double *Y,
             ar_solve_result *res)
{
  memset(res, 0, sizeof *res);
  AR_CALL(ar_solver_options_check(o));
  lm_state s = {.p = p, .o = o, .d = p->d, .m = p->m, .dd = p->d * p->d, .bnorm2 = p->bnorm2 > 0 ? p->bnorm2 : 1,
                .res = res, .t_start = ar_wtime()};
  s.D = s.dd + s.d * s.m;
  s.N = o->method == AR_METHOD_ALTERNATING ? s.dd : s.D;
  s.st.mu = o->mu0, s.st.nu = 2, s.st.contraction = 1, s.st.D = s.D;
  s.st.hk_next = o->hessian == AR_HESS_AUTO ? AR_HESS_GAUSS_NEWTON : o->hessian;
  int ls = o->linear_solver, pr, pc;
  ar_grid_shape(grid, &pr, &pc);
  const ar_mask mask = ar_problem_mask(p);
  double lx, ly;
  ar_eval_ridge(ev, &lx, &ly);
  const int rows_ok = o->method == AR_METHOD_JOINT && lx == 0 && ly == 0 && o->hessian != AR_HESS_EXACT &&
                      o->hessian_sample >= 1 && o->shift != AR_SHIFT_DIAGONAL;
  if (ls == AR_LINSOLVE_AUTO)
    ls = ar_plan_linear_solver(p->n, p->d, p->m, p->size, pr, pc, o->nb, ar_eval_tile(ev), ar_eval_chunk(ev), 32,
                               o->hessian, 0, &mask, rows_ok);
  /* the row-space step is Gauss-Newton, without chord steps (docs/solver.md "Row-space step") */
  ar_solver_options ro = *o;
  if (ls == AR_LINSOLVE_ROWS) ro.hessian = AR_HESS_GAUSS_NEWTON, ro.chord_steps = 0, s.o = &ro;
  s.st.hk_next = s.o->hessian == AR_HESS_AUTO ? AR_HESS_GAUSS_NEWTON : s.o->hessian;
  int err = ls == AR_LINSOLVE_CG     ? ar_stepper_cg_create(ev, s.N, o->cg_max_iter, 0, res, &s.step)
            : ls == AR_LINSOLVE_ROWS ? ar_stepper_rows_create(ev, grid, s.N, o->nb, o->shift, res, &s.step)
                                     : ar_stepper_dense_create(ev, grid, s.N, o->nb, o->shift, res, &s.step);
  res->linear_solver = ls;
  if (!err && ls == AR_LINSOLVE_ROWS && o->shift == AR_SHIFT_DIAGONAL)
    err = AR_ERROR(AR_ERR_USAGE, "--linear-solver rows: --shift identity or gram, not diagonal");
  if (!err && ls == AR_LINSOLVE_ROWS && o->hessian == AR_HESS_EXACT)
    err = AR_ERROR(AR_ERR_USAGE, "--linear-solver rows: the row-space step is Gauss-Newton (--hessian auto or "
                                 "gauss-newton), not --hessian exact");
  if (!err && ls == AR_LINSOLVE_ROWS && (lx != 0 || ly != 0))
    err = AR_ERROR(AR_ERR_USAGE, "--linear-solver rows: not with the ridge terms --lambda-x/--lambda-y");
  if (!err && o->hessian_sample < 1 && ls != AR_LINSOLVE_CHOLESKY)
    err = AR_ERROR(AR_ERR_USAGE, "--hessian-sample %g: for the dense step only (the %s step runs)", o->hessian_sample,
                   ls == AR_LINSOLVE_CG ? "matrix-free" : "row-space");
  s.st.z = calloc(s.D, sizeof(double)), s.st.zf = calloc(s.D, sizeof(double));
  s.zt = calloc(s.D, sizeof(double)), s.g = calloc(s.D, sizeof(double));
  s.dz = calloc(s.D, sizeof(double)), s.gt = calloc(s.D, sizeof(double));
  if (!err && !(s.st.z && s.st.zf && s.zt && s.g && s.dz && s.gt))
    err = AR_ERROR(AR_ERR_MEM, "out of memory (solver vectors)");
  err = ar_error_agree(p->comm, err);
  if (!err) {
    memcpy(s.st.z, X, sizeof(double) * s.dd);
    memcpy(s.st.z + s.dd, Y, sizeof(double) * s.d * s.m);
    err = solve_loop(&s);
  }
  if (!err) {
    memcpy(X, s.st.z, sizeof(double) * s.dd);
    memcpy(Y, s.st.z + s.dd, sizeof(double) * s.d * s.m);
    res->loss = s.f, res->rel_loss = s.f / s.bnorm2, res->grad_norm = s.gnorm;
    res->grad = s.g, s.g = NULL; /* the caller's now */
    s.step->ops->finish(s.step, res);
  }
  res->t_total = ar_wtime() - s.t_start;
  ar_stepper_destroy(&s.step);
  free(s.st.z), free(s.st.zf), free(s.zt), free(s.g), free(s.dz), free(s.gt);
  return err;
}
