/* attnreg solve: the main job.  Options, progress lines, and the atomic result files
 * (X.npy, Y.npy, history.csv, summary.json). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "cli.h"
#include "error.h"
#include "fault.h"
#include "npy.h"
#include "output.h"
#include "timing.h"

/* --hessian choices, in the order of the option's list */
static const ar_hessian_kind hessian_kinds[] = {AR_HESS_AUTO, AR_HESS_EXACT, AR_HESS_GAUSS_NEWTON};
static const char *hessian_name(int kind)
{
  return kind == AR_HESS_EXACT ? "exact" : kind == AR_HESS_GAUSS_NEWTON ? "gauss-newton" : "none";
}

typedef struct {
  ar_common_cfg c;
  const char *x0, *y0, *out, *checkpoint, *restart;
  int method, hessian;
  int64_t max_iter, checkpoint_every, chord_steps;
  double time_limit, gatol, grtol, gttol, ftol, steptol, mu0, mem_per_rank;
} solve_cfg;

/* SIGTERM (scancel, the end of a time limit) and SIGUSR1 (sbatch --signal=B:USR1@T) ask for a
 * checkpoint and a clean stop at the next iteration boundary. */
static volatile sig_atomic_t g_signal;

static void on_signal(int sig) { g_signal = sig; }

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

typedef struct {
  MPI_Comm comm;
  const solve_cfg *cfg;
  ar_problem prob;
  int written_iter;
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
    ar_checkpoint c = {.data_hash = ar_problem_hash(ctx->prob), .method = s->method,
                       .hessian = hessian_kinds[s->hessian], .chord_steps = (int)s->chord_steps, .lambda_x = s->c.lambda_x,
                       .lambda_y = s->c.lambda_y, .st = *st};
    ar_problem_sizes(ctx->prob, &c.n, &c.d, &c.m);
    err = ar_checkpoint_write(s->checkpoint, &c);
  }
  ctx->written_iter = st->iter;
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
  if (!err && (c->method != s->method || c->hessian != (int)hessian_kinds[s->hessian] ||
               c->chord_steps != s->chord_steps))
    err = AR_ERROR(AR_ERR_USAGE, "--restart %s: written with another --method, --hessian or --chord-steps", f);
  if (!err && (c->lambda_x != s->c.lambda_x || c->lambda_y != s->c.lambda_y))
    err = AR_ERROR(AR_ERR_USAGE, "--restart %s: written with --lambda-x %g --lambda-y %g", f, c->lambda_x, c->lambda_y);
  err = ar_error_agree(comm, err);
  if (err) ar_checkpoint_free(c);
  return err;
}

static void monitor(const ar_iter_info *it, void *ctx)
{
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0 || *(int *)ctx) return;
  if (it->iter == 0)
    printf("%5s %23s %10s %10s %9s %10s %9s %9s  %s\n", "iter", "loss", "rel_loss", "|grad|", "mu", "rho", "|step|",
           "seconds", "hessian");
  printf("%5d %23.16e %10.3e %10.3e %9.2e %10.3e %9.2e %9.3f  %s%s%s\n", it->iter, it->loss, it->rel_loss,
         it->grad_norm, it->mu, it->rho, it->step_norm, it->seconds, hessian_name(it->hessian),
         it->chord ? " chord" : "", it->accepted ? "" : " (rejected)");
  fflush(stdout);
}

static const char *csv_header = "iter,loss,rel_loss,grad_norm,mu,rho,step_norm,seconds,accepted,hessian,step\n";

static int write_history(ar_out *out, const ar_solve_result *r)
{
  FILE *f = ar_out_fopen(out, "history.csv");
  AR_CHECK(f, AR_ERR_IO, "%s", ar_error_message());
  fputs(csv_header, f);
  for (int i = 0; i <= r->iterations; i++) {
    const ar_iter_info *h = &r->history[i];
    fprintf(f, "%d,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.6f,%d,%s,%s\n", h->iter, h->loss, h->rel_loss, h->grad_norm,
            h->mu, h->rho, h->step_norm, h->seconds, h->accepted, hessian_name(h->hessian),
            h->iter == 0 ? "start" : h->chord ? "chord" : "newton");
  }
  AR_CHECK(fclose(f) == 0, AR_ERR_IO, "%s/history.csv: write failed", out->dir);
  return AR_OK;
}

/* Phase times reduced to max / avg over ranks, written as JSON members. */
static void phase_json(MPI_Comm comm, FILE *f, const char *name, double t, int last)
{
  double mx, avg;
  ar_cli_time_stats(comm, t, &mx, &avg);
  if (f) fprintf(f, "    \"%s\": {\"max\": %.6f, \"avg\": %.6f}%s\n", name, mx, avg, last ? "" : ",");
}

