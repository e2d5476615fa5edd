/* attnreg solve: its options, and one solve with its progress lines, checkpoints and final
 * line; the setup, the solve call and the result files are the driver's (solve_job.c), and
 * --starts K goes to multi-start (cmd_multistart.c), which uses the same driver. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "commands.h"
#include "error.h"
#include "multistart.h"
#include "solve_job.h"

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
       "Newton step: dense Cholesky of the assembled Hessian, matrix-free conjugate gradients, the row-space "
       "Gauss-Newton step through J J^T (n m x n m), or auto: rows when n m < D, else the cheaper by attnreg plan's "
       "model that fits the memory budget", NULL, 0, 0, "auto|cholesky|cg|rows", ar_linear_solver_name},
      {"cg-max-iter", AR_OPT_INT, &so->cg_max_iter, "matrix-free step: CG iterations per Newton step at most", NULL, 1},
      {"shift", AR_OPT_CHOICE, &so->shift,
       "dense step: Levenberg-Marquardt shift mu s I, mu s D with D = |diag H| / s (scale-invariant), or mu s M with M "
       "the inputs' Gram metric (whitening's shift, unwhitened)", NULL, 0, 0, "identity|diagonal|gram", ar_shift_name},
      {"whiten", AR_OPT_CHOICE, &s->whiten,
       "solve in whitened variables (A = QR: an exact change of variables, results in the user's); auto: on "
       "without ridge weights", NULL, 0, 0, "auto|on|off", ar_whiten_name},
      {"x0", AR_OPT_STRING, &s->x0, "starting X (d x d npy)", "zeros"},
      {"y0", AR_OPT_STRING, &s->y0, "starting Y (d x m npy)", "least squares for X0"},
      {"max-iter", AR_OPT_INT64, &so->max_iter, "iteration limit", NULL, 1},
      {"time-limit", AR_OPT_DOUBLE, &so->time_limit, "wall-clock limit in seconds (0: none)", "0"},
      {"gatol", AR_OPT_DOUBLE, &so->gatol, "stop when |grad| <= gatol", "0"},
      {"grtol", AR_OPT_DOUBLE, &so->grtol, "stop when |grad| <= grtol * L", "0"},
      {"gttol", AR_OPT_DOUBLE, &so->gttol, "stop when |grad| <= gttol * |grad_0|", "0"},
      {"ftol", AR_OPT_DOUBLE, &so->ftol, "stop when an accepted step changes L by <= ftol * L", "0"},
      {"loss-target", AR_OPT_DOUBLE, &so->loss_target,
       "stop (CONVERGED_LOSS_TARGET) when the relative loss L / |B|^2 (history.csv's rel_loss) is <= this (0: never)",
       "0"},
      {"steptol", AR_OPT_DOUBLE, &so->steptol, "stop when |step| <= steptol * (|z| + steptol)", "0"},
      {"hessian-sample", AR_OPT_DOUBLE, &so->hessian_sample,
       "dense step: each Hessian from this fraction of the query rows (a uniform sample, rescaled; the gradient stays "
       "exact), doubled after a rejected step or one that cut |grad| less than fourfold", "1"},
      {"floor-iters", AR_OPT_INT, &so->floor_iters,
       "stop (CONVERGED_FLOOR) after K steps in a row whose predicted and actual change of L are below its rounding "
       "error (0: never)", "2"},
      {"mu0", AR_OPT_DOUBLE, &so->mu0, "initial Levenberg-Marquardt shift (relative to mean |diag H|)", "0"},
      {"out", AR_OPT_STRING, &s->out, "output directory for X.npy Y.npy history.csv summary.json"},
      {"checkpoint", AR_OPT_STRING, &s->checkpoint,
       "checkpoint file, written every --checkpoint-every iterations and on SIGTERM/SIGUSR1"},
      {"checkpoint-every", AR_OPT_INT, &so->checkpoint_every, "checkpoint period in iterations (0: only on a signal)",
       "0"},
      {"restart", AR_OPT_STRING, &s->restart, "continue from this checkpoint (same data and method)"},
      {"starts", AR_OPT_INT, &s->starts,
       "multi-start: solve from K starts, keep the best (start 0: --x0); auto: rounds of 8 until an exact fit or the "
       "--loss-target, or "
       "until 3 starts reached the best minimum and the 16 since it was first found did no better, or --max-starts",
       NULL, 1, 0, "auto"},
      {"max-starts", AR_OPT_INT, &s->max_starts, "multi-start: --starts auto runs at most this many starts", NULL, 1},
      {"strategy", AR_OPT_CHOICE, &s->strategy,
       "multi-start: random starts, fixed-norm search then Newton, basin hopping from the best, or a mix", NULL, 0, 0,
       "starts|norm|hop|portfolio", ar_strategy_name},
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

void ar_cmd_solve_signals(void) { ar_job_signals_install(); }

/* The Hessian behind a history row by name ("?" for a corrupt value). */
static const char *kind_name(int kind)
{
  const char *s = ar_hessian_name(kind);
  return s ? s : "?";
}

