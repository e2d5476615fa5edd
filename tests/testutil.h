/* Small helpers shared by the MPI test programs: checks that count failures, comparisons. */
#ifndef AR_TESTUTIL_H
#define AR_TESTUTIL_H

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int tu_failures;

#define TU_CHECK(cond, ...)                                        \
  do {                                                             \
    if (!(cond)) {                                                 \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);         \
      fprintf(stderr, __VA_ARGS__);                                \
      fprintf(stderr, "\n");                                       \
      tu_failures++;                                               \
    }                                                              \
  } while (0)

#define TU_OK(call)                                                                   \
  do {                                                                                \
    int tu_e_ = (call);                                                               \
    if (tu_e_) {                                                                      \
      fprintf(stderr, "FAIL %s:%d: %s -> %d: %s\n", __FILE__, __LINE__, #call, tu_e_, \
              ar_error_message());                                                    \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                   \
    }                                                                                 \
  } while (0)

/* max |a - b| / max(max |b|, tiny); NaN anywhere gives +inf (so comparisons fail). */
static inline double tu_relerr(const double *a, const double *b, long n)
{
  double num = 0, den = 0;
  for (long i = 0; i < n; i++) {
    double e = fabs(a[i] - b[i]);
    if (!(e == e)) return INFINITY;
    num = e > num ? e : num;
    den = fabs(b[i]) > den ? fabs(b[i]) : den;
  }
  return num / (den > 1e-300 ? den : 1e-300);
}

/* All ranks agree on the failure count; returns the process exit status. */
static inline int tu_finish(const char *name)
{
  int tot = 0, rank;
  MPI_Allreduce(&tu_failures, &tot, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) printf("%s: %s (%d failed checks)\n", name, tot ? "FAILED" : "passed", tot);
  return tot ? 1 : 0;
}

#endif
