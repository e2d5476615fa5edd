/* The one writer of eval.json and summary.json (report.h). */
#include "report.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "error.h"
#include "launch.h"
#include "timing.h"

void ar_report_begin(ar_report *R, MPI_Comm comm, ar_problem prob, ar_eval ev, ar_grid grid)
{
  memset(R, 0, sizeof *R);
  R->comm = comm;
  MPI_Comm_size(comm, &R->ranks);
  ar_problem_sizes(prob, &R->n, &R->d, &R->m);
  R->bnorm2 = ar_problem_bnorm2(prob) > 0 ? ar_problem_bnorm2(prob) : 1;
  R->tile = ev ? ar_eval_tile(ev) : 0, R->chunk = ev ? ar_eval_chunk(ev) : 0;
  ar_problem_layout_info(prob, &R->lay);
  if (ev) ar_eval_work_info(ev, &R->work), R->has_work = 1, R->ev = ev;
  R->pr = R->pc = 1;
  if (grid) ar_grid_shape(grid, &R->pr, &R->pc);
}

double ar_report_gflops(const ar_report *R)
{
  const double t = R->ph[AR_PHASE_TOTAL].max;
  return t > 0 ? R->flops_all / t * 1e-9 : 0.0;
}

int ar_report_cg_iterations(const ar_solve_result *r)
{
  int cg = 0;
  for (int i = 0; r->history && i <= r->iterations; i++) cg += r->history[i].cg_iters;
  return cg;
}

void ar_report_grid(FILE *f, const ar_report *R) { fprintf(f, "\"%dx%d\"", R->pr, R->pc); }

/* How the rows are laid out over the ranks (docs/layout.md §6). */
void ar_report_layout(FILE *f, const ar_report *R)
{
  const ar_layout_info *L = &R->lay;
  fprintf(f, "{\"groups\": %d, \"max_group\": %d, \"zigzag\": %s, \"rows_max\": %lld}", L->groups, L->max_group,
          L->zigzag ? "true" : "false", (long long)L->rows_max);
}

/* The masked work of one trip over the key blocks: pairs the mask leaves, logits computed (box
 * area) on the busiest and the average rank, their ratio (the work imbalance), the ring's step
 * efficiency, and the share of the run the busiest rank spent waiting for key blocks. */
void ar_report_work(FILE *f, const ar_report *R)
{
  const ar_eval_work *w = &R->work;
  const double t = R->ph[AR_PHASE_TOTAL].max;
  fprintf(f,
          "{\"pairs\": %.17g, \"area_max\": %.17g, \"area_avg\": %.17g, \"imbalance\": %.4f, "
          "\"step_efficiency\": %.4f, \"ring_wait_fraction\": %.4f}",
          w->pairs_total, w->area_max, w->area_avg, w->area_avg > 0 ? w->area_max / w->area_avg : 1.0,
          w->step_efficiency, t > 0 ? R->ph[AR_PHASE_RING].max / t : 0.0);
}

/* The kernels OpenBLAS runs (blas.h): core, threads, instruction sets, OPENBLAS_CORETYPE, the
 * fitting core when it is not the one running, and the core re-executed from. */
void ar_report_blas(FILE *f, const ar_report *R)
{
  ar_blas_info b;
  ar_blas_info_get(&b);
  fputs("{\"core\": ", f);
  ar_json_string(f, b.core);
  fprintf(f, ", \"threads\": %d, \"core_isa\": \"%s\", \"cpu_isa\": \"%s\", \"coretype_env\": ", b.threads,
          ar_isa_name(b.core_isa), ar_isa_name(b.cpu_isa));
  char from[64] = "";
  if (b.reexec) snprintf(from, sizeof from, "from %s", b.reexec);
  const char *v[] = {b.coretype, b.fit, b.reexec ? from : NULL}, *key[] = {"", ", \"fit\": ", ", \"reexec\": "};
  for (int i = 0; i < 3; i++) {
    fputs(key[i], f);
    if (v[i]) ar_json_string(f, v[i]);
    else fputs("null", f);
  }
  fputc('}', f);
}

/* Open MPI's PML as attnreg set it on one node (launch.h), and why. */
void ar_report_mpi(FILE *f, const ar_report *R)
{
  (void)R;
  const char *pml, *what = ar_launch_describe(&pml);
  fputs("{\"pml\": ", f);
  if (pml) ar_json_string(f, pml);
  else fputs("null", f);
  fputs(", \"launch\": ", f);
  ar_json_string(f, what);
  fputc('}', f);
}

