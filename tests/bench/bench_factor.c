/* Benchmark of the dense step's factorisation (not a test): pdpotrf (LAPACK dpotrf on one
 * rank) of an N x N symmetric positive definite block-cyclic matrix, for the block sizes and
 * grid shapes given, against a DGEMM measured in the same run.
 * Usage: bench_factor N REPS PRxPC:NB [PRxPC:NB ...]      (e.g. 8192 2 1x2:64 1x2:128 2x1:128)
 * Prints per configuration the best time, GFLOP/s (N^3/3 flops) and the fraction of
 * ranks x DGEMM. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnreg.h"
#include "blas.h"
#include "grid_impl.h"
#include "timing.h"


int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (argc < 4) {
    if (rank == 0) fprintf(stderr, "usage: bench_factor N REPS PRxPC:NB ...\n");
    MPI_Finalize();
    return 2;
  }
  const int N = atoi(argv[1]), reps = atoi(argv[2]);
  double rate = ar_blas_dgemm_gflops(2048, 3), rmin;
  MPI_Allreduce(&rate, &rmin, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
  if (rank == 0) printf("bench_factor N=%d ranks=%d: DGEMM %.2f GFLOP/s per rank (slowest rank, same run)\n", N, size, rmin);
  for (int a = 3; a < argc; a++) {
    int pr, pc, nb;
    if (sscanf(argv[a], "%dx%d:%d", &pr, &pc, &nb) != 3 || pr * pc != size) {
      if (rank == 0) printf("  %s: skipped (needs PRxPC:NB with PR*PC = %d)\n", argv[a], size);
      continue;
    }
    ar_grid g;
    ar_dmat A;
    if (ar_grid_create(MPI_COMM_WORLD, pr, pc, &g) || ar_dmat_create(g, N, nb, &A)) MPI_Abort(MPI_COMM_WORLD, 1);
    /* A = I N + a smooth symmetric matrix: positive definite */
    for (int lj = 0; lj < A->locc; lj++)
      for (int li = 0; li < A->locr; li++) {
        const int gi = ar_bc_global(li, nb, pr, g->myrow), gj = ar_bc_global(lj, nb, pc, g->mycol);
        A->a[(size_t)lj * A->lld + li] = (gi == gj ? N : 0) + 1.0 / (1.0 + abs(gi - gj));
      }
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
      int not_pd;
      MPI_Barrier(MPI_COMM_WORLD);
      double t = ar_wtime();
      if (ar_dmat_factor(A, 0.0, &not_pd) || not_pd) MPI_Abort(MPI_COMM_WORLD, 1);
      t = ar_wtime() - t;
      MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      best = t < best ? t : best;
    }
    const double gf = (double)N * N * N / 3 / best * 1e-9;
    if (rank == 0)
      printf("  grid %dx%d nb %4d: %8.3f s  %8.2f GFLOP/s  %5.1f %% of %d x DGEMM\n", pr, pc, nb, best, gf,
             100 * gf / (size * rmin), size);
    ar_dmat_destroy(&A);
    ar_grid_destroy(&g);
  }
  MPI_Finalize();
  return 0;
}
