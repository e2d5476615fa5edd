/* BLACS process grid, block-cyclic matrices and the shifted Cholesky solve (pdpotrf/pdpotrs). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "memory.h"
#include "grid_impl.h"
#include "lapack.h"
#include "npy.h"

int ar_grid_create(MPI_Comm comm, int pr, int pc, ar_grid *out)
{
  *out = NULL;
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  if (pr <= 0 || pc <= 0) ar_plan_default_grid(size, &pr, &pc);
  AR_CHECK(pr * pc == size, AR_ERR_USAGE, "--grid %dx%d needs %d ranks, but the job has %d", pr, pc, pr * pc, size);
  ar_grid g = calloc(1, sizeof *g);
  AR_CHECK_AGREE(comm, g, AR_ERR_MEM, "out of memory (grid)"); /* before the collective MPI_Comm_dup */
  const int dup = MPI_Comm_dup(comm, &g->comm);
  if (dup != MPI_SUCCESS) free(g);
  AR_CALL_MPI(dup);
  g->rank = rank, g->size = size, g->pr = pr, g->pc = pc;
  g->ctxt = Csys2blacs_handle(g->comm);
  Cblacs_gridinit(&g->ctxt, "Row", pr, pc);
  int npr, npc;
  Cblacs_gridinfo(g->ctxt, &npr, &npc, &g->myrow, &g->mycol);
  *out = g; /* ar_grid_destroy releases it on failure too */
  AR_CHECK_AGREE(comm, npr == pr && npc == pc && g->myrow * pc + g->mycol == rank, AR_ERR_LIB,
                 "BLACS grid %dx%d: rank %d got coordinates (%d,%d) of a %dx%d grid", pr, pc, rank, g->myrow, g->mycol,
                 npr, npc);
  return AR_OK;
}

void ar_grid_destroy(ar_grid *pg)
{
  ar_grid g = *pg;
  if (!g) return;
  Cblacs_gridexit(g->ctxt);
  MPI_Comm_free(&g->comm);
  free(g);
  *pg = NULL;
}

void ar_grid_shape(ar_grid g, int *pr, int *pc)
{
  *pr = g->pr;
  *pc = g->pc;
}

int ar_dmat_create(ar_grid g, int N, int nb, ar_dmat *out)
{
  *out = NULL;
  AR_CHECK(N >= 1, AR_ERR_INTERNAL, "matrix order %d", N);
  if (nb <= 0) nb = ar_plan_default_nb(N, g->pr, g->pc);
  ar_dmat A = calloc(1, sizeof *A);
  AR_CHECK_AGREE(g->comm, A, AR_ERR_MEM, "out of memory (matrix)");
  *out = A;
  A->g = g, A->N = N, A->nb = nb;
  int zero = 0, info = 0;
  A->locr = numroc_(&N, &nb, &g->myrow, &zero, &g->pr);
  A->locc = numroc_(&N, &nb, &g->mycol, &zero, &g->pc);
  A->lld = A->locr > 1 ? A->locr : 1;
  descinit_(A->desc, &N, &N, &nb, &nb, &zero, &zero, &g->ctxt, &A->lld, &info);
  AR_CHECK_AGREE(g->comm, info == 0, AR_ERR_LIB, "descinit failed (info %d) for N=%d nb=%d", info, N, nb);
  size_t cnt = (size_t)A->locr * (size_t)A->locc;
  /* the local share and its factor copy: work arrays (memory.c) */
  A->a = ar_work_alloc(sizeof(double) * cnt);
  A->fact = ar_work_alloc(sizeof(double) * cnt);
  /* the block-cyclic vector of ar_dmat_solve's right-hand side, allocated here so that the solve
   * has no failure to agree before pdpotrs */
  A->rhs = calloc(A->locr > 0 ? A->locr : 1, sizeof(double));
  AR_CHECK_AGREE(g->comm, A->a && A->fact && A->rhs, AR_ERR_MEM,
                 "out of memory allocating the %d x %d Hessian (2 x %.1f MB per rank)", N, N,
                 8.0 * (double)cnt / 1048576.0);
  return AR_OK;
}

