/* The plan's memory model against what the evaluator allocates (issue 20, item 3).  For a few
 * sizes (heap, huge-page and large mappings), tiles and chunks, masks (none, segments on the
 * contiguous and the automatic layout, causal) and self-attention, on this rank count:
 *   - what ar_eval_create allocates (memory.c's count of live work bytes) is the list
 *     AR_EVAL_WORK (eval_work.h, summed by plan.c's ar_work_model) plus the ring's two buffers;
 *   - the first Hessian-vector product allocates AR_HESSVEC_WORK, and destroy frees it all;
 *   - the plan's terms (mem_ring + mem_rows + mem_chunk + mem_tiles + mem_parts, less the mask's
 *     per-row keys that problem.c holds) equal the largest rank's allocation where the plan's
 *     layout is that of the run (no mask, or the contiguous layout; else they bound it), and the
 *     matrix-free plan counts the products' arrays as allocated.
 * An array allocated, freed or modelled in one place only fails here.  Usage: test_evalmem */
#include <string.h>

#include "attnreg.h"
#include "eval_impl.h"
#include "eval_work.h"
#include "memory.h"
#include "testutil.h"

typedef struct {
  int64_t n;
  int d, m;
  int64_t tile, chunk;
  int nseg, causal, contiguous, self;
  int64_t offsets[8];
} tcase;

static double bucket_sum(const double *b)
{
  double s = 0;
  for (int i = 0; i < AR_WORK_NBUCKETS; i++) s += b[i];
  return s;
}

