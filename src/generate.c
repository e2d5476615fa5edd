/* Planted problems (attnreg generate).  Every number is a pure function of (seed, stream,
 * index), so each rank makes exactly its own rows and the files are bit-identical whatever
 * the rank count.  The forward pass for B uses fixed-order loops (not BLAS, whose summation
 * order may depend on the tile shape) for the same reason. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "hash.h"
#include "npy.h"
#include "output.h"

enum { STREAM_A1 = 1, STREAM_A2, STREAM_A3, STREAM_X = 10, STREAM_Y, STREAM_NOISE, STREAM_X0 };

/* Uniform in (0, 1]: 53 random bits. */
static double uniform(uint64_t seed, uint64_t stream, uint64_t i)
{
  uint64_t h = ar_mix64(ar_mix64(seed ^ 0x9e3779b97f4a7c15ULL) ^ ar_mix64(stream * 0xd1b54a32d192ed03ULL + 1) ^ i);
  h = ar_mix64(h + i * 0x9e3779b97f4a7c15ULL);
  return ((h >> 11) + 1) * 0x1.0p-53;
}

double ar_normal(uint64_t seed, uint64_t stream, uint64_t i)
{
  double u1 = uniform(seed, stream, 2 * i), u2 = uniform(seed, stream, 2 * i + 1);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void fill(double *a, int64_t count, int64_t first, double scale, uint64_t seed, uint64_t stream)
{
  for (int64_t i = 0; i < count; i++) a[i] = scale * ar_normal(seed, stream, (uint64_t)(first + i));
}

/* b_j = softmax(a1_j X A2^T) A3 Y + noise, in a fixed summation order.  a2t is A2^T (d x n). */
static void forward_rows(const ar_generate_options *o, int64_t r0, int64_t r1, const double *a1, const double *a2t,
                         const double *a3, const double *X, const double *Y, double *b, double *s)
{
  const int64_t n = o->n;
  const int d = o->d, m = o->m;
  double t[4096], pj[4096];
  for (int64_t j = r0; j < r1; j++) {
    const double *a1j = a1 + (j - r0) * d;
    for (int q = 0; q < d; q++) {
      t[q] = 0;
      for (int pp = 0; pp < d; pp++) t[q] += a1j[pp] * X[pp * d + q];
    }
    for (int64_t l = 0; l < n; l++) s[l] = 0;
    for (int q = 0; q < d; q++)
      for (int64_t l = 0; l < n; l++) s[l] += t[q] * a2t[q * n + l];
    double mx = s[0], sum = 0;
    for (int64_t l = 1; l < n; l++) mx = s[l] > mx ? s[l] : mx;
    for (int64_t l = 0; l < n; l++) sum += (s[l] = exp(s[l] - mx));
    for (int k = 0; k < d; k++) pj[k] = 0;
    for (int64_t l = 0; l < n; l++)
      for (int k = 0; k < d; k++) pj[k] += s[l] * a3[l * d + k];
    for (int k = 0; k < d; k++) pj[k] /= sum;
    for (int i = 0; i < m; i++) {
      double v = 0;
      for (int k = 0; k < d; k++) v += pj[k] * Y[k * m + i];
      b[(j - r0) * m + i] = v + o->noise * ar_normal(o->seed, STREAM_NOISE, (uint64_t)(j * m + i));
    }
  }
}

int ar_generate(MPI_Comm comm, const ar_generate_options *o, const char *dir)
{
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  AR_CHECK(o->n >= 1, AR_ERR_USAGE, "--n: must be >= 1");
  AR_CHECK(o->d >= 1 && o->d <= 4096, AR_ERR_USAGE, "--d: must be in [1, 4096], got %d", o->d);
  AR_CHECK(o->m >= 1, AR_ERR_USAGE, "--m: must be >= 1, got %d", o->m);
  const int64_t n = o->n;
  const int d = o->d, m = o->m;
  int64_t r0, r1;
  ar_partition(n, size, rank, &r0, &r1);
  const int64_t nl = r1 - r0;
  double *a1 = NULL, *a2 = NULL, *a2t = NULL, *a3 = NULL, *X = NULL, *Y = NULL, *X0 = NULL, *b = NULL, *s = NULL;
  int err = AR_OK;
  a1 = malloc(sizeof(double) * (nl * d + 1));
  a2 = malloc(sizeof(double) * n * d);
  a2t = malloc(sizeof(double) * n * d);
  a3 = malloc(sizeof(double) * n * d);
  X = malloc(sizeof(double) * d * d);
  X0 = malloc(sizeof(double) * d * d);
  Y = malloc(sizeof(double) * d * m);
  b = malloc(sizeof(double) * (nl * m + 1));
  s = malloc(sizeof(double) * n);
  if (!a1 || !a2 || !a2t || !a3 || !X || !X0 || !Y || !b || !s)
    err = AR_ERROR(AR_ERR_MEM, "out of memory generating n=%lld d=%d", (long long)n, d);
  ar_out out;
  int oerr = ar_out_begin(comm, "--out", dir, &out);
  err = ar_error_agree(comm, err);
  if (!err) err = oerr;
  if (!err) {
    const double sa = 1.0 / sqrt((double)d);
    fill(a2, n * d, 0, sa, o->seed, o->self ? STREAM_A1 : STREAM_A2);
    if (o->self) memcpy(a3, a2, sizeof(double) * n * d), memcpy(a1, a2 + r0 * d, sizeof(double) * nl * d);
    else fill(a3, n * d, 0, sa, o->seed, STREAM_A3), fill(a1, nl * d, r0 * d, sa, o->seed, STREAM_A1);
    for (int64_t l = 0; l < n; l++)
      for (int q = 0; q < d; q++) a2t[q * n + l] = a2[l * d + q];
    fill(X, d * d, 0, o->x_scale, o->seed, STREAM_X);
    fill(Y, d * m, 0, 1.0, o->seed, STREAM_Y);
    for (int i = 0; i < d * d; i++) X0[i] = X[i] + o->start_noise * o->x_scale * ar_normal(o->seed, STREAM_X0, i);
    forward_rows(o, r0, r1, a1, a2t, a3, X, Y, b, s);
    char path[4400];
    if (o->self) {
      err = ar_npy_write_rows(comm, ar_out_path(&out, "A.npy", path, sizeof path), n, d, r0, r1, a1);
    } else {
      err = ar_npy_write_rows(comm, ar_out_path(&out, "A1.npy", path, sizeof path), n, d, r0, r1, a1);
      if (!err) err = ar_npy_write_rows(comm, ar_out_path(&out, "A2.npy", path, sizeof path), n, d, r0, r1, a2 + r0 * d);
      if (!err) err = ar_npy_write_rows(comm, ar_out_path(&out, "A3.npy", path, sizeof path), n, d, r0, r1, a3 + r0 * d);
    }
    if (!err) err = ar_npy_write_rows(comm, ar_out_path(&out, "B.npy", path, sizeof path), n, m, r0, r1, b);
    int lerr = AR_OK;
    const char *small[3] = {"X_true.npy", "Y_true.npy", "X0.npy"};
    const double *arr[3] = {X, Y, X0};
    const int cols[3] = {d, m, d};
    for (int i = 0; i < 3; i++) {
      ar_out_path(&out, small[i], path, sizeof path);
      if (!err && !lerr && rank == 0) lerr = ar_npy_write(path, d, cols[i], arr[i]);
    }
    if (!err) err = ar_error_agree(comm, lerr);
    if (!err) err = ar_out_commit(&out);
    if (err) ar_out_abort(&out);
  }
  free(a1), free(a2), free(a2t), free(a3), free(X), free(X0), free(Y), free(b), free(s);
  return err;
}
