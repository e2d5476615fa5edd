/* Private layout of the evaluator (eval.c: loss, gradient, Hessian parts; hessvec.c:
 * Hessian-vector products and the preconditioner's pieces). */
#ifndef AR_EVAL_IMPL_H
#define AR_EVAL_IMPL_H

#include <cblas.h>

#include "problem_impl.h"
#include "ring.h"

struct ar_eval_s {
  ar_problem p;
  ar_eval_options opt;
  int64_t tile, chunk;      /* query rows per tile, key rows per chunk */
  int npair;                /* d (d + 1) / 2 symmetric pairs */
  int width;                /* ring row: [A2 | A3] (2d), or A2 alone (d) when A3 = A2 */
  int ld_fwd, ld_bwd;       /* [A3 | A2 | R23]: 2d + d^2;  [A2 | R22]: d + npair */
  int fused;                /* the key set is one chunk: one pass, tables kept */
  int tab_fwd_ready, tab_bwd_ready; /* fused only: the tables hold the whole key set */
  int t1_used;              /* parts.t1 was written by an exact Hessian (GN leaves it 0) */
  ar_ring *ring;
  double *kv_own;           /* this rank's [A2 | A3] rows (NULL when A3 = A2: then A2 itself) */
  /* one row each for this rank's query rows */
  double *a1x;              /* A1 X */
  double *fwd;              /* F [A3 | A2 | R23] = [P | beta | F R23]; loss, gradient: P alone */
  double *bwd;              /* W [A2 | R22] = [W A2 | A2^T diag(w_j) A2 over pairs]; GN, gradient: W A2 */
  double *rmax, *rsum, *lse; /* online softmax: running max and sum of exp(s - max); log-sum-exp */
  double *resid;            /* C = P Y - B */
  double *fu;               /* fu_j = f_j . u_j */
  /* one row each for the key rows of a chunk */
  double *tab_fwd;          /* [A3 | A2 | R23], R23[l,(q,k)] = a2_lq a3_lk */
  double *tab_bwd;          /* [A2 | R22],      R22[l,{q<=q'}] = a2_lq a2_lq' */
  double *vals;             /* V = A3 Y */
  /* a tile against a chunk */
  double *scores;           /* S, then exp(S - max) or F, then W */
  double *cvt;              /* U = C V^T */
  double *rescale;          /* exp(old max - new max) per row */
  /* a tile of rows: the Hessian parts of docs/math.md §3 */
  double *E, *M, *MMt, *alpha, *Npair, *Kpair, *a1c, *a1p;
  ar_hess_parts parts;
  double *sums;             /* reduced: L, grad_X, grad_Y, P^T P */
  ar_progress *prog;        /* tiles done / tiles to do of the evaluation in progress */
  /* the mask (docs/math.md §8): a tile against a chunk is cut into boxes of the rows whose keys
   * meet the chunk, and the keys they may see; entries outside a row's keys become -inf */
  int64_t *blk_lo, *blk_hi; /* per local row: its keys [lo, hi) in the block in hand (block-local) */
  struct ar_box_s *boxes;   /* a tile's boxes */
  int64_t box_kb;           /* the box being computed: its first key (block-local) */
  double exps;              /* this rank: exponentials computed since creation (ar_eval_exps) */
  int box_partial;          /* ... holds masked entries */
  ar_eval_work work;        /* what a trip does here and over the ranks (dry run at creation) */
  double units_trip;        /* progress units (tiles with work) of one trip */
  double *at;               /* the point (X, Y) the per-row state belongs to */
  int at_valid, at_lda;     /* ... whether it holds C and fu, and fwd's row stride */
  struct ar_hessvec_s *hv;  /* Hessian-vector work arrays (hessvec.c), made at the first product */
  double units_done, units_total;
};

static inline void ar_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, double alpha,
                           const double *A, int64_t lda, const double *B, int64_t ldb, double beta, double *C,
                           int64_t ldc, double *flops)
{
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
  *flops += 2.0 * (double)M * (double)N * (double)K;
}

/* Collective: the forward pass at (X, Y) (and the backward one with want_grad): a1x, fwd (P
 * first, row stride lda), lse, C, fu for this rank's rows; Y NULL: P alone. */
int ar_eval_passes(ar_eval ev, const double *X, const double *Y, int lda, int ldb, int want_grad, double *loss,
                   double *flops);
/* Not collective: one unit of work done (progress). */
void ar_eval_tick(ar_eval ev);

/* One trip of the ring over the key blocks, cut into chunks and this rank's query rows into
 * tiles: for every chunk of key rows in hand (kv: cr rows of ev->width doubles, A2 first),
 * chunk() once, then tile() for each tile of query rows [j0, j0 + r); between tiles the ring's
 * transfer is progressed and the work counted.  The data movement is ring.c's, the kernels the
 * callers': a caller embeds ar_trip first in its own struct. */
typedef struct ar_trip_s {
  ar_eval ev;
  double *flops;
  void (*chunk)(struct ar_trip_s *t, const double *kv, int64_t cr); /* may be NULL */
  /* rows [j0, j0 + r) against the keys kv (cr rows) that start k0 rows into the chunk (k0 > 0
   * only for a box of a masked tile: chunk tables are offset by k0) */
  void (*tile)(struct ar_trip_s *t, int64_t j0, int64_t r, int64_t k0, const double *kv, int64_t cr);
} ar_trip;
int ar_eval_trip(ar_trip *t); /* collective */
/* Not collective: the logits S = (A1 X) A2^T of rows [j0, j0 + r) against a chunk (the box in
 * hand, masked entries -inf), into ev->scores (r x cr); with probs, F = exp(S - lse) from the
 * saved log-sum-exp (masked entries exactly 0). */
void ar_eval_logits(ar_eval ev, int64_t j0, int64_t r, const double *kv, int64_t cr, int probs, double *flops);
/* Not collective: release the Hessian-vector work arrays (hessvec.c). */
void ar_hessvec_free(ar_eval ev);

#endif
