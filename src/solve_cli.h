/* What attnreg solve (cmd_solve.c) shares with its multi-start driver (cmd_multistart.c): the
 * command line's configuration, one run's state, and the pieces both use. */
#ifndef AR_SOLVE_CLI_H
#define AR_SOLVE_CLI_H

#include <signal.h>

#include "checkpoint.h"
#include "cli.h"
#include "output.h"

/* The command line: the data/layout options, the solver's options (defaults from
 * ar_solver_options_default), and what only the command has. */
typedef struct {
  ar_common_cfg c;
  ar_solver_options so;
  const char *x0, *y0, *out, *checkpoint, *restart;
  double mem_per_rank;
  int whiten; /* WHITEN_AUTO, _ON, _OFF */
  /* multi-start (cmd_multistart.c) */
  int starts, ranks_per_start, strategy, no_race;
  int64_t start_seed;
  double start_scale;
} solve_cfg;

/* --whiten: on when the ridge weights are 0 (auto), or as asked. */
enum { WHITEN_AUTO, WHITEN_ON, WHITEN_OFF };
/* --strategy of multi-start */
enum { AR_STRATEGY_STARTS, AR_STRATEGY_NORM, AR_STRATEGY_HOP, AR_STRATEGY_PORTFOLIO };


/* One run: what setup makes and the end releases. */
typedef struct {
  ar_problem prob;          /* the problem solved: the whitened one when whitened */
  ar_whitening white;       /* NULL: not whitened */
  ar_grid grid;
  ar_eval ev;
  double *X, *Y;
  ar_out out;
  int have_out;
  ar_checkpoint ck;
  ar_solve_result r;
  int64_t n;
  int d, m;
  double t_load, t_setup;
  double grad_norm_user;    /* whitened: |grad| in the user's variables at the end */
} solve_run;

/* Collective over comm: the problem (whitened unless --whiten off), the evaluator, the start
 * point (Y by least squares unless --y0), the output directory and a --restart file, each only
 * if the configuration names it. */
int ar_solve_setup(MPI_Comm comm, solve_cfg *s, solve_run *u);
/* Not collective: release what ar_solve_setup and a solve made. */
void ar_solve_release(solve_run *u);
/* The flag solve's signal handlers set (SIGTERM, SIGUSR1, SIGINT). */
volatile sig_atomic_t *ar_solve_signal_flag(void);
/* Rank 0: history.csv of a solve into out. */
int ar_solve_write_history(ar_out *out, const ar_iter_info *history, int iterations);
/* Collective: attnreg solve --starts K (cmd_multistart.c). */
int ar_cmd_multistart(MPI_Comm comm, solve_cfg *s, const ar_option *opts, int nopts);

#endif
