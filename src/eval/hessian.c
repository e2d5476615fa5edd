/* Assembly of the joint Hessian (docs/math.md §3) into the block-cyclic layout (docs/layout.md §4).
 *
 * Each rank holds the compact parts of its rows' contribution (eval.c): H_xx over symmetric
 * pairs, the two H_xy terms, and P^T P.  It expands them, one panel of columns at a time,
 * into a send buffer ordered by the owner of each block-cyclic entry (each owner's part in its
 * local column-major order), and an MPI_Reduce_scatter per panel sums the contributions
 * straight into every owner's local array: no rank ever holds the summed D x D matrix, and the
 * send buffer is bounded (AR_ASSEMBLY_BYTES) whatever D. */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "grid_impl.h"
#include "problem_impl.h"
#include "timing.h"

extern int numroc_(const int *n, const int *nb, const int *iproc, const int *isrcproc, const int *nprocs);
extern void pdtran_(const int *m, const int *n, const double *alpha, const double *a, const int *ia, const int *ja,
                    const int *desca, const double *beta, double *c, const int *ic, const int *jc, const int *descc);

/* Index tables: z index I -> (hi, lo) = (p, q) for X entries, (k, i) for Y entries, and the
 * symmetric pair numbers; they keep divisions out of the D x D loop. */
typedef struct {
  int *hi, *lo, *pair; /* pair[a * d + b] = ar_pair of (min, max) */
} index_tables;

/* Entry (I, J) of this rank's contribution, in z ordering (X entry (p,q) -> p*d+q, then Y
 * entry (k,i) -> d*d + k*m + i).  global_part: add P^T P and the ridge (one rank does). */
static double entry(const ar_hess_parts *h, const index_tables *t, int I, int J, int global_part, double lx,
                    double ly)
{
  const int d = h->d, m = h->m, dd = d * d, dm = d * m;
  if (I >= dd && J < dd) {
    int tmp = I;
    I = J, J = tmp;
  }
  if (J < dd) {
    double v = h->hpair[(size_t)t->pair[t->hi[I] * d + t->hi[J]] * h->npair + t->pair[t->lo[I] * d + t->lo[J]]];
    return global_part && I == J ? v + 2 * lx : v;
  }
  if (I < dd) {
    int p = t->hi[I], q = t->lo[I], k = t->hi[J], i = t->lo[J];
    return 2 * (h->t1[(size_t)(p * m + i) * dd + q * d + k] + h->t2[(size_t)(p * d + k) * dm + q * m + i]);
  }
  if (!global_part || t->lo[I] != t->lo[J]) return 0;
  return 2 * h->ptp[t->hi[I] * d + t->hi[J]] + (I == J ? 2 * ly : 0);
}

/* This rank's contribution for global columns [J0, J1), packed by owner in each owner's local
 * column-major order (the block-cyclic map is monotone, so an owner's local columns of a
 * global range are one contiguous range); counts[owner] entries each. */
static size_t pack_panel(const ar_hess_parts *h, const index_tables *t, ar_dmat H, int J0, int J1, int lower,
                         double lx, double ly, double *send, int *counts)
{
  ar_grid g = H->g;
  const int N = H->N, nb = H->nb, zero = 0, global_part = g->rank == 0;
  size_t off = 0;
  for (int prow = 0; prow < g->pr; prow++)
    for (int pcol = 0; pcol < g->pc; pcol++) {
      const size_t start = off;
      int lr = numroc_(&N, &nb, &prow, &zero, &g->pr);
      int lc0 = numroc_(&J0, &nb, &pcol, &zero, &g->pc), lc1 = numroc_(&J1, &nb, &pcol, &zero, &g->pc);
      for (int lj = lc0; lj < lc1; lj++) {
        int J = ar_bc_global(lj, nb, g->pc, pcol);
        /* lower: only rows I >= J, the owner's local rows from numroc(J) on */
        for (int li = lower ? numroc_(&J, &nb, &prow, &zero, &g->pr) : 0; li < lr; li++)
          send[off++] = entry(h, t, ar_bc_global(li, nb, g->pr, prow), J, global_part, lx, ly);
      }
      counts[prow * g->pc + pcol] = (int)(off - start);
    }
  return off;
}

/* lower: this rank's reduced entries of the panel (in recv) into its local columns, rows I >= J. */
static void unpack_lower(ar_dmat H, int J0, int J1, const double *recv)
{
  ar_grid g = H->g;
  const int zero = 0;
  int lc0 = numroc_(&J0, &H->nb, &g->mycol, &zero, &g->pc), lc1 = numroc_(&J1, &H->nb, &g->mycol, &zero, &g->pc);
  size_t k = 0;
  for (int lj = lc0; lj < lc1; lj++) {
    int J = ar_bc_global(lj, H->nb, g->pc, g->mycol);
    for (int li = numroc_(&J, &H->nb, &g->myrow, &zero, &g->pr); li < H->locr; li++)
      H->a[(size_t)lj * H->lld + li] = recv[k++];
  }
}

