/* The solve driver: what a single solve (cmd_solve.c) and every start of a multi-start run
 * (cmd_multistart.c) share, in one place: the setup (the options resolved once, the memory
 * budget's choice of the Newton step included), the solve call, signals, checkpoints and their
 * identity, the result files (X.npy, Y.npy, history.csv, summary.json) and the release.
 * cmd_solve.c and cmd_multistart.c call this file; it calls neither. */
#ifndef AR_SOLVE_JOB_H
#define AR_SOLVE_JOB_H

#include <signal.h>

#include "checkpoint.h"
#include "output.h"
#include "phase.h"
#include "report.h"
#include "solve_cli.h"

/* Starts per multi-start round (racing sees only earlier rounds; the checkpoint records it). */
#define AR_MULTISTART_ROUND 8

/* One job: what setup makes and ar_job_release frees. */
typedef struct {
  solve_cfg *cfg;            /* the command line (setup resolves --whiten and --linear-solver in it) */
  MPI_Comm world;            /* every rank: output directory, checkpoints, reports */
  MPI_Comm comm;             /* the ranks that solve together (a multi-start group, or world) */
  ar_solver_options so;      /* the solver's options, resolved once: linear_solver is never AUTO */
  char ls_reason[400];       /* why --linear-solver auto chose it (empty: not auto) */
  ar_problem prob;           /* the problem solved: the whitened one when whitened */
  ar_whitening white;        /* NULL: not whitened */
  ar_grid grid;
  ar_eval ev;
  int64_t n;
  int d, m, D;
  double *X, *Y;             /* the start point in the solver's variables (--x0, --y0, or zeros and Y0) */
  ar_out out;
  int have_out;
  ar_checkpoint restart;     /* --restart, read, and checked against this job */
  int have_restart;
  const ar_option *opts;     /* the command line, for the summary's options */
  int nopts;
  ar_phase_times times;      /* this rank's seconds per phase, over every solve of the job */
  double flops;              /* this rank's flops, over every solve */
  double t0;                 /* when setup began */
} solve_job;

/* Collective over world (comm: a split of world, or world itself): grid, memory check and the
 * choice of the Newton step (on comm's ranks, with the budget), the problem, the start point,
 * whitening, the evaluator, the output directory OUT with files (when --out), a --restart file
 * of kind ckpt_kind (AR_CKPT_SOLVE, AR_CKPT_ENSEMBLE) checked against the job, and Y0. */
int ar_job_setup(MPI_Comm world, MPI_Comm comm, solve_cfg *s, const ar_option *opts, int nopts,
                 const char *const *files, int nfiles, int ckpt_kind, solve_job *j);
/* Not collective: release the job; an unfinished OUT is abandoned (OUT as it was). */
void ar_job_release(solve_job *j);

/* Not collective: the job's resolved solver options with the block size and the signal flag;
 * the caller adds its hooks (monitor, stop, checkpoint, resume, progress). */
ar_solver_options ar_job_solver_options(const solve_job *j);
/* Collective over comm: ar_solve from (X, Y) in the solver's variables, with so from
 * ar_job_solver_options; its times and flops are added to the job's. */
int ar_job_solve(solve_job *j, const ar_solver_options *so, double *X, double *Y, ar_solve_result *r);
/* Not collective: (X, Y) of the solver's variables in the user's (in place allowed). */
int ar_job_user_point(const solve_job *j, const double *X, const double *Y, double *uX, double *uY);
/* Collective over comm: |grad| in the user's variables at the solver's (X, Y), from the
 * solver's gradient grad there (NULL: evaluated). */
int ar_job_grad_norm_user(solve_job *j, const double *X, const double *Y, const double *grad, double *gn);

/* Install the handlers of SIGTERM, SIGUSR1, SIGINT: they set the flag, the solver stops at the
 * next iteration boundary (before MPI_Init: no window in which a signal kills a rank). */
void ar_job_signals_install(void);
volatile sig_atomic_t *ar_job_signal_flag(void);
/* Collective over comm: the largest signal number any rank received (0: none). */
int ar_job_signal_received(MPI_Comm comm);

/* Not collective: the job's identity for checkpoints (checkpoint.h's lists). */
void ar_job_identity(const solve_job *j, ar_ckpt_identity *id);
void ar_job_ensemble_identity(const solve_job *j, ar_ckpt_ensemble_identity *id);
/* Collective over world: write c (its identity filled here) to --checkpoint. */
int ar_job_checkpoint(solve_job *j, ar_checkpoint *c);

/* Not collective: a report of the job (sizes, layout, times, flops, options) for
 * ar_report_write; the caller adds the point, the solve and, for multi-start, its outcome. */
void ar_job_report(solve_job *j, ar_report *R);
/* Collective over world: X.npy and Y.npy (the user's variables), history.csv (nhist rows),
 * summary.json from R, and the commit of OUT (a no-op without --out). */
int ar_job_write_results(solve_job *j, const double *uX, const double *uY, const ar_iter_info *hist, int nhist,
                         ar_report *R);

#endif
