/* attnreg solve --starts K: the multi-start ensemble (docs/solver.md "Multi-start").
 *
 * The ranks split into groups of --ranks-per-start R (MPI_Comm_split); each group loads the
 * data once and solves starts one after another on its own communicator with the ordinary
 * solver.  Starts are taken in rounds of ROUND starts, dealt to the groups in turn; at the end
 * of a round every rank learns every result of it (one allreduce over all ranks), and the best
 * point so far is shared.  Racing stops a start early once it sits at a nearly stationary point
 * clearly worse than the best of the earlier rounds; since it uses earlier rounds only, and
 * every start's point is a function of (seed, start index), the outcome does not depend on the
 * rank count or R.  A checkpoint holds the finished rounds; a restart redoes the round in flight.
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
#include <unistd.h>

#include "commands.h"
#include "error.h"
#include "hash.h"
#include "npy.h"
#include "solve_cli.h"
#include "timing.h"

#define ROUND 8       /* starts per round: racing sees only earlier rounds */
#define NORM_ITERS 30 /* fixed-norm search steps before Newton */

/* One start's outcome, as doubles so that a round is one allreduce. */
enum { F_DONE, F_GROUP, F_STRATEGY, F_SCALE, F_ITERS, F_LOSS, F_REL, F_GRAD, F_REASON, F_SECONDS, F_STOPPED, F_N };

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
  int nhist;
} slot;

typedef struct {
  MPI_Comm world, group;
  int wrank, wsize, grank, gid, ngroups, R, K;
  solve_cfg *s;
  solve_run u;            /* the group's problem, evaluator, grid */
  double *X0, *Y0;        /* start 0 in the solver's variables (from setup) */
  double *bestX, *bestY;  /* the best so far in the solver's variables, on every rank */
  int best_k;             /* -1: none yet */
  ar_iter_info *best_hist; /* world rank 0: the best start's history */
  int best_nhist;
  double *rows;           /* K x F_N, global after each round */
  slot slots[ROUND];
  double norm_a1, norm_a2; /* ||A1||_F, ||A2||_F of the problem solved */
} ensemble;

static int strategy_of(const ensemble *e, int k)
{
  return e->s->strategy == AR_STRATEGY_PORTFOLIO ? k % 3 : e->s->strategy;
}

