/* The factor/solve layer of grid.c on its own, with matrices set directly in the block-cyclic
 * layout (so no evaluation is involved), for every process-grid factorisation of the rank count
 * and block sizes 1, 2, 5 and the default (as test_fd), orders N = 1, 3, 13, 30:
 *   - positive definite H, shifts 0 and 0.7: not_pd = 0 on every rank, x the same on every rank,
 *     normwise backward error ||(H + sI)x - b|| / (||H + sI|| ||x|| + ||b||) <= 8 N eps;
 *   - the matrix is kept (ar_dmat_factor works on a copy: a retry with a larger shift needs it),
 *     and a second factorisation with another shift replaces the first;
 *   - indefinite H (a negative diagonal entry in the first or the last block): not_pd = 1 on every
 *     rank (ScaLAPACK's info is global; a flag seen by one rank only would split the solver's
 *     branches), ar_dmat_solve then refuses, and a shift that makes H + sI definite factors it;
 *   - ar_dmat_mean_abs_diag (the solver's shift scale) and ar_dmat_gather.
 * On one rank grid.c calls LAPACK (dpotrf/dpotrs) instead of ScaLAPACK: the np1 run covers that. */
#include <float.h>
#include <string.h>

#include "attnreg.h"
#include "error.h"
#include "grid_impl.h"
#include "testutil.h"

static int rank, size;
static double worst_berr;

/* A reproducible symmetric positive definite matrix (row-major, N x N): M M^T / N + I. */
static void spd(int N, uint64_t seed, double *H)
{
  double *M = malloc(sizeof(double) * N * N);
  for (int i = 0; i < N * N; i++) M[i] = ar_normal(seed, 1, i);
  for (int i = 0; i < N; i++)
    for (int j = 0; j <= i; j++) {
      double s = 0;
      for (int k = 0; k < N; k++) s += M[i * N + k] * M[j * N + k];
      H[i * N + j] = H[j * N + i] = s / N + (i == j);
    }
  free(M);
}

static void set_local(ar_dmat A, const double *H)
{
  ar_grid g = A->g;
  for (int lj = 0; lj < A->locc; lj++)
    for (int li = 0; li < A->locr; li++)
      A->a[(size_t)lj * A->lld + li] =
          H[(size_t)ar_bc_global(li, A->nb, g->pr, g->myrow) * A->N + ar_bc_global(lj, A->nb, g->pc, g->mycol)];
}

/* 1 if every rank passed the same int; if not, the ranks would take different branches next
 * (and hang in a collective): stop the test at once. */