void ar_report_quantiles(FILE *f, const ar_report *R)
{
  const double *q = R->ms->q;
  fprintf(f, "{\"min\": %.6g, \"q10\": %.6g, \"median\": %.6g, \"q90\": %.6g, \"max\": %.6g}", q[0], q[1], q[2], q[3],
          q[4]);
}

void ar_report_rss(FILE *f, const ar_report *R)
{
  fprintf(f, "{\"max\": %.1f, \"avg\": %.1f}", R->rss_max, R->rss_avg);
}

/* Each phase: max and average over the ranks, and the imbalance max/min (null when a rank
 * spent no time in it while another did). */
void ar_report_phases(FILE *f, const ar_report *R)
{
  fputs("{\n", f);
  for (int i = 0; i < AR_PHASE_COUNT; i++) {
    const ar_phase_stat *s = &R->ph[i];
    fprintf(f, "    \"%s\": {\"max\": %.6f, \"avg\": %.6f, \"min\": %.6f, \"max_over_min\": ", ar_phase_name(i), s->max,
            s->avg, s->min);
    if (s->min > 0) fprintf(f, "%.4f}", s->max / s->min);
    else fputs(s->max > 0 ? "null}" : "1}", f);
    fputs(i + 1 < AR_PHASE_COUNT ? ",\n" : "\n", f);
  }
  fputs("  }", f);
}

void ar_report_options(FILE *f, const ar_report *R)
{
  fputs("{\n", f);
  ar_options_write_json(f, R->opts, R->nopts, "    ");
  fputs("  }", f);
}

/* The value writers of the list's kinds. */
static void put_INT(FILE *f, const ar_report *R, long long v) { fprintf(f, "%lld", v); }
static void put_REAL(FILE *f, const ar_report *R, double v)
{
  if (isfinite(v)) fprintf(f, "%.17g", v);
  else fputs("null", f); /* JSON has no NaN or Inf */
}
static void put_SECONDS(FILE *f, const ar_report *R, double v) { fprintf(f, "%.6f", v); }
static void put_RATE(FILE *f, const ar_report *R, double v) { fprintf(f, "%.6g", v); }
static void put_STRING(FILE *f, const ar_report *R, const char *v) { ar_json_string(f, v ? v : "?"); }
static void put_BOOL(FILE *f, const ar_report *R, int v) { fputs(v ? "true" : "false", f); }
static void put_OBJECT(FILE *f, const ar_report *R, void (*fn)(FILE *, const ar_report *)) { fn(f, R); }

static void write_fields(FILE *f, const ar_report *R)
{
  const char *sep = "{\n";
#define AR_REPORT_PUT(kind, name, value, when) \
  if (when) {                                  \
    fprintf(f, "%s  \"%s\": ", sep, #name);    \
    put_##kind(f, R, value);                   \
    sep = ",\n";                               \
  }
  AR_REPORT_FIELDS(AR_REPORT_PUT, R)
#undef AR_REPORT_PUT
  fputs("\n}\n", f);
}

int ar_report_write(ar_report *R, ar_out *out, const char *file)
{
  int rank;
  MPI_Comm_rank(R->comm, &rank);
  const double rss = ar_peak_rss_mb();
  double sum[3], in[3] = {R->flops, rss, R->ev ? ar_eval_exps(R->ev) : 0};
  AR_CALL_MPI(MPI_Allreduce(in, sum, 3, MPI_DOUBLE, MPI_SUM, R->comm));
  AR_CALL_MPI(MPI_Allreduce(&rss, &R->rss_max, 1, MPI_DOUBLE, MPI_MAX, R->comm));
  R->flops_all = sum[0], R->rss_avg = sum[1] / R->ranks, R->exps_all = sum[2];
  AR_CALL(ar_phases_reduce(R->comm, &R->times, R->ph));
  int err = AR_OK;
  if (rank == 0) {
    FILE *f = ar_out_fopen(out, file);
    if (!f) err = AR_ERROR(AR_ERR_IO, "%s", ar_error_message());
    if (f) {
      write_fields(f, R);
      if (fclose(f) != 0) err = AR_ERROR(AR_ERR_IO, "%s/%s: write failed", out->dir, file);
    }
  }
  return ar_error_agree(R->comm, err);
}
