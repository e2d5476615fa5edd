/* Planted problems (attnreg generate).  Every number is a pure function of (seed, stream,
 * index), so each rank makes exactly its own rows and the files are bit-identical whatever
 * the rank count.  The forward pass for B uses fixed-order loops (not BLAS, whose summation
 * order may depend on the tile shape) for the same reason. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "hash.h"
#include "layout.h"
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

#define GEN_CHUNK 4096

/* Key rows [l0, l0 + c) of A2 and A3 (self-attention: both are A). */
static void key_rows(const ar_generate_options *o, int64_t l0, int64_t c, double *a2, double *a3)
{
  const double sa = 1.0 / sqrt((double)o->d);
  fill(a2, c * o->d, l0 * o->d, sa, o->seed, o->self ? STREAM_A1 : STREAM_A2);
  if (o->self) memcpy(a3, a2, sizeof(double) * c * o->d);
  else fill(a3, c * o->d, l0 * o->d, sa, o->seed, STREAM_A3);
}

/* b_j = softmax(a1_j X A2^T) A3 Y + noise for rows [r0, r1), in one fixed summation order
 * whatever the rank count: s_jl = sum_q t_jq a2_lq (q in order), the row maximum, then
 * sum_l exp(s_jl - max) and p_j = sum_l exp(s_jl - max) a3_l (l in order), over the keys l
 * the mask leaves row j (its segment; l <= j when causal).  The key rows are regenerated a
 * chunk at a time (twice: for the maxima, then for the sums), only those the rows need, so a
 * rank holds O((r1 - r0) d) numbers, not the n x d matrices. */
static int forward_rows(const ar_generate_options *o, int64_t r0, int64_t r1, const double *a1, const double *X,
                        const double *Y, double *b)
{
  const int64_t n = o->n, nl = r1 - r0;
  const int d = o->d, m = o->m;
  double *t = calloc(nl * d + 1, sizeof(double)), *pj = calloc(nl * d + 1, sizeof(double));
  double *mx = malloc(sizeof(double) * (nl + 1)), *sum = calloc(nl + 1, sizeof(double));
  double *a2 = malloc(sizeof(double) * GEN_CHUNK * d), *a3 = malloc(sizeof(double) * GEN_CHUNK * d);
  int64_t *klo = malloc(sizeof(int64_t) * (nl + 1)), *khi = malloc(sizeof(int64_t) * (nl + 1));
  int err = t && pj && mx && sum && a2 && a3 && klo && khi
                ? AR_OK
                : AR_ERROR(AR_ERR_MEM, "out of memory generating n=%lld d=%d", (long long)n, d);
  const int64_t one[2] = {0, n};
  const ar_mask m1 = {o->mask.nseg > 1 ? o->mask.nseg : 1, o->mask.nseg > 1 ? o->mask.offsets : one, o->mask.causal, 0};
  int64_t kmin = n, kmax = 0; /* the keys any of these rows sees */
  for (int64_t j = 0; !err && j < nl; j++) {
    mx[j] = -INFINITY;
    for (int q = 0; q < d; q++)
      for (int pp = 0; pp < d; pp++) t[j * d + q] += a1[j * d + pp] * X[pp * d + q];
    const int64_t g = r0 + j, s = ar_mask_segment(&m1, g);
    klo[j] = m1.offsets[s], khi[j] = m1.causal ? g + 1 : m1.offsets[s + 1];
    kmin = klo[j] < kmin ? klo[j] : kmin, kmax = khi[j] > kmax ? khi[j] : kmax;
  }
  for (int pass = 0; !err && pass < 2; pass++)
    for (int64_t l0 = kmin - kmin % GEN_CHUNK; l0 < kmax; l0 += GEN_CHUNK) {
      const int64_t c = n - l0 < GEN_CHUNK ? n - l0 : GEN_CHUNK;
      key_rows(o, l0, c, a2, a3);
      for (int64_t j = 0; j < nl; j++)
        for (int64_t l = (klo[j] > l0 ? klo[j] - l0 : 0), le = (khi[j] < l0 + c ? khi[j] - l0 : c); l < le; l++) {
          double s = 0;
          for (int q = 0; q < d; q++) s += t[j * d + q] * a2[l * d + q];
          if (pass == 0) {
            mx[j] = s > mx[j] ? s : mx[j];
            continue;
          }
          const double e = exp(s - mx[j]);
          sum[j] += e;
          for (int k = 0; k < d; k++) pj[j * d + k] += e * a3[l * d + k];
        }
    }
  for (int64_t j = 0; !err && j < nl; j++)
    for (int i = 0; i < m; i++) {
      double v = 0;
      for (int k = 0; k < d; k++) v += pj[j * d + k] / sum[j] * Y[k * m + i];
      b[j * m + i] = v + o->noise * ar_normal(o->seed, STREAM_NOISE, (uint64_t)((r0 + j) * m + i));
    }
  free(t), free(pj), free(mx), free(sum), free(a2), free(a3), free(klo), free(khi);
  return err;
}

