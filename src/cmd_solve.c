/* attnreg solve: the main job.  Options, progress lines, checkpoints, and the atomic result
 * files (X.npy, Y.npy, history.csv, summary.json). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "checkpoint.h"
#include "cli.h"
#include "commands.h"
#include "solve_cli.h"
#include "error.h"
#include "fault.h"
#include "npy.h"
#include "output.h"
#include "timing.h"

static const char *whiten_name(int w)
{
  return w == WHITEN_AUTO ? "auto" : w == WHITEN_ON ? "on" : w == WHITEN_OFF ? "off" : NULL;
}

static const char *strategy_name(int k)
{
  return k == AR_STRATEGY_STARTS ? "starts" : k == AR_STRATEGY_NORM ? "norm" : k == AR_STRATEGY_HOP ? "hop"
         : k == AR_STRATEGY_PORTFOLIO ? "portfolio" : NULL;
}

#define SOLVE_MAX_OPTS 48

static int option_table(solve_cfg *s, ar_option *opts)
{
  ar_solver_options *so = &s->so;
  const ar_option table[] = {
      AR_DATA_OPTIONS(s->c),
      {"method", AR_OPT_CHOICE, &so->method, "joint Newton on (X,Y), or the paper's alternating scheme", NULL, 0, 0,
       "joint|alternating", ar_method_name},
      {"hessian", AR_OPT_CHOICE, &so->hessian,
       "Hessian of the Newton step; auto: Gauss-Newton while a step lowers L by >= 20%, then exact", NULL, 0, 0,
       "auto|exact|gauss-newton", ar_hessian_name},
      {"chord-steps", AR_OPT_INT, &so->chord_steps,
       "steps that reuse a Hessian's Cholesky factor once steps are trusted (0: a new Hessian every step)", "0"},
      {"linear-solver", AR_OPT_CHOICE, &so->linear_solver,
       "Newton step: dense Cholesky of the assembled Hessian, matrix-free conjugate gradients, or auto: the cheaper "
       "by attnreg plan's model that fits the memory budget", NULL, 0, 0, "auto|cholesky|cg", ar_linear_solver_name},
      {"cg-max-iter", AR_OPT_INT, &so->cg_max_iter, "matrix-free step: CG iterations per Newton step at most", NULL, 1},
      {"shift", AR_OPT_CHOICE, &so->shift,
       "dense step: Levenberg-Marquardt shift mu s I, mu s D with D = |diag H| / s (scale-invariant), or mu s M with M "
       "the inputs' Gram metric (whitening's shift, unwhitened)", NULL, 0, 0, "identity|diagonal|gram", ar_shift_name},
      {"whiten", AR_OPT_CHOICE, &s->whiten,
       "solve in whitened variables (A = QR: an exact change of variables, results in the user's); auto: on "
       "without ridge weights", NULL, 0, 0, "auto|on|off", whiten_name},
      {"x0", AR_OPT_STRING, &s->x0, "starting X (d x d npy)", "zeros"},
      {"y0", AR_OPT_STRING, &s->y0, "starting Y (d x m npy)", "least squares for X0"},
      {"max-iter", AR_OPT_INT64, &so->max_iter, "iteration limit", NULL, 1},
      {"time-limit", AR_OPT_DOUBLE, &so->time_limit, "wall-clock limit in seconds (0: none)", "0"},
      {"gatol", AR_OPT_DOUBLE, &so->gatol, "stop when |grad| <= gatol", "0"},
      {"grtol", AR_OPT_DOUBLE, &so->grtol, "stop when |grad| <= grtol * L", "0"},
      {"gttol", AR_OPT_DOUBLE, &so->gttol, "stop when |grad| <= gttol * |grad_0|", "0"},
      {"ftol", AR_OPT_DOUBLE, &so->ftol, "stop when an accepted step changes L by <= ftol * L", "0"},
      {"steptol", AR_OPT_DOUBLE, &so->steptol, "stop when |step| <= steptol * (|z| + steptol)", "0"},
      {"mu0", AR_OPT_DOUBLE, &so->mu0, "initial Levenberg-Marquardt shift (relative to mean |diag H|)", "0"},
      {"out", AR_OPT_STRING, &s->out, "output directory for X.npy Y.npy history.csv summary.json"},
      {"checkpoint", AR_OPT_STRING, &s->checkpoint,
       "checkpoint file, written every --checkpoint-every iterations and on SIGTERM/SIGUSR1"},
      {"checkpoint-every", AR_OPT_INT, &so->checkpoint_every, "checkpoint period in iterations (0: only on a signal)",
       "0"},
      {"restart", AR_OPT_STRING, &s->restart, "continue from this checkpoint (same data and method)"},
      {"starts", AR_OPT_INT, &s->starts, "multi-start: solve from K starts, keep the best (start 0: --x0)", "1", 1},
      {"strategy", AR_OPT_CHOICE, &s->strategy,
       "multi-start: random starts, fixed-norm search then Newton, basin hopping from the best, or a mix", NULL, 0, 0,
       "starts|norm|hop|portfolio", strategy_name},
      {"start-scale", AR_OPT_DOUBLE, &s->start_scale, "multi-start: random starts have X entries N(0, scale^2)"},
      {"start-seed", AR_OPT_INT64, &s->start_seed, "multi-start: seed of the random starts"},
      {"ranks-per-start", AR_OPT_INT, &s->ranks_per_start,
       "multi-start: ranks that solve one start together (the others run other starts at the same time)", NULL, 1},
      {"no-race", AR_OPT_FLAG, &s->no_race, "multi-start: run every start to its end (no early stop of poor ones)"},
      {"mem-per-rank", AR_OPT_DOUBLE, &s->mem_per_rank,
       "memory budget per rank in GB; a run that attnreg plan says cannot fit is refused", "from SLURM or the node", 0,
       1},
  };
  const int n = sizeof table / sizeof table[0];
  _Static_assert(sizeof table / sizeof table[0] <= SOLVE_MAX_OPTS, "SOLVE_MAX_OPTS");
  memcpy(opts, table, sizeof table);
  return n;
}

/* SIGTERM (scancel, the end of a time limit) and SIGUSR1 (sbatch --signal=B:USR1@T) ask for a
 * checkpoint and a clean stop at the next iteration boundary. */
