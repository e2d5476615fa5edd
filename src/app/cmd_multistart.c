/* attnreg solve --starts K: the multi-start ensemble (docs/solver.md "Multi-start").
 *
 * The ranks split into groups of --ranks-per-start R (MPI_Comm_split); each group loads the
 * data once and solves starts one after another on its own communicator with the ordinary
 * solver.  Starts are taken in rounds of ROUND starts, dealt to the groups in turn; at the end
 * of a round every rank learns every result of it (one allreduce over all ranks), and the best
 * point so far is shared.  Racing stops a start early once it sits at a nearly stationary point
 * clearly worse than the best of the earlier rounds; since it uses earlier rounds only, and
 * every start's point is a function of (seed, start index), the outcome does not depend on the
 * rank count or R.  A checkpoint holds the finished rounds (checkpoint.c, kind multi-start); a
 * round a signal cut short is redone on --restart, and its results are not used before.
 *
 * --starts auto (K = --max-starts rows): before each round, stop if the best start is an exact fit
 * (converged, rel. loss <= AUTO_EXACT), or if its minimum was reached by AUTO_HITS converged
 * starts (final losses equal to AUTO_SAME relative; raced starts do not count) and the last
 * AUTO_QUIET starts found nothing better.  The rule reads finished rounds only, so it is
 * rank-count independent.  (Boender & Rinnooy Kan's Bayesian rule, w (N-1)/(N-w-2) < w + 1/2
 * for w minima among N starts, was tried first: attention landscapes with noise keep showing
 * rare shallow minima, and it never stopped before 128 starts on the problems measured.)
 *
 * Strategies (per start k >= 1; start 0 is the user's start):
 *   starts  X0 entries N(0, scale^2) in the user's variables, Y0 by least squares
 *   norm    X0 on a sphere whose radius gives attention logits of a given spread (1..8), its
 *           direction improved by the fixed-norm search (fixednorm.c), then Newton
 *   hop     the best point of the earlier rounds, perturbed (0.1, 0.3, 1 x its rms), then Newton
 *   portfolio  the three in turn. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "multistart.h"
#include "solve_job.h"
#include "timing.h"

#define ROUND AR_MULTISTART_ROUND /* starts per round: racing sees only earlier rounds */
#define NORM_ITERS 30             /* fixed-norm search steps before Newton */
#define AUTO_EXACT 1e-10          /* --starts auto: a relative loss that no start can beat by much */
#define AUTO_SAME 1e-6            /* --starts auto: final losses this close (relative): one minimum */
#define AUTO_HITS 3               /* --starts auto: starts that reached the best minimum */
#define AUTO_QUIET (2 * ROUND)    /* --starts auto: starts since the best was first found */

/* A start's row is only doubles: a round's rows are one allreduce. */
#define AR_START_COUNT(type, name) +1
_Static_assert(sizeof(ar_start_row) == sizeof(double) * (0 AR_START_FIELDS(AR_START_COUNT)), "ar_start_row: doubles");

typedef struct {
  double best_rel, g0; /* racing: the best relative loss of earlier rounds; |g| at the start */
  double last[5];      /* the relative losses of the last 5 iterations (a ring) */
} race_ctx;

static void race_monitor(const ar_iter_info *it, void *ctx)
{
  race_ctx *r = ctx;
  if (it->iter == 0) r->g0 = it->grad_norm;
}

/* Clearly headed for a worse point than the best of the earlier rounds: a relative loss 100
 * times the best (and 1e-6 above it) after 5 iterations, with the gradient down to 1e-3 of where
 * it started (a stationary point), or after 10 iterations, with less than 10 % taken off the loss
 * in the last 5 (a crawl towards one). */
static int race(const ar_iter_info *it, void *ctx)
{
  race_ctx *r = ctx;
  const double before = r->last[it->iter % 5];
  r->last[it->iter % 5] = it->rel_loss;
  if (!isfinite(r->best_rel) || it->rel_loss <= fmax(100 * r->best_rel, r->best_rel + 1e-6)) return 0;
  return (it->iter >= 5 && it->grad_norm < 1e-3 * r->g0) || (it->iter >= 10 && it->rel_loss > 0.9 * before);
}

/* A start of the current round run by this group: its final point and history. */
typedef struct {
  double *X, *Y;
  ar_iter_info *hist;
  int nhist;              /* rows */
} slot;

