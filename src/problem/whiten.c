/* Whitening: an exact change of variables that makes the inputs orthonormal (docs/math.md §6).
 *
 * With thin QR factors A_k = Q_k R_k (Q_k n x d with orthonormal columns, R_k d x d upper
 * triangular),  A1 X A2^T = Q1 (R1 X R2^T) Q2^T  and  A3 Y = Q3 (R3 Y),  so the problem in the
 * Q's has the same loss at  X~ = R1 X R2^T,  Y~ = R3 Y,  and its Hessian no longer carries the
 * squared condition numbers of the A's.  The QR is computed by rows, where the data lives:
 * shifted CholeskyQR3 (Fukaya, Kannan, Nakatsukasa, Yamamoto, Yanagisawa 2020): one pass on
 * the Gram matrix shifted by s = 11 (n d + d (d+1)) u ||A||^2, then two plain CholeskyQR passes;
 * each pass is one allreduce of a d x d Gram matrix.  A column that is (numerically) a
 * combination of the earlier ones is reported, not divided by. */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "lapack.h"
#include "problem_impl.h"


struct ar_whitening_s {
  int d, m;
  double *R[3]; /* R1, R2, R3: d x d upper triangular, row-major; shared when the inputs are */
};

/* Collective: A (nloc x d, this rank's rows) becomes Q, R (d x d) its triangular factor. */
static int cholesky_qr(MPI_Comm comm, int64_t n, int64_t nloc, int d, double *A, double *R, const char *name)
{
  double *G, *Rk, *T;
  AR_MALLOC(G, d * d);
  AR_MALLOC(Rk, d * d);
  AR_MALLOC(T, d * d);
  int err = AR_OK;
  for (int i = 0; i < d; i++) R[i * d + i] = 1;
  for (int pass = 0; pass < 3 && !err; pass++) {
    memset(G, 0, sizeof(double) * d * d);
    if (nloc > 0) cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, (int)nloc, 1.0, A, d, 0.0, G, d);
    int rc = MPI_Allreduce(MPI_IN_PLACE, G, d * d, MPI_DOUBLE, MPI_SUM, comm);
    if (rc != MPI_SUCCESS) err = AR_ERROR(AR_ERR_MPI, "whitening: MPI_Allreduce of the Gram matrix failed");
    double trace = 0;
    for (int i = 0; i < d; i++) trace += G[i * d + i];
    if (!err && !(trace > 0)) err = AR_ERROR(AR_ERR_DATA, "%s: all zero: cannot whiten (use --whiten off)", name);
    if (err) break;
    const double shift = pass == 0 ? 11.0 * ((double)n * d + (double)d * (d + 1)) * DBL_EPSILON * trace : 0;
    for (int i = 0; i < d; i++) G[i * d + i] += shift;
    /* G row-major upper = column-major lower: dpotrf("L") leaves R (G = R^T R) row-major upper */
    int info = 0;
    dpotrf_("L", &d, G, &d, &info);
    if (info != 0) {
      err = AR_ERROR(AR_ERR_DATA, "%s: column %d is (numerically) a combination of the others: the inputs do not "
                     "have full column rank, so they cannot be whitened (use --whiten off)", name, info);
      break;
    }
    for (int i = 0; i < d; i++)
      for (int j = 0; j < d; j++) Rk[i * d + j] = j >= i ? G[i * d + j] : 0;
    if (nloc > 0)
      cblas_dtrsm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, (int)nloc, d, 1.0, Rk, d, A, d);
    cblas_dtrmm(CblasRowMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, d, d, 1.0, Rk, d, R, d);
  }
  /* |R_kk| is the distance of column k from the span of the earlier ones */
  double rmax = 0;
  for (int i = 0; i < d && !err; i++) rmax = fmax(rmax, fabs(R[i * d + i]));
  for (int i = 0; i < d && !err; i++)
    if (!(fabs(R[i * d + i]) > 1e-12 * rmax))
      err = AR_ERROR(AR_ERR_DATA, "%s: column %d is (numerically) a combination of the earlier ones (|R_kk| = %.3g of "
                     "%.3g): the inputs cannot be whitened (use --whiten off)", name, i + 1, fabs(R[i * d + i]), rmax);
  free(G), free(Rk), free(T);
  return err;
}