static volatile sig_atomic_t g_signal;

static void on_signal(int sig) { g_signal = sig; }

volatile sig_atomic_t *ar_solve_signal_flag(void) { return &g_signal; }

void ar_cmd_solve_signals(void)
{
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
}

/* The Hessian behind a history row by name ("?" for a corrupt value). */
static const char *kind_name(int kind)
{
  const char *s = ar_hessian_name(kind);
  return s ? s : "?";
}

typedef struct {
  MPI_Comm comm;
  const solve_cfg *cfg;
  ar_problem prob;
} ckpt_ctx;

/* Collective: rank 0 writes the checkpoint atomically; the outcome is agreed. */
static int write_checkpoint(const ar_solver_state *st, void *vctx)
{
  ckpt_ctx *ctx = vctx;
  const solve_cfg *s = ctx->cfg;
  if (!s->checkpoint) return AR_OK;
  int rank, err = AR_OK;
  MPI_Comm_rank(ctx->comm, &rank);
  if (rank == 0) {
    ar_checkpoint c = {.data_hash = ar_problem_hash(ctx->prob), .method = s->so.method, .hessian = s->so.hessian,
                       .chord_steps = s->so.chord_steps, .linear_solver = s->so.linear_solver,
                       .whiten = s->whiten == WHITEN_ON, .shift = s->so.shift, .lambda_x = s->c.eval.lambda_x,
                       .lambda_y = s->c.eval.lambda_y, .st = *st};
    ar_problem_sizes(ctx->prob, &c.n, &c.d, &c.m);
    err = ar_checkpoint_write(s->checkpoint, &c);
  }
  return ar_error_agree(ctx->comm, err);
}

