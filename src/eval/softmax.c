/* Stable row softmax, the only transcendental work of the solver: n^2 exponentials per
 * evaluation, which dominate for small d.  exp is evaluated by a branch-free Cody-Waite
 * reduction and a degree-11 polynomial (near-minimax on |r| <= ln2/2: approximation error
 * 4e-18, relative error of the result < 2.3e-16, test_softmax checks 4.5e-16) so that the loop
 * vectorises, in AVX2 + FMA and AVX-512 variants chosen at run time.  Each row is swept as few
 * times as the result allows: one read-only pass for the maximum, one that shifts,
 * exponentiates, stores and sums (and, for probabilities, one that scales).
 * Maxima and sums use 8 partial accumulators in a fixed order, and the vector variants use FMA
 * for the same multiply-adds, so their results agree bit for bit whatever the vector width
 * (test_softmax checks it).  The baseline variant (CPUs without AVX2 + FMA; builds without
 * variants: clang, ASan) rounds each product separately, since fma() in software would make it
 * 10x slower: its results differ in the last bit (same error bound).  FMA makes the AVX2 kernels
 * about 1.5x faster than separate multiplies and adds (tests/bench_softmax). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "softmax.h"

/* The kernels are written once (always inlined) and compiled per instruction set: AVX-512,
 * AVX2 + FMA and the baseline (what target_clones would make), picked once at run time from
 * what the CPU supports.  ar_softmax_use lets the tests run every variant the CPU can execute. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define AR_VARIANTS 1
#else
#define AR_VARIANTS 0
#endif
#define AR_KERNEL static inline __attribute__((always_inline))
/* a b + c: fused (one rounding: the FMA instruction) or not (two roundings; without FMA hardware
 * fma() is a slow library call).  fused is a constant in every inlined copy of a kernel. */
#define MADD(a, b, c) (fused ? __builtin_fma((a), (b), (c)) : (a) * (b) + (c))

/* e^(x - c) for x - c <= 0; below -708 (masked logits are -inf) exactly 0; NaN stays NaN.
 * k = round((x - c) / ln2), r = (x - c) - k ln2 in two steps (k ln2hi is exact: ln2hi ends in
 * zero bits; |r| <= ln2/2), e^r by the polynomial 1 + r + r^2 q(r), and 2^k added to the
 * exponent bits.  q of degree 9 is fitted to (e^r - 1 - r)/r^2 in 40-digit arithmetic (mpmath,
 * Lawson's iteration towards the minimax relative error of e^r); degree 8 would leave 2.9e-16 of
 * approximation error alone.  Not done, and why:
 *  - exp2 with log2(e) folded into the shift, 2^(x log2e - c log2e): rounding x log2e costs eps |x|
 *    of relative accuracy (1e-13 for logits of 1e3); made exact with a second FMA it is the same
 *    work as this reduction;
 *  - Estrin's scheme for q (shorter dependency chain): no faster here (bench_softmax, same run);
 *  - a 2^(j/32) table and a degree-5 polynomial: a gather per vector for 5 FMAs less, while the
 *    exponentials are already a fifth of an evaluation's bound at d = 8 (scripts/bench-roofline). */
