#include "blas.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "error.h"
#include "fault.h"
#include "launch.h"

extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);

/* OpenBLAS's x86-64 cores (driver/others/dynamic.c) and the widest vectors their double
 * kernels use.  A name not listed (another architecture, a newer library) is never judged. */
static const struct {
  const char *name;
  ar_isa isa;
} cores[] = {
    {"Katmai", AR_ISA_SSE},      {"Coppermine", AR_ISA_SSE},   {"Northwood", AR_ISA_SSE},
    {"Prescott", AR_ISA_SSE},    {"Banias", AR_ISA_SSE},       {"Atom", AR_ISA_SSE},
    {"Core2", AR_ISA_SSE},       {"Penryn", AR_ISA_SSE},       {"Dunnington", AR_ISA_SSE},
    {"Nehalem", AR_ISA_SSE},     {"Athlon", AR_ISA_SSE},       {"Opteron", AR_ISA_SSE},
    {"Opteron_SSE3", AR_ISA_SSE}, {"Barcelona", AR_ISA_SSE},   {"Nano", AR_ISA_SSE},
    {"Bobcat", AR_ISA_SSE},      {"Sandybridge", AR_ISA_AVX},  {"Bulldozer", AR_ISA_AVX},
    {"Piledriver", AR_ISA_AVX},  {"Steamroller", AR_ISA_AVX},  {"Excavator", AR_ISA_AVX2},
    {"Haswell", AR_ISA_AVX2},    {"Zen", AR_ISA_AVX2},         {"SkylakeX", AR_ISA_AVX512},
    {"Cooperlake", AR_ISA_AVX512}, {"SapphireRapids", AR_ISA_AVX512},
};

static char refused[512];

void ar_blas_set_refused(const char *why) { snprintf(refused, sizeof refused, "%s", why ? why : ""); }

const char *ar_isa_name(ar_isa isa)
{
  static const char *names[] = {"unknown", "SSE", "AVX", "AVX2", "AVX-512"};
  return names[isa];
}

/* The CPU's level as the compiler's runtime checks see it: they include the OS's consent
 * (XGETBV), so AVX-512 counts only where its registers are saved on a context switch.  AVX-512
 * means the subsets OpenBLAS's SkylakeX kernels use (not e.g. Xeon Phi's F + CD only). */
static ar_isa cpu_isa(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd"))
    return AR_ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return AR_ISA_AVX2;
  if (__builtin_cpu_supports("avx")) return AR_ISA_AVX;
  return AR_ISA_SSE;
#else
  return AR_ISA_UNKNOWN;
#endif
}

void ar_blas_info_get(ar_blas_info *b)
{
  memset(b, 0, sizeof *b);
  const char *core = openblas_get_corename();
  snprintf(b->core, sizeof b->core, "%s", core ? core : "unknown");
  b->threads = openblas_get_num_threads();
  for (size_t i = 0; i < sizeof cores / sizeof cores[0]; i++)
    if (!strcasecmp(b->core, cores[i].name)) b->core_isa = cores[i].isa;
  b->cpu_isa = cpu_isa();
  const char *env = getenv("OPENBLAS_CORETYPE");
  b->coretype = env && *env ? env : NULL;
  /* One fitting name per level: SkylakeX's kernels are the fastest AVX-512 ones here (76 GFLOP/s
   * against Cooperlake's 62 on a Xeon with both), Haswell's run on every AVX2 + FMA CPU. */
  if (b->core_isa != AR_ISA_UNKNOWN && b->core_isa < b->cpu_isa && b->cpu_isa >= AR_ISA_AVX2)
    b->fit = b->cpu_isa == AR_ISA_AVX512 ? "SkylakeX" : "Haswell";
  const char *test = getenv("ATTNREG_REEXEC_TEST_CORE"); /* test-only (blas.h) */
  if (test && *test && strcasecmp(test, b->core)) b->fit = test;
  const char *from = getenv("ATTNREG_REEXEC");
  b->reexec = b->coretype && from && !strncmp(from, "from-", 5) && from[5] ? from + 5 : NULL;
  b->refused = refused[0] ? refused : NULL;
}

/* Deterministic values in [-1, 1). */
static void fill(double *a, size_t n, unsigned seed)
{
  unsigned long long s = 0x9e3779b97f4a7c15ULL * (seed + 1);
  for (size_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    a[i] = (double)(s >> 11) / 4503599627370496.0 - 1.0;
  }
}