typedef struct {
  MPI_Comm world, group;
  int wrank, wsize, grank, gid, ngroups, R, K, nb;
  solve_cfg *s;
  solve_job j;             /* the group's problem, evaluator, grid; the world's output directory */
  double *bestX, *bestY;   /* the best so far in the solver's variables, on every rank */
  double *uz;              /* D: the best point in the user's variables (checkpoints) */
  int best_k;              /* -1: none yet */
  ar_iter_info *best_hist; /* world rank 0: the best start's history */
  int best_nhist;          /* its rows */
  ar_start_row *rows;      /* K rows, global after each round */
  slot slots[ROUND];
  double norm_a1, norm_a2; /* ||A1||_F, ||A2||_F of the problem solved */
  int run_k;               /* starts of the rounds run (K unless --starts auto stopped early) */
  char why[160];           /* --starts auto: why it stopped */
} ensemble;

static int strategy_of(const ensemble *e, int k)
{
  return e->s->strategy == AR_STRATEGY_PORTFOLIO ? k % 3 : e->s->strategy;
}

/* Collective (group): the start point of start k in the solver's variables, into X, Y. */
static int start_point(ensemble *e, int k, double *X, double *Y, double *scale)
{
  solve_job *u = &e->j;
  const int d = u->d, m = u->m, dd = d * d;
  const uint64_t seed = (uint64_t)e->s->start_seed;
  int st = strategy_of(e, k);
  if (st == AR_STRATEGY_HOP && e->best_k < 0) st = AR_STRATEGY_STARTS;
  *scale = 0;
  if (k == 0) {
    memcpy(X, u->X, sizeof(double) * dd), memcpy(Y, u->Y, sizeof(double) * d * m);
    return AR_OK;
  }
  if (st == AR_STRATEGY_STARTS) { /* in the user's variables: --start-scale means what it says */
    *scale = e->s->start_scale;
    for (int i = 0; i < dd; i++) X[i] = *scale * ar_normal(seed, 2000 + k, i);
    if (u->white) AR_CALL(ar_whiten_point(u->white, X, Y, X, Y));
    return ar_solve_least_squares_y(u->ev, X, Y);
  }
  if (st == AR_STRATEGY_HOP) {
    static const double tau[3] = {0.1, 0.3, 1.0};
    double rms = 0;
    for (int i = 0; i < dd; i++) rms += e->bestX[i] * e->bestX[i] / dd;
    *scale = tau[(k / 3) % 3] * sqrt(rms);
    for (int i = 0; i < dd; i++) X[i] = e->bestX[i] + *scale * ar_normal(seed, 4000 + k, i);
    return ar_solve_least_squares_y(u->ev, X, Y);
  }
  /* norm: logits a1_j^T X a2_l of spread s when ||X||_F = s d n / (||A1||_F ||A2||_F) */
  static const double spread[6] = {1, 2, 3, 4, 6, 8};
  double w2 = 0, loss;
  for (int i = 0; i < dd; i++) X[i] = ar_normal(seed, 3000 + k, i), w2 += X[i] * X[i];
  *scale = spread[(k / 3) % 6] * d * (double)u->n / (e->norm_a1 * e->norm_a2);
  for (int i = 0; i < dd; i++) X[i] *= *scale / sqrt(w2);
  int evals;
  return ar_fixed_norm_search(u->ev, X, Y, NORM_ITERS, &loss, &evals);
}

/* Collective (group): solve start k into slot sl with the job's options (the Newton step the
 * memory budget chose); group rank 0 fills its row. */
static int run_start(ensemble *e, int k, slot *sl)
{
  double t0 = ar_wtime(), scale;
  AR_CALL(start_point(e, k, sl->X, sl->Y, &scale));
  race_ctx rc = {INFINITY, 0};
  for (int i = 0; i < k - k % ROUND; i++) /* the best of the earlier rounds */
    if (e->rows[i].done > 0) rc.best_rel = fmin(rc.best_rel, e->rows[i].rel_loss);
  ar_solver_options so = ar_job_solver_options(&e->j);
  so.monitor = race_monitor, so.monitor_ctx = &rc;
  so.stop = e->s->no_race ? NULL : race, so.stop_ctx = &rc;
  ar_solve_result r = {0};
  const int err = ar_job_solve(&e->j, &so, sl->X, sl->Y, &r);
  if (!err && e->grank == 0)
    e->rows[k] = (ar_start_row){.done = 1, .group = e->gid, .strategy = strategy_of(e, k), .scale = scale,
                                .iterations = r.iterations, .loss = r.loss, .rel_loss = r.rel_loss,
                                .grad_norm = r.grad_norm, .reason = r.reason, .seconds = ar_wtime() - t0,
                                .stopped_early = r.reason == AR_STOPPED_EARLY, .hessvecs = r.hessvecs};
  if (!err) e->nb = r.nb;
  sl->hist = r.history, sl->nhist = r.iterations + 1;
  free(r.grad);
  return err;
}

