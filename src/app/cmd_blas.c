/* attnreg blas: which BLAS kernels run on this node, a self-check of them, the OPENBLAS_CORETYPE
 * that fits the CPU, and DGEMM rates (blas.h).  Node-local: main() runs it without MPI, so it
 * needs no launcher and can start itself as a child process with another OPENBLAS_CORETYPE --
 * the only way to try another core, as OpenBLAS reads the variable when it loads. */
#include <stdio.h>
#include <string.h>

#include <cblas.h>

#include "blas.h"
#include "cli.h"
#include "error.h"
#include "reexec.h"

static void report(void)
{
  ar_blas_info b;
  ar_blas_info_get(&b);
  printf("library   %s\n", openblas_get_config());
  printf("core      %s (%s kernels; %s)\n", b.core, ar_isa_name(b.core_isa),
         b.coretype ? "chosen by OPENBLAS_CORETYPE" : "chosen by OpenBLAS for this CPU");
  printf("threads   %d\n", b.threads);
  printf("CPU       %s\n", ar_isa_name(b.cpu_isa));
  if (b.fit)
    printf("suggest   OPENBLAS_CORETYPE=%s: the %s kernels use %s, this CPU has %s (test them: OPENBLAS_CORETYPE=%s "
           "attnreg blas --check)\n",
           b.fit, b.core, ar_isa_name(b.core_isa), ar_isa_name(b.cpu_isa), b.fit);
  else
    printf("suggest   nothing: the kernels fit the CPU as far as attnreg knows\n");
}

/* --suggest: the fitting core, printed only once a child process running it passed --check. */
static int suggest(void)
{
  ar_blas_info b;
  ar_blas_info_get(&b);
  if (!b.fit) return AR_OK;
  if (ar_core_check(b.fit) == AR_OK) {
    printf("%s\n", b.fit);
    fprintf(stderr, "attnreg blas: OpenBLAS chose its %s kernels (%s) on a CPU with %s; suggesting OPENBLAS_CORETYPE=%s, "
                    "which passed the self-check (DGEMM, Cholesky)\n", b.core, ar_isa_name(b.core_isa),
            ar_isa_name(b.cpu_isa), b.fit);
  } else {
    fprintf(stderr, "attnreg blas: OpenBLAS chose its %s kernels (%s) on a CPU with %s, but %s: keeping %s\n", b.core,
            ar_isa_name(b.core_isa), ar_isa_name(b.cpu_isa), ar_error_message(), b.core);
    ar_error_clear();
  }
  return AR_OK;
}

/* --dgemm --all-cores: the rate of every core that can run here and passes the self-check, each
 * in a child process: the library's own choice, then one or two per level up to the CPU's. */
static int dgemm_all(int64_t size)
{
  static const struct {
    const char *name;
    ar_isa isa;
  } cand[] = {{NULL, AR_ISA_UNKNOWN},      {"Sandybridge", AR_ISA_AVX}, {"Haswell", AR_ISA_AVX2},
              {"Zen", AR_ISA_AVX2},        {"SkylakeX", AR_ISA_AVX512}, {"Cooperlake", AR_ISA_AVX512},
              {"SapphireRapids", AR_ISA_AVX512}};
  ar_blas_info b;
  ar_blas_info_get(&b);
  char seen[sizeof cand / sizeof cand[0]][32], sz[32], out[8192], best_core[32] = "";
  int nseen = 0;
  double best = 0;
  snprintf(sz, sizeof sz, "%lld", (long long)size);
  char *args[] = {"attnreg", "blas", "--check", "--dgemm", "--size", sz, NULL};
  for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++) {
    if (cand[i].isa > b.cpu_isa) continue;
    int st;
    AR_CALL(ar_run_self(cand[i].name, args, out, sizeof out, &st));
    char core[32] = "?";
    double gf = 0;
    const char *line = strstr(out, "dgemm n=");
    if (st != 0 || !line || sscanf(line, "dgemm n=%*d core=%31s threads=%*d gflops=%lf", core, &gf) != 2) {
      printf("dgemm OPENBLAS_CORETYPE=%s: skipped (%s)\n", cand[i].name ? cand[i].name : "(unset)",
             ar_child_reason(st, out));
      continue;
    }
    int dup = 0;
    for (int j = 0; j < nseen; j++) dup |= !strcmp(seen[j], core);
    if (dup) continue; /* a name the library maps to a core already measured */
    snprintf(seen[nseen++], sizeof seen[0], "%s", core);
    printf("dgemm OPENBLAS_CORETYPE=%s: %s", cand[i].name ? cand[i].name : "(unset)", line);
    if (gf > best) best = gf, snprintf(best_core, sizeof best_core, "%s", core);
  }
  AR_CHECK(best > 0, AR_ERR_LIB, "no OpenBLAS core passed the self-check and measured a DGEMM rate");
  printf("best core=%s gflops=%.2f\n", best_core, best);
  return AR_OK;
}