/* Collective: read --restart on every rank and check it belongs to this problem and options. */
static int read_restart(MPI_Comm comm, const solve_cfg *s, ar_problem prob, ar_checkpoint *c)
{
  int err = ar_checkpoint_read(s->restart, c);
  int64_t n;
  int d, m;
  ar_problem_sizes(prob, &n, &d, &m);
  const char *f = s->restart;
  if (!err && (c->n != n || c->d != d || c->m != m))
    err = AR_ERROR(AR_ERR_DATA, "--restart %s: written for n=%lld d=%d m=%d, the data has n=%lld d=%d m=%d", f,
                   (long long)c->n, c->d, c->m, (long long)n, d, m);
  if (!err && c->data_hash != ar_problem_hash(prob))
    err = AR_ERROR(AR_ERR_DATA, "--restart %s: written for other input data (checksums differ)", f);
  if (!err && (c->method != s->so.method || c->hessian != s->so.hessian || c->chord_steps != s->so.chord_steps ||
               c->shift != s->so.shift))
    err = AR_ERROR(AR_ERR_USAGE, "--restart %s: written with another --method, --hessian, --chord-steps or --shift", f);
  if (!err && (c->lambda_x != s->c.eval.lambda_x || c->lambda_y != s->c.eval.lambda_y))
    err = AR_ERROR(AR_ERR_USAGE, "--restart %s: written with --lambda-x %g --lambda-y %g", f, c->lambda_x, c->lambda_y);
  if (!err && (c->linear_solver != s->so.linear_solver || c->whiten != (s->whiten == WHITEN_ON)))
    err = AR_ERROR(AR_ERR_USAGE, "--restart %s: written with --linear-solver %s --whiten %s", f,
                   ar_linear_solver_name(c->linear_solver), c->whiten ? "on" : "off");
  err = ar_error_agree(comm, err);
  if (err) ar_checkpoint_free(c);
  return err;
}

/* Rank 0's progress lines for long iterations (NULL elsewhere, and with --quiet). */
static ar_progress *g_progress;

static void monitor(const ar_iter_info *it, void *ctx)
{
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  char what[64];
  snprintf(what, sizeof what, "iteration %d", it->iter + 1);
  ar_progress_start(g_progress, what);
  if (rank != 0 || *(int *)ctx) return;
  if (it->iter == 0)
    printf("%5s %23s %10s %10s %9s %10s %9s %9s  %s\n", "iter", "loss", "rel_loss", "|grad|", "mu", "rho", "|step|",
           "seconds", "hessian");
  char cg[32] = "";
  if (it->cg_iters) snprintf(cg, sizeof cg, " cg %d", it->cg_iters);
  printf("%5d %23.16e %10.3e %10.3e %9.2e %10.3e %9.2e %9.3f  %s%s%s%s\n", it->iter, it->loss, it->rel_loss,
         it->grad_norm, it->mu, it->rho, it->step_norm, it->seconds, kind_name(it->hessian),
         it->chord ? " chord" : "", cg, it->accepted ? "" : " (rejected)");
  fflush(stdout);
}

int ar_solve_write_history(ar_out *out, const ar_iter_info *history, int iterations)
{
  FILE *f = ar_out_fopen(out, "history.csv");
  AR_CHECK(f, AR_ERR_IO, "%s", ar_error_message());
  fputs("iter,loss,rel_loss,grad_norm,mu,rho,step_norm,seconds,accepted,cg_iters,hessian,step\n", f);
  for (int i = 0; i <= iterations; i++) {
    const ar_iter_info *h = &history[i];
    fprintf(f, "%d,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.6f,%d,%d,%s,%s\n", h->iter, h->loss, h->rel_loss,
            h->grad_norm, h->mu, h->rho, h->step_norm, h->seconds, h->accepted, h->cg_iters, kind_name(h->hessian),
            h->iter == 0 ? "start" : h->chord ? "chord" : "newton");
  }
  AR_CHECK(fclose(f) == 0, AR_ERR_IO, "%s/history.csv: write failed", out->dir);
  return AR_OK;
}