AR_KERNEL double exp_shift(double x, double c, int fused)
{
  const double log2e = 1.4426950408889634, shifter = 0x1.8p52;
  const double ln2hi = 0x1.62e42fefa3800p-1, ln2lo = 0x1.ef35793c76730p-45;
  const double v = x - c, vc = v < -708.0 ? -708.0 : v;
  const double t = MADD(vc, log2e, shifter), kd = t - shifter;
  const double r = MADD(-kd, ln2lo, MADD(-kd, ln2hi, vc));
  double q = 2.5000074497100432e-08;
  q = MADD(q, r, 2.763023444512102e-07);
  q = MADD(q, r, 2.755758626230747e-06);
  q = MADD(q, r, 2.4801493134617585e-05);
  q = MADD(q, r, 0.00019841269506779666);
  q = MADD(q, r, 0.0013888888943599316);
  q = MADD(q, r, 0.008333333333494336);
  q = MADD(q, r, 0.04166666666653026);
  q = MADD(q, r, 0.16666666666666413);
  q = MADD(q, r, 0.5000000000000011);
  const double p = MADD(MADD(q, r, 1.0), r, 1.0);
  int64_t tb, pb, sb;
  memcpy(&tb, &t, sizeof tb), memcpy(&pb, &p, sizeof pb), memcpy(&sb, &shifter, sizeof sb);
  pb += (int64_t)((uint64_t)(tb - sb) << 52);
  double e;
  memcpy(&e, &pb, sizeof e);
  return v < -708.0 ? 0.0 : e;
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

/* x = e^(x - c) in place (one pass); returns the sum of the results when want_sum. */
AR_KERNEL double exp_row(double *x, int64_t n, double c, int want_sum, int fused)
{
  double s[8] = {0};
  int64_t l = 0;
  for (; l + 8 <= n; l += 8)
    for (int i = 0; i < 8; i++) {
      const double e = exp_shift(x[l + i], c, fused);
      x[l + i] = e;
      if (want_sum) s[i] += e;
    }
  for (; l < n; l++) {
    x[l] = exp_shift(x[l], c, fused);
    if (want_sum) s[0] += x[l];
  }
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

AR_KERNEL void scale(double *x, int64_t n, double a)
{
  for (int64_t l = 0; l < n; l++) x[l] *= a;
}

AR_KERNEL void exp_nonpositive(double *x, int64_t n, int fused) { exp_row(x, n, 0.0, 0, fused); }

AR_KERNEL void rows(double *s, int64_t r, int64_t n, double *lse, int fused)
{
  for (int64_t j = 0; j < r; j++) {
    double *row = s + j * n;
    const double mx = row_max(row, n), sum = exp_row(row, n, mx, 1, fused);
    scale(row, n, 1.0 / sum);
    if (lse) lse[j] = mx + log(sum);
  }
}

/* One chunk of an online softmax (softmax.h). */
AR_KERNEL void online(double *s, int64_t r, int64_t c, double *rmax, double *rsum, double *rescale, int fused)
{
  for (int64_t j = 0; j < r; j++) {
    double *row = s + j * c, mx = row_max(row, c), mnew = mx > rmax[j] ? mx : rmax[j];
    rescale[j] = rmax[j] == -INFINITY ? 0.0 : mnew == rmax[j] ? 1.0 : exp(rmax[j] - mnew);
    rsum[j] = rsum[j] * rescale[j] + exp_row(row, c, mnew, 1, fused);
    rmax[j] = mnew;
  }
}

AR_KERNEL void exp_shifted(double *s, int64_t r, int64_t c, const double *lse, int fused)
{
  for (int64_t j = 0; j < r; j++) exp_row(s + j * c, c, lse[j], 0, fused);
}

/* One variant: the kernels for one instruction set; fused: with FMA (the vector variants). */
#define AR_VARIANT(name, attr, fused)                                                                          \
  attr static void rows_##name(double *s, int64_t r, int64_t n, double *lse) { rows(s, r, n, lse, fused); }  \
  attr static void exp_##name(double *x, int64_t n) { exp_nonpositive(x, n, fused); }                       \
  attr static void online_##name(double *s, int64_t r, int64_t c, double *rmax, double *rsum, double *resc)  \
  {                                                                                                           \
    online(s, r, c, rmax, rsum, resc, fused);                                                                 \
  }                                                                                                           \
  attr static void shifted_##name(double *s, int64_t r, int64_t c, const double *lse)                        \
  {                                                                                                           \
    exp_shifted(s, r, c, lse, fused);                                                                         \
  }
AR_VARIANT(default, , 0)
#if AR_VARIANTS
AR_VARIANT(avx2, __attribute__((target("avx2,fma"))), 1)
AR_VARIANT(avx512f, __attribute__((target("avx512f,fma"))), 1)
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
  if (!strcmp(isa, "avx512f")) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  if (!strcmp(isa, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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
