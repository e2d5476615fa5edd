/* The row-space Gauss-Newton step (step.h; docs/solver.md "Row-space step"), for problems with
 * fewer outputs than unknowns (n m < D: one short sequence, a wide head).  There the
 * Gauss-Newton Hessian H = 2 J^T J (D x D) has rank at most n m, and with the shift s
 *
 *     dz = -(2 J^T J + s I)^{-1} 2 J^T c = -J^T (J J^T + s/2 I)^{-1} c
 *
 * (c: the residual, g = 2 J^T c), so the step needs K = J J^T, n m x n m, not H: its blocks are
 *
 *     K_ij = (a1_i . a1_j) M_i^T M_j + (p_i . p_j) I_m          (m x m, rows i, j)
 *
 * from the pieces of J the evaluator gives (ar_eval_gn_rows).  The pieces of every row are
 * gathered on every rank (n d m doubles: small exactly when this step applies); K is filled
 * block-cyclic from them by one GEMM per rank and factored with ScaLAPACK (ar_dmat).  The model
 * is Gauss-Newton always (the solver asks for no other with this step); chord steps are not taken
 * (a step needs the residual at the model's point).  The shift's shape: the identity, or (--shift
 * gram, the default) the inputs' Gram metric in a factored form, Mg = (Ga + f I) (x) (Gb + f I) on
 * X and (Gy + f I) (x) I_m on Y (Ga, Gb, Gy: A1^T A1, A2^T A2, A3^T A3 scaled as the dense step
 * scales them, f its floor): with Mg = T T^T (T = La (x) Lb + Ly (x) I, Cholesky factors) the step
 * is dz = T^-T dz~ with dz~ the identity-shift step of J~ = J T^-T, whose pieces are La^-1 a1_j,
 * Lb^-1 M_j and Ly^-1 p_j.  After whitening Ga = Gb = Gy = I and it is the identity (times 1 + f).
 * Every result is global. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "grid_impl.h"
#include "lapack.h"
#include "problem_impl.h"
#include "step.h"
#include "timing.h"

/* The Gram metric's floor on each factor (relative to its mean diagonal, as step_dense.c's). */
#define AR_ROWS_GRAM_FLOOR 1e-8

typedef struct {
  MPI_Comm comm;
  int n, d, m, nm, D;
  int *counts, *displs;  /* per rank: rows (for the gathers), in units of one row */
  int *cnt, *dsp;        /* scratch: the same times a row's width */
  double *a1;            /* n x d: every row of A1 (of the problem solved: whitened if it is) */
  double *a1w;           /* n x d: a1 La^-T (gram), else a1 itself */
  double *P, *M, *C;     /* n x d, n x d x m, n x m: the model point's pieces, every row */
  double *Pl, *Ml, *Cl;  /* this rank's rows */
  double *G;             /* nm x d: row (i, r) = column r of M_i */
  double *ga, *gp;       /* n x n: a1_i . a1_j and p_i . p_j */
  double *Gr, *Gc;       /* this rank's rows and columns of K: their rows of G */
  double *w;             /* nm */
  double *q;             /* d: M_j w_j */
  double *L;             /* gram: La, Lb, Ly (d x d each, lower, row-major); NULL: the identity */
  ar_dmat K;
  double scale, shift, t_pieces;
  int modelled;          /* a model exists */
} rows;

static int gather(rows *c, const double *loc, double *all, int width)
{
  int size;
  MPI_Comm_size(c->comm, &size);
  for (int r = 0; r < size; r++) c->cnt[r] = c->counts[r] * width, c->dsp[r] = c->displs[r] * width;
  int rank;
  MPI_Comm_rank(c->comm, &rank);
  AR_CALL_MPI(MPI_Allgatherv(loc, c->cnt[rank], MPI_DOUBLE, all, c->cnt, c->dsp, MPI_DOUBLE, c->comm));
  return AR_OK;
}

