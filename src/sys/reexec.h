/* Running this program again with another OPENBLAS_CORETYPE.  OpenBLAS reads the variable only
 * when it loads, so a core can be tried only in a new process (ar_run_self, ar_core_check: a
 * child `attnreg blas --check`) and used only by replacing this one (ar_reexec_blas).
 *
 * ar_reexec_blas is how every launch path -- mpirun, srun, a singleton run, with or without
 * scripts/env.sh -- gets the kernels that fit the CPU.  main() calls it before MPI_Init: when
 * OPENBLAS_CORETYPE is unset, the running core's kernels are older than the CPU's vector
 * instructions (blas.h: ar_blas_info.fit) and a child running the fitting core passes the
 * self-check (wrong results and SIGILL fail it), the process re-executes itself (execv of
 * /proc/self/exe, same argv, same pid: launchers see nothing) with OPENBLAS_CORETYPE=<fit> and
 * ATTNREG_REEXEC=from-<core>.  At most once: with ATTNREG_REEXEC set (to anything) it never
 * re-executes; ATTNREG_NO_REEXEC=1 turns it off.  Under a launcher every rank decides on its own
 * (same node, same answer).  When the check or execv fails the process keeps its core and rank 0
 * warns (ar_blas_print).  Cost, only when fit is set: one child process (about 50 ms). */
#ifndef AR_REEXEC_H
#define AR_REEXEC_H

#include <stddef.h>

/* Not collective: run this program again as `attnreg ARGS...` with OPENBLAS_CORETYPE=coretype
 * (unset if NULL); its stdout and stderr together go to out (cap bytes, NUL-terminated), its exit
 * status to *status, or 128 + the signal that killed it (a kernel the CPU cannot run: SIGILL). */
int ar_run_self(const char *coretype, char *const args[], char *out, size_t cap, int *status);

/* Not collective: the reason a child failed, in one line: its last error message, else its
 * status.  A static buffer. */
const char *ar_child_reason(int status, char *out);

/* Not collective: AR_OK when a child running OPENBLAS_CORETYPE=core passes `attnreg blas
 * --check`; else AR_ERR_LIB, "OPENBLAS_CORETYPE=<core> failed the self-check (<reason>)". */
int ar_core_check(const char *core);

/* Not collective, before MPI_Init: re-execute this process with the fitting OPENBLAS_CORETYPE
 * (see above).  Returns only when it does not; then the reason, if any, is kept for
 * ar_blas_print's warning. */
void ar_reexec_blas(char **argv);

#endif