static int write_summary(MPI_Comm comm, ar_out *out, ar_problem prob, ar_grid grid, int nb, int64_t tile,
                         const ar_solve_result *r, double t_io, double t_setup, const ar_option *opts, int nopts)
{
  int rank, size, pr, pc, d, m;
  int64_t n;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  ar_grid_shape(grid, &pr, &pc);
  ar_problem_sizes(prob, &n, &d, &m);
  double flops, rss_loc = ar_peak_rss_mb(), rss_max, rss_avg;
  MPI_Allreduce(&r->flops, &flops, 1, MPI_DOUBLE, MPI_SUM, comm);
  MPI_Allreduce(&rss_loc, &rss_max, 1, MPI_DOUBLE, MPI_MAX, comm);
  MPI_Allreduce(&rss_loc, &rss_avg, 1, MPI_DOUBLE, MPI_SUM, comm);
  FILE *f = NULL;
  int err = AR_OK;
  if (rank == 0 && !(f = ar_out_fopen(out, "summary.json"))) err = AR_ERR_IO;
  if (f) {
    fprintf(f, "{\n  \"n\": %lld,\n  \"d\": %d,\n  \"m\": %d,\n  \"ranks\": %d,\n  \"grid\": \"%dx%d\",\n", (long long)n,
            d, m, size, pr, pc);
    fprintf(f, "  \"nb\": %d,\n  \"tile\": %lld,\n", nb, (long long)tile);
    fprintf(f, "  \"iterations\": %d,\n  \"loss\": %.17g,\n  \"rel_loss\": %.17g,\n  \"grad_norm\": %.17g,\n",
            r->iterations, r->loss, r->rel_loss, r->grad_norm);
    fprintf(f, "  \"reason\": \"%s\",\n  \"converged\": %s,\n  \"wall_seconds\": %.6f,\n", ar_reason_name(r->reason),
            ar_reason_converged(r->reason) ? "true" : "false", r->t_total + t_io + t_setup);
    fprintf(f, "  \"flops\": %.6g,\n  \"gflops\": %.6g,\n", flops, r->t_total > 0 ? flops / r->t_total * 1e-9 : 0.0);
    fprintf(f, "  \"peak_rss_mb\": {\"max\": %.1f, \"avg\": %.1f},\n", rss_max, rss_avg / size);
    fprintf(f, "  \"phases\": {\n");
  }
  phase_json(comm, f, "io", t_io, 0);
  phase_json(comm, f, "setup", t_setup, 0);
  phase_json(comm, f, "loss_gradient", r->t_kernel, 0);
  phase_json(comm, f, "hessian", r->t_hess, 0);
  phase_json(comm, f, "reduction", r->t_reduce, 0);
  phase_json(comm, f, "factorization", r->t_factor, 0);
  phase_json(comm, f, "solve", r->t_solve, 0);
  phase_json(comm, f, "total", r->t_total, 1);
  if (f) {
    fprintf(f, "  },\n  \"options\": {\n");
    ar_options_write_json(f, opts, nopts, "    ");
    fprintf(f, "  }\n}\n");
    if (fclose(f) != 0) err = AR_ERROR(AR_ERR_IO, "%s/summary.json: write failed", out->dir);
  }
  if (!err && rank == 0) err = write_history(out, r);
  return ar_error_agree(comm, err);
}

