/* Benchmark of the softmax kernels (not a test): elements per second on one core, for every
 * instruction-set variant this CPU runs, on a buffer of one evaluator tile (R query rows x C
 * keys; the evaluator's default at n = 16384 on 2 ranks is 250 x 8192, 16 MB).
 * Usage: bench_softmax [R C [REPS]]
 * Before each timed call the tile is refilled with logits (memcpy, not timed), so a kernel finds
 * its input where the logits GEMM leaves it, and sees real logits, not its own output.  Kernels:
 *   rows_lse     the row softmax with its log-sum-exp (one rank, the fused pass)
 *   online       one chunk of the online softmax (the forward trip)
 *   exp_shifted  exp(s - lse) (the backward trip)
 *   ring         online + exp_shifted per element pair: the rate of an evaluation over a ring
 *                (each logit exponentiated once per trip), what scripts/bench-roofline uses
 * and libm's exp in a plain loop, for scale.  Last, one "result" line per variant for scripts.
 * Only softmax.h is used, so the program also builds against an older softmax.c
 * (scripts/bench-roofline --baseline REV does, for before/after in the same run). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "softmax.h"

static double now(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* logits like the evaluator's: O(1)-O(10) values (scaled A1 X A2^T), different per row */
static void fill(double *s, int64_t r, int64_t c)
{
  for (int64_t j = 0; j < r; j++)
    for (int64_t l = 0; l < c; l++) s[j * c + l] = 3.0 * sin(0.001 * (double)(l * 7 + j * 13)) + 0.5 * cos(0.37 * l);
}

enum { ROWS_LSE, ONLINE, SHIFTED, NKERNEL };
static const char *kname[NKERNEL] = {"rows_lse", "online", "exp_shifted"};

/* Best time over reps of one kernel on the tile (refilled from src before each call). */
static double time_kernel(int k, double *s, const double *src, int64_t r, int64_t c, int reps, double *lse,
                          double *rmax, double *rsum, double *resc)
{
  double best = INFINITY;
  for (int rep = 0; rep < reps; rep++) {
    memcpy(s, src, sizeof(double) * r * c);
    for (int64_t j = 0; j < r; j++) rmax[j] = -INFINITY, rsum[j] = 0;
    const double t = now();
    if (k == ROWS_LSE) ar_softmax_rows_lse(s, r, c, lse);
    if (k == ONLINE) ar_softmax_online(s, r, c, rmax, rsum, resc);
    if (k == SHIFTED) ar_softmax_exp_shifted(s, r, c, lse);
    const double dt = now() - t;
    best = dt < best ? dt : best;
  }
  return best;
}

int main(int argc, char **argv)
{
  const int64_t r = argc > 2 ? atoll(argv[1]) : 250, c = argc > 2 ? atoll(argv[2]) : 8192;
  const int reps = argc > 3 ? atoi(argv[3]) : 5;
  double *s = malloc(sizeof(double) * r * c), *src = malloc(sizeof(double) * r * c);
  double *lse = malloc(sizeof(double) * r), *rmax = malloc(sizeof(double) * r), *rsum = malloc(sizeof(double) * r);
  double *resc = malloc(sizeof(double) * r);
  if (!s || !src || !lse || !rmax || !rsum || !resc) return fprintf(stderr, "bench_softmax: out of memory\n"), 1;
  fill(src, r, c);
  const double el = (double)r * (double)c;
  printf("bench_softmax: tile %lld x %lld (%.1f MB), best of %d, Melem/s on one core\n", (long long)r, (long long)c,
         el * 8e-6, reps);
  /* libm for scale: exp(s - 3) of the tile, in place (its rate is not the project's) */
  double tl = INFINITY;
  for (int rep = 0; rep < reps; rep++) {
    memcpy(s, src, sizeof(double) * r * c);
    const double t = now();
    for (int64_t i = 0; i < r * c; i++) s[i] = exp(s[i] - 3.0);
    const double dt = now() - t;
    tl = dt < tl ? dt : tl;
  }
  printf("  %-8s %12s %12s %12s %12s\n", "variant", kname[0], kname[1], kname[2], "ring");
  static const char *isas[] = {"avx512f", "avx2", "default"};
  char results[3][256];
  int nres = 0;
  for (int v = 0; v < 3; v++) {
    if (!ar_softmax_use(isas[v])) continue;
    double t[NKERNEL];
    /* rows_lse first: exp_shifted needs its log-sum-exp */
    for (int k = 0; k < NKERNEL; k++) t[k] = time_kernel(k, s, src, r, c, reps, lse, rmax, rsum, resc);
    const double ring = 2 * el / (t[ONLINE] + t[SHIFTED]);
    printf("  %-8s %12.1f %12.1f %12.1f %12.1f\n", isas[v], el / t[0] * 1e-6, el / t[1] * 1e-6, el / t[2] * 1e-6,
           ring * 1e-6);
    snprintf(results[nres++], sizeof results[0], "result isa=%s rows=%lld cols=%lld rows_lse=%.4g online=%.4g "
             "exp_shifted=%.4g ring=%.4g libm=%.4g", isas[v], (long long)r, (long long)c, el / t[0], el / t[1],
             el / t[2], ring, el / tl);
  }
  printf("  %-8s %12.1f   (libm exp, scalar loop)\n", "libm", el / tl * 1e-6);
  for (int i = 0; i < nres; i++) printf("%s\n", results[i]);
  free(s), free(src), free(lse), free(rmax), free(rsum), free(resc);
  return 0;
}