static int write_summary(MPI_Comm comm, solve_run *u, const ar_option *opts, int nopts)
{
  int rank, size, pr, pc;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  ar_grid_shape(u->grid, &pr, &pc);
  const ar_solve_result *r = &u->r;
  double in[2] = {r->flops, ar_peak_rss_mb()}, sum[2], mx[2];
  AR_CALL_MPI(MPI_Allreduce(in, sum, 2, MPI_DOUBLE, MPI_SUM, comm));
  AR_CALL_MPI(MPI_Allreduce(in, mx, 2, MPI_DOUBLE, MPI_MAX, comm));
  const double flops = sum[0], rss_max = mx[1], rss_avg = sum[1];
  FILE *f = NULL;
  int err = AR_OK;
  if (rank == 0 && !(f = ar_out_fopen(&u->out, "summary.json"))) err = AR_ERR_IO;
  if (f) {
    fprintf(f, "{\n  \"n\": %lld,\n  \"d\": %d,\n  \"m\": %d,\n  \"ranks\": %d,\n  \"grid\": \"%dx%d\",\n",
            (long long)u->n, u->d, u->m, size, pr, pc);
    fprintf(f, "  \"nb\": %d,\n  \"tile\": %lld,\n  \"chunk\": %lld,\n", r->nb, (long long)ar_eval_tile(u->ev),
            (long long)ar_eval_chunk(u->ev));
    ar_blas_json(f, "  ");
    fprintf(f, "  \"iterations\": %d,\n  \"loss\": %.17g,\n  \"rel_loss\": %.17g,\n  \"grad_norm\": %.17g,\n",
            r->iterations, r->loss, r->rel_loss, r->grad_norm);
    fprintf(f, "  \"reason\": \"%s\",\n  \"converged\": %s,\n  \"wall_seconds\": %.6f,\n", ar_reason_name(r->reason),
            ar_reason_converged(r->reason) ? "true" : "false", r->t_total + u->t_load + u->t_setup);
    fprintf(f, "  \"flops\": %.6g,\n  \"gflops\": %.6g,\n", flops, r->t_total > 0 ? flops / r->t_total * 1e-9 : 0.0);
    int cg = 0;
    for (int i = 0; i <= r->iterations; i++) cg += r->history[i].cg_iters;
    fprintf(f, "  \"linear_solver\": \"%s\",\n  \"cg_iterations\": %d,\n  \"hessian_vector_products\": %d,\n",
            ar_linear_solver_name(r->linear_solver), cg, r->hessvecs);
    fprintf(f, "  \"whitened\": %s,\n", u->white ? "true" : "false");
    if (u->white) /* history.csv's grad_norm is the solver's, in whitened variables */
      fprintf(f, "  \"grad_norm_user\": %.17g,\n", u->grad_norm_user);
    fprintf(f, "  \"peak_rss_mb\": {\"max\": %.1f, \"avg\": %.1f},\n", rss_max, rss_avg / size);
    fprintf(f, "  \"phases\": {\n");
  }
  const struct {
    const char *name;
    double t;
  } phases[] = {{"io", u->t_load},       {"setup", u->t_setup},         {"loss_gradient", r->t_kernel},
                {"hessian", r->t_hess},  {"reduction", r->t_reduce},    {"ring", r->t_ring},
                {"factorization", r->t_factor},
                {"solve", r->t_solve},   {"total", r->t_total}};
  const int nph = sizeof phases / sizeof phases[0];
  for (int i = 0; i < nph; i++) ar_cli_phase_json(comm, f, phases[i].name, phases[i].t, i == nph - 1);
  if (f) {
    fprintf(f, "  },\n  \"options\": {\n");
    ar_options_write_json(f, opts, nopts, "    ");
    fprintf(f, "  }\n}\n");
    if (fclose(f) != 0) err = AR_ERROR(AR_ERR_IO, "%s/summary.json: write failed", u->out.dir);
  }
  if (!err && rank == 0) err = ar_solve_write_history(&u->out, r->history, r->iterations);
  return ar_error_agree(comm, err);
}

/* Collective: replace the problem by the whitened one, and the start point by its image. */
static int whiten(MPI_Comm comm, solve_cfg *s, solve_run *u)
{
  ar_data_paths ps = {s->c.a1, s->c.a2, s->c.a3, s->c.b};
  char store[4 * 4096];
  if (s->c.data) AR_CALL(ar_data_paths_from_dir(s->c.data, &ps, store));
  const char *names[3] = {ps.a1, ps.a2, ps.a3};
  ar_problem white;
  int err = ar_whiten(u->prob, names, &white, &u->white);
  if (err == AR_ERR_DATA && s->whiten == WHITEN_AUTO) { /* rank-deficient inputs: solve them as they are */
    int rank;
    MPI_Comm_rank(comm, &rank);
    if (rank == 0 && !s->c.quiet) printf("note: not whitened: %s\n", ar_error_message());
    ar_error_clear();
    s->whiten = WHITEN_OFF;
    return AR_OK;
  }
  AR_CALL(err);
  s->whiten = WHITEN_ON;
  ar_problem_destroy(&u->prob); /* the solve needs only the whitened inputs */
  u->prob = white;
  return ar_whiten_point(u->white, u->X, u->Y, u->X, u->Y);
}

