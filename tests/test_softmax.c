/* The softmax kernels against libm (not MPI), for every instruction-set variant this CPU can
 * run (AVX-512, AVX2, baseline; softmax.c picks one at run time, so a test of the host's choice
 * alone would leave the others untested): the vectorised exp, the row softmax, the row softmax
 * with its log-sum-exp (rows_lse), the online softmax over chunks of a row (online) and the
 * probabilities again from a saved log-sum-exp (exp_shifted).  The vector variants (FMA) must
 * also agree bit for bit: the same operations in the same order, whatever the vector width; the
 * baseline rounds its multiply-adds in two steps (softmax.c), so it is held to the bounds alone. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "softmax.h"

enum { R = 5, N = 1001, NX = 4000001 };

/* logits: rows 0-2 up to 1e3 in size; row 3 with -inf entries (masked positions); row 4 all
 * equal except one entry 1e3 above the rest (a one-hot row) */
static void logits(double *s)
{
  for (int j = 0; j < R; j++)
    for (int l = 0; l < N; l++) {
      double v = (j % 3 + 1) * 1e3 * sin(0.37 * l + j);
      if (j == 3 && l % 3 == 0) v = -INFINITY;
      if (j == 4) v = l == 500 ? 1e3 : -2.5;
      s[j * N + l] = v;
    }
}

/* Chunks of a row for the online softmax: short and long ones, not multiples of the vector
 * width; none of row 3's chunks is masked throughout (a chunk of -inf only is not a case the
 * evaluator makes). */
static const int chunks[] = {7, 1, 64, 129, 3, 300, 497};
enum { NCHUNK = sizeof chunks / sizeof chunks[0] };

/* What a variant's kernels write, compared bit for bit across the variants. */
typedef struct {
  double lse[R], rows_lse[R * N], online[R * N], rmax[R], rsum[R], rescale[NCHUNK * R], shifted[R * N];
} kernel_out;

/* The reference: softmax probabilities and log-sum-exp of the logits, in long double. */
static void reference(double *p, double *lse)
{
  double s[R * N];
  logits(s);
  for (int j = 0; j < R; j++) {
    long double mx = -INFINITY, sum = 0;
    for (int l = 0; l < N; l++) mx = s[j * N + l] > mx ? s[j * N + l] : mx;
    for (int l = 0; l < N; l++) sum += expl(s[j * N + l] - mx);
    for (int l = 0; l < N; l++) p[j * N + l] = (double)(expl(s[j * N + l] - mx) / sum);
    lse[j] = (double)(mx + logl(sum));
  }
}

static int close_to(double a, double b, double tol) { return fabs(a - b) <= tol * (fabs(b) > 1 ? fabs(b) : 1); }