/* The send panel (columns per reduction) and the index tables, kept between evaluations: a
 * fresh buffer each time costs page faults. */
static int assembly_workspace(ar_hess_parts *h, ar_grid g, int N)
{
  if (h->work_n == N) return AR_OK;
  free(h->send), free(h->recv), free(h->counts), free(h->hi), free(h->lo), free(h->pairs);
  h->panel = g->size == 1 ? N : (int)(AR_ASSEMBLY_BYTES / 8.0 / N);
  if (h->panel < 1) h->panel = 1;
  if (h->panel > N) h->panel = N;
  h->send = g->size == 1 ? NULL : malloc(sizeof(double) * (size_t)N * h->panel);
  h->recv = g->size == 1 ? NULL : malloc(sizeof(double) * (size_t)N * h->panel); /* lower: this rank's share */
  h->counts = malloc(sizeof(int) * g->size);
  h->hi = malloc(sizeof(int) * N), h->lo = malloc(sizeof(int) * N), h->pairs = malloc(sizeof(int) * h->d * h->d);
  h->work_n = N;
  if ((g->size > 1 && (!h->send || !h->recv)) || !h->counts || !h->hi || !h->lo || !h->pairs) {
    h->work_n = 0;
    return AR_ERROR(AR_ERR_MEM, "out of memory: Hessian assembly panel of %.1f MB", 8.0 * N * h->panel / 1048576.0);
  }
  for (int I = 0; I < N; I++) {
    int X = I < h->d * h->d, J = X ? I : I - h->d * h->d, w = X ? h->d : h->m;
    h->hi[I] = J / w, h->lo[I] = J % w;
  }
  for (int a = 0; a < h->d; a++)
    for (int b = 0; b < h->d; b++) h->pairs[a * h->d + b] = a <= b ? ar_pair(h->d, a, b) : ar_pair(h->d, b, a);
  return AR_OK;
}

int ar_hess_assemble(MPI_Comm comm, ar_hess_parts *h, double lx, double ly, ar_dmat H, int lower, double *t_reduce)
{
  ar_grid g = H->g;
  const int N = H->N;
  /* N = D: the joint Hessian; N = d*d: the H_xx block alone (alternating method). */
  AR_CHECK(N == h->d * h->d + h->d * h->m || N == h->d * h->d, AR_ERR_INTERNAL, "Hessian order %d matches neither D nor d*d", N);
  /* Agree before the reduction: a rank short of memory must not leave the others waiting. */
  AR_CALL(ar_error_agree(comm, assembly_workspace(h, g, N)));
  const index_tables t = {h->hi, h->lo, h->pairs};
  *t_reduce = 0;
  if (g->size == 1) { /* one owner: the entries go straight into H */
    pack_panel(h, &t, H, 0, N, 0, lx, ly, H->a, h->counts);
    return AR_OK;
  }
  /* Column panels of at most AR_ASSEMBLY_BYTES: each reduce-scatter sums the ranks' parts of
   * the panel straight into its owners' local columns. */
  const int zero = 0;
  for (int J0 = 0; J0 < N; J0 += h->panel) {
    const int J1 = N - J0 < h->panel ? N : J0 + h->panel;
    pack_panel(h, &t, H, J0, J1, lower, lx, ly, h->send, h->counts);
    const int lc0 = numroc_(&J0, &H->nb, &g->mycol, &zero, &g->pc);
    double *recv = lower ? h->recv : H->a + (size_t)lc0 * H->lld;
    double t0 = ar_wtime();
    int rc = MPI_Reduce_scatter(h->send, recv, h->counts, MPI_DOUBLE, MPI_SUM, comm);
    *t_reduce += ar_wtime() - t0;
    AR_CHECK(rc == MPI_SUCCESS, AR_ERR_MPI, "MPI_Reduce_scatter of the Hessian failed");
    if (lower) unpack_lower(H, J0, J1, h->recv);
  }
  if (lower) return AR_OK; /* the Cholesky reads the lower triangle only */
  /* Entries (I,J) and (J,I) live on different owners, and the reduction may sum the ranks'
   * contributions in a different order for each: restore exact symmetry, H = (H + H^T) / 2
   * (bitwise symmetric, as addition commutes). */
  if (g->size > 2) {
    const int one = 1;
    const double half = 0.5;
    memcpy(H->fact, H->a, sizeof(double) * (size_t)H->locr * H->locc); /* scratch: no factor any more */
    H->factored = 0;
    double t0 = ar_wtime();
    pdtran_(&N, &N, &half, H->fact, &one, &one, H->desc, &half, H->a, &one, &one, H->desc);
    *t_reduce += ar_wtime() - t0;
  }
  return AR_OK;
}

void ar_hess_parts_free(ar_hess_parts *h)
{
  free(h->send), free(h->recv), free(h->counts), free(h->hi), free(h->lo), free(h->pairs);
  h->send = h->recv = NULL, h->counts = h->hi = h->lo = h->pairs = NULL;
  h->work_n = 0;
}
