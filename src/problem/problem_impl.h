/* Private layout of ar_problem and ar_eval (shared by problem.c, eval.c, hessian.c). */
#ifndef AR_PROBLEM_IMPL_H
#define AR_PROBLEM_IMPL_H

#include "attnreg.h"
#include "layout.h"

struct ar_problem_s {
  MPI_Comm comm;     /* duplicate of the user's communicator */
  int rank, size;
  int64_t n;         /* global rows */
  int d, m;
  ar_layout layout;  /* every rank's rows and its ring group (layout.h) */
  int nranges;       /* this rank's rows: ranges [ranges[2i], ranges[2i+1]) of the layout */
  const int64_t *ranges;
  int64_t nloc;      /* rows held here */
  /* the mask (docs/math.md §8) */
  int masked;        /* segments or causal: the tiles consult key_lo, key_hi */
  int causal, contiguous; /* contiguous: the layout was asked to be the contiguous partition */
  int64_t nseg;      /* segments (1 without) */
  int64_t *offsets;  /* nseg + 1, global */
  int64_t *key_lo, *key_hi; /* masked: per local row, the global keys [lo, hi) it may see */
  double pairs;      /* unmasked query-key pairs of this rank's rows */
  MPI_Comm ring;     /* the ranks this rank exchanges key blocks with (its group) */
  int ring_rank, ring_size;
  double *a1;        /* local: nloc x d */
  double *b;         /* local: nloc x m */
  double *a2, *a3;   /* local: nloc x d (self-attention: a3 == a2 == a1, one array) */
  double bnorm2;     /* global: ||B||_F^2 */
  uint64_t hash;     /* global: ar_problem_hash */
  uint64_t mask_hash; /* global: ar_problem_mask_hash */
};

/* Collective: a problem with p's rows, mask and layout, and other arrays of those rows (the
 * whitened inputs); b may be p->b.  The data hash is p's. */
int ar_problem_create_like(ar_problem p, const double *a1, const double *a2, const double *a3, const double *b,
                           ar_problem *out);
/* Not collective: rank r's ranges of global rows (into the layout). */
static inline int ar_problem_rank_ranges(ar_problem p, int r, const int64_t **ranges)
{
  *ranges = p->layout.ranges + 2 * p->layout.first[r];
  return p->layout.first[r + 1] - p->layout.first[r];
}

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