/* rows_lse, online and exp_shifted of one variant against the reference; outputs into o. */
static int check_kernels(const char *isa, kernel_out *o)
{
  int fail = 0;
  static double p[R * N], lse[R], s[R * N];
  reference(p, lse);
  /* rows_lse: the probabilities of ar_softmax_rows, bit for bit, and the log-sum-exp */
  logits(o->rows_lse);
  ar_softmax_rows_lse(o->rows_lse, R, N, o->lse);
  logits(s);
  ar_softmax_rows(s, R, N);
  if (memcmp(s, o->rows_lse, sizeof s)) fprintf(stderr, "FAIL %s rows_lse: probabilities differ from rows\n", isa), fail++;
  for (int j = 0; j < R; j++)
    if (!close_to(o->lse[j], lse[j], 1e-15))
      fprintf(stderr, "FAIL %s rows_lse row %d: lse %.17g vs %.17g\n", isa, j, o->lse[j], lse[j]), fail++;
  /* online: chunk by chunk, each chunk becomes exp(s - running max); at the end the running max
   * is the row's, max + log(sum) its log-sum-exp, and the chunks rescaled by the later factors
   * and divided by the sum are the probabilities */
  logits(s);
  for (int j = 0; j < R; j++) o->rmax[j] = -INFINITY, o->rsum[j] = 0;
  double buf[R * N], mx[R];
  for (int j = 0; j < R; j++) mx[j] = -INFINITY;
  for (int k = 0, l0 = 0; k < NCHUNK; l0 += chunks[k], k++) {
    const int c = chunks[k];
    for (int j = 0; j < R; j++) memcpy(buf + j * c, s + j * N + l0, sizeof(double) * c);
    ar_softmax_online(buf, R, c, o->rmax, o->rsum, o->rescale + k * R);
    for (int j = 0; j < R; j++) {
      const double old = mx[j];
      for (int l = 0; l < c; l++) mx[j] = s[j * N + l0 + l] > mx[j] ? s[j * N + l0 + l] : mx[j];
      const double want = k == 0 ? 0 : old == mx[j] ? 1 : exp(old - mx[j]), got = o->rescale[k * R + j];
      if (!close_to(got, want, 1e-15) || o->rmax[j] != mx[j])
        fprintf(stderr, "FAIL %s online row %d chunk %d: rescale %.17g vs %.17g, max %.17g vs %.17g\n", isa, j, k,
                got, want, o->rmax[j], mx[j]), fail++;
      for (int l = 0; l < c; l++) {
        const double e = exp(s[j * N + l0 + l] - mx[j]);
        if (!close_to(buf[j * c + l], e, 4.5e-16)) {
          fprintf(stderr, "FAIL %s online row %d col %d: %.17g vs exp %.17g\n", isa, j, l0 + l, buf[j * c + l], e);
          fail++;
          break;
        }
      }
      for (int l = 0; l < c; l++) o->online[j * N + l0 + l] = buf[j * c + l];
    }
  }
  for (int j = 0; j < R; j++) {
    if (!close_to(o->rmax[j] + log(o->rsum[j]), lse[j], 1e-15))
      fprintf(stderr, "FAIL %s online row %d: lse %.17g vs %.17g\n", isa, j, o->rmax[j] + log(o->rsum[j]), lse[j]),
          fail++;
    double later = 1; /* the product of the rescale factors of the chunks after the current one */
    for (int k = NCHUNK - 1, l1 = N; k >= 0; l1 -= chunks[k], later *= k > 0 ? o->rescale[k * R + j] : 1, k--)
      for (int l = l1 - chunks[k]; l < l1; l++) {
        const double q = o->online[j * N + l] * later / o->rsum[j];
        if (!(fabs(q - p[j * N + l]) <= 1e-15)) {
          fprintf(stderr, "FAIL %s online row %d col %d: probability %.17g vs %.17g\n", isa, j, l, q, p[j * N + l]);
          fail++;
          k = 0;
          break;
        }
      }
  }
  /* exp_shifted: exp(s - lse) from the log-sum-exp of rows_lse gives the probabilities again, to
   * the rounding of s - lse (relative eps (|s| + |lse|): 1e-13 for logits of 1e3); masked
   * entries (almost) 0, as ar_exp_nonpositive(-inf) */
  logits(s);
  logits(o->shifted);
  ar_softmax_exp_shifted(o->shifted, R, N, o->lse);
  for (int j = 0; j < R * N; j++)
    if (isinf(s[j]) ? !(o->shifted[j] >= 0 && o->shifted[j] < 1e-300)
                    : !(fabs(o->shifted[j] - p[j]) <=
                        4 * DBL_EPSILON * (fabs(s[j]) + fabs(o->lse[j / N]) + 1) * p[j] + 1e-300)) {
      fprintf(stderr, "FAIL %s exp_shifted row %d col %d: %.17g vs %.17g\n", isa, j / N, j % N, o->shifted[j], p[j]);
      fail++;
      break;
    }
  printf("  %-8s rows_lse, online (%d chunks), exp_shifted: %d failed checks\n", isa, NCHUNK, fail);
  return fail;
}

static double xs(int i) { return i % 2 ? -708.0 * i / (NX - 1) : -2.0 * i / (NX - 1); }