void ar_dmat_destroy(ar_dmat *pA)
{
  ar_dmat A = *pA;
  if (!A) return;
  ar_work_free(A->a);
  ar_work_free(A->fact);
  free(A->rhs);
  free(A);
  *pA = NULL;
}

int ar_dmat_nb(ar_dmat A) { return A->nb; }

void ar_dmat_times(ar_dmat A, double *t_factor, double *t_solve, int *nfactor)
{
  *t_factor = A->t_factor;
  *t_solve = A->t_solve;
  *nfactor = A->nfactor;
}

int ar_dmat_write_npy(ar_dmat A, const char *path)
{
  ar_grid g = A->g;
  char hdr[256];
  /* Written in column-major (darray with MPI_ORDER_FORTRAN matches ScaLAPACK's local
   * storage), so the header says fortran_order: True and numpy reads it as it is. */
  int hlen = (int)ar_npy_format_header(hdr, sizeof hdr, A->N, A->N, 1);
  int gs[2] = {A->N, A->N}, dist[2] = {MPI_DISTRIBUTE_CYCLIC, MPI_DISTRIBUTE_CYCLIC};
  int darg[2] = {A->nb, A->nb}, ps[2] = {g->pr, g->pc};
  MPI_Datatype ft;
  AR_CALL_MPI(MPI_Type_create_darray(g->size, g->rank, 2, gs, dist, darg, ps, MPI_ORDER_FORTRAN, MPI_DOUBLE, &ft));
  AR_CALL_MPI(MPI_Type_commit(&ft));
  MPI_File fh;
  int err = MPI_File_open(g->comm, path, MPI_MODE_CREATE | MPI_MODE_WRONLY, MPI_INFO_NULL, &fh);
  if (err != MPI_SUCCESS) {
    MPI_Type_free(&ft);
    return AR_ERROR(AR_ERR_IO, "%s: cannot create", path);
  }
  int ok = MPI_File_set_size(fh, 0) == MPI_SUCCESS;
  if (g->rank == 0 && ok) ok = MPI_File_write_at(fh, 0, hdr, hlen, MPI_CHAR, MPI_STATUS_IGNORE) == MPI_SUCCESS;
  if (ok) ok = MPI_File_set_view(fh, hlen, MPI_DOUBLE, ft, "native", MPI_INFO_NULL) == MPI_SUCCESS;
  if (ok) ok = MPI_File_write_all(fh, A->a, A->locr * A->locc, MPI_DOUBLE, MPI_STATUS_IGNORE) == MPI_SUCCESS;
  MPI_File_close(&fh);
  MPI_Type_free(&ft);
  AR_CHECK(ok, AR_ERR_IO, "%s: write failed", path);
  return AR_OK;
}

int ar_dmat_gather(ar_dmat A, double *full)
{
  ar_grid g = A->g;
  memset(full, 0, sizeof(double) * A->N * A->N);
  for (int lj = 0; lj < A->locc; lj++)
    for (int li = 0; li < A->locr; li++)
      full[(size_t)ar_bc_global(li, A->nb, g->pr, g->myrow) * A->N + ar_bc_global(lj, A->nb, g->pc, g->mycol)] =
          A->a[(size_t)lj * A->lld + li];
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, full, A->N * A->N, MPI_DOUBLE, MPI_SUM, g->comm));
  return AR_OK;
}

int ar_dmat_mean_abs_diag(ar_dmat A, double *mean)
{
  ar_grid g = A->g;
  double s = 0;
  for (int lj = 0; lj < A->locc; lj++) {
    int gj = ar_bc_global(lj, A->nb, g->pc, g->mycol);
    if (ar_bc_owner(gj, A->nb, g->pr) != g->myrow) continue;
    int li = ar_bc_local(gj, A->nb, g->pr);
    s += fabs(A->a[(size_t)lj * A->lld + li]);
  }
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, &s, 1, MPI_DOUBLE, MPI_SUM, g->comm));
  *mean = s / A->N;
  return AR_OK;
}