/* Collective (world): if the round's best beats the earlier ones, every rank gets its point and
 * world rank 0 its history. */
static int end_round(ensemble *e, int k0, int k1)
{
  const int dd = e->j.d * e->j.d, dm = e->j.d * e->j.m;
  /* better only beyond rounding (several starts reach the same minimum; the earliest counts) */
  const double floor = 1e-20 * ar_problem_bnorm2(e->j.prob);
  int best = e->best_k;
  for (int k = k0; k < k1; k++) {
    const ar_start_row *r = &e->rows[k];
    const double b = best < 0 ? 0 : e->rows[best].loss;
    if (r->done > 0 && r->reason != AR_DIVERGED_SIGNAL && isfinite(r->loss) &&
        (best < 0 || r->loss < b - 1e-10 * b - floor))
      best = k;
  }
  if (best == e->best_k) return AR_OK;
  e->best_k = best;
  const int owner = (int)e->rows[best].group * e->R;
  slot *sl = &e->slots[best - k0];
  if (e->wrank == owner) memcpy(e->bestX, sl->X, sizeof(double) * dd), memcpy(e->bestY, sl->Y, sizeof(double) * dm);
  AR_CALL_MPI(MPI_Bcast(e->bestX, dd, MPI_DOUBLE, owner, e->world));
  AR_CALL_MPI(MPI_Bcast(e->bestY, dm, MPI_DOUBLE, owner, e->world));
  int n = sl->nhist;
  AR_CALL_MPI(MPI_Bcast(&n, 1, MPI_INT, owner, e->world));
  if (e->wrank == 0) {
    ar_iter_info *h = realloc(e->best_hist, sizeof(ar_iter_info) * n);
    if (h) e->best_hist = h, e->best_nhist = n;
    /* agreed: the owner must not send to a rank that cannot receive */
    AR_CHECK_AGREE(e->world, h, AR_ERR_MEM, "out of memory (multi-start history)");
  } else {
    AR_CHECK_AGREE(e->world, 1, AR_ERR_MEM, "out of memory (multi-start history)");
  }
  const int bytes = (int)sizeof(ar_iter_info) * n;
  if (owner == 0 && e->wrank == 0) memcpy(e->best_hist, sl->hist, bytes);
  else if (e->wrank == owner) AR_CALL_MPI(MPI_Send(sl->hist, bytes, MPI_BYTE, 0, 7, e->world));
  else if (e->wrank == 0) AR_CALL_MPI(MPI_Recv(e->best_hist, bytes, MPI_BYTE, owner, 7, e->world, MPI_STATUS_IGNORE));
  return AR_OK;
}

/* --starts auto, on every rank (rows are global): 1 if the starts before k_end are enough, with
 * the reason in e->why. */
static int auto_enough(ensemble *e, int k_end)
{
  if (e->s->starts || e->best_k < 0) return 0;
  const ar_start_row *b = &e->rows[e->best_k];
  if (ar_reason_converged((ar_reason)b->reason) && b->rel_loss <= AUTO_EXACT) {
    snprintf(e->why, sizeof e->why, "an exact fit (start %d, rel_loss %.2e <= %.0e)", e->best_k, b->rel_loss,
             AUTO_EXACT);
    return 1;
  }
  if (b->reason == AR_CONVERGED_LOSS_TARGET) { /* as good a fit as the user asked for */
    snprintf(e->why, sizeof e->why, "the loss target (start %d, rel_loss %.2e)", e->best_k, b->rel_loss);
    return 1;
  }
  /* the best minimum: its first start, and the converged starts that reached it */
  const double floor = 1e-20 * ar_problem_bnorm2(e->j.prob), tol = AUTO_SAME * fabs(b->loss) + floor;
  int hits = 0, first = -1;
  for (int k = 0; k < k_end; k++) {
    const ar_start_row *r = &e->rows[k];
    if (r->done > 0 && !r->stopped_early && ar_reason_converged((ar_reason)r->reason) && fabs(r->loss - b->loss) <= tol)
      hits++, first = first < 0 ? k : first;
  }
  if (hits < AUTO_HITS || k_end - first <= AUTO_QUIET) return 0;
  snprintf(e->why, sizeof e->why, "the best minimum reached by %d starts, none better in the %d since start %d", hits,
           k_end - first - 1, first);
  return 1;
}

