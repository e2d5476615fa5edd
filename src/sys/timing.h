/* Wall clock and memory: the small measuring helpers every phase uses. */
#ifndef AR_TIMING_H
#define AR_TIMING_H

#include <mpi.h>
#include <sys/resource.h>

static inline double ar_wtime(void) { return MPI_Wtime(); }

/* Peak resident set size of this process in MB (Linux reports ru_maxrss in KB). */
static inline double ar_peak_rss_mb(void)
{
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

#endif