/* K's local blocks (column-major, lower and upper) from G, ga, gp. */
static void fill_k(rows *c)
{
  ar_dmat K = c->K;
  ar_grid g = K->g;
  const int d = c->d, m = c->m, nb = K->nb;
  for (int li = 0; li < K->locr; li++)
    memcpy(c->Gr + (size_t)li * d, c->G + (size_t)ar_bc_global(li, nb, g->pr, g->myrow) * d, sizeof(double) * d);
  for (int lj = 0; lj < K->locc; lj++)
    memcpy(c->Gc + (size_t)lj * d, c->G + (size_t)ar_bc_global(lj, nb, g->pc, g->mycol) * d, sizeof(double) * d);
  if (K->locr > 0 && K->locc > 0)
    cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, K->locr, K->locc, d, 1.0, c->Gr, d, c->Gc, d, 0.0, K->a,
                K->lld);
  for (int lj = 0; lj < K->locc; lj++) {
    const int gj = ar_bc_global(lj, nb, g->pc, g->mycol), j = gj / m, rj = gj % m;
    for (int li = 0; li < K->locr; li++) {
      const int gi = ar_bc_global(li, nb, g->pr, g->myrow), i = gi / m, ri = gi % m;
      double *k = K->a + (size_t)lj * K->lld + li;
      *k = c->ga[(size_t)i * c->n + j] * *k + (ri == rj ? c->gp[(size_t)i * c->n + j] : 0.0);
    }
  }
}

static int rows_evaluate(ar_stepper *st, const double *z, ar_hessian_kind hk, double *f, double *g)
{
  rows *c = st->impl;
  AR_CALL(ar_stepper_eval(st, z, AR_HESS_NONE, NULL, f, g));
  if (hk == AR_HESS_NONE) return AR_OK;
  const double t0 = ar_wtime();
  const int n = c->n, d = c->d, m = c->m;
  double fl = 0;
  AR_CALL(ar_eval_gn_rows(st->ev, z, z + st->dd, c->Pl, c->Ml, c->Cl, &fl));
  AR_CALL(gather(c, c->Pl, c->P, d));
  AR_CALL(gather(c, c->Ml, c->M, d * m));
  AR_CALL(gather(c, c->Cl, c->C, m));
  for (int i = 0; i < n; i++) /* G: the columns of each M_i as rows */
    for (int r = 0; r < m; r++)
      for (int q = 0; q < d; q++) c->G[((size_t)i * m + r) * d + q] = c->M[(size_t)i * d * m + q * m + r];
  /* mean diagonal of H = 2 J^T J over the N unknowns: 2 tr(J J^T) / N, in the solver's variables */
  double tr = 0;
  for (int i = 0; i < n; i++) {
    const double *a = c->a1 + (size_t)i * d, *pi = c->P + (size_t)i * d, *Mi = c->M + (size_t)i * d * m;
    tr += cblas_ddot(d, a, 1, a, 1) * cblas_ddot(d * m, Mi, 1, Mi, 1) + m * cblas_ddot(d, pi, 1, pi, 1);
  }
  c->scale = 2 * tr / st->N;
  if (c->L) { /* J~ = J T^-T: the rows of G (columns of M_i) by Lb^-1, p_i by Ly^-1 */
    const int dd = d * d;
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, n * m, d, 1.0, c->L + dd, d, c->G, d);
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, n, d, 1.0, c->L + 2 * dd, d, c->P, d);
  }
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0, c->a1w, d, c->a1w, d, 0.0, c->ga, n);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0, c->P, d, c->P, d, 0.0, c->gp, n);
  fill_k(c);
  fl += 2.0 * c->K->locr * c->K->locc * d + 4.0 * n * n * d; /* this rank's share of K; ga, gp */
  st->res->flops += fl;
  c->modelled = 1;
  c->t_pieces += ar_wtime() - t0;
  return AR_OK;
}

static int rows_scale(ar_stepper *st, double *scale)
{
  *scale = ((rows *)st->impl)->scale;
  return AR_OK;
}

/* H + shift I = 2 (J^T J + shift/2 I): K + shift/2 I is factored. */
static int rows_factor(ar_stepper *st, double shift, int *not_pd)
{
  rows *c = st->impl;
  AR_CHECK(c->modelled, AR_ERR_INTERNAL, "row-space step: no model to factor");
  c->shift = shift;
  return ar_dmat_factor(c->K, shift / 2, not_pd);
}

/* dz = -J^T (K + s/2 I)^{-1} c: dX = -sum_j a1_j (M_j w_j)^T, dY = -sum_j p_j w_j^T (with the
 * Gram shift in J~'s pieces, then dz = T^-T dz~).  g is the gradient at the model's point,
 * 2 J^T c (no chord steps with this method). */