/* Collective (group): the start point of start k in the solver's variables, into X, Y. */
static int start_point(ensemble *e, int k, double *X, double *Y, double *scale)
{
  solve_run *u = &e->u;
  const int d = u->d, m = u->m, dd = d * d;
  const uint64_t seed = (uint64_t)e->s->start_seed;
  int st = strategy_of(e, k);
  if (st == AR_STRATEGY_HOP && e->best_k < 0) st = AR_STRATEGY_STARTS;
  *scale = 0;
  if (k == 0) {
    memcpy(X, e->X0, sizeof(double) * dd), memcpy(Y, e->Y0, sizeof(double) * d * m);
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

/* Collective (group): solve start k into slot sl; group rank 0 fills its row. */
static int run_start(ensemble *e, int k, slot *sl)
{
  solve_run *u = &e->u;
  double *row = e->rows + (size_t)k * F_N, t0 = ar_wtime(), scale;
  AR_CALL(start_point(e, k, sl->X, sl->Y, &scale));
  race_ctx rc = {INFINITY, 0};
  for (int j = 0; j < k - k % ROUND; j++) /* the best of the earlier rounds */
    if (e->rows[(size_t)j * F_N + F_DONE] > 0) rc.best_rel = fmin(rc.best_rel, e->rows[(size_t)j * F_N + F_REL]);
  ar_solver_options so = e->s->so;
  so.nb = e->s->c.nb;
  so.monitor = race_monitor, so.monitor_ctx = &rc;
  so.stop = e->s->no_race ? NULL : race, so.stop_ctx = &rc;
  so.interrupt = ar_solve_signal_flag();
  ar_solve_result r = {0};
  const int err = ar_solve(u->prob, u->ev, u->grid, &so, sl->X, sl->Y, &r);
  if (!err && e->grank == 0) {
    const double v[F_N] = {[F_DONE] = 1, [F_GROUP] = e->gid, [F_STRATEGY] = strategy_of(e, k), [F_SCALE] = scale,
                           [F_ITERS] = r.iterations, [F_LOSS] = r.loss, [F_REL] = r.rel_loss,
                           [F_GRAD] = r.grad_norm, [F_REASON] = r.reason, [F_SECONDS] = ar_wtime() - t0,
                           [F_STOPPED] = r.reason == AR_STOPPED_EARLY};
    memcpy(row, v, sizeof v);
  }
  sl->hist = r.history, sl->nhist = r.iterations;
  free(r.grad);
  return err;
}

/* Collective (world): share the round's rows; if its best beats the earlier ones, every rank
 * gets its point and world rank 0 its history. */
static int end_round(ensemble *e, int k0, int k1)
{
  const int dd = e->u.d * e->u.d, dm = e->u.d * e->u.m;
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, e->rows + (size_t)k0 * F_N, (k1 - k0) * F_N, MPI_DOUBLE, MPI_SUM, e->world));
  /* better only beyond rounding (several starts reach the same minimum; the earliest counts) */
  const double floor = 1e-20 * ar_problem_bnorm2(e->u.prob);
  int best = e->best_k;
  for (int k = k0; k < k1; k++) {
    const double *r = e->rows + (size_t)k * F_N, b = best < 0 ? 0 : e->rows[(size_t)best * F_N + F_LOSS];
    if (r[F_DONE] > 0 && r[F_REASON] != AR_DIVERGED_SIGNAL && isfinite(r[F_LOSS]) &&
        (best < 0 || r[F_LOSS] < b - 1e-10 * b - floor))
      best = k;
  }
  if (best != e->best_k) {
    e->best_k = best;
    const int owner = (int)e->rows[(size_t)best * F_N + F_GROUP] * e->R;
    slot *sl = &e->slots[best - k0];
    if (e->wrank == owner) memcpy(e->bestX, sl->X, sizeof(double) * dd), memcpy(e->bestY, sl->Y, sizeof(double) * dm);
    AR_CALL_MPI(MPI_Bcast(e->bestX, dd, MPI_DOUBLE, owner, e->world));
    AR_CALL_MPI(MPI_Bcast(e->bestY, dm, MPI_DOUBLE, owner, e->world));
    int n = sl->nhist;
    AR_CALL_MPI(MPI_Bcast(&n, 1, MPI_INT, owner, e->world));
    if (e->wrank == 0) {
      free(e->best_hist);
      e->best_hist = malloc(sizeof(ar_iter_info) * (n + 1)), e->best_nhist = n;
    }
    const int bytes = (int)sizeof(ar_iter_info) * (n + 1);
    if (owner == 0 && e->wrank == 0) memcpy(e->best_hist, sl->hist, bytes);
    else if (e->wrank == owner) AR_CALL_MPI(MPI_Send(sl->hist, bytes, MPI_BYTE, 0, 7, e->world));
    else if (e->wrank == 0) AR_CALL_MPI(MPI_Recv(e->best_hist, bytes, MPI_BYTE, owner, 7, e->world, MPI_STATUS_IGNORE));
  }
  for (int i = 0; i < ROUND; i++) free(e->slots[i].hist), e->slots[i].hist = NULL;
  return AR_OK;
}

/* ---- the ensemble checkpoint: finished rounds, the best point (the user's variables) and its
 * history.  Binary, little-endian, FNV-1a checksummed, written atomically by world rank 0. */
static const char ens_magic[8] = {'A', 'R', 'E', 'N', 'S', 'M', 1, 0};

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

typedef struct {
  int32_t K, round, strategy, no_race, d, m, rounds_done, best_k, nhist;
  int64_t seed;
  double scale;
  uint64_t hash;
} ens_head;