int ar_dmat_diag(ar_dmat A, double *diag)
{
  ar_grid g = A->g;
  memset(diag, 0, sizeof(double) * A->N);
  for (int lj = 0; lj < A->locc; lj++) {
    int gj = ar_bc_global(lj, A->nb, g->pc, g->mycol);
    if (ar_bc_owner(gj, A->nb, g->pr) == g->myrow) diag[gj] = A->a[(size_t)lj * A->lld + ar_bc_local(gj, A->nb, g->pr)];
  }
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, diag, A->N, MPI_DOUBLE, MPI_SUM, g->comm));
  return AR_OK;
}

int ar_dmat_factor(ar_dmat A, double shift, int *not_pd) { return ar_dmat_factor_diag(A, shift, NULL, not_pd); }

/* Cholesky factor of A->fact in place (the shifted copy): LAPACK on one process. */
static int factor_copy(ar_dmat A, int *not_pd)
{
  ar_grid g = A->g;
  const int N = A->N, one = 1;
  int info = 0;
  double t0 = MPI_Wtime();
  /* One process: ScaLAPACK would only add PBLAS overhead to LAPACK's blocked Cholesky. */
  if (g->size == 1) dpotrf_("L", &N, A->fact, &A->lld, &info);
  else pdpotrf_("L", &N, A->fact, &one, &one, A->desc, &info);
  A->t_factor += MPI_Wtime() - t0;
  A->nfactor++;
  AR_CHECK(info >= 0, AR_ERR_LIB, "%s: argument %d had an illegal value", g->size == 1 ? "dpotrf" : "pdpotrf", -info);
  *not_pd = info > 0;
  A->factored = !*not_pd;
  return AR_OK;
}

int ar_dmat_factor_diag(ar_dmat A, double shift, const double *shift_diag, int *not_pd)
{
  ar_grid g = A->g;
  const int nb = A->nb;
  memcpy(A->fact, A->a, (size_t)A->locr * A->locc * sizeof(double));
  for (int lj = 0; lj < A->locc; lj++) {
    int gj = ar_bc_global(lj, nb, g->pc, g->mycol);
    if (ar_bc_owner(gj, nb, g->pr) == g->myrow)
      A->fact[(size_t)lj * A->lld + ar_bc_local(gj, nb, g->pr)] += shift_diag ? shift_diag[gj] : shift;
  }
  return factor_copy(A, not_pd);
}

/* The Kronecker coordinates of unknown r: block 0 (X, r = a d + b) or 1 (Y, r = d^2 + a m + b). */
static void kron_coords(const ar_kron_metric *M, int r, int *blk, int *a, int *b)
{
  const int dd = M->d * M->d;
  if (r < dd) *blk = 0, *a = r / M->d, *b = r % M->d;
  else *blk = 1, *a = (r - dd) / M->m, *b = (r - dd) % M->m;
}

/* Adds shift * M to the lower triangle (all that the Cholesky reads): M(r, c) is
 * Ga[a][a'] Gb[b][b'] within X, Gy[a][a'] [b == b'] within Y, 0 across, + floor [r == c]. */
int ar_dmat_factor_metric(ar_dmat A, double shift, const ar_kron_metric *M, int *not_pd)
{
  ar_grid g = A->g;
  const int nb = A->nb, d = M->d;
  int *rg = malloc(sizeof(int) * 4 * (size_t)(A->locr > 0 ? A->locr : 1));
  /* agreed: a rank that returned here alone would leave the others in pdpotrf */
  AR_CHECK_AGREE(g->comm, rg, AR_ERR_MEM, "out of memory (shift metric)");
  int *rblk = rg + A->locr, *ra = rblk + A->locr, *rb = ra + A->locr;
  for (int li = 0; li < A->locr; li++) {
    rg[li] = ar_bc_global(li, nb, g->pr, g->myrow);
    kron_coords(M, rg[li], &rblk[li], &ra[li], &rb[li]);
  }
  memcpy(A->fact, A->a, (size_t)A->locr * A->locc * sizeof(double));
  for (int lj = 0; lj < A->locc; lj++) {
    const int gj = ar_bc_global(lj, nb, g->pc, g->mycol);
    int cblk, ca, cb;
    kron_coords(M, gj, &cblk, &ca, &cb);
    double *col = A->fact + (size_t)lj * A->lld;
    const double *ga = (cblk ? M->Gy : M->Ga) + ca, *gb = M->Gb + cb;
    for (int li = 0; li < A->locr; li++) {
      if (rg[li] < gj || rblk[li] != cblk) continue;
      double v = cblk ? (rb[li] == cb ? ga[ra[li] * d] : 0) : ga[ra[li] * d] * gb[rb[li] * d];
      if (rg[li] == gj) v += M->floor;
      col[li] += shift * v;
    }
  }
  free(rg);
  return factor_copy(A, not_pd);
}

