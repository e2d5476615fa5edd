/* Checkpoint files: the solver state plus the identity of the problem and of the options
 * that change the iterates, with a checksum.  Written atomically by rank 0. */
#ifndef AR_CHECKPOINT_H
#define AR_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "attnreg.h"

typedef struct {
  int64_t n;
  int d, m;
  uint64_t data_hash;        /* ar_problem_hash of the inputs */
  int method, hessian;       /* ar_method, ar_hessian_kind (AUTO included) */
  int chord_steps;           /* --chord-steps */
  int linear_solver;         /* ar_linear_solver in use (never AUTO) */
  int whiten;                /* 1: the state is in whitened variables (X~, Y~) */
  int shift;                 /* ar_shift_kind of the dense step */
  double lambda_x, lambda_y;
  ar_solver_state st;        /* st.z, st.zf and st.history are owned (ar_checkpoint_free) */
} ar_checkpoint;

/* Not collective: write c to path atomically (temporary file, fsync, rename). */
int ar_checkpoint_write(const char *path, const ar_checkpoint *c);
/* Not collective: parse a checkpoint held in memory (no I/O; fuzzed).  On success c owns
 * newly allocated st.z, st.zf and st.history. */
int ar_checkpoint_parse(const unsigned char *buf, size_t len, const char *name, ar_checkpoint *c);
/* Not collective: read and parse path. */
int ar_checkpoint_read(const char *path, ar_checkpoint *c);
void ar_checkpoint_free(ar_checkpoint *c);

#endif