/* Collective: the problem, the evaluator, the start point, the output directory, a restart. */
int ar_solve_setup(MPI_Comm comm, solve_cfg *s, solve_run *u)
{
  double t0 = ar_wtime();
  AR_CALL(ar_grid_create(comm, s->c.grid[0], s->c.grid[1], &u->grid));
  AR_CALL(ar_cli_check_memory(comm, &s->c, s->mem_per_rank, s->so.hessian, &s->so.linear_solver));
  AR_CALL(ar_cli_load_problem(comm, &s->c, &u->prob));
  if (ar_fault("signal-startup")) raise(SIGUSR1); /* test hook (fault.h): a signal while the job starts */
  ar_problem_sizes(u->prob, &u->n, &u->d, &u->m);
  u->X = calloc(u->d * u->d, sizeof(double)), u->Y = calloc(u->d * u->m, sizeof(double));
  AR_CALL(ar_error_agree(comm, u->X && u->Y ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory")));
  if (s->x0) AR_CALL(ar_cli_load_matrix(comm, "--x0", s->x0, u->d, u->d, u->X));
  if (s->y0) AR_CALL(ar_cli_load_matrix(comm, "--y0", s->y0, u->d, u->m, u->Y));
  u->t_load = ar_wtime() - t0;
  if (s->whiten != WHITEN_OFF) AR_CALL(whiten(comm, s, u));
  /* the setup phase: tables, work arrays, the output directory, a --restart file, Y0 */
  AR_CALL(ar_eval_create(u->prob, &s->c.eval, &u->ev));
  if (s->out) {
    AR_CALL(ar_out_begin(comm, "--out", s->out, &u->out));
    u->have_out = 1;
    const char *files[4] = {"X.npy", "Y.npy", "history.csv", "summary.json"};
    for (int i = 0; i < 4; i++) AR_CALL(ar_out_add(&u->out, files[i]));
  }
  if (s->restart) AR_CALL(read_restart(comm, s, u->prob, &u->ck));
  if (!s->y0 && !s->restart) AR_CALL(ar_solve_least_squares_y(u->ev, u->X, u->Y));
  u->t_setup = ar_wtime() - t0 - u->t_load;
  return AR_OK;
}

/* Collective: the solve itself, with monitor, signals and checkpoints. */
static int run(MPI_Comm comm, solve_cfg *s, solve_run *u, const ar_option *opts, int nopts)
{
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  if (rank == 0 && !s->c.quiet) {
    int pr, pc;
    ar_grid_shape(u->grid, &pr, &pc);
    printf("attnreg %s solve: n=%lld d=%d m=%d D=%d ranks=%d grid=%dx%d tile=%lld\n", ATTNREG_VERSION,
           (long long)u->n, u->d, u->m, u->d * u->d + u->d * u->m, size, pr, pc, (long long)ar_eval_tile(u->ev));
    ar_options_print_config(stdout, "  ", opts, nopts);
    ar_blas_print(stdout, "  ");
    if (s->restart) printf("restarting from %s at iteration %d\n", s->restart, u->ck.st.iter);
  }
  ckpt_ctx cctx = {comm, s, u->prob};
  if (rank == 0 && !s->c.quiet) g_progress = ar_progress_create(stderr, 10.0, 5.0);
  ar_progress_start(g_progress, "start");
  ar_eval_set_progress(u->ev, g_progress);
  ar_solver_options so = s->so;
  so.nb = s->c.nb;
  so.monitor = monitor, so.monitor_ctx = &s->c.quiet;
  so.interrupt = &g_signal;
  so.checkpoint = write_checkpoint, so.checkpoint_ctx = &cctx;
  so.resume = s->restart ? &u->ck.st : NULL;
  so.progress = g_progress;
  const int err = ar_solve(u->prob, u->ev, u->grid, &so, u->X, u->Y, &u->r);
  ar_eval_set_progress(u->ev, NULL);
  ar_progress_destroy(&g_progress);
  AR_CALL(err);
  const ar_solve_result *r = &u->r;
  if (u->white) AR_CALL(ar_unwhiten_point(u->white, u->X, u->Y, u->X, u->Y)); /* the user's variables */
  if (u->white && r->grad) {
    double *g = malloc(sizeof(double) * (u->d * u->d + u->d * u->m)), gn = 0;
    AR_CHECK(g, AR_ERR_MEM, "out of memory");
    int e = ar_unwhiten_gradient(u->white, r->grad, r->grad + u->d * u->d, g, g + u->d * u->d);
    for (int i = 0; i < u->d * u->d + u->d * u->m; i++) gn += g[i] * g[i];
    free(g);
    AR_CALL(e);
    u->grad_norm_user = sqrt(gn);
  }
  if (r->reason == AR_DIVERGED_SIGNAL) {
    int sig = g_signal;
    AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, &sig, 1, MPI_INT, MPI_MAX, comm));
    if (s->checkpoint)
      return AR_ERROR(AR_ERR_INTERRUPTED, "stopped by signal %d after iteration %d; checkpoint written to %s (continue "
                      "with --restart %s)", sig, r->iterations, s->checkpoint, s->checkpoint);
    return AR_ERROR(AR_ERR_INTERRUPTED, "stopped by signal %d after iteration %d; no --checkpoint given, progress not "
                    "saved", sig, r->iterations);
  }
  AR_CHECK(r->reason != AR_DIVERGED_NAN, AR_ERR_NUMERIC, "the loss or gradient is not finite at the start point");
  if (rank == 0 && !s->c.quiet) {
    printf("%s due to %s after %d iterations: loss %.10e rel_loss %.3e |grad| %.3e (%.2f s)\n",
           ar_reason_converged(r->reason) ? "converged" : "stopped", ar_reason_name(r->reason), r->iterations, r->loss,
           r->rel_loss, r->grad_norm, r->t_total);
    if (ar_reason_converged(r->reason) && r->rel_loss > 1e-6)
      printf("note: a stationary point with relative loss %.3e: unless B is that noisy, it may be a poor local "
             "minimum of this non-convex problem, and a start nearer the answer (--x0, --y0) may reach a lower loss\n",
             r->rel_loss);
  }
  return AR_OK;
}