/* One DGEMM against the triple loop: the error of each entry relative to the rounding bound
 * gamma_k * (|alpha| |A||B| + |beta| |C|), with gamma_k = 2 (k + 2) eps (a factor 2 of room for
 * the kernels' order of summation).  Row-major, as attnreg calls it. */
static double gemm_error(int transa, int transb, int m, int n, int k, double alpha, double beta, unsigned seed)
{
  double *a = malloc(sizeof(double) * m * k), *b = malloc(sizeof(double) * k * n);
  double *c = malloc(sizeof(double) * m * n), *c0 = malloc(sizeof(double) * m * n);
  if (!a || !b || !c || !c0) {
    free(a), free(b), free(c), free(c0);
    return INFINITY;
  }
  fill(a, (size_t)m * k, seed), fill(b, (size_t)k * n, seed + 1), fill(c0, (size_t)m * n, seed + 2);
  memcpy(c, c0, sizeof(double) * m * n);
  const int lda = transa ? m : k, ldb = transb ? k : n; /* A is m x k, stored transposed if transa */
  cblas_dgemm(CblasRowMajor, transa ? CblasTrans : CblasNoTrans, transb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a,
              lda, b, ldb, beta, c, n);
  if (ar_fault("blas-check")) c[(size_t)m * n / 2] += 1e-6; /* test hook (fault.h): a wrong kernel */
  double worst = 0;
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) {
      double s = 0, bound = 0;
      for (int p = 0; p < k; p++) {
        double x = transa ? a[p * lda + i] : a[i * lda + p], y = transb ? b[j * ldb + p] : b[p * ldb + j];
        s += x * y, bound += fabs(x * y);
      }
      const double ref = alpha * s + beta * c0[i * n + j];
      bound = 2.0 * (k + 2) * DBL_EPSILON * (fabs(alpha) * bound + fabs(beta * c0[i * n + j])) + DBL_MIN;
      const double e = fabs(c[i * n + j] - ref) / bound;
      if (!(e <= worst)) worst = e; /* NaN counts as the worst */
    }
  free(a), free(b), free(c), free(c0);
  return worst;
}

/* dpotrf of a well-conditioned SPD matrix (A = M M^T / n + I, eigenvalues in [1, ~2.4]) against
 * the plain column-by-column Cholesky: forward errors are then a few n eps; the tolerance is
 * 8 n eps times max |L|.  n = 256 takes OpenBLAS's blocked path (TRSM, SYRK and GEMM kernels). */
static double cholesky_error(int n, unsigned seed)
{
  double *m = malloc(sizeof(double) * n * n), *a = malloc(sizeof(double) * n * n), *l = malloc(sizeof(double) * n * n);
  if (!m || !a || !l) {
    free(m), free(a), free(l);
    return INFINITY;
  }
  fill(m, (size_t)n * n, seed);
  for (int i = 0; i < n; i++)
    for (int j = 0; j <= i; j++) {
      double s = 0;
      for (int p = 0; p < n; p++) s += m[i * n + p] * m[j * n + p];
      a[i + j * n] = a[j + i * n] = s / n + (i == j);
    }
  memcpy(l, a, sizeof(double) * n * n);
  int info = 0;
  dpotrf_("L", &n, l, &n, &info); /* column-major lower triangle: l[i + j n], i >= j */
  if (ar_fault("blas-check-cholesky")) l[(n - 1) + n / 2 * n] *= 1 + 1e-9; /* test hook (fault.h): a wrong L */
  if (info != 0) {
    free(m), free(a), free(l);
    return INFINITY;
  }
  /* The reference factor, in place of a's lower triangle. */
  for (int j = 0; j < n; j++) {
    double d = a[j + j * n];
    for (int p = 0; p < j; p++) d -= a[j + p * n] * a[j + p * n];
    a[j + j * n] = sqrt(d);
    for (int i = j + 1; i < n; i++) {
      double s = a[i + j * n];
      for (int p = 0; p < j; p++) s -= a[i + p * n] * a[j + p * n];
      a[i + j * n] = s / a[j + j * n];
    }
  }
  double lmax = 0, worst = 0;
  for (int j = 0; j < n; j++)
    for (int i = j; i < n; i++) lmax = fmax(lmax, fabs(a[i + j * n]));
  for (int j = 0; j < n; j++)
    for (int i = j; i < n; i++) {
      const double e = fabs(l[i + j * n] - a[i + j * n]) / (8.0 * n * DBL_EPSILON * lmax);
      if (!(e <= worst)) worst = e;
    }
  free(m), free(a), free(l);
  return worst;
}

