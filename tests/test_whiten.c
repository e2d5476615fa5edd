/* Whitening is an exact change of variables: on the four autograd reference cases (and on the
 * real trained head when its directory is given) the whitened problem at X~ = R1 X R2^T,
 * Y~ = R3 Y has the same loss, and its gradient mapped back is the gradient of the original,
 * on this rank count.  The whitened inputs are orthonormal (Q^T Q = I).  A rank-deficient
 * input is refused with a message naming the file and the column.
 * Usage: test_whiten REFDIR TMPDIR [REALDIR] */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attnreg.h"
#include "npy.h"
#include "problem_impl.h"
#include "testutil.h"

/* max |Q^T Q - I| over the whitened inputs (this rank's rows summed over ranks). */
static double orthonormality_error(ar_problem q)
{
  const int d = q->d;
  const double *A[3] = {q->a1, q->a2, q->a3};
  double worst = 0, *G = calloc((size_t)d * d, sizeof(double));
  for (int k = 0; k < 3; k++) {
    memset(G, 0, sizeof(double) * d * d);
    for (int64_t j = 0; j < q->nloc; j++)
      for (int a = 0; a < d; a++)
        for (int b = 0; b < d; b++) G[a * d + b] += A[k][j * d + a] * A[k][j * d + b];
    MPI_Allreduce(MPI_IN_PLACE, G, d * d, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    for (int a = 0; a < d; a++)
      for (int b = 0; b < d; b++) worst = fmax(worst, fabs(G[a * d + b] - (a == b)));
  }
  free(G);
  return worst;
}

static void eval(ar_problem prob, const double *X, const double *Y, double *loss, double *grad)
{
  ar_eval ev;
  ar_eval_options eo;
  ar_eval_options_default(&eo);
  eo.tile = 3, eo.chunk = 4; /* several tiles and key chunks even on small cases */
  TU_OK(ar_eval_create(prob, &eo, &ev));
  ar_eval_out out = {.grad = grad};
  TU_OK(ar_eval_compute(ev, X, Y, AR_HESS_NONE, &out));
  *loss = out.loss;
  ar_eval_destroy(&ev);
}

/* perturb: X += perturb * rms(X) * N(0,1) (the real head's truth is a zero-residual point,
 * where loss and gradient are rounding noise).  tol_map: the round trip X -> X~ -> X, whose
 * rounding errors the map multiplies by up to cond(R1) cond(R2). */
static void check_dir(const char *dir, const char *xname, const char *yname, double perturb, double tol_map)
{
  char path[1200], store[4 * 4096];
  ar_data_paths ps = {0};
  TU_OK(ar_data_paths_from_dir(dir, &ps, store));
  ar_problem prob, white;
  TU_OK(ar_problem_load(MPI_COMM_WORLD, &ps, NULL, &prob));
  int64_t n;
  int d, m;
  ar_problem_sizes(prob, &n, &d, &m);
  const int dd = d * d, D = dd + d * m;
  ar_npy_header h;
  double *X, *Y;
  snprintf(path, sizeof path, "%s/%s", dir, xname);
  TU_OK(ar_npy_read(path, &h, &X));
  snprintf(path, sizeof path, "%s/%s", dir, yname);
  TU_OK(ar_npy_read(path, &h, &Y));
  double rms = 0;
  for (int i = 0; i < dd; i++) rms += X[i] * X[i] / dd;
  for (int i = 0; i < dd; i++) X[i] += perturb * sqrt(rms) * ar_normal(11, 1, i);
  const char *names[3] = {ps.a1, ps.a2, ps.a3};
  ar_whitening w;
  TU_OK(ar_whiten(prob, names, &white, &w));
  TU_CHECK(ar_problem_hash(white) == ar_problem_hash(prob), "%s: the whitened problem has another data hash", dir);
  const double orth = orthonormality_error(white);
  TU_CHECK(orth <= 1e-13, "%s: whitened inputs: max |Q^T Q - I| = %.3g", dir, orth);
  TU_CHECK(fabs(ar_problem_bnorm2(white) - ar_problem_bnorm2(prob)) <= 1e-14 * ar_problem_bnorm2(prob), "%s: B", dir);
  double *Xt = malloc(sizeof(double) * dd), *Yt = malloc(sizeof(double) * d * m), *X2 = malloc(sizeof(double) * dd);
  double *Y2 = malloc(sizeof(double) * d * m), *g = malloc(sizeof(double) * D), *gt = malloc(sizeof(double) * D);
  double *gu = malloc(sizeof(double) * D), L, Lt;
  TU_OK(ar_whiten_point(w, X, Y, Xt, Yt));
  TU_OK(ar_unwhiten_point(w, Xt, Yt, X2, Y2));
  TU_CHECK(tu_relerr(X2, X, dd) <= tol_map && tu_relerr(Y2, Y, d * m) <= tol_map,
           "%s: unwhiten(whiten(X, Y)) != (X, Y): %.3g, %.3g", dir, tu_relerr(X2, X, dd), tu_relerr(Y2, Y, d * m));
  eval(prob, X, Y, &L, g);
  eval(white, Xt, Yt, &Lt, gt);
  TU_CHECK(fabs(L - Lt) <= 1e-12 * fabs(L), "%s: loss %.17g, whitened %.17g", dir, L, Lt);
  TU_OK(ar_unwhiten_gradient(w, gt, gt + dd, gu, gu + dd));
  double e = tu_relerr(gu, g, D);
  TU_CHECK(e <= 1e-10, "%s: gradient mapped back from the whitened problem: relative error %.3g", dir, e);
  /* the whitened inputs have orthonormal columns: the loss of Q X~ Q^T is that of identity data */
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) printf("  %s: loss %.6e, whitened %.6e; gradient error %.2e; |Q^T Q - I| %.2e\n", dir, L, Lt, e, orth);
  free(X), free(Y), free(Xt), free(Yt), free(X2), free(Y2), free(g), free(gt), free(gu);
  ar_whitening_destroy(&w);
  ar_problem_destroy(&white);
  ar_problem_destroy(&prob);
}