/* Collective: X.npy, Y.npy, summary.json, history.csv, renamed into place together. */
static int write_results(MPI_Comm comm, solve_run *u, const ar_option *opts, int nopts)
{
  int rank, err = AR_OK;
  MPI_Comm_rank(comm, &rank);
  char path[4400];
  const char *xp = ar_out_path(&u->out, "X.npy", path, sizeof path);
  if (rank == 0) err = ar_npy_write(xp, u->d, u->d, u->X);
  const char *yp = ar_out_path(&u->out, "Y.npy", path, sizeof path);
  if (rank == 0 && !err) err = ar_npy_write(yp, u->d, u->m, u->Y);
  AR_CALL(ar_error_agree(comm, err));
  AR_CALL(write_summary(comm, u, opts, nopts));
  return ar_out_commit(&u->out);
}

int ar_cmd_solve(MPI_Comm comm, int argc, char **argv)
{
  solve_cfg s = {.starts = 1, .start_scale = 1.0, .start_seed = 1, .ranks_per_start = 1};
  ar_common_cfg_default(&s.c);
  ar_solver_options_default(&s.so);
  ar_option opts[SOLVE_MAX_OPTS];
  const int nopts = option_table(&s, opts);
  int done;
  AR_CALL(ar_cli_parse(comm,
                       "usage: attnreg solve --data DIR [--x0 X0.npy] [--y0 Y0.npy] [--method joint|alternating]\n"
                       "                     [--hessian auto|exact|gauss-newton] [--out OUT] [options]",
                       opts, nopts, argc, argv, &done));
  if (done) return AR_OK;
  AR_CALL(ar_solver_options_check(&s.so));
  AR_CALL(ar_eval_options_check(&s.c.eval));
  const int ridge = s.c.eval.lambda_x != 0 || s.c.eval.lambda_y != 0;
  AR_CHECK(!(ridge && s.whiten == WHITEN_ON), AR_ERR_USAGE,
           "--whiten on: the ridge terms --lambda-x/--lambda-y are not invariant under the change of variables; use "
           "--whiten off with ridge weights");
  if (s.whiten == WHITEN_AUTO && ridge) s.whiten = WHITEN_OFF;
  if (s.starts > 1) return ar_cmd_multistart(comm, &s, opts, nopts);
  solve_run u = {0};
  int err = ar_error_agree(comm, ar_solve_setup(comm, &s, &u));
  if (!err) err = ar_error_agree(comm, run(comm, &s, &u, opts, nopts));
  if (!err && u.have_out) err = write_results(comm, &u, opts, nopts);
  if (err && u.have_out) ar_out_abort(&u.out);
  ar_solve_release(&u);
  return err;
}

void ar_solve_release(solve_run *u)
{
  free(u->r.history), free(u->r.grad);
  u->r.history = NULL, u->r.grad = NULL;
  ar_whitening_destroy(&u->white);
  ar_checkpoint_free(&u->ck);
  free(u->X), free(u->Y);
  u->X = u->Y = NULL;
  ar_eval_destroy(&u->ev);
  ar_grid_destroy(&u->grid);
  ar_problem_destroy(&u->prob);
}