int ar_blas_check(double *worst_out)
{
  ar_blas_info b;
  ar_blas_info_get(&b);
  if (worst_out) *worst_out = 0;
  AR_CHECK(!b.coretype || !strcasecmp(b.coretype, b.core), AR_ERR_LIB,
           "OPENBLAS_CORETYPE=%s, but OpenBLAS runs its %s kernels (it does not know that name)", b.coretype, b.core);
  /* Shapes that exercise the kernels' edges (sizes not multiples of any unroll), every
   * transposition, alpha and beta; the first is large enough for packing and blocking. */
  static const struct {
    int ta, tb, m, n, k;
    double alpha, beta;
  } g[] = {{0, 0, 256, 256, 256, 1.0, 0.0},
           {0, 1, 67, 45, 83, -0.7, 0.3},
           {1, 0, 131, 9, 200, 1.3, 1.0},
           {1, 1, 33, 97, 5, 0.5, -2.0}};
  double worst = 0;
  for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
    const double e = gemm_error(g[i].ta, g[i].tb, g[i].m, g[i].n, g[i].k, g[i].alpha, g[i].beta, (unsigned)(3 * i));
    AR_CHECK(e < 1, AR_ERR_LIB,
             "BLAS self-check failed on OpenBLAS core %s: DGEMM %c%c %dx%dx%d differs from the reference loop by %.3g "
             "times its rounding bound",
             b.core, g[i].ta ? 'T' : 'N', g[i].tb ? 'T' : 'N', g[i].m, g[i].n, g[i].k, e);
    worst = fmax(worst, e);
  }
  const double e = cholesky_error(256, 11);
  AR_CHECK(e < 1, AR_ERR_LIB,
           "BLAS self-check failed on OpenBLAS core %s: Cholesky (dpotrf, n=256) differs from the reference loop by "
           "%.3g times its tolerance", b.core, e);
  if (worst_out) *worst_out = fmax(worst, e);
  return AR_OK;
}

static double now(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

double ar_blas_dgemm_gflops(int n, int reps)
{
  double *a = malloc(sizeof(double) * n * n), *b = malloc(sizeof(double) * n * n), *c = calloc((size_t)n * n, sizeof(double));
  double best = INFINITY;
  if (a && b && c) {
    fill(a, (size_t)n * n, 1), fill(b, (size_t)n * n, 2);
    for (int r = 0; r < reps; r++) {
      double t = now();
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
      best = fmin(best, now() - t);
    }
  }
  free(a), free(b), free(c);
  return 2.0 * n * n * (double)n / best * 1e-9;
}

void ar_blas_print(FILE *f, const char *prefix)
{
  ar_blas_info b;
  ar_blas_info_get(&b);
  fprintf(f, "%sblas = OpenBLAS core %s, %d thread%s%s%s%s\n", prefix, b.core, b.threads, b.threads == 1 ? "" : "s",
          b.reexec ? " (re-executed from " : "", b.reexec ? b.reexec : "", b.reexec ? ")" : "");
  const char *pml;
  fprintf(f, "%smpi = %s\n", prefix, ar_launch_describe(&pml));
  if (b.reexec)
    fprintf(stderr,
            "attnreg: note: OpenBLAS chose its %s kernels; attnreg re-executed itself with OPENBLAS_CORETYPE=%s (%s "
            "kernels, CPU %s), which passed the self-check (ATTNREG_NO_REEXEC=1 turns this off)\n",
            b.reexec, b.core, ar_isa_name(b.core_isa), ar_isa_name(b.cpu_isa));
  else if (b.fit)
    fprintf(stderr,
            "attnreg: warning: OpenBLAS runs its %s kernels (%s%s%s) on a CPU with %s: %s%s%sset OPENBLAS_CORETYPE=%s "
            "for its %s kernels (attnreg blas --check tests them; scripts/env.sh and slurm/*.sbatch choose them)\n",
            b.core, ar_isa_name(b.core_isa), b.coretype ? ", OPENBLAS_CORETYPE=" : "", b.coretype ? b.coretype : "",
            ar_isa_name(b.cpu_isa), b.refused ? "not re-executed, as " : "", b.refused ? b.refused : "",
            b.refused ? "; " : "", b.fit, ar_isa_name(b.cpu_isa));
}