static void run_case(const tcase *tc, int rank, int size)
{
  const int64_t n = tc->n;
  const int d = tc->d, m = tc->m;
  const ar_mask mask = {tc->nseg, tc->nseg > 1 ? tc->offsets : NULL, tc->causal, tc->contiguous};
  const int masked = tc->nseg > 1 || tc->causal;
  int nr;
  int64_t *rg;
  TU_OK(ar_layout_rows(n, masked ? &mask : NULL, size, rank, &nr, &rg));
  int64_t nloc = 0;
  for (int i = 0; i < nr; i++) nloc += rg[2 * i + 1] - rg[2 * i];
  double *a[4];
  const int cols[4] = {d, d, d, m};
  for (int k = 0; k < 4; k++) {
    a[k] = malloc(sizeof(double) * (size_t)(nloc * cols[k] + 1));
    int64_t j = 0;
    for (int i = 0; i < nr; i++)
      for (int64_t g = rg[2 * i]; g < rg[2 * i + 1]; g++, j++)
        for (int q = 0; q < cols[k]; q++)
          a[k][j * cols[k] + q] = 0.3 * ar_normal(7, (uint64_t)k, (uint64_t)(g * cols[k] + q));
  }
  free(rg);
  ar_problem prob;
  TU_OK(ar_problem_create(MPI_COMM_WORLD, n, d, m, masked ? &mask : NULL, a[0], tc->self ? a[0] : a[1],
                          tc->self ? a[0] : a[2], a[3], &prob));
  ar_eval_options o;
  ar_eval_options_default(&o);
  o.tile = tc->tile, o.chunk = tc->chunk;
  char what[160];
  snprintf(what, sizeof what, "n=%lld d=%d m=%d tile=%lld chunk=%lld nseg=%d causal=%d contiguous=%d self=%d",
           (long long)n, d, m, (long long)tc->tile, (long long)tc->chunk, tc->nseg, tc->causal, tc->contiguous,
           tc->self);

  const double live0 = ar_work_live_bytes();
  ar_eval ev;
  TU_OK(ar_eval_create(prob, &o, &ev));
  const double made = ar_work_live_bytes() - live0;
  /* this rank: the list at its sizes, and the ring's buffers */
  const ar_work_sizes z = {prob->nloc, ev->tile, ev->chunk, d, m, ev->width, prob->masked};
  double model[AR_WORK_NBUCKETS], model_hv[AR_WORK_NBUCKETS], model_cg[AR_WORK_NBUCKETS];
  ar_work_model(&z, AR_WORK_EVAL, model);
  ar_work_model(&z, AR_WORK_HESSVEC, model_hv);
  ar_work_model(&z, AR_WORK_EVAL_CG, model_cg);
  const double ring =
      prob->ring_size > 1 ? 2 * ar_work_placed(8.0 * (double)ar_ring_max_rows(ev->ring) * ev->width) : 0;
  TU_CHECK(made == bucket_sum(model) + ring,
           "%s, rank %d: ar_eval_create allocated %.0f bytes, the list %.0f + ring %.0f", what, rank, made,
           bucket_sum(model), ring);

  /* the first product allocates the products' arrays, the second nothing (small cases: the
   * products cost n^2) */
  const int D = d * d + d * m;
  double *X = malloc(sizeof(double) * D), *v = malloc(sizeof(double) * D), *hv = malloc(sizeof(double) * D);
  double fl = 0;
  for (int i = 0; i < D; i++) X[i] = 0.2 * ar_normal(11, 0, (uint64_t)i), v[i] = ar_normal(11, 1, (uint64_t)i);
  const double live1 = ar_work_live_bytes();
  const int products = n <= 1000;
  if (products) {
    TU_OK(ar_eval_hessvec(ev, X, X + d * d, AR_HESS_EXACT, v, hv, &fl));
    TU_OK(ar_eval_hessvec(ev, X, X + d * d, AR_HESS_GAUSS_NEWTON, v, hv, &fl));
  }
  const double made_hv = ar_work_live_bytes() - live1;
  TU_CHECK(made_hv == (products ? bucket_sum(model_hv) : 0),
           "%s, rank %d: the products allocated %.0f bytes, their list %.0f", what, rank, made_hv,
           bucket_sum(model_hv));
  ar_eval_destroy(&ev);
  TU_CHECK(ar_work_live_bytes() == live0, "%s, rank %d: %.0f bytes not freed by ar_eval_destroy", what, rank,
           ar_work_live_bytes() - live0);

  /* the plan, for the largest rank */
  double mx[2] = {made, made_hv};
  MPI_Allreduce(MPI_IN_PLACE, mx, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  ar_plan dense, cg;
  TU_OK(ar_plan_compute(n, d, m, size, 0, 0, 0, tc->tile, tc->chunk, o.tile_mem_mb, AR_HESS_EXACT,
                        AR_LINSOLVE_CHOLESKY, masked ? &mask : NULL, &dense));
  TU_OK(ar_plan_compute(n, d, m, size, 0, 0, 0, tc->tile, tc->chunk, o.tile_mem_mb, AR_HESS_EXACT, AR_LINSOLVE_CG,
                        masked ? &mask : NULL, &cg));
  const double keys = masked ? 16.0 * (double)dense.rows_per_rank : 0; /* problem.c's key_lo, key_hi */
  const double planned =
      dense.mem_ring + dense.mem_rows + dense.mem_chunk + dense.mem_tiles + dense.mem_parts - keys;
  const int exact = !masked || tc->contiguous; /* the plan's layout is the run's (one ring of all ranks) */
  if (tc->self) /* the plan assumes [A2 | A3] rows (2d a row): with A3 = A2 it is an upper bound */
    TU_CHECK(planned >= mx[0], "%s: the plan's %.0f bytes below the %.0f allocated", what, planned, mx[0]);
  else if (exact)
    TU_CHECK(planned == mx[0], "%s: the plan models %.0f bytes, the largest rank allocated %.0f", what, planned,
             mx[0]);
  else
    TU_CHECK(planned >= mx[0], "%s: the plan's %.0f bytes below the %.0f allocated", what, planned, mx[0]);
  /* the matrix-free plan: what the evaluator's method touches, and the products' arrays whole */
  if (exact && !tc->self) { /* the products' arrays: as allocated, or (large cases) from their list */
    ar_work_sizes zp = z;
    zp.nl = dense.rows_per_rank, zp.w = 2 * d;
    ar_work_model(&zp, AR_WORK_EVAL_CG, model_cg);
    const double ring_p = size > 1 ? 2 * ar_work_placed(8.0 * (double)dense.rows_per_rank * 2 * d) : 0;
    double hv_p[AR_WORK_NBUCKETS];
    ar_work_model(&zp, AR_WORK_HESSVEC, hv_p);
    if (products) TU_CHECK(mx[1] == bucket_sum(hv_p), "%s: the products' arrays %.0f, their list %.0f", what, mx[1],
                           bucket_sum(hv_p));
    const double planned_cg = cg.mem_ring + cg.mem_rows + cg.mem_chunk + cg.mem_tiles + cg.mem_parts - keys;
    TU_CHECK(planned_cg == bucket_sum(model_cg) + ring_p + bucket_sum(hv_p),
             "%s: the matrix-free plan models %.0f bytes, its method's arrays %.0f + ring %.0f + products %.0f", what,
             planned_cg, bucket_sum(model_cg), ring_p, bucket_sum(hv_p));
  }
  free(X), free(v), free(hv);
  ar_problem_destroy(&prob);
  for (int k = 0; k < 4; k++) free(a[k]);
}

int main(int argc, char **argv)
{
  (void)argc, (void)argv;
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (ar_work_live_bytes() < 0) { /* AddressSanitizer: plain calloc, not counted */
    if (rank == 0) printf("test_evalmem: skipped (work bytes not counted under AddressSanitizer)\n");
    MPI_Finalize();
    return 0;
  }
  const tcase cases[] = {
      {50, 3, 2, 0, 0, 1, 0, 0, 0, {0}},                            /* small: the heap, fused on one rank */
      {300, 4, 3, 16, 40, 1, 0, 0, 0, {0}},                         /* tiles and chunks */
      {300, 4, 3, 16, 40, 1, 0, 0, 1, {0}},                         /* self-attention: A3 = A2 */
      {300, 5, 2, 16, 32, 5, 0, 1, 0, {0, 7, 100, 101, 230, 300}},  /* segments, contiguous layout */
      {300, 5, 2, 16, 32, 5, 1, 1, 0, {0, 7, 100, 101, 230, 300}},  /* causal segments, contiguous */
      {300, 5, 2, 16, 32, 5, 1, 0, 0, {0, 7, 100, 101, 230, 300}},  /* causal segments, auto layout */
      {240, 3, 3, 0, 0, 1, 1, 0, 0, {0}},                           /* causal, auto layout (zigzag) */
      {12000, 8, 8, 0, 0, 1, 0, 0, 0, {0}},                         /* huge-page and large mappings */
      {6000, 12, 6, 100, 700, 1, 1, 1, 0, {0}},                     /* causal, contiguous, mid-sized */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], rank, size);
  const int rc = tu_finish("test_evalmem");
  MPI_Finalize();
  return rc;
}
