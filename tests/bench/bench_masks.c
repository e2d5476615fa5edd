/* Benchmark of masked evaluation (not a test): one eval with the exact Hessian (best of REPS) of
 * the same inputs under several masks, in one run, so the ratios are the point:
 *   none        one sequence of n rows, no mask
 *   seg K       K packed sequences of n/K rows (block-diagonal attention)
 *   causal      one causal sequence (the automatic layout: zigzag pieces over one ring)
 *   causal-contiguous  the same with contiguous row blocks (the textbook imbalance)
 *   seg K causal
 * For each: the time, its ratio to the unmasked one, the unmasked pairs and the logits computed
 * (box area) as fractions of n^2, the per-rank imbalance of the computed area (max/avg), the
 * layout's step efficiency within a ring, and the ring wait (max over ranks) as a fraction of
 * the eval.  Usage: bench_masks N D M K REPS.  Random inputs made in memory on every rank
 * (counter-based: the same numbers whatever the layout). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnreg.h"
#include "timing.h"

typedef struct {
  const char *name;
  int64_t K;
  int causal, contiguous;
} config;

int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (argc < 6) {
    if (rank == 0) fprintf(stderr, "usage: bench_masks N D M K REPS\n");
    MPI_Finalize();
    return 2;
  }
  const int64_t n = atoll(argv[1]), K = atoll(argv[4]);
  const int d = atoi(argv[2]), m = atoi(argv[3]), reps = atoi(argv[5]), D = d * d + d * m;
  int64_t *off = malloc(sizeof(int64_t) * (K + 1));
  for (int64_t s = 0; s < K; s++) ar_partition(n, (int)K, (int)s, &off[s], &off[s + 1]);
  double *X = malloc(sizeof(double) * d * d), *Y = malloc(sizeof(double) * d * m), *g = malloc(sizeof(double) * D);
  for (int i = 0; i < d * d; i++) X[i] = ar_normal(1, 5, i);
  for (int i = 0; i < d * m; i++) Y[i] = ar_normal(1, 6, i);
  char kname[32];
  snprintf(kname, sizeof kname, "seg %lld", (long long)K);
  char kcname[48];
  snprintf(kcname, sizeof kcname, "seg %lld causal", (long long)K);
  const config cfgs[] = {{"none", 1, 0, 0}, {kname, K, 0, 0}, {"causal", 1, 1, 0}, {"causal-contiguous", 1, 1, 1},
                         {kcname, K, 1, 0}};
  const int ncfg = sizeof cfgs / sizeof cfgs[0];
  double t_none = 0;
  if (rank == 0)
    printf("bench_masks: n=%lld d=%d m=%d, %d ranks, eval with the exact Hessian, best of %d\n"
           "%-18s %9s %8s %8s %8s %9s %9s %10s %9s\n",
           (long long)n, d, m, size, reps, "mask", "seconds", "vs none", "pairs", "area", "area max/avg",
           "step eff", "ring wait", "groups");
  for (int c = 0; c < ncfg; c++) {
    const ar_mask mask = {cfgs[c].K, cfgs[c].K > 1 ? off : NULL, cfgs[c].causal, cfgs[c].contiguous};
    int nr;
    int64_t *rg;
    if (ar_layout_rows(n, &mask, size, rank, &nr, &rg)) MPI_Abort(MPI_COMM_WORLD, 1);
    int64_t nloc = 0;
    for (int i = 0; i < nr; i++) nloc += rg[2 * i + 1] - rg[2 * i];
    double *a[3], *b = malloc(sizeof(double) * (nloc * m + 1));
    const double sa = 1.0 / sqrt((double)d);
    for (int k = 0; k < 3; k++) a[k] = malloc(sizeof(double) * (nloc * d + 1));
    int64_t j = 0;
    for (int i = 0; i < nr; i++)
      for (int64_t row = rg[2 * i]; row < rg[2 * i + 1]; row++, j++) {
        for (int q = 0; q < d; q++)
          for (int k = 0; k < 3; k++) a[k][j * d + q] = sa * ar_normal(1, 1 + k, (uint64_t)(row * d + q));
        for (int i2 = 0; i2 < m; i2++) b[j * m + i2] = ar_normal(1, 4, (uint64_t)(row * m + i2));
      }
    ar_problem prob;
    ar_grid grid;
    ar_dmat H;
    ar_eval ev;
    ar_eval_options eo;
    ar_eval_options_default(&eo);
    if (ar_problem_create(MPI_COMM_WORLD, n, d, m, &mask, a[0], a[1], a[2], b, &prob) ||
        ar_grid_create(MPI_COMM_WORLD, 0, 0, &grid) || ar_dmat_create(grid, D, 0, &H) ||
        ar_eval_create(prob, &eo, &ev)) {
      fprintf(stderr, "bench_masks: %s\n", ar_error_message());
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    double best = INFINITY, wait = 0;
    for (int r = 0; r < reps; r++) {
      ar_eval_out out = {.grad = g, .hess = H};
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = ar_wtime();
      if (ar_eval_compute(ev, X, Y, AR_HESS_EXACT, &out)) MPI_Abort(MPI_COMM_WORLD, 1);
      double t = ar_wtime() - t0, w = out.t_ring;
      MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      MPI_Allreduce(MPI_IN_PLACE, &w, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      if (t < best) best = t, wait = w;
    }
    if (c == 0) t_none = best;
    ar_eval_work w;
    ar_eval_work_info(ev, &w);
    ar_layout_info li;
    ar_problem_layout_info(prob, &li);
    const double n2 = (double)n * n;
    if (rank == 0) {
      printf("%-18s %9.3f %8.3f %8.4f %8.4f %9.3f %9.3f %9.2f%% %9d\n", cfgs[c].name, best, best / t_none,
             w.pairs_total / n2, w.area_avg * size / n2, w.area_max / w.area_avg, w.step_efficiency,
             100 * wait / best, li.groups);
      printf("result mask=\"%s\" n=%lld d=%d m=%d ranks=%d seconds=%.6f ratio=%.4f pairs=%.6f area=%.6f "
             "imbalance=%.4f step_efficiency=%.4f ring_wait=%.6f groups=%d\n",
             cfgs[c].name, (long long)n, d, m, size, best, best / t_none, w.pairs_total / n2, w.area_avg * size / n2,
             w.area_max / w.area_avg, w.step_efficiency, wait, li.groups);
      fflush(stdout);
    }
    ar_eval_destroy(&ev);
    ar_dmat_destroy(&H);
    ar_grid_destroy(&grid);
    ar_problem_destroy(&prob);
    for (int k = 0; k < 3; k++) free(a[k]);
    free(b), free(rg);
  }
  free(off), free(X), free(Y), free(g);
  MPI_Finalize();
  return 0;
}