int ar_whiten(ar_problem p, const char *const names[3], ar_problem *white, ar_whitening *out)
{
  *white = NULL, *out = NULL;
  const int d = p->d;
  const int64_t nl = p->nloc;
  ar_whitening w = calloc(1, sizeof *w);
  double *Q[3] = {NULL, NULL, NULL};
  const double *A[3] = {p->a1, p->a2, p->a3};
  int err = w ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory (whitening)");
  for (int k = 0; k < 3 && !err; k++) {
    int same = -1;
    for (int i = 0; i < k; i++)
      if (A[i] == A[k]) same = i;
    if (same >= 0) { /* one factorisation per distinct input */
      Q[k] = Q[same], w->R[k] = w->R[same];
      continue;
    }
    Q[k] = malloc(sizeof(double) * (nl * d + 1));
    w->R[k] = calloc((size_t)d * d, sizeof(double));
    if (!Q[k] || !w->R[k]) err = AR_ERROR(AR_ERR_MEM, "out of memory (whitening)");
    if (!err) memcpy(Q[k], A[k], sizeof(double) * nl * d);
    err = ar_error_agree(p->comm, err);
    if (!err) err = ar_error_agree(p->comm, cholesky_qr(p->comm, p->n, nl, d, Q[k], w->R[k], names[k]));
  }
  if (w) w->d = d, w->m = p->m;
  if (!err) err = ar_problem_create_like(p, Q[0], Q[1], Q[2], p->b, white); /* p's rows, mask, data hash */
  free(Q[0]);
  if (Q[1] != Q[0]) free(Q[1]);
  if (Q[2] != Q[0] && Q[2] != Q[1]) free(Q[2]);
  if (err) ar_whitening_destroy(&w);
  *out = w;
  return err;
}

void ar_whitening_destroy(ar_whitening *pw)
{
  ar_whitening w = *pw;
  if (!w) return;
  for (int k = 0; k < 3; k++) {
    int shared = 0;
    for (int i = 0; i < k; i++) shared |= w->R[i] == w->R[k];
    if (!shared) free(w->R[k]);
  }
  free(w);
  *pw = NULL;
}

/* The three maps of the change of variables, one triangular product per factor:
 *   WHITEN     X~ = R1 X R2^T,            Y~ = R3 Y
 *   UNWHITEN   X = R1^{-1} X~ R2^{-T},    Y = R3^{-1} Y~
 *   GRADIENT   g_X = R1^T g_X~ R2,        g_Y = R3^T g_Y~   (the chain rule)
 * Inputs and outputs row-major; in place allowed (a copy is made). */
enum { WHITEN, UNWHITEN, GRADIENT };

static void tri(int op, CBLAS_SIDE side, int transposed, const double *R, double *B, int rows, int cols)
{
  const CBLAS_TRANSPOSE t = transposed ? CblasTrans : CblasNoTrans;
  const int ld = side == CblasLeft ? rows : cols;
  if (op == UNWHITEN) cblas_dtrsm(CblasRowMajor, side, CblasUpper, t, CblasNonUnit, rows, cols, 1.0, R, ld, B, cols);
  else cblas_dtrmm(CblasRowMajor, side, CblasUpper, t, CblasNonUnit, rows, cols, 1.0, R, ld, B, cols);
}

static int apply(ar_whitening w, int op, const double *X, const double *Y, double *Xo, double *Yo)
{
  const int d = w->d, m = w->m, g = op == GRADIENT;
  double *T;
  AR_MALLOC(T, d * (d > m ? d : m));
  memcpy(T, X, sizeof(double) * d * d);
  tri(op, CblasLeft, g, w->R[0], T, d, d);   /* R1 ., R1^{-1} ., R1^T . */
  tri(op, CblasRight, !g, w->R[1], T, d, d); /* . R2^T, . R2^{-T}, . R2 */
  memcpy(Xo, T, sizeof(double) * d * d);
  memcpy(T, Y, sizeof(double) * d * m);
  tri(op, CblasLeft, g, w->R[2], T, d, m);   /* R3 ., R3^{-1} ., R3^T . */
  memcpy(Yo, T, sizeof(double) * d * m);
  free(T);
  return AR_OK;
}

int ar_whiten_point(ar_whitening w, const double *X, const double *Y, double *Xt, double *Yt)
{
  return apply(w, WHITEN, X, Y, Xt, Yt);
}

int ar_unwhiten_point(ar_whitening w, const double *Xt, const double *Yt, double *X, double *Y)
{
  return apply(w, UNWHITEN, Xt, Yt, X, Y);
}

int ar_unwhiten_gradient(ar_whitening w, const double *gXt, const double *gYt, double *gX, double *gY)
{
  return apply(w, GRADIENT, gXt, gYt, gX, gY);
}
