/* Checkpoint files of attnreg solve: a single solve's state, or a multi-start ensemble's finished
 * rounds, each with the identity of the problem and of the options that change the iterates,
 * and a checksum.  One module for both: the format is written and parsed field by field from
 * the lists below (and the solver's AR_STATE_FIELDS, AR_ITER_FIELDS in attnreg.h), rank 0
 * writes it atomically, every rank parses the same bytes.
 *
 * The identity lists have the columns X(type, name, label, namer, value):
 *   type   int, int64_t, uint64_t or double (in the file: i32, i64, u64, f64, little-endian)
 *   name   the member of the identity struct
 *   label  how messages name it ("--method", "n")
 *   namer  const char *(*)(int) for an enum's names in messages, or NULL (the number)
 *   value  its value for the running job J (a solve_job *, solve_job.h); only solve_job.c expands
 *          this column, so this header does not depend on the driver's types
 * Adding an identity field is one line here: the struct, the file format, the comparison on
 * --restart and its message all follow, and files written before are refused with a message
 * (the file carries a checksum of every list's types and names, its layout). */
#ifndef AR_CHECKPOINT_H
#define AR_CHECKPOINT_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "attnreg.h"

#define AR_CKPT_VERSION 4

/* The problem: a restart against other data is refused (AR_ERR_DATA).  Fields named by
 * ar_ckpt_hidden are not shown in messages (checksums): their mismatch reads "other input data". */
#define AR_CKPT_DATA_FIELDS(X, J)                                          \
  X(int64_t, n, "n", NULL, (J)->n)                                         \
  X(int, d, "d", NULL, (J)->d)                                             \
  X(int, m, "m", NULL, (J)->m)                                             \
  X(uint64_t, data_hash, "data checksum", ar_ckpt_hidden, ar_problem_hash((J)->prob))   \
  X(uint64_t, mask_hash, "mask (--segments, --causal) checksum", ar_ckpt_hidden, ar_problem_mask_hash((J)->prob))

/* The options that change the iterates: a restart with others is refused (AR_ERR_USAGE). */
#define AR_CKPT_OPTION_FIELDS(X, J)                                                            \
  X(int, method, "--method", ar_method_name, (J)->so.method)                                   \
  X(int, hessian, "--hessian", ar_hessian_name, (J)->so.hessian)                               \
  X(int, chord_steps, "--chord-steps", NULL, (J)->so.chord_steps)                              \
  X(double, hessian_sample, "--hessian-sample", NULL, (J)->so.hessian_sample)                  \
  X(int, linear_solver, "--linear-solver", ar_linear_solver_name, (J)->so.linear_solver)       \
  X(int, whiten, "--whiten", ar_ckpt_on_off, (J)->white != NULL)                               \
  X(int, shift, "--shift", ar_shift_name, (J)->so.shift)                                       \
  X(double, lambda_x, "--lambda-x", NULL, (J)->cfg->c.eval.lambda_x)                           \
  X(double, lambda_y, "--lambda-y", NULL, (J)->cfg->c.eval.lambda_y)

/* Multi-start: the options that decide which starts run and how (also AR_ERR_USAGE). */
#define AR_CKPT_ENSEMBLE_FIELDS(X, J)                                                          \
  X(int, starts, "--starts", NULL, AR_STARTS_K((J)->cfg))  /* auto: its --max-starts */     \
  X(int, round, "round size", ar_ckpt_hidden, AR_MULTISTART_ROUND)                                       \
  X(int, strategy, "--strategy", ar_strategy_name, (J)->cfg->strategy)                         \
  X(int, no_race, "--no-race", ar_ckpt_on_off, (J)->cfg->no_race)                              \
  X(int64_t, start_seed, "--start-seed", NULL, (J)->cfg->start_seed)                           \
  X(double, start_scale, "--start-scale", NULL, (J)->cfg->start_scale)

/* One start's outcome in a multi-start run (one row of starts.csv): all doubles, so that a
 * round's rows are one allreduce; in the checkpoint, f64 each in this order. */
#define AR_START_FIELDS(X)                                                                      \
  X(double, done) X(double, group) X(double, strategy) X(double, scale) X(double, iterations)  \
  X(double, loss) X(double, rel_loss) X(double, grad_norm) X(double, reason) X(double, seconds) \
  X(double, stopped_early) X(double, hessvecs)

#define AR_CKPT_DECL(type, name, ...) type name;
#define AR_CKPT_DECL2(type, name) type name;

typedef struct {
  AR_CKPT_DATA_FIELDS(AR_CKPT_DECL, _)
  AR_CKPT_OPTION_FIELDS(AR_CKPT_DECL, _)
} ar_ckpt_identity;

typedef struct {
  AR_CKPT_ENSEMBLE_FIELDS(AR_CKPT_DECL, _)
} ar_ckpt_ensemble_identity;

typedef struct {
  AR_START_FIELDS(AR_CKPT_DECL2)
} ar_start_row;
#define AR_START_NFIELDS ((int)(sizeof(ar_start_row) / sizeof(double)))

/* The finished rounds of a multi-start run. */
typedef struct {
  ar_ckpt_ensemble_identity id;
  int rounds_done;           /* rounds finished: rows of later rounds are all zero */
  int best_k;                /* the best start so far, -1: none */
  ar_start_row *rows;        /* id.starts rows */
  double *z;                 /* D: the best point in the user's variables (zeros without one) */
  ar_iter_info *history;     /* the best start's history, nhist rows (0 without a best) */
  int nhist;
} ar_ckpt_ensemble;

enum { AR_CKPT_SOLVE = 1, AR_CKPT_ENSEMBLE = 2 };

typedef struct {
  int kind;                  /* AR_CKPT_SOLVE or AR_CKPT_ENSEMBLE */
  ar_ckpt_identity id;
  ar_solver_state st;        /* AR_CKPT_SOLVE: st.z, st.zf, st.history owned */
  ar_ckpt_ensemble ens;      /* AR_CKPT_ENSEMBLE: rows, z, history owned */
} ar_checkpoint;

/* Not collective: the file's bytes (*buf malloc'd, the caller frees). */
int ar_checkpoint_serialize(const ar_checkpoint *c, unsigned char **buf, size_t *len);
/* Not collective: parse a checkpoint held in memory (no I/O; fuzzed).  On success c owns what
 * it points to (ar_checkpoint_free); on failure nothing is left allocated. */
int ar_checkpoint_parse(const unsigned char *buf, size_t len, const char *name, ar_checkpoint *c);
/* Collective: rank 0 writes c to path atomically (temporary file, fsync, rename); the outcome
 * is agreed.  c need only be valid on rank 0. */
int ar_checkpoint_save(MPI_Comm comm, const char *path, const ar_checkpoint *c);
/* Collective: rank 0 reads path, every rank parses the same bytes; the outcome is agreed.
 * Messages name it "OPTION PATH". */
int ar_checkpoint_load(MPI_Comm comm, const char *option, const char *path, ar_checkpoint *c);
void ar_checkpoint_free(ar_checkpoint *c); /* not collective; a zeroed c is fine */

/* Namers for the identity lists: "on" / "off" for 0/1 fields; a field not shown in messages. */
const char *ar_ckpt_on_off(int v);
const char *ar_ckpt_hidden(int v);

#endif
