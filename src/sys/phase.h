/* Timed phases: one registry for every report (summary.json of a solve or a multi-start,
 * eval.json), in the spirit of PETSc's PetscLogEventRegister, as a list: each phase has an id,
 * the name its reports use and what it covers.  A rank accumulates its local seconds per phase
 * (ar_phase_times); ar_phases_reduce gives each phase's max, min and average over the ranks,
 * and so the load imbalance max/min.  Adding a phase is one line here (and the code that
 * times it). */
#ifndef AR_PHASE_H
#define AR_PHASE_H

#include <mpi.h>

#include "attnreg.h"

#define AR_PHASE_LIST(X)                                                                            \
  X(IO, "io", "reading the inputs and the start point")                                              \
  X(SETUP, "setup", "tables, work arrays, the output directory, a restart file, the least-squares Y0") \
  X(LOSS_GRADIENT, "loss_gradient", "loss and gradient passes (tiles against key chunks)")          \
  X(HESSIAN, "hessian", "the Hessian's compact parts")                                              \
  X(REDUCTION, "reduction", "reductions of the Hessian into the block-cyclic layout")              \
  X(RING, "ring", "waiting for key/value blocks of the ring")                                       \
  X(FACTORIZATION, "factorization", "Cholesky (pdpotrf), or the matrix-free preconditioner")         \
  X(SOLVE, "solve", "triangular solves (pdpotrs), or the Hessian-vector products")                  \
  X(WRITE, "write", "writing the result arrays")                                                    \
  X(TOTAL, "total", "the solves (eval: the evaluation); I/O and setup not included")

typedef enum {
#define AR_PHASE_ENUM(id, name, what) AR_PHASE_##id,
  AR_PHASE_LIST(AR_PHASE_ENUM)
#undef AR_PHASE_ENUM
  AR_PHASE_COUNT
} ar_phase;

/* This rank's seconds in each phase. */
typedef struct {
  double t[AR_PHASE_COUNT];
} ar_phase_times;

/* A phase over the ranks. */
typedef struct {
  double max, min, avg;
} ar_phase_stat;

const char *ar_phase_name(ar_phase p); /* not collective */
/* Not collective: add a solve's (an evaluation's) local times to their phases. */
void ar_phases_add_solve(ar_phase_times *p, const ar_solve_result *r);
void ar_phases_add_eval(ar_phase_times *p, const ar_eval_out *o);
/* Collective: every phase's max, min and average over comm (two allreduces). */
int ar_phases_reduce(MPI_Comm comm, const ar_phase_times *p, ar_phase_stat s[AR_PHASE_COUNT]);

#endif