static int blas_main(int argc, char **argv)
{
  int check = 0, sugg = 0, dgemm = 0, all = 0, help = 0;
  int64_t size = 2048;
  ar_option opts[] = {
      {"check", AR_OPT_FLAG, &check, NULL, "self-check: DGEMM and Cholesky against plain loops (exit 0: pass)", 0, 0, 0},
      {"suggest", AR_OPT_FLAG, &sugg, NULL,
       "print the OPENBLAS_CORETYPE that fits this CPU if the running core is older and a child process running it "
       "passes --check; else nothing", 0, 0, 0},
      {"dgemm", AR_OPT_FLAG, &dgemm, NULL, "measure DGEMM (--size cubed, best of 3) on the running core", 0, 0, 0},
      {"all-cores", AR_OPT_FLAG, &all, NULL,
       "with --dgemm: measure every core this CPU can run (child processes) and name the fastest", 0, 0, 0},
      {"size", AR_OPT_INT, &size, "2048", "DGEMM size", 16, 0, 0},
  };
  const int nopts = sizeof opts / sizeof opts[0];
  AR_CALL(ar_options_parse(opts, nopts, argc, argv, 2, &help));
  if (help) {
    ar_options_print_help(stdout,
                          "usage: attnreg blas [--check] [--suggest] [--dgemm [--all-cores] [--size N]]\n"
                          "Which BLAS kernels (OpenBLAS core) run here; no options: a report.  Not an MPI command.",
                          opts, nopts);
    return AR_OK;
  }
  AR_CHECK(size <= 16384, AR_ERR_USAGE, "--size %lld: at most 16384", (long long)size);
  AR_CHECK(!all || dgemm, AR_ERR_USAGE, "--all-cores needs --dgemm");
  if (!check && !sugg && !dgemm) report();
  if (check) {
    double worst;
    AR_CALL(ar_blas_check(&worst));
    ar_blas_info b;
    ar_blas_info_get(&b);
    if (!dgemm)
      printf("blas check passed: OpenBLAS core %s, %d thread%s; DGEMM and Cholesky within %.2g of their error bounds\n",
             b.core, b.threads, b.threads == 1 ? "" : "s", worst);
  }
  if (sugg) AR_CALL(suggest());
  if (dgemm && all) AR_CALL(dgemm_all(size));
  if (dgemm && !all) {
    ar_blas_info b;
    ar_blas_info_get(&b);
    const double gf = ar_blas_dgemm_gflops((int)size, 3);
    printf("dgemm n=%lld core=%s threads=%d gflops=%.2f\n", (long long)size, b.core, b.threads, gf);
  }
  return AR_OK;
}

int ar_cmd_blas(int argc, char **argv)
{
  /* No MPI here, so no ar_error_agree: print the one-line error as main() does. */
  int err = blas_main(argc, argv);
  if (err) fprintf(stderr, "attnreg: error: %s\n", ar_error_message());
  fflush(stdout);
  return ar_error_exit_status(err);
}
