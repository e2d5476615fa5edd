/* Stable row softmax, the only transcendental work of the solver: n^2 exponentials per
 * evaluation, which dominate for small d.  exp is evaluated by a branch-free
 * Cody-Waite reduction and a degree-13 Taylor polynomial (relative error < 2e-16 on the
 * range used) so that the loop vectorises, in AVX2 and AVX-512 variants chosen at run time.
 * Maxima and sums use 8 partial accumulators in a fixed order, so the result does not depend
 * on the machine (test_softmax checks that the variants agree bit for bit). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "softmax.h"

/* The kernels are written once (always inlined) and compiled per instruction set: AVX-512,
 * AVX2 and the baseline (what target_clones would make), picked once at run time from what the
 * CPU supports.  ar_softmax_use lets the tests run every variant the CPU can execute. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define AR_VARIANTS 1
#else
#define AR_VARIANTS 0
#endif
#define AR_KERNEL static inline __attribute__((always_inline))

/* e^x for x <= 0 in place; x below -708 (masked logits are -inf) gives exactly 0. */
AR_KERNEL void exp_nonpositive(double *x, int64_t n)
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
    double e;
    memcpy(&e, &pb, sizeof pb);
    x[l] = x[l] < -708.0 ? 0.0 : e;
  }
}

AR_KERNEL double row_max(const double *x, int64_t n)
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
AR_KERNEL void shift(double *x, int64_t n, double c)
{
  for (int64_t l = 0; l < n; l++) x[l] -= c;
}

AR_KERNEL double row_sum(const double *x, int64_t n)
{
  double s[8] = {0};
  int64_t l = 0;
  for (; l + 8 <= n; l += 8)
    for (int i = 0; i < 8; i++) s[i] += x[l + i];
  for (; l < n; l++) s[0] += x[l];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

AR_KERNEL void scale(double *x, int64_t n, double a)
{
  for (int64_t l = 0; l < n; l++) x[l] *= a;
}

AR_KERNEL void rows(double *s, int64_t r, int64_t n, double *lse)
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

/* One chunk of an online softmax (softmax.h). */
AR_KERNEL void online(double *s, int64_t r, int64_t c, double *rmax, double *rsum, double *rescale)
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

AR_KERNEL void exp_shifted(double *s, int64_t r, int64_t c, const double *lse)
{
  for (int64_t j = 0; j < r; j++) {
    shift(s + j * c, c, lse[j]);
    exp_nonpositive(s + j * c, c);
  }
}

#define AR_VARIANT(name, attr)                                                                                \
  attr static void rows_##name(double *s, int64_t r, int64_t n, double *lse) { rows(s, r, n, lse); }         \
  attr static void exp_##name(double *x, int64_t n) { exp_nonpositive(x, n); }                              \
  attr static void online_##name(double *s, int64_t r, int64_t c, double *rmax, double *rsum, double *resc)  \
  {                                                                                                           \
    online(s, r, c, rmax, rsum, resc);                                                                        \
  }                                                                                                           \
  attr static void shifted_##name(double *s, int64_t r, int64_t c, const double *lse) { exp_shifted(s, r, c, lse); }
AR_VARIANT(default, )
#if AR_VARIANTS
AR_VARIANT(avx2, __attribute__((target("avx2"))))
AR_VARIANT(avx512f, __attribute__((target("avx512f"))))
#endif

typedef struct {
  const char *isa;
  void (*rows)(double *, int64_t, int64_t, double *);
  void (*exp)(double *, int64_t);
  void (*online)(double *, int64_t, int64_t, double *, double *, double *);
  void (*shifted)(double *, int64_t, int64_t, const double *);
} variant;

/* best first */
static const variant variants[] = {
#if AR_VARIANTS
    {"avx512f", rows_avx512f, exp_avx512f, online_avx512f, shifted_avx512f},
    {"avx2", rows_avx2, exp_avx2, online_avx2, shifted_avx2},
#endif
    {"default", rows_default, exp_default, online_default, shifted_default},
};
static const int nvariants = sizeof variants / sizeof variants[0];
static const variant *g_variant;

static int cpu_has(const char *isa)
{
#if AR_VARIANTS
  __builtin_cpu_init();
  if (!strcmp(isa, "avx512f")) return __builtin_cpu_supports("avx512f");
  if (!strcmp(isa, "avx2")) return __builtin_cpu_supports("avx2");
#endif
  return !strcmp(isa, "default");
}

static const variant *chosen(void)
{
  if (!g_variant)
    for (int i = 0; i < nvariants && !g_variant; i++)
      if (cpu_has(variants[i].isa)) g_variant = &variants[i];
  return g_variant;
}

int ar_softmax_use(const char *isa)
{
  for (int i = 0; i < nvariants; i++)
    if (!strcmp(variants[i].isa, isa) && cpu_has(isa)) return g_variant = &variants[i], 1;
  return 0;
}

const char *ar_softmax_isa(void) { return chosen()->isa; }

void ar_softmax_rows(double *s, int64_t r, int64_t n) { chosen()->rows(s, r, n, NULL); }

void ar_softmax_rows_lse(double *s, int64_t r, int64_t n, double *lse) { chosen()->rows(s, r, n, lse); }

void ar_softmax_online(double *s, int64_t r, int64_t c, double *rmax, double *rsum, double *rescale)
{
  chosen()->online(s, r, c, rmax, rsum, rescale);
}

void ar_softmax_exp_shifted(double *s, int64_t r, int64_t c, const double *lse) { chosen()->shifted(s, r, c, lse); }

double ar_exp_nonpositive(double x)
{
  chosen()->exp(&x, 1);
  return x;
}