static int agreed(int v)
{
  int lo, hi;
  MPI_Allreduce(&v, &lo, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&v, &hi, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (lo != hi) {
    if (rank == 0) fprintf(stderr, "FAIL: the ranks disagree (values %d to %d)\n", lo, hi);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return 1;
}

static int replicated(const double *x, int n)
{
  double *lo = malloc(sizeof(double) * n), *hi = malloc(sizeof(double) * n);
  MPI_Allreduce(x, lo, n, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(x, hi, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  int ok = 1;
  for (int i = 0; i < n; i++) ok &= lo[i] == hi[i] && lo[i] == x[i];
  free(lo), free(hi);
  return ok;
}

/* Normwise backward error of x for (H + sI) x = b (infinity norms). */
static double backward_error(const double *H, int N, double s, const double *x, const double *b)
{
  double rmax = 0, anorm = 0, xmax = 0, bmax = 0;
  for (int i = 0; i < N; i++) {
    double r = -b[i], row = 0;
    for (int j = 0; j < N; j++) {
      double a = H[i * N + j] + (i == j ? s : 0);
      r += a * x[j];
      row += fabs(a);
    }
    rmax = fmax(rmax, fabs(r));
    anorm = fmax(anorm, row);
    xmax = fmax(xmax, fabs(x[i]));
    bmax = fmax(bmax, fabs(b[i]));
  }
  double e = rmax / (anorm * xmax + bmax);
  return e == e ? e : INFINITY;
}

static void run_case(int N, int pr, int pc, int nb)
{
  ar_grid g;
  ar_dmat A;
  TU_OK(ar_grid_create(MPI_COMM_WORLD, pr, pc, &g));
  TU_OK(ar_dmat_create(g, N, nb, &A));
  const int anb = ar_dmat_nb(A);
  char what[96];
  snprintf(what, sizeof what, "N=%d grid %dx%d nb %d", N, g->pr, g->pc, anb);
  TU_CHECK(nb <= 0 || anb == nb, "%s: asked for nb %d", what, nb);
  double *H = malloc(sizeof(double) * N * N), *G = malloc(sizeof(double) * N * N);
  double *b = malloc(sizeof(double) * N), *x = malloc(sizeof(double) * N), *x2 = malloc(sizeof(double) * N);
  double *keep = malloc(sizeof(double) * ((size_t)A->locr * A->locc + 1));
  const double tol = 8.0 * N * DBL_EPSILON;
  spd(N, 100 + N, H);
  for (int i = 0; i < N; i++) b[i] = ar_normal(200 + N, 1, i);
  set_local(A, H);
  memcpy(keep, A->a, sizeof(double) * A->locr * A->locc);

  TU_OK(ar_dmat_gather(A, G));
  TU_CHECK(memcmp(G, H, sizeof(double) * N * N) == 0, "%s: gather does not return the matrix set", what);
  double mean, want = 0;
  for (int i = 0; i < N; i++) want += fabs(H[i * N + i]);
  TU_OK(ar_dmat_mean_abs_diag(A, &mean));
  TU_CHECK(fabs(mean - want / N) <= 1e-14 * want / N, "%s: mean |diag| %.17g, want %.17g", what, mean, want / N);

  /* positive definite, two shifts; the second factorisation replaces the first */
  const double shifts[2] = {0.0, 0.7};
  for (int k = 0; k < 2; k++) {
    int not_pd = -1;
    TU_OK(ar_dmat_factor(A, shifts[k], &not_pd));
    agreed(not_pd);
    TU_CHECK(not_pd == 0, "%s shift %g: not_pd %d", what, shifts[k], not_pd);
    TU_CHECK(memcmp(keep, A->a, sizeof(double) * A->locr * A->locc) == 0, "%s shift %g: the matrix was changed",
             what, shifts[k]);
    for (int i = 0; i < N; i++) x[i] = NAN;
    TU_OK(ar_dmat_solve(A, b, x));
    double e = backward_error(H, N, shifts[k], x, b);
    worst_berr = fmax(worst_berr, e);
    TU_CHECK(e <= tol, "%s shift %g: backward error %.3g > %.3g", what, shifts[k], e, tol);
    TU_CHECK(replicated(x, N), "%s shift %g: x differs between ranks", what, shifts[k]);
    TU_OK(ar_dmat_solve(A, b, x2)); /* the factor is reusable (chord steps) */
    TU_CHECK(memcmp(x, x2, sizeof(double) * N) == 0, "%s shift %g: a second solve differs", what, shifts[k]);
  }

  /* indefinite: a negative diagonal entry, in the first and in the last block */
  const int where[2] = {0, N - 1};
  for (int w = 0; w < (N > 1 ? 2 : 1); w++) {
    const int k = where[w];
    const double c = H[k * N + k] + 1.0; /* H[k][k] becomes -1; lambda_min(H - c e e^T) >= 1 - c */
    double *Hi = malloc(sizeof(double) * N * N);
    memcpy(Hi, H, sizeof(double) * N * N);
    Hi[k * N + k] -= c;
    set_local(A, Hi);
    int not_pd = -1;
    TU_OK(ar_dmat_factor(A, 0.0, &not_pd));
    agreed(not_pd);
    TU_CHECK(not_pd == 1, "%s: H[%d][%d] = -1, yet not_pd %d", what, k, k, not_pd);
    int err = ar_dmat_solve(A, b, x);
    agreed(err);
    TU_CHECK(err == AR_ERR_INTERNAL, "%s: solve after a failed factorisation returned %d", what, err);
    ar_error_clear();
    TU_OK(ar_dmat_factor(A, c, &not_pd)); /* H + cI is definite: what raising mu achieves */
    agreed(not_pd);
    TU_CHECK(not_pd == 0, "%s: H + %g I should be definite, not_pd %d", what, c, not_pd);
    TU_OK(ar_dmat_solve(A, b, x));
    double e = backward_error(Hi, N, c, x, b);
    worst_berr = fmax(worst_berr, e);
    TU_CHECK(e <= tol, "%s: indefinite H + %g I: backward error %.3g", what, c, e);
    free(Hi);
  }
  free(H), free(G), free(b), free(x), free(x2), free(keep);
  ar_dmat_destroy(&A);
  ar_grid_destroy(&g);
}

int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int orders[4] = {1, 3, 13, 30}, nbs[4] = {1, 2, 5, 0};
  int ncases = 0;
  for (int io = 0; io < 4; io++)
    for (int ig = 0; ig <= size; ig++) {
      int pr = 0, pc = 0; /* ig == 0: the default grid */
      if (ig > 0) {
        if (size % ig) continue;
        pr = ig, pc = size / ig;
      }
      for (int ib = 0; ib < 4; ib++, ncases++) run_case(orders[io], pr, pc, nbs[ib]);
    }
  double w;
  MPI_Allreduce(&worst_berr, &w, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) printf("%d cases on %d ranks, largest backward error %.3g\n", ncases, size, w);
  int rc = tu_finish("test_dmat");
  MPI_Finalize();
  return rc;
}
