/* .npy files (format versions 1.0, 2.0, 3.0) read and written with MPI-IO.
 *
 * Matrices are 2-D (a 1-D array of length n is read as n x 1), float64 or float32
 * (converted to double), little-endian, C or Fortran order.  In memory every matrix is
 * double, row-major.  Errors name the file and the problem, e.g.
 *   "data/A1.npy: dtype '<i8' is not supported (need float64 or float32)". */
#ifndef AR_NPY_H
#define AR_NPY_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
  int64_t rows, cols;      /* global shape (1-D arrays: cols = 1) */
  int ndim;                /* 1 or 2, as in the file */
  int fortran_order;       /* 1 if stored column-major */
  int elem_size;           /* 8 (float64, int64) or 4 (float32, int32) */
  int integer;             /* 1: int64/int32 (only ar_npy_read_int64 accepts them) */
  int64_t data_offset;     /* byte offset of the first element */
} ar_npy_header;

/* Parse a header held in memory (not collective, no I/O; fuzzed).  buf holds the first len
 * bytes of the file; name is used in messages.  Checks magic, version, header length,
 * the dict's keys, dtype, order and shape (non-negative, product fits in int64). */
int ar_npy_parse_header(const char *buf, size_t len, const char *name, ar_npy_header *h);

/* Collective: rank 0 opens path, parses the header and checks that the file holds all the
 * data the header promises (else "truncated"); the result (or the error) reaches every rank. */
int ar_npy_read_header(MPI_Comm comm, const char *path, ar_npy_header *h);

/* Collective: every rank reads global rows [r0, r1) (all columns) into out, row-major
 * (r1 - r0) x cols doubles.  Ranks may pass r0 == r1.  Fortran order is handled with a
 * subarray file view.  Also checks every value read is finite ("path: non-finite value
 * (nan) at row i, column j"); the check result is agreed over comm. */
int ar_npy_read_rows(MPI_Comm comm, const char *path, const ar_npy_header *h, int64_t r0, int64_t r1,
                     double *out);

/* Collective: the same for the rows of nr sorted ranges [rg[2i], rg[2i+1]) one after another
 * (one collective read through an indexed file view). */
int ar_npy_read_ranges(MPI_Comm comm, const char *path, const ar_npy_header *h, int nr, const int64_t *rg,
                       double *out);

/* Not collective: read a whole little-endian int64 or int32 file into a new int64 row-major
 * buffer (*a, caller frees); float files are refused ("need int64 or int32"). */
int ar_npy_read_int64(const char *path, ar_npy_header *h, int64_t **a);

/* Collective: write a rows x cols float64 C-order array whose global rows [r0, r1) this rank
 * holds in `local` (row-major).  Row blocks of the ranks must tile [0, rows).  Rank 0 writes
 * the header.  Writes `path` directly: atomic replacement is the caller's job (output.h). */
int ar_npy_write_rows(MPI_Comm comm, const char *path, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                      const double *local);

/* Not collective: write a whole rows x cols row-major array with stdio. */
int ar_npy_write(const char *path, int64_t rows, int64_t cols, const double *a);

/* Not collective: write a 1-D little-endian int64 array of n entries (segment offsets). */
int ar_npy_write_int64(const char *path, int64_t n, const int64_t *a);

/* Not collective: read a whole file (header + data) into a new row-major buffer (*a, caller
 * frees).  For small arrays (X, Y, checkpoints' companions, tests). */
int ar_npy_read(const char *path, ar_npy_header *h, double **a);

/* Build the npy v1.0 header (padded so that the data starts at a multiple of 64 bytes) for a
 * float64 array of the given shape and order.  Returns its length, writes at most cap bytes. */
size_t ar_npy_format_header(char *buf, size_t cap, int64_t rows, int64_t cols, int fortran_order);

#endif