static int rows_solve(ar_stepper *st, const double *g, double *dz, double *pred, int *indefinite)
{
  rows *c = st->impl;
  const int n = c->n, d = c->d, m = c->m, dd = d * d;
  *indefinite = 0;
  AR_CALL(ar_dmat_solve(c->K, c->C, c->w));
  memset(dz, 0, sizeof(double) * st->N);
  double *q = c->q;
  for (int j = 0; j < n; j++) {
    const double *Gj = c->G + (size_t)j * m * d, *wj = c->w + (size_t)j * m, *a1j = c->a1w + (size_t)j * d;
    cblas_dgemv(CblasRowMajor, CblasTrans, m, d, 1.0, Gj, d, wj, 1, 0.0, q, 1); /* M~_j w_j */
    cblas_dger(CblasRowMajor, d, d, -1.0, a1j, 1, q, 1, dz, d);
    cblas_dger(CblasRowMajor, d, m, -1.0, c->P + (size_t)j * d, 1, wj, 1, dz + dd, m);
  }
  const double dz2 = cblas_ddot(st->N, dz, 1, dz, 1); /* dz~.dz~ = dz.Mg.dz */
  if (c->L) { /* dz = T^-T dz~: dX = La^-T dX~ Lb^-1, dY = Ly^-T dY~ */
    cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, d, d, 1.0, c->L, d, dz, d);
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, d, d, 1.0, c->L + dd, d, dz, d);
    cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, d, m, 1.0, c->L + 2 * dd, d, dz + dd,
                m);
  }
  *pred = -0.5 * cblas_ddot(st->N, g, 1, dz, 1) + 0.5 * c->shift * dz2;
  st->iters = 0;
  return AR_OK;
}

static void rows_finish(ar_stepper *st, ar_solve_result *res)
{
  rows *c = st->impl;
  double tf, ts;
  int nf;
  ar_dmat_times(c->K, &tf, &ts, &nf);
  res->nb = ar_dmat_nb(c->K);
  res->t_factor = tf + c->t_pieces; /* the pieces of J, K's assembly, pdpotrf */
  res->t_solve = ts;
}

static void rows_destroy(ar_stepper *st)
{
  rows *c = st->impl;
  if (!c) return;
  ar_dmat_destroy(&c->K);
  double *a[] = {c->a1, c->a1w, c->P, c->M, c->C, c->Pl, c->Ml, c->Cl, c->G, c->ga, c->gp, c->Gr, c->Gc, c->w, c->q, c->L};
  for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) free(a[i]);
  free(c->counts), free(c->displs), free(c->cnt), free(c->dsp);
  free(c);
}

static const ar_stepper_ops rows_ops = {"rows", rows_evaluate, rows_scale, rows_factor, rows_solve, rows_finish,
                                        rows_destroy};

/* Collective: the factors La, Lb, Ly of the floored Gram metric (as step_dense.c scales it). */
static int gram_factors(rows *c, ar_problem p, int N)
{
  const int d = p->d, m = p->m, dd = d * d;
  c->L = calloc((size_t)3 * dd, sizeof(double));
  AR_CHECK_AGREE(p->comm, c->L, AR_ERR_MEM, "out of memory (Gram metric)");
  const double *A[3] = {p->a1, p->a2, p->a3};
  for (int k = 0; k < 3; k++)
    if (p->nloc > 0) cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, d, (int)p->nloc, 1.0, A[k], d, 0.0, c->L + k * dd, d);
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, c->L, 3 * dd, MPI_DOUBLE, MPI_SUM, p->comm));
  double tr[3] = {0, 0, 0};
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < d; i++) tr[k] += c->L[(size_t)k * dd + i * d + i];
  const double mean = (tr[0] * tr[1] + (double)m * tr[2]) / N;
  AR_CHECK(mean > 0 && isfinite(mean), AR_ERR_DATA, "--shift gram: the inputs are all zero (use --shift identity)");
  for (int i = 0; i < dd; i++) c->L[i] /= mean, c->L[2 * dd + i] /= mean;
  int info = 0, dn = d;
  for (int k = 0; k < 3 && !info; k++) {
    for (int i = 0; i < d; i++) c->L[(size_t)k * dd + i * d + i] += AR_ROWS_GRAM_FLOOR;
    dpotrf_("U", &dn, c->L + k * dd, &dn, &info); /* column-major upper = row-major lower */
  }
  AR_CHECK(info == 0, AR_ERR_NUMERIC, "--shift gram: the Gram metric is not positive definite (use --shift identity)");
  memcpy(c->a1w, c->a1, sizeof(double) * (size_t)c->n * d); /* a1 La^-T */
  cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, c->n, d, 1.0, c->L, d, c->a1w, d);
  return AR_OK;
}

