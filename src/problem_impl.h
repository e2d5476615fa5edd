/* Private layout of ar_problem and ar_eval (shared by problem.c, eval.c, hessian.c). */
#ifndef AR_PROBLEM_IMPL_H
#define AR_PROBLEM_IMPL_H

#include "attnreg.h"

struct ar_problem_s {
  MPI_Comm comm;     /* duplicate of the user's communicator */
  int rank, size;
  int64_t n;         /* global rows */
  int d, m;
  int64_t r0, r1;    /* this rank's rows [r0, r1) of A1 and B */
  int64_t nloc;      /* r1 - r0 */
  double *a1;        /* local: nloc x d */
  double *b;         /* local: nloc x m */
  double *a2, *a3;   /* local: nloc x d (self-attention: a3 == a2 == a1, one array) */
  double bnorm2;     /* global: ||B||_F^2 */
  uint64_t hash;     /* global: ar_problem_hash */
};

/* Symmetric pair index of (q, q') with q <= q' among d: row-major upper triangle. */
static inline int ar_pair(int d, int q, int qq)
{
  return q * d - q * (q - 1) / 2 + (qq - q);
}

/* Accumulators of one evaluation that are reduced over ranks (docs/layout.md §4).  The compact
 * Hessian pieces (H_xx over symmetric pairs, the two H_xy terms, P^T P) are expanded into the
 * block-cyclic layout by ar_hess_assemble (hessian.c). */
typedef struct {
  int d, m, npair;
  double *hpair;  /* npair x npair: sum_j K_j^T N_j over symmetric pairs (p<=p'), (q<=q') */
  double *t1;     /* (d*m) x (d*d): sum_j a1_jp C[j,i] E_j[q,k] at [(p,i),(q,k)] */
  double *t2;     /* (d*d) x (d*m): sum_j a1_jp P[j,k] M_j[q,i] at [(p,k),(q,i)] */
  double *ptp;    /* d x d: P^T P, global (already reduced); added by rank 0 only */
  /* assembly work space kept between evaluations (hessian.c) */
  int work_n, panel;   /* order and columns per reduction the work space is for */
  double *send, *recv;
  int *counts, *hi, *lo, *pairs;
} ar_hess_parts;

/* Collective: sum every rank's parts and write the D x D Hessian into H (block-cyclic),
 * adding the ridge 2*lambda on the diagonal; lower: only the lower triangle (I >= J), half the
 * communication, as the Cholesky reads no more (one rank: always whole).  Keeps its work space in parts
 * (ar_hess_parts_free releases it). */
int ar_hess_assemble(MPI_Comm comm, ar_hess_parts *parts, double lambda_x, double lambda_y, ar_dmat H, int lower,
                     double *t_reduce);

void ar_hess_parts_free(ar_hess_parts *parts);

#endif