static int write_ensemble(ensemble *e, int rounds_done, const double *userX, const double *userY)
{
  if (e->wrank != 0) return AR_OK;
  const int dd = e->u.d * e->u.d, dm = e->u.d * e->u.m, nh = e->best_k >= 0 ? e->best_nhist : -1;
  ens_head h = {e->K, ROUND, e->s->strategy, e->s->no_race, e->u.d, e->u.m, rounds_done, e->best_k, nh,
                e->s->start_seed, e->s->start_scale, ar_problem_hash(e->u.prob)};
  size_t bytes = 8 + sizeof h + sizeof(double) * ((size_t)e->K * F_N + dd + dm) +
                 (nh >= 0 ? sizeof(ar_iter_info) * (nh + 1) : 0) + 8;
  unsigned char *buf = calloc(1, bytes), *p = buf;
  AR_CHECK(buf, AR_ERR_MEM, "out of memory (multi-start checkpoint)");
  memcpy(p, ens_magic, 8), p += 8;
  memcpy(p, &h, sizeof h), p += sizeof h;
  memcpy(p, e->rows, sizeof(double) * e->K * F_N), p += sizeof(double) * e->K * F_N;
  memcpy(p, userX, sizeof(double) * dd), p += sizeof(double) * dd;
  memcpy(p, userY, sizeof(double) * dm), p += sizeof(double) * dm;
  if (nh >= 0) memcpy(p, e->best_hist, sizeof(ar_iter_info) * (nh + 1)), p += sizeof(ar_iter_info) * (nh + 1);
  const uint64_t sum = fnv1a(buf, (size_t)(p - buf));
  memcpy(p, &sum, 8);
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp-%ld", e->s->checkpoint, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  int ok = f && fwrite(buf, 1, bytes, f) == bytes;
  ok = f && fflush(f) == 0 && ok && fsync(fileno(f)) == 0;
  if (f && fclose(f) != 0) ok = 0;
  free(buf);
  if (!ok || rename(tmp, e->s->checkpoint) != 0) {
    unlink(tmp);
    return AR_ERROR(AR_ERR_IO, "--checkpoint %s: cannot write the multi-start checkpoint", e->s->checkpoint);
  }
  return AR_OK;
}

/* Collective (world): restore the finished rounds of --restart; *rounds_done, the rows, the
 * best point (to the solver's variables) and, on world rank 0, its history. */
