/* The solve driver (solve_job.h): setup, the solve call, signals, checkpoints and their identity,
 * the result files, the release. */
#include "solve_job.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fault.h"
#include "npy.h"
#include "timing.h"

#define AR_NAME_CASE(name, value, text) case name: return text;
const char *ar_whiten_name(int w)
{
  switch (w) { AR_WHITEN_MAP(AR_NAME_CASE) }
  return NULL;
}
const char *ar_strategy_name(int k)
{
  switch (k) { AR_STRATEGY_MAP(AR_NAME_CASE) }
  return NULL;
}
#undef AR_NAME_CASE

/* ---- signals: SIGTERM (scancel, the end of a time limit), SIGUSR1 (sbatch --signal=B:USR1@T)
 * and SIGINT ask for a checkpoint and a clean stop at the next iteration boundary. */
static volatile sig_atomic_t g_signal;

static void on_signal(int sig) { g_signal = sig; }

volatile sig_atomic_t *ar_job_signal_flag(void) { return &g_signal; }

void ar_job_signals_install(void)
{
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
}

int ar_job_signal_received(MPI_Comm comm)
{
  int sig = g_signal;
  if (MPI_Allreduce(MPI_IN_PLACE, &sig, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS) return SIGTERM;
  return sig;
}

/* ---- checkpoint identity: the lists of checkpoint.h, their values for this job */
void ar_job_identity(const solve_job *j, ar_ckpt_identity *id)
{
#define AR_JOB_FILL(type, name, label, namer, value) id->name = (value);
  AR_CKPT_DATA_FIELDS(AR_JOB_FILL, j)
  AR_CKPT_OPTION_FIELDS(AR_JOB_FILL, j)
}

void ar_job_ensemble_identity(const solve_job *j, ar_ckpt_ensemble_identity *id)
{
  AR_CKPT_ENSEMBLE_FIELDS(AR_JOB_FILL, j)
#undef AR_JOB_FILL
}

typedef const char *(*namer_fn)(int);

static const char *fmt_int(char *b, int v, namer_fn nm)
{
  const char *s = nm ? nm(v) : NULL;
  snprintf(b, 64, "%s", s ? s : "");
  if (!s) snprintf(b, 64, "%d", v);
  return b;
}
static const char *fmt_int64_t(char *b, int64_t v, namer_fn nm) { return snprintf(b, 64, "%lld", (long long)v), b; }
static const char *fmt_uint64_t(char *b, uint64_t v, namer_fn nm)
{
  return snprintf(b, 64, "%#llx", (unsigned long long)v), b;
}
static const char *fmt_double(char *b, double v, namer_fn nm) { return snprintf(b, 64, "%g", v), b; }

/* A comparison of one list: what the file says, what this run has, the first hidden field that
 * differs.  join: between a label and its value ("n=512", "--method joint"). */
typedef struct {
  const char *join;
  int all_run;      /* list every shown field of the run (else only those that differ) */
  char file[600], run[600];
  int differs;
  const char *hidden;
} compare;

static void add(char *dst, const char *label, const char *join, const char *v)
{
  const size_t n = strlen(dst);
  snprintf(dst + n, 600 - n, "%s%s%s%s", n ? " " : "", label, join, v);
}

static void compare_field(compare *c, const char *label, const char *fv, const char *rv, int differs, int hidden)
{
  if (hidden) {
    if (differs && !c->hidden) c->hidden = label;
    return;
  }
  add(c->file, label, c->join, fv);
  if (differs || c->all_run) add(c->run, label, c->join, rv);
  c->differs |= differs;
}

/* One field of a list: what the checkpoint (got) says against this job (want). */
#define AR_JOB_COMPARE(type, name, label, namer, value)                                                    \
  {                                                                                                        \
    char fb[64], rb[64];                                                                                   \
    compare_field(&cmp, label, fmt_##type(fb, got->name, namer), fmt_##type(rb, want.name, namer),         \
                  got->name != want.name, (namer_fn)(namer) == ar_ckpt_hidden);                            \
  }

/* Every rank: the checkpoint ck (read from path) belongs to this job: its kind, problem, options. */
static int check_restart(const solve_job *j, const char *path, const ar_checkpoint *ck, int kind)
{
  AR_CHECK(ck->kind == kind, AR_ERR_USAGE, "--restart %s: %s", path,
           ck->kind == AR_CKPT_ENSEMBLE ? "a multi-start checkpoint: continue it with the --starts it was written with"
                                        : "a single solve's checkpoint: continue it without --starts");
  {
    const ar_ckpt_identity *got = &ck->id;
    ar_ckpt_identity want;
    ar_job_identity(j, &want);
    compare cmp = {.join = "=", .all_run = 1};
    AR_CKPT_DATA_FIELDS(AR_JOB_COMPARE, j)
    AR_CHECK(!cmp.differs, AR_ERR_DATA, "--restart %s: written for %s, the data has %s", path, cmp.file, cmp.run);
    AR_CHECK(!cmp.hidden, AR_ERR_DATA, "--restart %s: written for other input data (the %s differs)", path, cmp.hidden);
    cmp = (compare){.join = " "};
    AR_CKPT_OPTION_FIELDS(AR_JOB_COMPARE, j)
    AR_CHECK(!cmp.differs, AR_ERR_USAGE, "--restart %s: written with %s; this run has %s", path, cmp.file, cmp.run);
    AR_CHECK(!cmp.hidden, AR_ERR_USAGE, "--restart %s: written with another %s", path, cmp.hidden);
  }
  if (kind == AR_CKPT_ENSEMBLE) {
    const ar_ckpt_ensemble_identity *got = &ck->ens.id;
    ar_ckpt_ensemble_identity want;
    ar_job_ensemble_identity(j, &want);
    compare cmp = {.join = " "};
    AR_CKPT_ENSEMBLE_FIELDS(AR_JOB_COMPARE, j)
    AR_CHECK(!cmp.differs, AR_ERR_USAGE, "--restart %s: written with %s; this run has %s", path, cmp.file, cmp.run);
    AR_CHECK(!cmp.hidden, AR_ERR_USAGE, "--restart %s: written with another %s", path, cmp.hidden);
  }
  return AR_OK;
}
#undef AR_JOB_COMPARE

int ar_job_checkpoint(solve_job *j, ar_checkpoint *c)
{
  ar_job_identity(j, &c->id);
  if (c->kind == AR_CKPT_ENSEMBLE) ar_job_ensemble_identity(j, &c->ens.id);
  return ar_checkpoint_save(j->world, j->cfg->checkpoint, c);
}

/* ---- setup */

/* Collective (comm): replace the problem by the whitened one, and the start point by its image;
 * --whiten auto becomes on or off. */
static int whiten(solve_job *j)
{
  solve_cfg *s = j->cfg;
  ar_data_paths ps = {s->c.a1, s->c.a2, s->c.a3, s->c.b};
  char store[4 * 4096];
  if (s->c.data) AR_CALL(ar_data_paths_from_dir(s->c.data, &ps, store));
  const char *names[3] = {ps.a1, ps.a2, ps.a3};
  ar_problem white;
  int err = ar_whiten(j->prob, names, &white, &j->white);
  if (err == AR_ERR_DATA && s->whiten == WHITEN_AUTO) { /* rank-deficient inputs: solve them as they are */
    int rank;
    MPI_Comm_rank(j->world, &rank);
    if (rank == 0 && !s->c.quiet) printf("note: not whitened: %s\n", ar_error_message());
    ar_error_clear();
    s->whiten = WHITEN_OFF;
    return AR_OK;
  }
  AR_CALL(err);
  s->whiten = WHITEN_ON;
  ar_problem_destroy(&j->prob); /* the solve needs only the whitened inputs */
  j->prob = white;
  return ar_whiten_point(j->white, j->X, j->Y, j->X, j->Y);
}

/* Collective (comm): what the ranks that solve together make. */
static int setup_group(solve_job *j)
{
  solve_cfg *s = j->cfg;
  MPI_Comm comm = j->comm;
  AR_CALL(ar_grid_create(comm, s->c.grid[0], s->c.grid[1], &j->grid));
  /* --linear-solver auto is resolved here, once, knowing the memory budget; every solve of the
   * job uses j->so, and the configuration printed and saved says what runs */
  const int rows_ok = j->so.method == AR_METHOD_JOINT && s->c.eval.lambda_x == 0 && s->c.eval.lambda_y == 0 &&
                      j->so.hessian != AR_HESS_EXACT && j->so.hessian_sample >= 1 && j->so.shift != AR_SHIFT_DIAGONAL;
  AR_CALL(ar_cli_check_memory(comm, &s->c, s->mem_per_rank, j->so.hessian, rows_ok, &j->so.linear_solver,
                              j->ls_reason, sizeof j->ls_reason));
  s->so.linear_solver = j->so.linear_solver;
  AR_CALL(ar_cli_load_problem(comm, &s->c, &j->prob));
  if (ar_fault("signal-startup")) raise(SIGUSR1); /* test hook (fault.h): a signal while the job starts */
  ar_problem_sizes(j->prob, &j->n, &j->d, &j->m);
  j->D = j->d * j->d + j->d * j->m;
  j->X = calloc((size_t)j->d * j->d, sizeof(double)), j->Y = calloc((size_t)j->d * j->m, sizeof(double));
  AR_CHECK_AGREE(comm, j->X && j->Y, AR_ERR_MEM, "out of memory");
  if (s->x0) AR_CALL(ar_cli_load_matrix(comm, "--x0", s->x0, j->d, j->d, j->X));
  if (s->y0) AR_CALL(ar_cli_load_matrix(comm, "--y0", s->y0, j->d, j->m, j->Y));
  j->times.t[AR_PHASE_IO] = ar_wtime() - j->t0;
  if (s->whiten != WHITEN_OFF) AR_CALL(whiten(j));
  return ar_eval_create(j->prob, &s->c.eval, &j->ev);
}

int ar_job_setup(MPI_Comm world, MPI_Comm comm, solve_cfg *s, const ar_option *opts, int nopts,
                 const char *const *files, int nfiles, int ckpt_kind, solve_job *j)
{
  memset(j, 0, sizeof *j);
  j->cfg = s, j->world = world, j->comm = comm, j->opts = opts, j->nopts = nopts;
  j->so = s->so;
  j->t0 = ar_wtime();
  /* the group's part agreed over every rank before the collective calls over world */
  AR_CALL_AGREE(world, ar_error_agree(comm, setup_group(j)));
  if (s->out) {
    AR_CALL(ar_out_begin(world, "--out", s->out, &j->out));
    j->have_out = 1;
    for (int i = 0; i < nfiles; i++) AR_CALL(ar_out_add(&j->out, files[i]));
  }
  if (s->restart) {
    AR_CALL(ar_checkpoint_load(world, "--restart", s->restart, &j->restart));
    j->have_restart = 1;
    AR_CALL_AGREE(world, check_restart(j, s->restart, &j->restart, ckpt_kind));
  }
  if (!s->y0 && !s->restart) AR_CALL_AGREE(world, ar_solve_least_squares_y(j->ev, j->X, j->Y));
  /* setup: everything after the inputs were read (whitening, the evaluator, OUT, --restart, Y0) */
  j->times.t[AR_PHASE_SETUP] = ar_wtime() - j->t0 - j->times.t[AR_PHASE_IO];
  return AR_OK;
}

void ar_job_release(solve_job *j)
{
  if (j->have_out && j->out.stage[0]) ar_out_abort(&j->out);
  j->have_out = 0;
  ar_checkpoint_free(&j->restart);
  ar_whitening_destroy(&j->white);
  free(j->X), free(j->Y);
  j->X = j->Y = NULL;
  ar_eval_destroy(&j->ev);
  ar_grid_destroy(&j->grid);
  ar_problem_destroy(&j->prob);
}

/* ---- solving */
ar_solver_options ar_job_solver_options(const solve_job *j)
{
  ar_solver_options so = j->so;
  so.nb = j->cfg->c.nb;
  so.interrupt = &g_signal;
  return so;
}

int ar_job_solve(solve_job *j, const ar_solver_options *so, double *X, double *Y, ar_solve_result *r)
{
  AR_CHECK(so->linear_solver != AR_LINSOLVE_AUTO, AR_ERR_INTERNAL, "the job's linear solver was not resolved");
  const int err = ar_solve(j->prob, j->ev, j->grid, so, X, Y, r);
  ar_phases_add_solve(&j->times, r);
  j->flops += r->flops;
  return err;
}

int ar_job_user_point(const solve_job *j, const double *X, const double *Y, double *uX, double *uY)
{
  if (j->white) return ar_unwhiten_point(j->white, X, Y, uX, uY);
  if (uX != X) memcpy(uX, X, sizeof(double) * j->d * j->d);
  if (uY != Y) memcpy(uY, Y, sizeof(double) * j->d * j->m);
  return AR_OK;
}

int ar_job_grad_norm_user(solve_job *j, const double *X, const double *Y, const double *grad, double *gn)
{
  const int dd = j->d * j->d;
  double *g = malloc(sizeof(double) * 2 * j->D);
  AR_CHECK_AGREE(j->comm, g, AR_ERR_MEM, "out of memory");
  int err = AR_OK;
  if (grad) memcpy(g, grad, sizeof(double) * j->D);
  else {
    ar_eval_out o = {.grad = g};
    err = ar_eval_compute(j->ev, X, Y, AR_HESS_NONE, &o);
    j->flops += o.flops;
  }
  double *u = g + j->D, s = 0;
  if (!err && j->white) err = ar_unwhiten_gradient(j->white, g, g + dd, u, u + dd);
  else if (!err) memcpy(u, g, sizeof(double) * j->D);
  for (int i = 0; !err && i < j->D; i++) s += u[i] * u[i];
  free(g);
  *gn = sqrt(s);
  return err;
}

/* ---- results */
static const char *hessian_text(int kind)
{
  const char *s = ar_hessian_name(kind);
  return s ? s : "?";
}

/* Rank 0: history.csv of nhist rows into out. */
static int write_history(ar_out *out, const ar_iter_info *history, int nhist)
{
  FILE *f = ar_out_fopen(out, "history.csv");
  AR_CHECK(f, AR_ERR_IO, "%s", ar_error_message());
  fputs("iter,loss,rel_loss,grad_norm,mu,rho,step_norm,seconds,accepted,cg_iters,hessian_sample,hessian,step\n", f);
  for (int i = 0; i < nhist; i++) {
    const ar_iter_info *h = &history[i];
    fprintf(f, "%d,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.6f,%d,%d,%.6g,%s,%s\n", h->iter, h->loss, h->rel_loss,
            h->grad_norm, h->mu, h->rho, h->step_norm, h->seconds, h->accepted, h->cg_iters, h->hessian_sample,
            hessian_text(h->hessian), h->iter == 0 ? "start" : h->chord ? "chord" : "newton");
  }
  AR_CHECK(fclose(f) == 0, AR_ERR_IO, "%s/history.csv: write failed", out->dir);
  return AR_OK;
}

void ar_job_report(solve_job *j, ar_report *R)
{
  ar_report_begin(R, j->world, j->prob, j->ev, j->grid);
  R->whitened = j->white != NULL;
  R->opts = j->opts, R->nopts = j->nopts;
}

int ar_job_write_results(solve_job *j, const double *uX, const double *uY, const ar_iter_info *hist, int nhist,
                         ar_report *R)
{
  if (!j->have_out) return AR_OK;
  int rank, err = AR_OK;
  MPI_Comm_rank(j->world, &rank);
  const double t0 = ar_wtime();
  char path[4400];
  if (rank == 0) err = ar_npy_write(ar_out_path(&j->out, "X.npy", path, sizeof path), j->d, j->d, uX);
  if (rank == 0 && !err) err = ar_npy_write(ar_out_path(&j->out, "Y.npy", path, sizeof path), j->d, j->m, uY);
  if (rank == 0 && !err) err = write_history(&j->out, hist, nhist);
  AR_CALL_AGREE(j->world, err);
  j->times.t[AR_PHASE_WRITE] += ar_wtime() - t0;
  R->times = j->times, R->flops = j->flops, R->wall = ar_wtime() - j->t0;
  AR_CALL(ar_report_write(R, &j->out, "summary.json"));
  return ar_out_commit(&j->out);
}