int ar_stepper_rows_create(ar_eval ev, ar_grid grid, int N, int nb, int shift, ar_solve_result *res,
                           ar_stepper **out)
{
  *out = NULL;
  ar_problem p = ar_eval_problem(ev);
  const int d = p->d, m = p->m, D = d * d + d * m;
  AR_CHECK(N == D, AR_ERR_USAGE, "--linear-solver rows: needs --method joint");
  AR_CHECK((double)p->n * m <= 2147483647.0 / 2, AR_ERR_USAGE,
           "--linear-solver rows: n m = %.0f rows of J J^T is too many", (double)p->n * m);
  ar_stepper *st = calloc(1, sizeof *st);
  rows *c = calloc(1, sizeof *c);
  if (st) st->impl = c, st->ops = &rows_ops, *out = st; /* ar_stepper_destroy frees the rest */
  else free(c);
  AR_CHECK_AGREE(p->comm, st && c, AR_ERR_MEM, "out of memory (row-space step)");
  st->ev = ev, st->N = N, st->dd = d * d, st->res = res;
  int size;
  MPI_Comm_size(p->comm, &size);
  const int n = (int)p->n, nl = (int)p->nloc;
  c->comm = p->comm, c->n = n, c->d = d, c->m = m, c->nm = n * m, c->D = D;
  c->counts = calloc(size, sizeof(int)), c->displs = calloc(size, sizeof(int));
  c->cnt = calloc(size, sizeof(int)), c->dsp = calloc(size, sizeof(int));
  const size_t N1 = (size_t)n;
  c->a1 = malloc(sizeof(double) * N1 * d), c->a1w = malloc(sizeof(double) * N1 * d);
  c->P = malloc(sizeof(double) * N1 * d);
  c->M = malloc(sizeof(double) * N1 * d * m), c->C = malloc(sizeof(double) * N1 * m);
  c->Pl = malloc(sizeof(double) * (nl + 1) * d), c->Ml = malloc(sizeof(double) * (nl + 1) * d * m);
  c->Cl = malloc(sizeof(double) * (nl + 1) * m), c->G = malloc(sizeof(double) * N1 * m * d);
  c->ga = malloc(sizeof(double) * N1 * N1), c->gp = malloc(sizeof(double) * N1 * N1);
  c->w = malloc(sizeof(double) * N1 * m), c->q = malloc(sizeof(double) * d);
  int ok = c->counts && c->displs && c->cnt && c->dsp && c->a1 && c->a1w && c->P && c->M && c->C && c->Pl && c->Ml && c->Cl &&
           c->G && c->ga && c->gp && c->w && c->q;
  AR_CHECK_AGREE(p->comm, ok, AR_ERR_MEM, "out of memory (row-space step: %.0f MB for the rows' pieces)",
                 8e-6 * N1 * (2.0 * d + 2.0 * d * m + 2.0 * N1 + 2.0 * m));
  AR_CALL(ar_dmat_create(grid, n * m, nb, &c->K));
  c->Gr = malloc(sizeof(double) * ((size_t)c->K->locr + 1) * d);
  c->Gc = malloc(sizeof(double) * ((size_t)c->K->locc + 1) * d);
  AR_CHECK_AGREE(p->comm, c->Gr && c->Gc, AR_ERR_MEM, "out of memory (row-space step)");
  AR_CALL_MPI(MPI_Allgather(&nl, 1, MPI_INT, c->counts, 1, MPI_INT, p->comm));
  for (int r = 1; r < size; r++) c->displs[r] = c->displs[r - 1] + c->counts[r - 1];
  AR_CALL(gather(c, p->a1, c->a1, d));
  if (shift == AR_SHIFT_GRAM) return gram_factors(c, p, N);
  memcpy(c->a1w, c->a1, sizeof(double) * N1 * d);
  return AR_OK;
}