static int read_ensemble(ensemble *e, int *rounds_done)
{
  const int dd = e->u.d * e->u.d, dm = e->u.d * e->u.m;
  const char *path = e->s->restart;
  int err = AR_OK;
  ens_head h = {0};
  double *X = calloc(dd, sizeof(double)), *Y = calloc(dm, sizeof(double));
  if (!X || !Y) err = AR_ERROR(AR_ERR_MEM, "out of memory");
  if (!err && e->wrank == 0) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    long len = -1;
    if (f && fseek(f, 0, SEEK_END) == 0) len = ftell(f), rewind(f);
    if (len > 0 && len < (1L << 34)) buf = malloc(len);
    if (!f) err = AR_ERROR(AR_ERR_DATA, "--restart %s: cannot open", path);
    else if (!buf || fread(buf, 1, len, f) != (size_t)len) err = AR_ERROR(AR_ERR_DATA, "--restart %s: cannot read", path);
    if (f) fclose(f);
    uint64_t sum = 0;
    if (!err && (len < 16 + (long)sizeof h || memcmp(buf, ens_magic, 8)))
      err = AR_ERROR(AR_ERR_DATA, "--restart %s: not a multi-start checkpoint", path);
    if (!err) memcpy(&sum, buf + len - 8, 8), memcpy(&h, buf + 8, sizeof h);
    if (!err && sum != fnv1a(buf, len - 8))
      err = AR_ERROR(AR_ERR_DATA, "--restart %s: checksum mismatch (corrupt or truncated checkpoint)", path);
    if (!err && (h.K != e->K || h.round != ROUND || h.strategy != e->s->strategy || h.no_race != e->s->no_race ||
                 h.seed != e->s->start_seed || h.scale != e->s->start_scale))
      err = AR_ERROR(AR_ERR_USAGE, "--restart %s: written with other --starts, --strategy, --start-seed, --start-scale "
                     "or --no-race", path);
    if (!err && (h.d != e->u.d || h.m != e->u.m || h.hash != ar_problem_hash(e->u.prob)))
      err = AR_ERROR(AR_ERR_DATA, "--restart %s: written for other input data", path);
    const size_t want = 8 + sizeof h + sizeof(double) * ((size_t)e->K * F_N + dd + dm) +
                        (h.nhist >= 0 ? sizeof(ar_iter_info) * (h.nhist + 1) : 0) + 8;
    if (!err && ((size_t)len != want || h.rounds_done < 0 || h.rounds_done * ROUND > e->K + ROUND - 1 ||
                 h.best_k < -1 || h.best_k >= e->K || (h.best_k >= 0) != (h.nhist >= 0)))
      err = AR_ERROR(AR_ERR_DATA, "--restart %s: inconsistent multi-start checkpoint", path);
    if (!err) {
      const unsigned char *p = buf + 8 + sizeof h;
      memcpy(e->rows, p, sizeof(double) * e->K * F_N), p += sizeof(double) * e->K * F_N;
      memcpy(X, p, sizeof(double) * dd), p += sizeof(double) * dd;
      memcpy(Y, p, sizeof(double) * dm), p += sizeof(double) * dm;
      if (h.nhist >= 0) {
        e->best_hist = malloc(sizeof(ar_iter_info) * (h.nhist + 1)), e->best_nhist = h.nhist;
        if (e->best_hist) memcpy(e->best_hist, p, sizeof(ar_iter_info) * (h.nhist + 1));
        else err = AR_ERROR(AR_ERR_MEM, "out of memory");
      }
    }
    free(buf);
  }
  err = ar_error_agree(e->world, err);
  if (!err) {
    MPI_Bcast(&h, sizeof h, MPI_BYTE, 0, e->world);
    MPI_Bcast(e->rows, e->K * F_N, MPI_DOUBLE, 0, e->world);
    MPI_Bcast(X, dd, MPI_DOUBLE, 0, e->world);
    MPI_Bcast(Y, dm, MPI_DOUBLE, 0, e->world);
    *rounds_done = h.rounds_done, e->best_k = h.best_k;
    if (e->best_k >= 0 && e->u.white) err = ar_whiten_point(e->u.white, X, Y, e->bestX, e->bestY);
    else if (e->best_k >= 0) memcpy(e->bestX, X, sizeof(double) * dd), memcpy(e->bestY, Y, sizeof(double) * dm);
  }
  free(X), free(Y);
  return err;
}

static const char *strategy_text(int k)
{
  return k == AR_STRATEGY_STARTS ? "starts" : k == AR_STRATEGY_NORM ? "norm" : k == AR_STRATEGY_HOP ? "hop" : "portfolio";
}