int ar_cmd_solve(MPI_Comm comm, int argc, char **argv)
{
  solve_cfg s = {0};
  int done;
  ar_option opts[] = {
      AR_DATA_OPTIONS(s.c),
      {"method", AR_OPT_CHOICE, &s.method, "joint", "joint Newton on (X,Y), or the paper's alternating scheme", 0, 0,
       "joint|alternating"},
      {"hessian", AR_OPT_CHOICE, &s.hessian, "auto",
       "Hessian of the Newton step; auto: Gauss-Newton while a step lowers L by >= 20%, then exact", 0, 0,
       "auto|exact|gauss-newton"},
      {"chord-steps", AR_OPT_INT, &s.chord_steps, "1",
       "steps that reuse a Hessian's Cholesky factor once steps are trusted (0: a new Hessian every step)", 0, 0, 0},
      {"x0", AR_OPT_STRING, &s.x0, NULL, "starting X (d x d npy) [default: zeros]", 0, 0, 0},
      {"y0", AR_OPT_STRING, &s.y0, NULL, "starting Y (d x m npy) [default: least squares for X0]", 0, 0, 0},
      {"max-iter", AR_OPT_INT, &s.max_iter, "100", "iteration limit", 1, 0, 0},
      {"time-limit", AR_OPT_DOUBLE, &s.time_limit, "0", "wall-clock limit in seconds (0: none)", 0, 0, 0},
      {"gatol", AR_OPT_DOUBLE, &s.gatol, "0", "stop when |grad| <= gatol", 0, 0, 0},
      {"grtol", AR_OPT_DOUBLE, &s.grtol, "0", "stop when |grad| <= grtol * L", 0, 0, 0},
      {"gttol", AR_OPT_DOUBLE, &s.gttol, "1e-13", "stop when |grad| <= gttol * |grad_0|", 0, 0, 0},
      {"ftol", AR_OPT_DOUBLE, &s.ftol, "0", "stop when an accepted step changes L by <= ftol * L", 0, 0, 0},
      {"steptol", AR_OPT_DOUBLE, &s.steptol, "1e-14", "stop when |step| <= steptol * (|z| + steptol)", 0, 0, 0},
      {"mu0", AR_OPT_DOUBLE, &s.mu0, "1e-3", "initial Levenberg-Marquardt shift (relative to mean |diag H|)", 0, 0, 0},
      {"out", AR_OPT_STRING, &s.out, NULL, "output directory for X.npy Y.npy history.csv summary.json", 0, 0, 0},
      {"checkpoint", AR_OPT_STRING, &s.checkpoint, NULL,
       "checkpoint file, written every --checkpoint-every iterations and on SIGTERM/SIGUSR1", 0, 0, 0},
      {"checkpoint-every", AR_OPT_INT, &s.checkpoint_every, "0", "checkpoint period in iterations (0: only on a signal)",
       0, 0, 0},
      {"restart", AR_OPT_STRING, &s.restart, NULL, "continue from this checkpoint (same data and method)", 0, 0, 0},
      {"mem-per-rank", AR_OPT_DOUBLE, &s.mem_per_rank, NULL,
       "memory budget per rank in GB; a run that attnreg plan says cannot fit is refused [default: from SLURM or "
       "the node]", 0, 1, 0},
  };
  const int nopts = sizeof opts / sizeof opts[0];
  AR_CALL(ar_cli_parse(comm,
                       "usage: attnreg solve --data DIR [--x0 X0.npy] [--y0 Y0.npy] [--method joint|alternating]\n"
                       "                     [--hessian auto|exact|gauss-newton] [--out OUT] [options]",
                       opts, nopts, argc, argv, &done));
  if (done) return AR_OK;
  AR_CHECK(s.chord_steps <= 1000, AR_ERR_USAGE, "--chord-steps %lld: at most 1000", (long long)s.chord_steps);
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  double t0 = ar_wtime();
  ar_problem prob = NULL;
  ar_grid grid = NULL;
  ar_eval ev = NULL;
  double *X = NULL, *Y = NULL;
  ar_out out = {0};
  ar_solve_result r = {0};
  ar_checkpoint ck = {0};
  ckpt_ctx cctx = {comm, &s, NULL, -1};
  int64_t n = 0;
  int d = 0, m = 0, have_out = 0;
  int err = ar_grid_create(comm, s.c.grid[0], s.c.grid[1], &grid);
  if (!err) err = ar_cli_check_memory(comm, &s.c, s.mem_per_rank);
  if (!err) err = ar_cli_load_problem(comm, &s.c, &prob);
  if (ar_fault("signal-startup")) raise(SIGUSR1); /* test hook (fault.h): a signal while the job starts */
  if (!err) {
    ar_problem_sizes(prob, &n, &d, &m);
    X = calloc(d * d, sizeof(double)), Y = calloc(d * m, sizeof(double));
    err = ar_error_agree(comm, X && Y ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory"));
  }
  if (!err && s.x0) err = ar_cli_load_matrix(comm, "--x0", s.x0, d, d, X);
  if (!err && s.y0) err = ar_cli_load_matrix(comm, "--y0", s.y0, d, m, Y);
  double t_load = ar_wtime() - t0;
  ar_eval_options eo;
  ar_eval_options_default(&eo);
  eo.tile = s.c.tile, eo.tile_mem_mb = s.c.tile_mem, eo.lambda_x = s.c.lambda_x, eo.lambda_y = s.c.lambda_y;
  if (!err) err = ar_eval_create(prob, &eo, &ev);
  if (!err && s.out) err = ar_out_begin(comm, "--out", s.out, &out), have_out = !err;
  if (!err && s.restart) err = read_restart(comm, &s, prob, &ck);
  if (!err && !s.y0 && !s.restart) err = ar_solve_least_squares_y(ev, X, Y);
  /* tables, work arrays, the output directory, a --restart file, the least-squares Y0 */
  double t_setup = ar_wtime() - t0 - t_load;
  if (!err) {
    if (rank == 0 && !s.c.quiet) {
      int pr, pc;
      ar_grid_shape(grid, &pr, &pc);
      printf("attnreg %s solve: n=%lld d=%d m=%d D=%d ranks=%d grid=%dx%d tile=%lld\n", ATTNREG_VERSION, (long long)n,
             d, m, d * d + d * m, size, pr, pc, (long long)ar_eval_tile(ev));
      ar_options_print_config(stdout, "  ", opts, nopts);
    }
    ar_solver_options so;
    ar_solver_options_default(&so);
    so.method = (ar_method)s.method;
    so.hessian = hessian_kinds[s.hessian];
    so.chord_steps = (int)s.chord_steps; /* at most 1000, checked below */
    so.max_iter = s.max_iter, so.time_limit = s.time_limit;
    so.gatol = s.gatol, so.grtol = s.grtol, so.gttol = s.gttol, so.ftol = s.ftol, so.steptol = s.steptol;
    so.mu0 = s.mu0, so.nb = (int)s.c.nb;
    so.monitor = monitor, so.monitor_ctx = &s.c.quiet;
    so.interrupt = &g_signal;
    cctx.prob = prob;
    so.checkpoint = write_checkpoint, so.checkpoint_ctx = &cctx, so.checkpoint_every = (int)s.checkpoint_every;
    so.resume = s.restart ? &ck.st : NULL;
    if (s.restart && rank == 0 && !s.c.quiet) printf("restarting from %s at iteration %d\n", s.restart, ck.st.iter);
    err = ar_solve(prob, ev, grid, &so, X, Y, &r);
  }
  if (!err && r.reason == AR_DIVERGED_SIGNAL) {
    int sig = g_signal;
    MPI_Allreduce(MPI_IN_PLACE, &sig, 1, MPI_INT, MPI_MAX, comm);
    err = s.checkpoint ? AR_ERROR(AR_ERR_INTERRUPTED,
                                  "stopped by signal %d after iteration %d; checkpoint written to %s (continue with "
                                  "--restart %s)", sig, r.iterations, s.checkpoint, s.checkpoint)
                       : AR_ERROR(AR_ERR_INTERRUPTED,
                                  "stopped by signal %d after iteration %d; no --checkpoint given, progress not saved",
                                  sig, r.iterations);
  }
  if (!err && r.reason == AR_DIVERGED_NAN) err = AR_ERROR(AR_ERR_NUMERIC, "the loss or gradient is not finite at the start point");
  if (!err && rank == 0 && !s.c.quiet)
    printf("%s due to %s after %d iterations: loss %.10e rel_loss %.3e |grad| %.3e (%.2f s)\n",
           ar_reason_converged(r.reason) ? "converged" : "stopped", ar_reason_name(r.reason), r.iterations, r.loss,
           r.rel_loss, r.grad_norm, r.t_total);
  if (!err && rank == 0 && !s.c.quiet && ar_reason_converged(r.reason) && r.rel_loss > 1e-6)
    printf("note: a stationary point with relative loss %.3e: unless B is that noisy, it may be a poor local "
           "minimum of this non-convex problem, and a start nearer the answer (--x0, --y0) may reach a lower loss\n",
           r.rel_loss);
  if (!err && have_out) {
    char path[4400];
    int lerr = AR_OK;
    if (rank == 0) lerr = ar_npy_write(ar_out_path(&out, "X.npy", path, sizeof path), d, d, X);
    if (rank == 0 && !lerr) lerr = ar_npy_write(ar_out_path(&out, "Y.npy", path, sizeof path), d, m, Y);
    ar_out_path(&out, "X.npy", path, sizeof path), ar_out_path(&out, "Y.npy", path, sizeof path);
    err = ar_error_agree(comm, lerr);
    ar_out_path(&out, "history.csv", path, sizeof path), ar_out_path(&out, "summary.json", path, sizeof path);
    if (!err) err = write_summary(comm, &out, prob, grid, r.nb, ar_eval_tile(ev), &r, t_load, t_setup, opts, nopts);
    if (!err) err = ar_out_commit(&out);
  }
  if (err && have_out) ar_out_abort(&out);
  free(r.history);
  ar_checkpoint_free(&ck);
  free(X), free(Y);
  ar_eval_destroy(&ev);
  ar_grid_destroy(&grid);
  ar_problem_destroy(&prob);
  return err;
}