/* Collective (world): the checkpoint of the rounds before `rounds_done`. */
static int save(ensemble *e, int rounds_done)
{
  const int dd = e->j.d * e->j.d;
  if (e->best_k >= 0) AR_CALL(ar_job_user_point(&e->j, e->bestX, e->bestY, e->uz, e->uz + dd));
  ar_checkpoint c = {.kind = AR_CKPT_ENSEMBLE,
                     .ens = {.rounds_done = rounds_done, .best_k = e->best_k, .rows = e->rows, .z = e->uz,
                             .history = e->best_hist, .nhist = e->best_k >= 0 ? e->best_nhist : 0}};
  return ar_job_checkpoint(&e->j, &c);
}

/* Every rank: continue from the checkpoint the setup read (rounds done, rows, best point). */
static int restore(ensemble *e, int *first)
{
  const ar_ckpt_ensemble *c = &e->j.restart.ens;
  const int dd = e->j.d * e->j.d;
  memcpy(e->rows, c->rows, sizeof(ar_start_row) * e->K);
  *first = c->rounds_done, e->best_k = c->best_k;
  if (e->best_k < 0) return AR_OK;
  e->best_hist = malloc(sizeof(ar_iter_info) * c->nhist);
  AR_CHECK_AGREE(e->world, e->best_hist, AR_ERR_MEM, "out of memory (multi-start history)");
  memcpy(e->best_hist, c->history, sizeof(ar_iter_info) * c->nhist), e->best_nhist = c->nhist;
  if (!e->j.white) {
    memcpy(e->bestX, c->z, sizeof(double) * dd), memcpy(e->bestY, c->z + dd, sizeof(double) * (e->j.D - dd));
    return AR_OK;
  }
  return ar_whiten_point(e->j.white, c->z, c->z + dd, e->bestX, e->bestY);
}

/* Collective (world): the rounds from `first` on.  A round in which a signal came is not used
 * (its starts are redone on --restart): the checkpoint, then the stop. */
static int rounds(ensemble *e, int first)
{
  const int nrounds = (e->K + ROUND - 1) / ROUND;
  int err = AR_OK;
  e->run_k = first * ROUND < e->K ? first * ROUND : e->K;
  for (int b = first; b < nrounds && !err; b++) {
    const int k0 = b * ROUND, k1 = k0 + ROUND < e->K ? k0 + ROUND : e->K;
    if (b > 0 && auto_enough(e, k0)) break; /* (also right after a --restart) */
    memset(&e->rows[k0], 0, sizeof(ar_start_row) * (k1 - k0)); /* a redone round starts clean */
    for (int k = k0; k < k1 && !err; k++) {
      if ((k - k0) % e->ngroups != e->gid) continue;
      /* after a signal the group starts nothing new */
      if (!ar_job_signal_received(e->group)) err = ar_error_agree(e->group, run_start(e, k, &e->slots[k - k0]));
    }
    AR_CALL_AGREE(e->world, err);
    AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, &e->rows[k0], (k1 - k0) * AR_START_NFIELDS, MPI_DOUBLE, MPI_SUM, e->world));
    const int sig = ar_job_signal_received(e->world) != 0;
    if (sig) memset(&e->rows[k0], 0, sizeof(ar_start_row) * (k1 - k0));
    else err = end_round(e, k0, k1);
    for (int i = 0; i < ROUND; i++) free(e->slots[i].hist), e->slots[i].hist = NULL;
    if (!err && e->wrank == 0 && !e->s->c.quiet) {
      printf("round %d/%d: starts %d-%d ", b + 1, nrounds, k0, k1 - 1);
      if (sig) printf("stopped by a signal (the round is redone on --restart)");
      else if (e->best_k < 0) printf("done, none with a finite loss");
      else printf("done, best start %d: rel_loss %.3e (%s)", e->best_k, e->rows[e->best_k].rel_loss,
                  ar_reason_name((ar_reason)e->rows[e->best_k].reason));
      printf(", %.1f s\n", ar_wtime() - e->j.t0);
      fflush(stdout);
    }
    const int saved = sig ? b : b + 1, last = b + 1 == nrounds || (!sig && !err && auto_enough(e, k1));
    if (!sig) e->run_k = k1;
    if (!err && e->s->checkpoint && (sig || e->s->so.checkpoint_every > 0 || last)) err = save(e, saved);
    if (!err && sig)
      err = AR_ERROR(AR_ERR_INTERRUPTED, "multi-start stopped by a signal after %d of %d starts%s%s", saved * ROUND,
                     e->K, e->s->checkpoint ? "; checkpoint written to " : "; no --checkpoint given",
                     e->s->checkpoint ? e->s->checkpoint : "");
  }
  if (!err && e->best_k < 0)
    err = AR_ERROR(AR_ERR_NUMERIC, "multi-start: no start reached a finite loss");
  if (!err && !e->s->starts && !e->why[0]) snprintf(e->why, sizeof e->why, "--max-starts %d reached", e->K);
  return err;
}