static int cmp_double(const void *a, const void *b)
{
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* World rank 0: starts.csv and summary.json into out. */
static int write_reports(ensemble *e, ar_out *out, double wall, const ar_option *opts, int nopts)
{
  FILE *f = ar_out_fopen(out, "starts.csv");
  AR_CHECK(f, AR_ERR_IO, "%s", ar_error_message());
  fputs("start,group,strategy,seed,scale,iterations,loss,rel_loss,grad_norm,reason,seconds,stopped_early\n", f);
  int total = 0, stopped = 0, ndone = 0;
  double *rel = malloc(sizeof(double) * e->K);
  for (int k = 0; k < e->K; k++) {
    const double *r = e->rows + (size_t)k * F_N;
    if (!(r[F_DONE] > 0)) continue;
    fprintf(f, "%d,%d,%s,%lld,%.17g,%d,%.17g,%.17g,%.17g,%s,%.6f,%d\n", k, (int)r[F_GROUP],
            k == 0 ? "user" : strategy_text((int)r[F_STRATEGY]), (long long)e->s->start_seed, r[F_SCALE],
            (int)r[F_ITERS], r[F_LOSS], r[F_REL], r[F_GRAD], ar_reason_name((ar_reason)r[F_REASON]), r[F_SECONDS],
            (int)r[F_STOPPED]);
    total += (int)r[F_ITERS], stopped += r[F_STOPPED] > 0;
    if (rel) rel[ndone] = r[F_REL];
    ndone++;
  }
  int err = fclose(f) == 0 ? AR_OK : AR_ERROR(AR_ERR_IO, "%s/starts.csv: write failed", out->dir);
  if (rel) qsort(rel, ndone, sizeof(double), cmp_double);
  f = err ? NULL : ar_out_fopen(out, "summary.json");
  if (!err && !f) err = AR_ERROR(AR_ERR_IO, "%s", ar_error_message());
  if (f) {
    const double *b = e->rows + (size_t)e->best_k * F_N;
    fprintf(f, "{\n  \"n\": %lld,\n  \"d\": %d,\n  \"m\": %d,\n  \"ranks\": %d,\n", (long long)e->u.n, e->u.d, e->u.m,
            e->wsize);
    fprintf(f, "  \"starts\": %d,\n  \"ranks_per_start\": %d,\n  \"groups\": %d,\n  \"strategy\": \"%s\",\n", e->K, e->R,
            e->ngroups, strategy_text(e->s->strategy));
    fprintf(f, "  \"racing\": %s,\n  \"best_start\": %d,\n", e->s->no_race ? "false" : "true", e->best_k);
    fprintf(f, "  \"iterations\": %d,\n  \"loss\": %.17g,\n  \"rel_loss\": %.17g,\n  \"grad_norm\": %.17g,\n",
            (int)b[F_ITERS], b[F_LOSS], b[F_REL], b[F_GRAD]);
    fprintf(f, "  \"reason\": \"%s\",\n  \"converged\": %s,\n", ar_reason_name((ar_reason)b[F_REASON]),
            ar_reason_converged((ar_reason)b[F_REASON]) ? "true" : "false");
    fprintf(f, "  \"whitened\": %s,\n  \"iterations_total\": %d,\n  \"stopped_early\": %d,\n",
            e->u.white ? "true" : "false", total, stopped);
    if (rel && ndone > 0)
      fprintf(f, "  \"rel_loss_quantiles\": {\"min\": %.6g, \"q10\": %.6g, \"median\": %.6g, \"q90\": %.6g, "
                 "\"max\": %.6g},\n",
              rel[0], rel[(ndone - 1) / 10], rel[(ndone - 1) / 2], rel[(ndone - 1) * 9 / 10], rel[ndone - 1]);
    fprintf(f, "  \"wall_seconds\": %.6f,\n  \"options\": {\n", wall);
    ar_options_write_json(f, opts, nopts, "    ");
    fprintf(f, "  }\n}\n");
    if (fclose(f) != 0) err = AR_ERROR(AR_ERR_IO, "%s/summary.json: write failed", out->dir);
  }
  free(rel);
  if (!err && e->best_hist) err = ar_solve_write_history(out, e->best_hist, e->best_nhist);
  return err;
}

/* Collective (world): the best point in the user's variables, on every rank. */
static int best_user(ensemble *e, double *X, double *Y)
{
  memcpy(X, e->bestX, sizeof(double) * e->u.d * e->u.d), memcpy(Y, e->bestY, sizeof(double) * e->u.d * e->u.m);
  return e->u.white ? ar_unwhiten_point(e->u.white, X, Y, X, Y) : AR_OK;
}

/* Collective (world): the rounds from `first` on; stops after a round in which a signal came. */
static int rounds(ensemble *e, int first, const double t0)
{
  const int nrounds = (e->K + ROUND - 1) / ROUND, dd = e->u.d * e->u.d, dm = e->u.d * e->u.m;
  double *uX = malloc(sizeof(double) * dd), *uY = malloc(sizeof(double) * dm);
  AR_CALL(ar_error_agree(e->world, uX && uY ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory")));
  int err = AR_OK;
  for (int b = first; b < nrounds && !err; b++) {
    const int k0 = b * ROUND, k1 = k0 + ROUND < e->K ? k0 + ROUND : e->K;
    memset(e->rows + (size_t)k0 * F_N, 0, sizeof(double) * F_N * (k1 - k0)); /* a redone round starts clean */
    for (int k = k0; k < k1 && !err; k++) {
      if ((k - k0) % e->ngroups != e->gid) continue;
      int sig = *ar_solve_signal_flag() != 0; /* after a signal the group starts nothing new */
      MPI_Allreduce(MPI_IN_PLACE, &sig, 1, MPI_INT, MPI_MAX, e->group);
      if (!sig) err = ar_error_agree(e->group, run_start(e, k, &e->slots[k - k0]));
    }
    err = ar_error_agree(e->world, err);
    if (!err) err = end_round(e, k0, k1);
    int sig = *ar_solve_signal_flag() != 0;
    MPI_Allreduce(MPI_IN_PLACE, &sig, 1, MPI_INT, MPI_MAX, e->world);
    if (!err && e->wrank == 0 && !e->s->c.quiet) {
      const double *r = e->rows + (size_t)e->best_k * F_N;
      printf("round %d/%d: starts %d-%d done, best start %d: rel_loss %.3e (%s), %.1f s\n", b + 1, nrounds, k0, k1 - 1,
             e->best_k, r[F_REL], ar_reason_name((ar_reason)r[F_REASON]), ar_wtime() - t0);
      fflush(stdout);
    }
    const int saved = sig ? b : b + 1; /* a round a signal cut short is redone */
    if (sig) memset(e->rows + (size_t)k0 * F_N, 0, sizeof(double) * F_N * (k1 - k0));
    if (!err && e->s->checkpoint && (sig || e->s->so.checkpoint_every > 0 || b + 1 == nrounds)) {
      if (e->best_k >= 0) err = best_user(e, uX, uY);
      if (!err) err = ar_error_agree(e->world, write_ensemble(e, saved, uX, uY));
    }
    if (!err && sig)
      err = AR_ERROR(AR_ERR_INTERRUPTED, "multi-start stopped by a signal after %d of %d starts%s%s", saved * ROUND,
                     e->K, e->s->checkpoint ? "; checkpoint written to " : "; no --checkpoint given",
                     e->s->checkpoint ? e->s->checkpoint : "");
  }
  free(uX), free(uY);
  return err;
}

int ar_cmd_multistart(MPI_Comm world, solve_cfg *s, const ar_option *opts, int nopts)
{
  const double t0 = ar_wtime();
  ensemble e = {.world = world, .s = s, .K = s->starts, .R = s->ranks_per_start, .best_k = -1};
  MPI_Comm_rank(world, &e.wrank);
  MPI_Comm_size(world, &e.wsize);
  AR_CHECK(e.wsize % e.R == 0, AR_ERR_USAGE, "--ranks-per-start %d: must divide the %d ranks", e.R, e.wsize);
  AR_CHECK(s->so.method == AR_METHOD_JOINT, AR_ERR_USAGE, "--starts: needs --method joint");
  e.ngroups = e.wsize / e.R, e.gid = e.wrank / e.R;
  AR_CALL_MPI(MPI_Comm_split(world, e.gid, e.wrank, &e.group));
  MPI_Comm_rank(e.group, &e.grank);
  /* each group: the problem and the evaluator, as for one solve, but the outputs, checkpoints
   * and restarts are the ensemble's */
  solve_cfg gs = *s;
  gs.out = gs.checkpoint = gs.restart = NULL;
  gs.c.quiet = 1;
  int err = ar_error_agree(world, ar_solve_setup(e.group, &gs, &e.u));
  const int dd = e.u.d * e.u.d, dm = e.u.d * e.u.m;
  if (!err) {
    e.X0 = malloc(sizeof(double) * dd), e.Y0 = malloc(sizeof(double) * dm), e.rows = calloc((size_t)e.K * F_N, 8);
    e.bestX = calloc(dd, sizeof(double)), e.bestY = calloc(dm, sizeof(double));
    for (int i = 0; i < ROUND; i++)
      e.slots[i].X = malloc(sizeof(double) * dd), e.slots[i].Y = malloc(sizeof(double) * dm);
    int ok = e.X0 && e.Y0 && e.rows && e.bestX && e.bestY;
    for (int i = 0; i < ROUND; i++) ok &= e.slots[i].X && e.slots[i].Y;
    err = ar_error_agree(world, ok ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory (multi-start)"));
  }
  if (!err) {
    memcpy(e.X0, e.u.X, sizeof(double) * dd), memcpy(e.Y0, e.u.Y, sizeof(double) * dm);
    err = ar_error_agree(world, ar_problem_input_norms(e.u.prob, &e.norm_a1, &e.norm_a2));
  }
  ar_out out = {0};
  int have_out = 0, first = 0;
  if (!err && s->out) err = ar_out_begin(world, "--out", s->out, &out), have_out = !err;
  const char *files[5] = {"X.npy", "Y.npy", "history.csv", "starts.csv", "summary.json"};
  for (int i = 0; i < 5 && !err && have_out; i++) err = ar_out_add(&out, files[i]);
  if (!err && s->restart) err = read_ensemble(&e, &first);
  if (!err && e.wrank == 0 && !s->c.quiet)
    printf("attnreg %s solve: %d starts (%s%s) in %d groups of %d ranks, n=%lld d=%d m=%d%s\n", ATTNREG_VERSION, e.K,
           strategy_text(s->strategy), s->no_race ? ", no racing" : ", racing", e.ngroups, e.R, (long long)e.u.n, e.u.d,
           e.u.m, first ? " (restarted)" : "");
  if (!err) err = rounds(&e, first, t0);
  if (!err && have_out) {
    double *X = malloc(sizeof(double) * dd), *Y = malloc(sizeof(double) * dm);
    err = ar_error_agree(world, X && Y ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory"));
    if (!err) err = best_user(&e, X, Y);
    char path[4400];
    int lerr = AR_OK;
    const char *xp = ar_out_path(&out, "X.npy", path, sizeof path);
    if (!err && e.wrank == 0) lerr = ar_npy_write(xp, e.u.d, e.u.d, X);
    const char *yp = ar_out_path(&out, "Y.npy", path, sizeof path);
    if (!err && !lerr && e.wrank == 0) lerr = ar_npy_write(yp, e.u.d, e.u.m, Y);
    if (!err && !lerr && e.wrank == 0) lerr = write_reports(&e, &out, ar_wtime() - t0, opts, nopts);
    if (!err) err = ar_error_agree(world, lerr);
    if (!err) err = ar_out_commit(&out);
    free(X), free(Y);
  }
  if (err && have_out) ar_out_abort(&out);
  if (!err && e.wrank == 0 && !s->c.quiet) {
    const double *r = e.rows + (size_t)e.best_k * F_N;
    printf("best of %d starts: start %d, loss %.10e rel_loss %.3e |grad| %.3e (%s)\n", e.K, e.best_k, r[F_LOSS],
           r[F_REL], r[F_GRAD], ar_reason_name((ar_reason)r[F_REASON]));
  }
  for (int i = 0; i < ROUND; i++) free(e.slots[i].X), free(e.slots[i].Y), free(e.slots[i].hist);
  free(e.X0), free(e.Y0), free(e.rows), free(e.bestX), free(e.bestY), free(e.best_hist);
  ar_solve_release(&e.u);
  MPI_Comm_free(&e.group);
  return err;
}
