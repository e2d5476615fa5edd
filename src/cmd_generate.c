/* attnreg generate: write a planted problem (generate.c). */
#include <stdio.h>

#include "cli.h"
#include "commands.h"
#include "error.h"

int ar_cmd_generate(MPI_Comm comm, int argc, char **argv)
{
  int64_t n = 0, d = 0, m = 0, seed = 1;
  double xs = 1, noise = 0, start = 0.3;
  int self = 0, done, quiet = 0;
  const char *out = NULL;
  ar_option opts[] = {
      {"n", AR_OPT_INT64, &n, "rows (sequence length), required", NULL, 1},
      {"d", AR_OPT_INT64, &d, "width of A1, A2, A3, required", NULL, 1},
      {"m", AR_OPT_INT64, &m, "columns of B (0: same as d)", "0"},
      {"seed", AR_OPT_INT64, &seed, "random seed"},
      {"x-scale", AR_OPT_DOUBLE, &xs, "standard deviation of X_true's entries"},
      {"noise", AR_OPT_DOUBLE, &noise, "standard deviation of the noise added to B", "0"},
      {"start-noise", AR_OPT_DOUBLE, &start, "X0 = X_true + start-noise * x-scale * N(0,1)", "0"},
      {"self", AR_OPT_FLAG, &self, "self-attention: one shared A (A.npy)"},
      {"out", AR_OPT_STRING, &out, "output directory, required"},
      {"quiet", AR_OPT_FLAG, &quiet, "print nothing but errors"},
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
