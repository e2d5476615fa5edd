/* Atomic output directories: every result file is written under a temporary name in OUT and
 * renamed into place only when all of them are complete (ar_out_commit).  A failed or
 * interrupted run leaves an existing OUT exactly as it was. */
#ifndef AR_OUTPUT_H
#define AR_OUTPUT_H

#include <mpi.h>
#include <stdio.h>

#define AR_OUT_MAX_FILES 16

typedef struct {
  MPI_Comm comm;
  int rank;
  int created;                        /* rank 0 created the directory (removed on abort) */
  char dir[4096];
  char tag[64];
  int nfiles;
  char names[AR_OUT_MAX_FILES][256];
} ar_out;

/* Collective: check (or create) the directory; option names the command-line option. */
int ar_out_begin(MPI_Comm comm, const char *option, const char *dir, ar_out *out);
/* Not collective (same result on every rank): temporary path for result file `name`. */
const char *ar_out_path(ar_out *out, const char *name, char *buf, size_t cap);
/* Rank 0 only: open the temporary file of `name` for writing text (JSON, CSV). */
FILE *ar_out_fopen(ar_out *out, const char *name);
/* Collective: rename every temporary file into place. */
int ar_out_commit(ar_out *out);
/* Collective-safe (rank 0 acts): remove the temporary files (and a directory we created). */
void ar_out_abort(ar_out *out);

/* Not collective: write a JSON string value (escaped). */
void ar_json_string(FILE *f, const char *s);

#endif
