/* Atomic output directories: every result file is written into a staging directory and the
 * whole set appears in OUT at once (ar_out_commit), so a failed or interrupted run leaves an
 * existing OUT exactly as it was, and a reader never sees a mix of two runs' files.  Other
 * entries of OUT (a user's files, a checkpoint, a job log) are kept.  How, and the one case that
 * falls back to a weaker commit, is described in output.c. */
#ifndef AR_OUTPUT_H
#define AR_OUTPUT_H

#include <mpi.h>
#include <stdio.h>

#define AR_OUT_MAX_FILES 16

typedef struct {
  MPI_Comm comm;
  int rank;
  int inplace;                        /* rank 0: commit file by file into OUT (output.c) */
  int ncreated;                       /* rank 0: parent directories of OUT that ar_out_begin made */
  char dir[4096];                     /* OUT as given (for messages) */
  char target[4096];                  /* rank 0: OUT resolved (absolute, no symbolic links) */
  char stage[4096];                   /* the staging directory ("" once committed or aborted) */
  int nfiles;
  char names[AR_OUT_MAX_FILES][256];
} ar_out;

/* Collective: check OUT (a directory, or a path that can be created) and make the staging
 * directory; option names the command-line option in messages. */
int ar_out_begin(MPI_Comm comm, const char *option, const char *dir, ar_out *out);
/* Not collective (call it on every rank with the same names): declare result file `name`, one
 * of the files the commit makes appear in OUT. */
int ar_out_add(ar_out *out, const char *name);
/* Not collective: where to write result file `name` (in the staging directory). */
const char *ar_out_path(ar_out *out, const char *name, char *buf, size_t cap);
/* Rank 0 only: open the staging file of `name` for writing text (JSON, CSV). */
FILE *ar_out_fopen(ar_out *out, const char *name);
/* Collective: make every result file appear in OUT at once. */
int ar_out_commit(ar_out *out);
/* Collective-safe (rank 0 acts): remove the staging directory (and the parents of OUT that
 * ar_out_begin made); OUT itself was never touched. */
void ar_out_abort(ar_out *out);

/* Not collective: write a JSON string value (escaped). */
void ar_json_string(FILE *f, const char *s);

#endif
