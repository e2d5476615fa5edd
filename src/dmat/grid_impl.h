/* Private layout of the BLACS grid and the block-cyclic matrix (grid.c, hessian.c). */
#ifndef AR_GRID_IMPL_H
#define AR_GRID_IMPL_H

#include "attnreg.h"

struct ar_grid_s {
  MPI_Comm comm;
  int rank, size;
  int ctxt;            /* BLACS context */
  int pr, pc;          /* grid shape; rank = myrow * pc + mycol ("Row" order, as MPI darray) */
  int myrow, mycol;
};

struct ar_dmat_s {
  ar_grid g;
  int N, nb;
  int locr, locc, lld; /* local rows/cols (numroc), leading dimension */
  int desc[9];
  double *a;           /* local, column-major locr x locc */
  double *fact;        /* work copy for the Cholesky factor (A is kept for retries) */
  double *rhs;         /* locr: the right-hand side of ar_dmat_solve, block-cyclic */
  double t_factor, t_solve; /* accumulated seconds in pdpotrf, pdpotrs (+ broadcast of x) */
  int nfactor;
  int factored;        /* fact holds the factor of the last successful ar_dmat_factor */
};

/* Not collective: ar_kron_metric_quad with the caller's workspace T (2 d^2 doubles): no
 * allocation, so no failure on one rank only (the dense step allocates T when it is made). */
double ar_kron_metric_quad_work(const ar_kron_metric *M, int N, const double *v, double *T);

/* Block-cyclic maps with source process 0: owner coordinate and local index of global g. */
static inline int ar_bc_owner(int g, int nb, int np) { return (g / nb) % np; }
static inline int ar_bc_local(int g, int nb, int np) { return (g / (nb * np)) * nb + g % nb; }
/* Global index of local index l on process coordinate p. */
static inline int ar_bc_global(int l, int nb, int np, int p) { return (l / nb) * nb * np + p * nb + l % nb; }

#endif
