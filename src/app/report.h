/* The JSON reports: eval.json, and summary.json of a solve and of a multi-start run, written by
 * one writer from one list of fields (AR_REPORT_FIELDS), so the three cannot drift.
 *
 * A report (ar_report) points at the sources of its values: the problem, the evaluator and the
 * grid, the reported point, the solve behind it (NULL for eval), the multi-start outcome (NULL
 * for one solve), the options; ar_report_write reduces what is per rank (flops, peak RSS,
 * phase times) and writes every field whose condition holds.  Adding a field whose value the
 * sources give is one line in the list. */
#ifndef AR_REPORT_H
#define AR_REPORT_H

#include <mpi.h>
#include <stdio.h>

#include "attnreg.h"
#include "options.h"
#include "output.h"
#include "phase.h"

/* What a multi-start run adds (cmd_multistart.c fills it). */
typedef struct {
  int starts, ranks_per_start, groups, racing, best_start;
  int max_starts;            /* --starts auto: its cap (else 0) */
  const char *auto_stop;     /* --starts auto: why it stopped (else NULL) */
  const char *strategy;
  int iterations_total, stopped_early;
  int ndone;                 /* starts finished */
  double q[5];               /* their relative losses: min, q10, median, q90, max */
} ar_report_multistart;

typedef struct {
  /* set by ar_report_begin */
  MPI_Comm comm;             /* every rank of the job */
  int64_t n, tile, chunk;
  int d, m, ranks, pr, pc;
  double bnorm2;
  ar_layout_info lay;        /* the mask and the row layout */
  ar_eval_work work;         /* the evaluator's masked work (valid if has_work) */
  int has_work;
  ar_eval ev;                /* its exponentials are counted (NULL: none) */
  /* set by the caller */
  int nb;
  double loss, grad_norm;    /* at the reported point (grad_norm: the solver's variables) */
  double flops;              /* this rank's */
  double wall;               /* seconds since the command started */
  ar_phase_times times;      /* this rank's */
  const ar_solve_result *res; /* the solve reported (multi-start: the best start's); NULL: eval */
  int whitened;
  double grad_norm_user;     /* whitened: |grad| in the user's variables */
  const ar_report_multistart *ms; /* NULL: not a multi-start run */
  const ar_option *opts;
  int nopts;
  /* set by ar_report_write (reduced over comm) */
  double flops_all, exps_all, rss_max, rss_avg;
  ar_phase_stat ph[AR_PHASE_COUNT];
} ar_report;

/* The fields, in the order written: X(kind, name, value, when).  kind: INT, REAL (%.17g),
 * SECONDS (%.6f), RATE (%.6g), STRING, BOOL, or OBJECT (value: a function writing the value);
 * R: the report. */
#define AR_REPORT_FIELDS(X, R)                                                                       \
  X(INT, n, (R)->n, 1)                                                                               \
  X(INT, d, (R)->d, 1)                                                                               \
  X(INT, m, (R)->m, 1)                                                                               \
  X(INT, ranks, (R)->ranks, 1)                                                                       \
  X(OBJECT, grid, ar_report_grid, 1)                                                                 \
  X(INT, nb, (R)->nb, 1)                                                                             \
  X(INT, tile, (R)->tile, 1)                                                                         \
  X(INT, chunk, (R)->chunk, 1)                                                                       \
  X(OBJECT, blas, ar_report_blas, 1)                                                                 \
  X(OBJECT, mpi, ar_report_mpi, 1)                                                                   \
  X(INT, segments, (R)->lay.nseg, 1)                                                                 \
  X(BOOL, causal, (R)->lay.causal, 1)                                                                \
  X(OBJECT, layout, ar_report_layout, 1)                                                             \
  X(OBJECT, work, ar_report_work, (R)->has_work)                                                     \
  X(INT, starts, (R)->ms->starts, (R)->ms)                                                           \
  X(INT, max_starts, (R)->ms->max_starts, (R)->ms && (R)->ms->auto_stop)                             \
  X(STRING, starts_auto_stop, (R)->ms->auto_stop, (R)->ms && (R)->ms->auto_stop)                      \
  X(INT, ranks_per_start, (R)->ms->ranks_per_start, (R)->ms)                                         \
  X(INT, groups, (R)->ms->groups, (R)->ms)                                                           \
  X(STRING, strategy, (R)->ms->strategy, (R)->ms)                                                    \
  X(BOOL, racing, (R)->ms->racing, (R)->ms)                                                          \
  X(INT, best_start, (R)->ms->best_start, (R)->ms)                                                   \
  X(INT, iterations, (R)->res->iterations, (R)->res)                                                 \
  X(REAL, loss, (R)->loss, 1)                                                                        \
  X(REAL, rel_loss, (R)->loss / (R)->bnorm2, 1)                                                      \
  X(REAL, grad_norm, (R)->grad_norm, 1)                                                              \
  X(STRING, reason, ar_reason_name((R)->res->reason), (R)->res)                                      \
  X(BOOL, converged, ar_reason_converged((R)->res->reason), (R)->res)                                \
  X(SECONDS, wall_seconds, (R)->wall, 1)                                                             \
  X(RATE, flops, (R)->flops_all, 1)                                                                  \
  X(RATE, gflops, ar_report_gflops(R), 1)                                                            \
  X(RATE, exponentials, (R)->exps_all, (R)->ev)                                                      \
  X(STRING, linear_solver, ar_linear_solver_name((R)->res->linear_solver), (R)->res)                 \
  X(INT, cg_iterations, ar_report_cg_iterations((R)->res), (R)->res)                                 \
  X(INT, hessian_vector_products, (R)->res->hessvecs, (R)->res)                                      \
  X(BOOL, whitened, (R)->whitened, (R)->res)                                                         \
  X(REAL, grad_norm_user, (R)->grad_norm_user, (R)->res && (R)->whitened)                            \
  X(INT, iterations_total, (R)->ms->iterations_total, (R)->ms)                                       \
  X(INT, stopped_early, (R)->ms->stopped_early, (R)->ms)                                             \
  X(OBJECT, rel_loss_quantiles, ar_report_quantiles, (R)->ms && (R)->ms->ndone > 0)                  \
  X(OBJECT, peak_rss_mb, ar_report_rss, 1)                                                           \
  X(OBJECT, phases, ar_report_phases, 1)                                                             \
  X(OBJECT, options, ar_report_options, 1)

/* Collective over comm: the sizes and layout (ev, grid: as used; grid may be NULL: 1x1). */
void ar_report_begin(ar_report *R, MPI_Comm comm, ar_problem prob, ar_eval ev, ar_grid grid);
/* Collective: reduce, then rank 0 writes file into out; the outcome is agreed. */
int ar_report_write(ar_report *R, ar_out *out, const char *file);

/* The values the list computes (report.c). */
double ar_report_gflops(const ar_report *R);
int ar_report_cg_iterations(const ar_solve_result *r);
void ar_report_grid(FILE *f, const ar_report *R);
void ar_report_blas(FILE *f, const ar_report *R);
void ar_report_mpi(FILE *f, const ar_report *R);
void ar_report_layout(FILE *f, const ar_report *R);
void ar_report_work(FILE *f, const ar_report *R);
void ar_report_quantiles(FILE *f, const ar_report *R);
void ar_report_rss(FILE *f, const ar_report *R);
void ar_report_phases(FILE *f, const ar_report *R);
void ar_report_options(FILE *f, const ar_report *R);

#endif
