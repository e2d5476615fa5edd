/* Benchmark of DGEMM at the evaluator's shapes (not a test): GFLOP/s on one core for the GEMMs
 * one tile of R query rows makes against a chunk of C keys in an evaluation with the exact
 * Hessian over a ring (src/eval/eval.c: forward and backward trip), and for 2048^3 (the machine's
 * DGEMM peak, as scripts/bench-eval measures it).
 * Usage: bench_gemm R C D M [REPS] [exact|gauss-newton|none]   (the Hessian of the evaluation;
 *        without one the forward and backward products carry only A3 and A2: d columns each)
 *   logits   S  = (A1 X)_t A2_c^T        R x C x D, once per trip (twice)
 *   fwd      fwd += exp(S) [A3|A2|R23]_c  R x (2D + D^2) x C
 *   resid    U  = C_t V_c^T              R x C x M
 *   bwd      bwd += W [A2|R22]_c          R x (D + D(D+1)/2) x C
 *   mix      all of them in that proportion: the rate scripts/bench-roofline divides the
 *            counted flops by (the per-row work after the trips is a few percent at most)
 * Last, one "result" line for scripts. */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double *randm(int64_t n)
{
  double *a = malloc(sizeof(double) * (size_t)n);
  for (int64_t i = 0; a && i < n; i++) a[i] = sin(0.7 * (double)i) * 0.5;
  return a;
}

/* Best time of C (M x N) = A (M x K) op(B) over reps; bt: B is N x K (transposed). */
static double time_gemm(int64_t M, int64_t N, int64_t K, int bt, int reps, double beta)
{
  double *a = randm(M * K), *b = randm(K * N), *c = randm(M * N), best = INFINITY;
  if (!a || !b || !c) fprintf(stderr, "bench_gemm: out of memory\n"), exit(1);
  for (int r = 0; r < reps; r++) {
    const double t = now();
    cblas_dgemm(CblasRowMajor, CblasNoTrans, bt ? CblasTrans : CblasNoTrans, M, N, K, 1.0, a, K, b, bt ? K : N, beta,
                c, N);
    const double dt = now() - t;
    best = dt < best ? dt : best;
  }
  free(a), free(b), free(c);
  return best;
}

int main(int argc, char **argv)
{
  if (argc < 5) return fprintf(stderr, "usage: bench_gemm R C D M [REPS]\n"), 2;
  const int64_t R = atoll(argv[1]), C = atoll(argv[2]), D = atoll(argv[3]), M = atoll(argv[4]);
  const int reps = argc > 5 ? atoi(argv[5]) : 5;
  const char *kind = argc > 6 ? argv[6] : "exact";
  const int hess = strcmp(kind, "none") != 0, exact = strcmp(kind, "exact") == 0;
  if (hess && !exact && strcmp(kind, "gauss-newton") != 0)
    return fprintf(stderr, "bench_gemm: unknown Hessian '%s' (exact|gauss-newton|none)\n", kind), 2;
  const int64_t lda = hess ? 2 * D + D * D : D, ldb = exact ? D + D * (D + 1) / 2 : D;
  struct {
    const char *name;
    int64_t m, n, k;
    int bt, times;
    double beta;
  } g[] = {{"logits", R, C, D, 1, 2, 0.0}, {"fwd", R, lda, C, 0, 1, 1.0}, {"resid", R, C, M, 1, 1, 0.0},
           {"bwd", R, ldb, C, 0, 1, 1.0}};
  const int ng = sizeof g / sizeof g[0];
  printf("bench_gemm: one tile %lld x chunk %lld, d=%lld m=%lld, Hessian %s, best of %d, one core\n", (long long)R,
         (long long)C, (long long)D, (long long)M, kind, reps);
  double fl = 0, tt = 0;
  for (int i = 0; i < ng; i++) {
    const double t = time_gemm(g[i].m, g[i].n, g[i].k, g[i].bt, reps, g[i].beta),
                 f = 2.0 * g[i].m * g[i].n * g[i].k;
    printf("  %-7s %6lld x %6lld x %6lld  x%d  %8.2f GFLOP/s\n", g[i].name, (long long)g[i].m, (long long)g[i].n,
           (long long)g[i].k, g[i].times, f / t * 1e-9);
    fl += g[i].times * f, tt += g[i].times * t;
  }
  const double peak = 2.0 * 2048 * 2048 * 2048 / time_gemm(2048, 2048, 2048, 0, reps < 3 ? reps : 3, 0.0);
  printf("  %-7s %27s  %8.2f GFLOP/s\n  %-7s %27s  %8.2f GFLOP/s\n", "mix", "", fl / tt * 1e-9, "2048^3", "",
         peak * 1e-9);
  printf("result rows=%lld cols=%lld d=%lld m=%lld mix=%.4g peak=%.4g\n", (long long)R, (long long)C, (long long)D,
         (long long)M, fl / tt, peak);
  return 0;
}
