/* Which BLAS kernels this process runs, whether they fit the CPU, and a self-check of them.
 *
 * OpenBLAS (built with DYNAMIC_ARCH, as Debian's is) picks a "core" -- one of its kernel sets --
 * when it is loaded: the one OPENBLAS_CORETYPE names, else the one for the CPU it recognises.
 * A CPU newer than the library is not recognised and gets the generic SSE kernels ("Prescott"):
 * on an AVX-512 Xeon, DGEMM then runs at 9-14 GFLOP/s instead of 72-76.  Nothing fails, so this
 * file makes it visible (the core in every configuration header and JSON summary, a warning)
 * and lets the launch scripts choose a fitting core after checking its results
 * (attnreg blas --suggest).  The choice can only be made before the library loads: in the
 * environment of a new process.  Where no script chose, the program re-executes itself with the
 * fitting core (reexec.h) and says so (a note instead of the warning; "reexec" in the JSON).
 *
 * Test-only: ATTNREG_REEXEC_TEST_CORE=<name> makes .fit <name> whenever the running core is
 * another one, so that the re-exec path can be tested on a CPU whose kernels already fit. */
#ifndef AR_BLAS_H
#define AR_BLAS_H

#include <stdio.h>

/* Vector instruction sets, in increasing order: the kernels of a core use one of them, and a
 * CPU (with its OS) supports them up to one. */
typedef enum { AR_ISA_UNKNOWN, AR_ISA_SSE, AR_ISA_AVX, AR_ISA_AVX2, AR_ISA_AVX512 } ar_isa;

typedef struct {
  char core[32];        /* openblas_get_corename() */
  int threads;          /* openblas_get_num_threads() */
  ar_isa core_isa;      /* what the core's kernels use (UNKNOWN: a name not in blas.c's table) */
  ar_isa cpu_isa;       /* the best this CPU and OS support (UNKNOWN: not x86-64) */
  const char *coretype; /* OPENBLAS_CORETYPE from the environment, NULL if unset or empty */
  const char *fit;      /* the OPENBLAS_CORETYPE value whose kernels fit the CPU when the running
                           core's are older and the CPU has AVX2 or AVX-512; else NULL */
  const char *reexec;   /* the core OpenBLAS chose before this process re-executed itself with
                           OPENBLAS_CORETYPE=fit (ATTNREG_REEXEC=from-<core>), else NULL */
  const char *refused;  /* why this process did not re-execute itself with fit (its self-check
                           failed), else NULL */
} ar_blas_info;

/* Not collective: what this process runs. */
void ar_blas_info_get(ar_blas_info *b);
/* Not collective: keep why (copied) as ar_blas_info.refused (reexec.c). */
void ar_blas_set_refused(const char *why);
/* Not collective: "SSE", "AVX", "AVX2", "AVX-512" or "unknown". */
const char *ar_isa_name(ar_isa isa);

/* Not collective: DGEMM (several shapes and transpositions) and a Cholesky factorisation
 * (dpotrf, large enough for its blocked path) against plain reference loops; and, when
 * OPENBLAS_CORETYPE is set, that the library runs that core (it silently falls back to another
 * when it does not know the name).  AR_ERR_LIB with a one-line message on failure.  *worst, if
 * not NULL, gets the largest error relative to its tolerance (< 1 passes). */
int ar_blas_check(double *worst);

/* Not collective: DGEMM rate in GFLOP/s, n x n x n, best of reps. */
double ar_blas_dgemm_gflops(int n, int reps);

/* Not collective (rank 0 calls them): the configuration line "<prefix>blas = OpenBLAS core X,
 * T thread(s)[ (re-executed from C)]" on f, and on stderr a one-line note when the process
 * re-executed itself, else a one-line warning when info.fit is set, naming it. */
void ar_blas_print(FILE *f, const char *prefix);

#endif
