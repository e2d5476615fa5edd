/* The vectorised exp and the row softmax against libm (not MPI), for every instruction-set
 * variant this CPU can run (AVX-512, AVX2, baseline; softmax.c picks one at run time, so a test
 * of the host's choice alone would leave the others untested).  The variants must also agree
 * bit for bit: the same operations in the same order, whatever the vector width. */
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
  int fail = 0, ran[3] = {0}, first = -1;
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
    if (first < 0) {
      first = v;
    } else {
      if (memcmp(exps[v], exps[first], sizeof(double) * NX))
        fprintf(stderr, "FAIL exp of %s and %s differ\n", isas[v], isas[first]), fail++;
      if (memcmp(soft[v], soft[first], sizeof(double) * R * N))
        fprintf(stderr, "FAIL softmax of %s and %s differ\n", isas[v], isas[first]), fail++;
    }
  }
  printf("test_softmax: %s (%d failed checks)\n", fail ? "FAILED" : "passed", fail);
  return fail ? 1 : 0;
}
