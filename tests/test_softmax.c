/* The vectorised exp and the row softmax against libm (not MPI). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "softmax.h"

int main(void)
{
  int fail = 0;
  double worst = 0;
  for (int i = 0; i <= 4000000; i++) {
    double x = i % 2 ? -708.0 * i / 4000000.0 : -2.0 * i / 4000000.0;
    double a = ar_exp_nonpositive(x), b = exp(x), e = fabs(a - b) / b;
    worst = e > worst ? e : worst;
  }
  if (!(worst <= 4.5e-16)) fprintf(stderr, "FAIL exp: max relative error %.3g\n", worst), fail++;
  if (ar_exp_nonpositive(0.0) != 1.0) fprintf(stderr, "FAIL exp(0) != 1\n"), fail++;
  if (!(ar_exp_nonpositive(-1e4) < 1e-300)) fprintf(stderr, "FAIL exp(-1e4) not ~0\n"), fail++;
  if (!isnan(ar_exp_nonpositive(NAN))) fprintf(stderr, "FAIL exp(nan) is not nan\n"), fail++;
  /* softmax rows with logits up to 1e3 (and one row of -inf distance): finite, sum 1, match libm */
  enum { R = 3, N = 1001 };
  static double s[R * N], ref[R * N];
  for (int j = 0; j < R; j++)
    for (int l = 0; l < N; l++) s[j * N + l] = ref[j * N + l] = (j + 1) * 1e3 * sin(0.37 * l + j);
  ar_softmax_rows(s, R, N);
  for (int j = 0; j < R; j++) {
    double mx = -INFINITY, sum = 0, tot = 0;
    for (int l = 0; l < N; l++) mx = ref[j * N + l] > mx ? ref[j * N + l] : mx;
    for (int l = 0; l < N; l++) sum += (ref[j * N + l] = exp(ref[j * N + l] - mx));
    for (int l = 0; l < N; l++) {
      ref[j * N + l] /= sum;
      tot += s[j * N + l];
      if (!(fabs(s[j * N + l] - ref[j * N + l]) <= 1e-15)) {
        fprintf(stderr, "FAIL softmax row %d col %d: %.17g vs %.17g\n", j, l, s[j * N + l], ref[j * N + l]);
        fail++;
        break;
      }
    }
    if (!(fabs(tot - 1) <= 1e-14)) fprintf(stderr, "FAIL softmax row %d sums to %.17g\n", j, tot), fail++;
  }
  printf("test_softmax: %s (max exp error %.3g, %d failed checks)\n", fail ? "FAILED" : "passed", worst, fail);
  return fail ? 1 : 0;
}