/* All checks of one variant; its outputs go to exps (NX) and soft (R x N). */
static int check_variant(const char *isa, double *exps, double *soft)
{
  int fail = 0;
  double worst = 0;
  for (int i = 0; i < NX; i++) {
    double a = ar_exp_nonpositive(xs(i)), b = exp(xs(i)), e = fabs(a - b) / b;
    exps[i] = a;
    worst = e > worst ? e : worst;
  }
  if (!(worst <= 4.5e-16)) fprintf(stderr, "FAIL %s exp: max relative error %.3g\n", isa, worst), fail++;
  if (ar_exp_nonpositive(0.0) != 1.0) fprintf(stderr, "FAIL %s exp(0) != 1\n", isa), fail++;
  if (!(ar_exp_nonpositive(-1e4) < 1e-300)) fprintf(stderr, "FAIL %s exp(-1e4) not ~0\n", isa), fail++;
  if (!(ar_exp_nonpositive(-INFINITY) < 1e-300)) fprintf(stderr, "FAIL %s exp(-inf) not ~0\n", isa), fail++;
  if (!isnan(ar_exp_nonpositive(NAN))) fprintf(stderr, "FAIL %s exp(nan) is not nan\n", isa), fail++;
  static double ref[R * N];
  logits(soft);
  logits(ref);
  ar_softmax_rows(soft, R, N);
  for (int j = 0; j < R; j++) {
    double mx = -INFINITY, sum = 0, tot = 0;
    for (int l = 0; l < N; l++) mx = ref[j * N + l] > mx ? ref[j * N + l] : mx;
    for (int l = 0; l < N; l++) sum += (ref[j * N + l] = exp(ref[j * N + l] - mx));
    for (int l = 0; l < N; l++) {
      ref[j * N + l] /= sum;
      tot += soft[j * N + l];
      if (!(fabs(soft[j * N + l] - ref[j * N + l]) <= 1e-15)) {
        fprintf(stderr, "FAIL %s softmax row %d col %d: %.17g vs %.17g\n", isa, j, l, soft[j * N + l], ref[j * N + l]);
        fail++;
        break;
      }
    }
    if (!(fabs(tot - 1) <= 1e-14)) fprintf(stderr, "FAIL %s softmax row %d sums to %.17g\n", isa, j, tot), fail++;
  }
  for (int l = 0; l < N; l += 3) /* the masked entries: (almost) zero, never NaN */
    if (!(soft[3 * N + l] >= 0 && soft[3 * N + l] < 1e-300))
      fprintf(stderr, "FAIL %s masked entry %d is %.17g\n", isa, l, soft[3 * N + l]), fail++;
  printf("  %-8s max exp error %.3g, %d failed checks\n", isa, worst, fail);
  return fail;
}

int main(void)
{
  static const char *isas[3] = {"avx512f", "avx2", "default"};
  double *exps[3], *soft[3];
  static kernel_out kout[3];
  _Static_assert(7 + 1 + 64 + 129 + 3 + 300 + 497 == N, "the chunks cover a row");
  /* the variants that must agree bit for bit: the ones with FMA, and the baseline alone */
  static const int group[3] = {1, 1, 0};
  int fail = 0, ran[3] = {0}, first[2] = {-1, -1};
  /* the variants built here: softmax.c makes the vector ones with GCC on x86-64, not under ASan */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
  __builtin_cpu_init();
  const int runnable[3] = {!!__builtin_cpu_supports("avx512f"), !!__builtin_cpu_supports("avx2"), 1};
#else
  const int runnable[3] = {0, 0, 1};
#endif
  printf("test_softmax: variant in use by default: %s\n", ar_softmax_isa());
  for (int v = 0; v < 3; v++) {
    exps[v] = malloc(sizeof(double) * NX), soft[v] = malloc(sizeof(double) * R * N);
    ran[v] = ar_softmax_use(isas[v]);
    if (ran[v] != runnable[v]) fprintf(stderr, "FAIL variant %s: selectable %d, CPU and build say %d\n", isas[v],
                                       ran[v], runnable[v]), fail++;
    if (!ran[v]) {
      printf("  %-8s not built or not supported by this CPU: skipped\n", isas[v]);
      continue;
    }
    if (strcmp(ar_softmax_isa(), isas[v])) fprintf(stderr, "FAIL %s selected, %s in use\n", isas[v], ar_softmax_isa()), fail++;
    fail += check_variant(isas[v], exps[v], soft[v]);
    fail += check_kernels(isas[v], &kout[v]);
    const int f = first[group[v]];
    if (f < 0) {
      first[group[v]] = v;
    } else {
      if (memcmp(exps[v], exps[f], sizeof(double) * NX))
        fprintf(stderr, "FAIL exp of %s and %s differ\n", isas[v], isas[f]), fail++;
      if (memcmp(soft[v], soft[f], sizeof(double) * R * N))
        fprintf(stderr, "FAIL softmax of %s and %s differ\n", isas[v], isas[f]), fail++;
      if (memcmp(&kout[v], &kout[f], sizeof kout[v]))
        fprintf(stderr, "FAIL rows_lse, online or exp_shifted of %s and %s differ\n", isas[v], isas[f]), fail++;
      printf("  %-8s agrees bit for bit with %s\n", isas[v], isas[f]);
    }
  }
  int nran = 0;
  for (int v = 0; v < 3; v++) nran += ran[v];
  if (nran < 1) fprintf(stderr, "FAIL no variant ran\n"), fail++;
  printf("test_softmax: %d variants, %s (%d failed checks)\n", nran, fail ? "FAILED" : "passed", fail);
  return fail ? 1 : 0;
}
