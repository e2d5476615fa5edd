/* attnreg generate: write a planted problem (generate.c). */
#include <stdio.h>

#include "cli.h"
#include "error.h"

int ar_cmd_generate(MPI_Comm comm, int argc, char **argv)
{
  int64_t n, d, m, seed;
  double xs, noise, start;
  int self, done, quiet;
  const char *out = NULL;
  ar_option opts[] = {
      {"n", AR_OPT_INT, &n, NULL, "rows (sequence length), required", 1, 0, 0},
      {"d", AR_OPT_INT, &d, NULL, "width of A1, A2, A3, required", 1, 0, 0},
      {"m", AR_OPT_INT, &m, "0", "columns of B (0: same as d)", 0, 0, 0},
      {"seed", AR_OPT_INT, &seed, "1", "random seed", 0, 0, 0},
      {"x-scale", AR_OPT_DOUBLE, &xs, "1", "standard deviation of X_true's entries", 0, 0, 0},
      {"noise", AR_OPT_DOUBLE, &noise, "0", "standard deviation of the noise added to B", 0, 0, 0},
      {"start-noise", AR_OPT_DOUBLE, &start, "0.3", "X0 = X_true + start-noise * x-scale * N(0,1)", 0, 0, 0},
      {"self", AR_OPT_FLAG, &self, NULL, "self-attention: one shared A (A.npy)", 0, 0, 0},
      {"out", AR_OPT_STRING, &out, NULL, "output directory, required", 0, 0, 0},
      {"quiet", AR_OPT_FLAG, &quiet, NULL, "print nothing but errors", 0, 0, 0},
  };
  const int nopts = sizeof opts / sizeof opts[0];
  AR_CALL(ar_cli_parse(comm, "usage: attnreg generate --n N --d D [--m M] [--seed S] [--x-scale s] [--noise sigma]\n"
                             "                        [--start-noise eps] [--self] --out DIR",
                       opts, nopts, argc, argv, &done));
  if (done) return AR_OK;
  AR_CHECK(n >= 1, AR_ERR_USAGE, "--n is required (a positive integer)");
  AR_CHECK(d >= 1 && d <= 4096, AR_ERR_USAGE, "--d is required (an integer in [1, 4096])");
  AR_CHECK(m >= 0 && m <= 1 << 20, AR_ERR_USAGE, "--m: must be in [0, 1048576], got %lld", (long long)m);
  AR_CHECK(out, AR_ERR_USAGE, "--out is required");
  ar_generate_options g = {.n = n, .d = (int)d, .m = (int)(m ? m : d), .seed = (uint64_t)seed, .x_scale = xs,
                           .noise = noise, .start_noise = start, .self = self};
  double t0 = MPI_Wtime();
  AR_CALL(ar_generate(comm, &g, out));
  int rank;
  MPI_Comm_rank(comm, &rank);
  if (rank == 0 && !quiet)
    printf("attnreg generate: n=%lld d=%d m=%d seed=%lld%s -> %s (%.2f s)\n", (long long)n, g.d, g.m,
           (long long)seed, self ? " self-attention" : "", out, MPI_Wtime() - t0);
  return AR_OK;
}