double ar_kron_metric_quad(const ar_kron_metric *M, int N, const double *v)
{
  double *T = malloc(sizeof(double) * 2 * M->d * M->d);
  const double q = T ? ar_kron_metric_quad_work(M, N, v, T) : NAN; /* NaN: the caller's model check rejects the step */
  free(T);
  return q;
}

double ar_kron_metric_quad_work(const ar_kron_metric *M, int N, const double *v, double *T)
{
  const int d = M->d, dd = d * d, m = M->m;
  double q = 0;
  for (int i = 0; i < N; i++) q += M->floor * v[i] * v[i];
  /* vec_r(V)^T (Ga (x) Gb) vec_r(V) = sum V .* (Ga V Gb) */
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0, M->Ga, d, v, d, 0.0, T, d);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0, T, d, M->Gb, d, 0.0, T + dd, d);
  for (int i = 0; i < dd; i++) q += v[i] * T[dd + i];
  if (N > dd)
    for (int k = 0; k < d; k++)
      for (int kk = 0; kk < d; kk++)
        for (int l = 0; l < m; l++) q += v[dd + k * m + l] * M->Gy[k * d + kk] * v[dd + kk * m + l];
  return q;
}

int ar_dmat_solve(ar_dmat A, const double *rhs, double *x)
{
  ar_grid g = A->g;
  const int N = A->N, nb = A->nb, one = 1, zero = 0;
  AR_CHECK(A->factored, AR_ERR_INTERNAL, "ar_dmat_solve without a successful ar_dmat_factor");
  int info = 0;
  double t0 = MPI_Wtime();
  if (g->size == 1) {
    memcpy(x, rhs, sizeof(double) * N);
    dpotrs_("L", &N, &one, A->fact, &A->lld, x, &N, &info);
    A->t_solve += MPI_Wtime() - t0;
    AR_CHECK(info == 0, AR_ERR_LIB, "dpotrs: argument %d had an illegal value", -info);
    return AR_OK;
  }
  /* Right-hand side: an N x 1 block-cyclic vector held by grid column 0. */
  int bdesc[9], blld = A->lld;
  descinit_(bdesc, &N, &one, &nb, &nb, &zero, &zero, &g->ctxt, &blld, &info);
  AR_CHECK_AGREE(g->comm, info == 0, AR_ERR_LIB, "descinit (rhs) failed: info %d", info);
  double *b = A->rhs;
  if (g->mycol == 0)
    for (int li = 0; li < A->locr; li++) b[li] = rhs[ar_bc_global(li, nb, g->pr, g->myrow)];
  pdpotrs_("L", &N, &one, A->fact, &one, &one, A->desc, b, &one, &one, bdesc, &info);
  AR_CHECK_AGREE(g->comm, info == 0, AR_ERR_LIB, "pdpotrs: argument %d had an illegal value", -info);
  memset(x, 0, sizeof(double) * N);
  if (g->mycol == 0)
    for (int li = 0; li < A->locr; li++) x[ar_bc_global(li, nb, g->pr, g->myrow)] = b[li];
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, x, N, MPI_DOUBLE, MPI_SUM, g->comm));
  A->t_solve += MPI_Wtime() - t0;
  return AR_OK;
}