static int cmp_double(const void *a, const void *b)
{
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* World rank 0: starts.csv, and what summary.json adds for a multi-start run. */
static int write_starts(ensemble *e, ar_report_multistart *ms)
{
  FILE *f = ar_out_fopen(&e->j.out, "starts.csv");
  AR_CHECK(f, AR_ERR_IO, "%s", ar_error_message());
  fputs("start,group,strategy,seed,scale,iterations,loss,rel_loss,grad_norm,reason,seconds,stopped_early\n", f);
  double *rel = malloc(sizeof(double) * e->K);
  for (int k = 0; k < e->K; k++) {
    const ar_start_row *r = &e->rows[k];
    if (!(r->done > 0)) continue;
    fprintf(f, "%d,%d,%s,%lld,%.17g,%d,%.17g,%.17g,%.17g,%s,%.6f,%d\n", k, (int)r->group,
            k == 0 ? "user" : ar_strategy_name((int)r->strategy), (long long)e->s->start_seed, r->scale,
            (int)r->iterations, r->loss, r->rel_loss, r->grad_norm, ar_reason_name((ar_reason)r->reason), r->seconds,
            (int)r->stopped_early);
    ms->iterations_total += (int)r->iterations, ms->stopped_early += r->stopped_early > 0;
    if (rel) rel[ms->ndone] = r->rel_loss;
    ms->ndone++;
  }
  const int n = ms->ndone;
  if (rel && n > 0) {
    qsort(rel, n, sizeof(double), cmp_double);
    const double q[5] = {rel[0], rel[(n - 1) / 10], rel[(n - 1) / 2], rel[(n - 1) * 9 / 10], rel[n - 1]};
    memcpy(ms->q, q, sizeof q);
  }
  if (!rel) ms->ndone = 0; /* no quantiles */
  free(rel);
  AR_CHECK(fclose(f) == 0, AR_ERR_IO, "%s/starts.csv: write failed", e->j.out.dir);
  return AR_OK;
}

/* Collective (world): X.npy, Y.npy, history.csv, starts.csv, summary.json of the best start. */
static int write_results(ensemble *e)
{
  const ar_start_row *b = &e->rows[e->best_k];
  ar_report_multistart ms = {.starts = e->run_k, .max_starts = e->s->starts ? 0 : e->K,
                             .auto_stop = e->s->starts ? NULL : e->why, .ranks_per_start = e->R, .groups = e->ngroups, .racing = !e->s->no_race,
                             .best_start = e->best_k, .strategy = ar_strategy_name(e->s->strategy)};
  double gn_user = 0;
  if (e->j.white) AR_CALL(ar_job_grad_norm_user(&e->j, e->bestX, e->bestY, NULL, &gn_user));
  const int dd = e->j.d * e->j.d;
  AR_CALL(ar_job_user_point(&e->j, e->bestX, e->bestY, e->uz, e->uz + dd));
  if (!e->j.have_out) return AR_OK;
  AR_CALL_AGREE(e->world, e->wrank == 0 ? write_starts(e, &ms) : AR_OK);
  /* the best start's solve, as ar_solve reported it */
  const ar_solve_result res = {.reason = (ar_reason)b->reason, .iterations = (int)b->iterations, .loss = b->loss,
                               .rel_loss = b->rel_loss, .grad_norm = b->grad_norm, .history = e->best_hist,
                               .nb = e->nb, .hessvecs = (int)b->hessvecs, .linear_solver = e->j.so.linear_solver};
  ar_report R;
  ar_job_report(&e->j, &R);
  R.res = &res, R.ms = &ms, R.nb = e->nb, R.loss = b->loss, R.grad_norm = b->grad_norm, R.grad_norm_user = gn_user;
  return ar_job_write_results(&e->j, e->uz, e->uz + dd, e->best_hist, e->best_nhist, &R);
}

/* Collective (world): the ensemble's arrays, agreed. */
static int create(ensemble *e)
{
  const int dd = e->j.d * e->j.d, dm = e->j.d * e->j.m;
  e->rows = calloc((size_t)e->K, sizeof(ar_start_row)), e->uz = calloc(e->j.D, sizeof(double));
  e->bestX = calloc(dd, sizeof(double)), e->bestY = calloc(dm, sizeof(double));
  int ok = e->rows && e->uz && e->bestX && e->bestY;
  for (int i = 0; i < ROUND; i++) {
    e->slots[i].X = malloc(sizeof(double) * dd), e->slots[i].Y = malloc(sizeof(double) * dm);
    ok &= e->slots[i].X && e->slots[i].Y;
  }
  AR_CHECK_AGREE(e->world, ok, AR_ERR_MEM, "out of memory (multi-start)");
  return AR_OK;
}

static void destroy(ensemble *e)
{
  for (int i = 0; i < ROUND; i++) free(e->slots[i].X), free(e->slots[i].Y), free(e->slots[i].hist);
  free(e->rows), free(e->uz), free(e->bestX), free(e->bestY), free(e->best_hist);
  ar_job_release(&e->j);
  if (e->group != MPI_COMM_NULL) MPI_Comm_free(&e->group);
}

/* Collective (world): everything after the setup. */
static int run(ensemble *e)
{
  int first = 0;
  AR_CALL(create(e));
  AR_CALL_AGREE(e->world, ar_problem_input_norms(e->j.prob, &e->norm_a1, &e->norm_a2));
  if (e->j.have_restart) AR_CALL(restore(e, &first));
  if (e->wrank == 0 && !e->s->c.quiet)
    printf("attnreg %s solve: %s%d starts (%s%s) in %d groups of %d ranks, n=%lld d=%d m=%d%s\n", ATTNREG_VERSION,
           e->s->starts ? "" : "auto, at most ", e->K,
           ar_strategy_name(e->s->strategy), e->s->no_race ? ", no racing" : ", racing", e->ngroups, e->R,
           (long long)e->j.n, e->j.d, e->j.m, first ? " (restarted)" : "");
  AR_CALL(rounds(e, first));
  AR_CALL(write_results(e));
  if (e->wrank == 0 && !e->s->c.quiet) {
    const ar_start_row *r = &e->rows[e->best_k];
    int its = 0;
    for (int k = 0; k < e->run_k; k++) its += e->rows[k].done > 0 ? (int)e->rows[k].iterations : 0;
    if (!e->s->starts)
      printf("starts auto: %d of at most %d starts, %d iterations, %.1f s; stopped: %s\n", e->run_k, e->K, its,
             ar_wtime() - e->j.t0, e->why);
    printf("best of %d starts: start %d, loss %.10e rel_loss %.3e |grad| %.3e (%s)\n", e->run_k, e->best_k, r->loss,
           r->rel_loss, r->grad_norm, ar_reason_name((ar_reason)r->reason));
  }
  return AR_OK;
}

int ar_multistart(MPI_Comm world, solve_cfg *s, const ar_option *opts, int nopts)
{
  ensemble e = {.world = world, .group = MPI_COMM_NULL, .s = s, .K = AR_STARTS_K(s), .R = s->ranks_per_start,
                .best_k = -1};
  MPI_Comm_rank(world, &e.wrank);
  MPI_Comm_size(world, &e.wsize);
  AR_CHECK(e.wsize % e.R == 0, AR_ERR_USAGE, "--ranks-per-start %d: must divide the %d ranks", e.R, e.wsize);
  AR_CHECK(s->so.method == AR_METHOD_JOINT, AR_ERR_USAGE, "--starts: needs --method joint");
  e.ngroups = e.wsize / e.R, e.gid = e.wrank / e.R;
  AR_CALL_MPI(MPI_Comm_split(world, e.gid, e.wrank, &e.group));
  MPI_Comm_rank(e.group, &e.grank);
  /* each group: the problem and the evaluator, as for one solve; the outputs, checkpoints and
   * restarts are the world's */
  static const char *const files[] = {"X.npy", "Y.npy", "history.csv", "starts.csv", "summary.json"};
  int err = ar_job_setup(world, e.group, s, opts, nopts, files, 5, AR_CKPT_ENSEMBLE, &e.j);
  if (!err) err = ar_error_agree(world, run(&e));
  destroy(&e);
  return err;
}
