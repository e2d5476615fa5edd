/* Benchmark of one evaluation of L, grad L and the exact joint Hessian (not a test).
 * Usage: bench_eval N D M REPS [exact|gn|none|newton] [TILE rows]
 * "newton" times one full Newton iteration as the solver does it once steps are trusted (every
 * iteration near the solution): the Cholesky solve (pdpotrf + pdpotrs, or LAPACK on one rank)
 * with the current Hessian, then loss, gradient and exact Hessian at the new point, which the
 * next iteration uses.  The iterations run on from the planted start X0 = X_true + 0.01 noise.
 * Prints the wall time (best of REPS), the flops by the model of docs/math.md §2-§3, the achieved
 * GFLOP/s, a DGEMM rate measured in the same run (2048^3, best of 3) on the OpenBLAS core this
 * process runs, named, and the ratio, and the peak RSS per rank.  A DGEMM rate on the running core
 * says little when OpenBLAS picked slow kernels (both are slow): with AR_BEST_DGEMM=GFLOPS and
 * AR_BEST_CORE=NAME (scripts/bench-eval measures them with attnreg blas --dgemm --all-cores: the
 * best over every core the CPU runs) it also prints the ratio to that.  Last, one "result" line
 * with every number, for scripts.  Data: planted-like random inputs made in memory on every rank. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnreg.h"
#include "blas.h"
#include "npy.h"
#include "timing.h"


int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (argc < 5) {
    if (rank == 0) fprintf(stderr, "usage: bench_eval N D M REPS [exact|gn|none] [TILE]\n");
    MPI_Finalize();
    return 2;
  }
  const int64_t n = atoll(argv[1]);
  const int d = atoi(argv[2]), m = atoi(argv[3]), reps = atoi(argv[4]);
  const char *hs = argc > 5 ? argv[5] : "exact";
  ar_hessian_kind hk = !strcmp(hs, "newton") ? AR_HESS_EXACT : !strcmp(hs, "none") ? AR_HESS_NONE : !strcmp(hs, "gn") ? AR_HESS_GAUSS_NEWTON : AR_HESS_EXACT;
  const int newton = !strcmp(hs, "newton");
  const int D = d * d + d * m;
  double *dz = calloc(D, sizeof(double)), *rhs = calloc(D, sizeof(double)), *zt = calloc(D, sizeof(double));
  int64_t r0, r1;
  ar_partition(n, size, rank, &r0, &r1);
  double *a1 = malloc(sizeof(double) * ((r1 - r0) * d + 1)), *a2 = malloc(sizeof(double) * n * d);
  double *a3 = malloc(sizeof(double) * n * d), *b = malloc(sizeof(double) * ((r1 - r0) * m + 1));
  double *X = malloc(sizeof(double) * d * d), *Y = malloc(sizeof(double) * d * m);
  double *g = malloc(sizeof(double) * (d * d + d * m));
  const double sa = 1.0 / sqrt((double)d);
  for (int64_t i = 0; i < n * d; i++) a2[i] = sa * ar_normal(1, 2, i), a3[i] = sa * ar_normal(1, 3, i);
  for (int64_t i = 0; i < (r1 - r0) * d; i++) a1[i] = sa * ar_normal(1, 1, r0 * d + i);
  for (int64_t i = 0; i < (r1 - r0) * m; i++) b[i] = ar_normal(1, 4, r0 * m + i);
  for (int i = 0; i < d * d; i++) X[i] = ar_normal(1, 5, i);
  for (int i = 0; i < d * m; i++) Y[i] = ar_normal(1, 6, i);
  double rate = rank == 0 ? ar_blas_dgemm_gflops(2048, 3) : 0;
  MPI_Bcast(&rate, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  ar_problem prob = NULL;
  ar_grid grid;
  ar_dmat H = NULL;
  ar_eval ev;
  ar_eval_options eo;
  ar_eval_options_default(&eo);
  if (argc > 6) eo.tile = atoll(argv[6]);
  /* newton: a planted problem near its solution (X = X0 of generate), where H is positive
   * definite as in the solver's last iterations; otherwise random data at a random point. */
  char dir[256];
  snprintf(dir, sizeof dir, "/tmp/attnreg-bench-%lld-%d-%d", (long long)n, d, m);
  ar_generate_options go = {.n = n, .d = d, .m = m, .seed = 1, .x_scale = 0.5, .start_noise = 0.01};
  char store[4 * 4096];
  ar_data_paths ps = {0};
  if (newton && (ar_generate(MPI_COMM_WORLD, &go, dir) || ar_data_paths_from_dir(dir, &ps, store) ||
                 ar_problem_load(MPI_COMM_WORLD, &ps, NULL, &prob))) {
    fprintf(stderr, "bench_eval: %s\n", ar_error_message());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  if (newton) {
    ar_npy_header h;
    double *x0, *y0;
    if (ar_npy_read(strcat(strcpy(store, dir), "/X0.npy"), &h, &x0) || ar_npy_read(strcat(strcpy(store, dir), "/Y_true.npy"), &h, &y0)) MPI_Abort(MPI_COMM_WORLD, 1);
    memcpy(X, x0, sizeof(double) * d * d), memcpy(Y, y0, sizeof(double) * d * m);
    free(x0), free(y0);
  }
  if ((!prob && ar_problem_create(MPI_COMM_WORLD, n, d, m, NULL, a1, a2 + r0 * d, a3 + r0 * d, b, &prob)) || ar_grid_create(MPI_COMM_WORLD, 0, 0, &grid) ||
      (hk && ar_dmat_create(grid, d * d + d * m, getenv("NB") ? atoi(getenv("NB")) : 0, &H)) || ar_eval_create(prob, &eo, &ev)) {
    fprintf(stderr, "bench_eval: %s\n", ar_error_message());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  free(a1), free(a2), free(a3), free(b);
  double best = 1e30, bk = 0, bh = 0, br = 0, bw = 0, flops = 0;
  if (newton) {
    ar_eval_out first = {.grad = g, .hess = H};
    if (ar_eval_compute(ev, X, Y, hk, &first)) MPI_Abort(MPI_COMM_WORLD, 1);
  }
  for (int r = 0; r < reps; r++) {
    ar_eval_out out = {.grad = g, .hess = H};
    MPI_Barrier(MPI_COMM_WORLD);
    double t = ar_wtime();
    if (newton) {
      int not_pd = 1;
      for (int i = 0; i < D; i++) rhs[i] = -g[i];
      for (double shift = 0; not_pd; shift = shift ? 10 * shift : 1e-6)
        if (ar_dmat_factor(H, shift, &not_pd) || (!not_pd && ar_dmat_solve(H, rhs, dz))) MPI_Abort(MPI_COMM_WORLD, 1);
      for (int i = 0; i < D; i++) (i < d * d ? X : Y - d * d)[i] += dz[i];
    }
    if (ar_eval_compute(ev, X, Y, hk, &out)) MPI_Abort(MPI_COMM_WORLD, 1);
    double fl = out.flops;
    t = ar_wtime() - t;
    MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (t < best) best = t, bk = out.t_kernel, bh = out.t_hess, br = out.t_reduce, bw = out.t_ring, flops = fl;
  }
  MPI_Allreduce(MPI_IN_PLACE, &flops, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  /* The model of docs/math.md: gradient 2n^2(3d+m); exact Hessian 2n^2d^2 + n^2d^2 + nd^4/2 + 2nd^3m. */
  const double N = (double)n;
  double model = 2 * N * N * (3.0 * d + m);
  if (hk == AR_HESS_EXACT) model += 3 * N * N * d * d + N * pow(d, 4) / 2 + 2 * N * pow(d, 3) * m;
  if (newton) model += pow((double)D, 3) / 3 + 2.0 * D * D; /* Cholesky and the triangular solves */
  if (hk == AR_HESS_GAUSS_NEWTON) model += 2 * N * N * d * d + N * pow(d, 4) / 2 + 2 * N * pow(d, 3) * m;
  double rss = ar_peak_rss_mb(), rss_max;
  MPI_Reduce(&rss, &rss_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    ar_blas_info bi;
    ar_blas_info_get(&bi);
    const double gflops = model / best * 1e-9, frac = 100 * gflops / (rate * size);
    const char *best_core = getenv("AR_BEST_CORE");
    /* Load only lowers a measured rate: the best estimate of the machine's is the highest seen. */
    double best_rate = getenv("AR_BEST_DGEMM") ? atof(getenv("AR_BEST_DGEMM")) : 0;
    if (best_rate > 0 && rate > best_rate) best_rate = rate, best_core = bi.core;
    printf("bench_eval n=%lld d=%d m=%d ranks=%d hessian=%s tile=%lld chunk=%lld reps=%d\n", (long long)n, d, m, size,
           hs, (long long)ar_eval_tile(ev), (long long)ar_eval_chunk(ev), reps);
    printf("  wall time (best)       %10.4f s   (rank 0: kernel %.4f, hessian %.4f, reduction %.4f, ring wait %.4f = "
           "%.1f %%)\n", best, bk, bh, br, bw, 100 * bw / best);
    printf("  model flops            %10.4g     (executed GEMM flops %.4g)\n", model, flops);
    printf("  achieved               %10.2f GFLOP/s (model flops / time, all ranks)\n", gflops);
    printf("  DGEMM, same run        %10.2f GFLOP/s per rank (2048^3, best of 3; OpenBLAS core %s, %d thread%s)\n", rate,
           bi.core, bi.threads, bi.threads == 1 ? "" : "s");
    printf("  fraction of DGEMM      %10.1f %%   (achieved / (ranks x DGEMM), both on core %s)\n", frac, bi.core);
    if (best_rate > 0) {
      printf("  best DGEMM here        %10.2f GFLOP/s per rank (core %s: the fastest core this CPU runs, at the\n"
             "                                          highest rate measured in this run)\n", best_rate,
             best_core ? best_core : "?");
      printf("  fraction of best DGEMM %10.1f %%   (achieved / (ranks x best DGEMM))\n",
             100 * gflops / (best_rate * size));
    }
    printf("  peak RSS per rank (max) %9.1f MB\n", rss_max);
    if (newton) {
      double tf, ts;
      int nf;
      ar_dmat_times(H, &tf, &ts, &nf);
      printf("  pdpotrf %d calls %.4f s, pdpotrs %.4f s (all reps, rank 0)\n", nf, tf, ts);
    }
    printf("result hessian=%s n=%lld d=%d ranks=%d seconds=%.4f gflops=%.2f core=%s dgemm=%.2f frac=%.1f "
           "best_core=%s best_dgemm=%.2f frac_best=%.1f\n", hs, (long long)n, d, size, best, gflops, bi.core, rate, frac,
           best_core ? best_core : "-", best_rate, best_rate > 0 ? 100 * gflops / (best_rate * size) : 0.0);
  }
  ar_eval_destroy(&ev);
  ar_dmat_destroy(&H);
  ar_grid_destroy(&grid);
  ar_problem_destroy(&prob);
  free(X), free(Y), free(g), free(dz), free(rhs), free(zt);
  MPI_Finalize();
  return 0;
}