/* A column that is a combination of two others: refused, naming the file and the column. */
static void check_rank_deficient(const char *tmpdir)
{
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int64_t n = 40;
  const int d = 4, m = 2;
  char dir[1200], path[1300];
  snprintf(dir, sizeof dir, "%s/whiten-deficient", tmpdir);
  if (rank == 0) {
    double A[40 * 4], B[40 * 2];
    for (int i = 0; i < n * d; i++) A[i] = ar_normal(7, 1, i);
    for (int i = 0; i < n; i++) A[i * d + 2] = 2.0 * A[i * d + 0] - A[i * d + 1]; /* column 3 depends on 1, 2 */
    for (int i = 0; i < n * m; i++) B[i] = ar_normal(7, 2, i);
    mkdir(dir, 0777);
    snprintf(path, sizeof path, "%s/A.npy", dir);
    TU_OK(ar_npy_write(path, n, d, A));
    snprintf(path, sizeof path, "%s/B.npy", dir);
    TU_OK(ar_npy_write(path, n, m, B));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  char store[4 * 4096];
  ar_data_paths ps = {0};
  TU_OK(ar_data_paths_from_dir(dir, &ps, store));
  ar_problem prob, white = NULL;
  TU_OK(ar_problem_load(MPI_COMM_WORLD, &ps, NULL, &prob));
  const char *names[3] = {ps.a1, ps.a2, ps.a3};
  ar_whitening w = NULL;
  int err = ar_whiten(prob, names, &white, &w);
  TU_CHECK(err == AR_ERR_DATA, "rank-deficient A: ar_whiten returned %d, expected a data error", err);
  TU_CHECK(strstr(ar_error_message(), "A.npy: column 3") != NULL, "message does not name A.npy column 3: %s",
           ar_error_message());
  TU_CHECK(white == NULL && w == NULL, "rank-deficient A: outputs not NULL");
  ar_problem_destroy(&prob);
}

int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  if (argc < 3) {
    fprintf(stderr, "usage: test_whiten REFDIR TMPDIR [REALDIR]\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  static const char *cases[] = {"tiny", "rect", "selfattn", "peaked"};
  char dir[1024];
  for (int c = 0; c < 4; c++) {
    snprintf(dir, sizeof dir, "%s/%s", argv[1], cases[c]);
    check_dir(dir, "X.npy", "Y.npy", 0.0, 1e-12);
  }
  /* cond(A) = 2.1e6 here: the map's rounding is amplified up to 4e12 times */
  if (argc > 3) check_dir(argv[3], "X_true.npy", "Y_true.npy", 0.1, 1e-3);
  check_rank_deficient(argv[2]);
  int rc = tu_finish("test_whiten");
  MPI_Finalize();
  return rc;
}
