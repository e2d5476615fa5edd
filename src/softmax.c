/* Stable row softmax, the only transcendental work of the solver: n^2 exponentials per
 * evaluation, which dominate for small d.  exp is evaluated by a branch-free
 * Cody-Waite reduction and a degree-13 Taylor polynomial (relative error < 2e-16 on the
 * range used) so that the loop vectorises; target_clones builds AVX2 and AVX-512 variants
 * chosen at run time.  Maxima and sums use 8 partial accumulators in a fixed order, so the
 * result does not depend on the machine. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "softmax.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define AR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AR_CLONES
#endif

/* e^x for x <= 0 in place; x below -708 gives e^-708 (~3e-308, zero next to the row's 1). */
AR_CLONES static void exp_nonpositive(double *x, int64_t n)
{
  const double log2e = 1.4426950408889634, shifter = 0x1.8p52;
  const double ln2hi = 0x1.62e42fefa3800p-1, ln2lo = 0x1.ef35793c76730p-45;
  int64_t sbits;
  memcpy(&sbits, &shifter, sizeof sbits);
  for (int64_t l = 0; l < n; l++) {
    double v = x[l] < -708.0 ? -708.0 : x[l];
    double t = v * log2e + shifter, kd = t - shifter;
    double r = (v - kd * ln2hi) - kd * ln2lo;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t tb, pb;
    memcpy(&tb, &t, sizeof tb);
    memcpy(&pb, &p, sizeof pb);
    pb += (int64_t)((uint64_t)(tb - sbits) << 52);
    memcpy(&x[l], &pb, sizeof pb);
  }
}

AR_CLONES static double row_max(const double *x, int64_t n)
{
  double m[8];
  for (int i = 0; i < 8; i++) m[i] = x[0];
  int64_t l = 0;
  for (; l + 8 <= n; l += 8)
    for (int i = 0; i < 8; i++) m[i] = x[l + i] > m[i] ? x[l + i] : m[i];
  for (; l < n; l++) m[0] = x[l] > m[0] ? x[l] : m[0];
  double mx = m[0];
  for (int i = 1; i < 8; i++) mx = m[i] > mx ? m[i] : mx;
  return mx;
}

/* x -= c, returning the sum of the results is not needed: subtract, exp, sum, scale. */
AR_CLONES static void shift(double *x, int64_t n, double c)
{
  for (int64_t l = 0; l < n; l++) x[l] -= c;
}

AR_CLONES static double row_sum(const double *x, int64_t n)
{
  double s[8] = {0};
  int64_t l = 0;
  for (; l + 8 <= n; l += 8)
    for (int i = 0; i < 8; i++) s[i] += x[l + i];
  for (; l < n; l++) s[0] += x[l];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

AR_CLONES static void scale(double *x, int64_t n, double a)
{
  for (int64_t l = 0; l < n; l++) x[l] *= a;
}

void ar_softmax_rows_lse(double *s, int64_t r, int64_t n, double *lse)
{
  for (int64_t j = 0; j < r; j++) {
    double *row = s + j * n, mx = row_max(row, n);
    shift(row, n, mx);
    exp_nonpositive(row, n);
    const double sum = row_sum(row, n);
    scale(row, n, 1.0 / sum);
    if (lse) lse[j] = mx + log(sum);
  }
}

void ar_softmax_rows(double *s, int64_t r, int64_t n) { ar_softmax_rows_lse(s, r, n, NULL); }

void ar_softmax_online(double *s, int64_t r, int64_t c, double *rmax, double *rsum, double *rescale)
{
  for (int64_t j = 0; j < r; j++) {
    double *row = s + j * c, mx = row_max(row, c), mnew = mx > rmax[j] ? mx : rmax[j];
    rescale[j] = rmax[j] == -INFINITY ? 0.0 : mnew == rmax[j] ? 1.0 : exp(rmax[j] - mnew);
    shift(row, c, mnew);
    exp_nonpositive(row, c);
    rsum[j] = rsum[j] * rescale[j] + row_sum(row, c);
    rmax[j] = mnew;
  }
}

void ar_softmax_exp_shifted(double *s, int64_t r, int64_t c, const double *lse)
{
  for (int64_t j = 0; j < r; j++) {
    shift(s + j * c, c, lse[j]);
    exp_nonpositive(s + j * c, c);
  }
}

double ar_exp_nonpositive(double x)
{
  exp_nonpositive(&x, 1);
  return x;
}
