/* Private layout of the evaluator, shared by eval.c (loss, gradient, Hessian parts), trip.c (the
 * ring trip over key blocks, chunks, tiles and boxes) and hessvec.c (Hessian-vector products and
 * the preconditioner's pieces). */
#ifndef AR_EVAL_IMPL_H
#define AR_EVAL_IMPL_H

#include <cblas.h>

#include "eval_work.h"
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
  /* the work arrays (eval_work.h: what each holds, its size; eval.c allocates and frees them) */
  AR_EVAL_WORK(AR_WORK_DECLARE)
  ar_hess_parts parts;      /* hpair, t1, t2, ptp are in AR_EVAL_WORK */
  ar_progress *prog;        /* tiles done / tiles to do of the evaluation in progress */
  /* the mask (docs/math.md §8): a tile against a chunk is cut into boxes (blk_lo, blk_hi,
   * boxes: trip.c) of the rows whose keys meet the chunk, and the keys they may see; entries
   * outside a row's keys become -inf */
  int64_t box_kb;           /* the box being computed: its first key (block-local) */
  double exps;              /* this rank: exponentials computed since creation (ar_eval_exps) */
  int box_partial;          /* ... holds masked entries */
  ar_eval_work work;        /* what a trip does here and over the ranks (dry run at creation) */
  double units_trip;        /* progress units (tiles with work) of one trip */
  int at_valid, at_lda;     /* whether `at` (the point) holds C and fu, and fwd's row stride */
  /* Hessian-vector work arrays (AR_HESSVEC_WORK), made at the first product by hessvec.c,
   * which also sets how they are released (eval.c knows neither their layout nor their code) */
  struct ar_hessvec_s *hv;
  void (*hv_free)(ar_eval ev);
  double units_done, units_total;
  /* the sub-sampled Hessian (ar_eval_set_hessian_rows): per local row its weight in the
   * Hessian's row sum (NULL: every row, weight 1); a tile whose rows all weigh 0 computes the
   * gradient's narrow products only */
  double *hrow_w;
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

#endif