int ar_generate(MPI_Comm comm, const ar_generate_options *o, const char *dir)
{
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  AR_CHECK(o->n >= 1, AR_ERR_USAGE, "--n: must be >= 1");
  AR_CHECK(o->d >= 1 && o->d <= 4096, AR_ERR_USAGE, "--d: must be in [1, 4096], got %d", o->d);
  AR_CHECK(o->m >= 1, AR_ERR_USAGE, "--m: must be >= 1, got %d", o->m);
  if (o->mask.nseg > 1) AR_CALL(ar_mask_check("--segments", o->n, o->mask.offsets, o->mask.nseg));
  const int64_t n = o->n;
  const int d = o->d, m = o->m;
  int64_t r0, r1;
  ar_partition(n, size, rank, &r0, &r1);
  const int64_t nl = r1 - r0;
  double *a1 = malloc(sizeof(double) * (nl * d + 1)), *a2 = malloc(sizeof(double) * (nl * d + 1));
  double *a3 = malloc(sizeof(double) * (nl * d + 1)), *b = malloc(sizeof(double) * (nl * m + 1));
  double *X = malloc(sizeof(double) * d * d), *X0 = malloc(sizeof(double) * d * d), *Y = malloc(sizeof(double) * d * m);
  int err = AR_OK;
  if (!a1 || !a2 || !a3 || !X || !X0 || !Y || !b)
    err = AR_ERROR(AR_ERR_MEM, "out of memory generating n=%lld d=%d", (long long)n, d);
  ar_out out;
  int oerr = ar_out_begin(comm, "--out", dir, &out);
  err = ar_error_agree(comm, err);
  if (!err) err = oerr;
  if (!err) {
    key_rows(o, r0, nl, a2, a3); /* this rank's rows of A2, A3 (and A1 = A2 for self-attention) */
    if (o->self) memcpy(a1, a2, sizeof(double) * nl * d);
    else fill(a1, nl * d, r0 * d, 1.0 / sqrt((double)d), o->seed, STREAM_A1);
    fill(X, d * d, 0, o->x_scale, o->seed, STREAM_X);
    fill(Y, d * m, 0, 1.0, o->seed, STREAM_Y);
    for (int i = 0; i < d * d; i++) X0[i] = X[i] + o->start_noise * o->x_scale * ar_normal(o->seed, STREAM_X0, i);
    err = ar_error_agree(comm, forward_rows(o, r0, r1, a1, X, Y, b));
    /* the result files: the inputs by rows (every rank writes its own), the small ones by rank 0 */
    const char *rows_name[4] = {"A1.npy", "A2.npy", "A3.npy", "B.npy"};
    const double *rows_data[4] = {a1, a2, a3, b};
    if (o->self) rows_name[0] = "A.npy", rows_name[1] = rows_name[2] = NULL;
    const char *small[3] = {"X_true.npy", "Y_true.npy", "X0.npy"};
    const double *arr[3] = {X, Y, X0};
    const int cols[3] = {d, m, d};
    char path[4400];
    for (int i = 0; i < 4; i++)
      if (!err && rows_name[i] && !(err = ar_out_add(&out, rows_name[i])))
        err = ar_npy_write_rows(comm, ar_out_path(&out, rows_name[i], path, sizeof path), n, i == 3 ? m : d, r0, r1,
                                rows_data[i]);
    int lerr = AR_OK;
    for (int i = 0; i < 3 && !err; i++) {
      err = ar_out_add(&out, small[i]);
      if (!err && !lerr && rank == 0) lerr = ar_npy_write(ar_out_path(&out, small[i], path, sizeof path), d, cols[i], arr[i]);
    }
    if (!err && o->mask.nseg > 1) { /* the segments, for --data DIR to find */
      err = ar_out_add(&out, "segments.npy");
      if (!err && !lerr && rank == 0)
        lerr = ar_npy_write_int64(ar_out_path(&out, "segments.npy", path, sizeof path), o->mask.nseg + 1, o->mask.offsets);
    }
    if (!err) err = ar_error_agree(comm, lerr);
    if (!err) err = ar_out_commit(&out);
    if (err) ar_out_abort(&out);
  }
  free(a1), free(a2), free(a3), free(X), free(X0), free(Y), free(b);
  return err;
}