/* Collective: the solver's checkpoint hook. */
static int write_checkpoint(const ar_solver_state *st, void *ctx)
{
  solve_job *j = ctx;
  if (!j->cfg->checkpoint) return AR_OK;
  ar_checkpoint c = {.kind = AR_CKPT_SOLVE, .st = *st};
  return ar_job_checkpoint(j, &c);
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

/* Collective: the solve itself, with monitor, signals and checkpoints; then the result files. */
static int run(solve_job *j, ar_solve_result *r)
{
  const solve_cfg *s = j->cfg;
  MPI_Comm comm = j->world;
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  if (rank == 0 && !s->c.quiet) {
    int pr, pc;
    ar_grid_shape(j->grid, &pr, &pc);
    printf("attnreg %s solve: n=%lld d=%d m=%d D=%d ranks=%d grid=%dx%d tile=%lld\n", ATTNREG_VERSION,
           (long long)j->n, j->d, j->m, j->D, size, pr, pc, (long long)ar_eval_tile(j->ev));
    ar_options_print_config(stdout, "  ", j->opts, j->nopts);
    ar_blas_print(stdout, "  ");
    if (j->ls_reason[0]) printf("  linear solver: %s\n", j->ls_reason);
    if (s->restart) printf("restarting from %s at iteration %d\n", s->restart, j->restart.st.iter);
  }
  if (rank == 0 && !s->c.quiet) g_progress = ar_progress_create(stderr, 10.0, 5.0);
  ar_progress_start(g_progress, "start");
  ar_eval_set_progress(j->ev, g_progress);
  ar_solver_options so = ar_job_solver_options(j);
  so.monitor = monitor, so.monitor_ctx = &j->cfg->c.quiet;
  so.checkpoint = write_checkpoint, so.checkpoint_ctx = j;
  so.resume = j->have_restart ? &j->restart.st : NULL;
  so.progress = g_progress;
  const int err = ar_job_solve(j, &so, j->X, j->Y, r);
  ar_eval_set_progress(j->ev, NULL);
  ar_progress_destroy(&g_progress);
  AR_CALL(err);
  double gn_user = 0;
  if (j->white && r->grad) AR_CALL(ar_job_grad_norm_user(j, j->X, j->Y, r->grad, &gn_user));
  if (r->reason == AR_DIVERGED_SIGNAL) {
    const int sig = ar_job_signal_received(comm);
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
  AR_CALL(ar_job_user_point(j, j->X, j->Y, j->X, j->Y)); /* the results are in the user's variables */
  ar_report R;
  ar_job_report(j, &R);
  R.res = r, R.nb = r->nb, R.loss = r->loss, R.grad_norm = r->grad_norm, R.grad_norm_user = gn_user;
  return ar_job_write_results(j, j->X, j->Y, r->history, r->iterations + 1, &R);
}

int ar_cmd_solve(MPI_Comm comm, int argc, char **argv)
{
  solve_cfg s = {.starts = 1, .max_starts = 128, .start_scale = 1.0, .start_seed = 1, .ranks_per_start = 1};
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
  if (s.starts != 1) return ar_multistart(comm, &s, opts, nopts); /* K > 1 or auto (0) */
  solve_job j;
  ar_solve_result r = {0};
  static const char *const files[] = {"X.npy", "Y.npy", "history.csv", "summary.json"};
  int err = ar_job_setup(comm, comm, &s, opts, nopts, files, 4, AR_CKPT_SOLVE, &j);
  if (!err) err = ar_error_agree(comm, run(&j, &r));
  free(r.history), free(r.grad);
  ar_job_release(&j);
  return err;
}
