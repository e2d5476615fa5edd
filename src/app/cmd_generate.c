/* attnreg generate: write a planted problem (generate.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "error.h"
#include "npy.h"

/* --segments SPEC: K (K sequences of equal length, as even as n allows), a list of lengths
 * "L1,L2,...", or an offsets file (.npy).  *off: K + 1 offsets (caller frees). */
static int parse_segments(const char *spec, int64_t n, int64_t **off, int64_t *K)
{
  *off = NULL, *K = 0;
  const size_t len = strlen(spec);
  if (len > 4 && !strcmp(spec + len - 4, ".npy")) {
    ar_npy_header h;
    AR_CALL(ar_npy_read_int64(spec, &h, off));
    *K = h.rows - 1;
    return ar_mask_check(spec, n, *off, *K);
  }
  if (!strchr(spec, ',')) {
    char *end;
    const long long k = strtoll(spec, &end, 10);
    AR_CHECK(*end == 0 && k >= 1 && k <= n, AR_ERR_USAGE,
             "--segments %s: need a count in [1, n = %lld], lengths L1,L2,... or an offsets .npy file", spec,
             (long long)n);
    AR_MALLOC(*off, k + 1);
    for (long long s = 0; s < k; s++) ar_partition(n, (int)k, (int)s, &(*off)[s], &(*off)[s + 1]);
    *K = k;
    return AR_OK;
  }
  int64_t cap = 1;
  for (const char *p = spec; *p; p++) cap += *p == ',';
  AR_MALLOC(*off, cap + 1);
  const char *p = spec;
  for (int64_t s = 0; s < cap; s++) {
    char *end;
    const long long l = strtoll(p, &end, 10);
    if (!(end > p && l >= 1 && (*end == ',' || *end == 0))) {
      free(*off), *off = NULL;
      return AR_ERROR(AR_ERR_USAGE, "--segments %s: length %lld is not a positive integer", spec, (long long)(s + 1));
    }
    (*off)[s + 1] = (*off)[s] + l, p = end + 1;
  }
  *K = cap;
  if ((*off)[cap] != n) {
    const long long sum = (long long)(*off)[cap];
    free(*off), *off = NULL;
    return AR_ERROR(AR_ERR_USAGE, "--segments %s: the lengths add up to %lld, not n = %lld", spec, sum, (long long)n);
  }
  return AR_OK;
}

int ar_cmd_generate(MPI_Comm comm, int argc, char **argv)
{
  int64_t n = 0, d = 0, m = 0, seed = 1;
  double xs = 1, noise = 0, start = 0.3;
  int self = 0, done, quiet = 0, causal = 0;
  const char *out = NULL, *segments = NULL;
  ar_option opts[] = {
      {"n", AR_OPT_INT64, &n, "rows (sequence length), required", NULL, 1},
      {"d", AR_OPT_INT64, &d, "width of A1, A2, A3, required", NULL, 1},
      {"m", AR_OPT_INT64, &m, "columns of B (0: same as d)", "0"},
      {"seed", AR_OPT_INT64, &seed, "random seed"},
      {"x-scale", AR_OPT_DOUBLE, &xs, "standard deviation of X_true's entries"},
      {"noise", AR_OPT_DOUBLE, &noise, "standard deviation of the noise added to B", "0"},
      {"start-noise", AR_OPT_DOUBLE, &start, "X0 = X_true + start-noise * x-scale * N(0,1)", "0"},
      {"self", AR_OPT_FLAG, &self, "self-attention: one shared A (A.npy)"},
      {"segments", AR_OPT_STRING, &segments,
       "packed sequences (a calibration set): K of equal length, lengths L1,L2,..., or an offsets .npy; B is "
       "computed per sequence and segments.npy written", "one sequence"},
      {"causal", AR_OPT_FLAG, &causal, "B with a causal mask (row i attends to rows k <= i of its sequence)"},
      {"out", AR_OPT_STRING, &out, "output directory, required"},
      {"quiet", AR_OPT_FLAG, &quiet, "print nothing but errors"},
  };
  const int nopts = sizeof opts / sizeof opts[0];
  AR_CALL(ar_cli_parse(comm, "usage: attnreg generate --n N --d D [--m M] [--seed S] [--x-scale s] [--noise sigma]\n"
                             "                        [--start-noise eps] [--self] [--segments K|L1,L2,..|FILE] "
                             "[--causal] --out DIR",
                       opts, nopts, argc, argv, &done));
  if (done) return AR_OK;
  AR_CHECK(n >= 1, AR_ERR_USAGE, "--n is required (a positive integer)");
  AR_CHECK(d >= 1 && d <= 4096, AR_ERR_USAGE, "--d is required (an integer in [1, 4096])");
  AR_CHECK(m >= 0 && m <= 1 << 20, AR_ERR_USAGE, "--m: must be in [0, 1048576], got %lld", (long long)m);
  AR_CHECK(out, AR_ERR_USAGE, "--out is required");
  int64_t *off = NULL, K = 0;
  if (segments) AR_CALL(parse_segments(segments, n, &off, &K));
  ar_generate_options g = {.n = n, .d = (int)d, .m = (int)(m ? m : d), .seed = (uint64_t)seed, .x_scale = xs,
                           .noise = noise, .start_noise = start, .self = self, .mask = {K, off, causal, 0}};
  double t0 = MPI_Wtime();
  const int err = ar_generate(comm, &g, out);
  free(off);
  AR_CALL(err);
  int rank;
  MPI_Comm_rank(comm, &rank);
  if (rank == 0 && !quiet)
    printf("attnreg generate: n=%lld d=%d m=%d seed=%lld%s%s%s -> %s (%.2f s)\n", (long long)n, g.d, g.m,
           (long long)seed, self ? " self-attention" : "", K > 1 ? ", segmented" : "", causal ? ", causal" : "", out,
           MPI_Wtime() - t0);
  return AR_OK;
}
