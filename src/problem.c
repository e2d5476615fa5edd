/* The distributed problem: row partition, loading and validating the inputs (docs/layout.md).
 * Every input is distributed by rows: each rank reads and holds only its rows of A1, A2, A3, B. */
#include "problem_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "hash.h"
#include "npy.h"

void ar_partition(int64_t n, int size, int rank, int64_t *r0, int64_t *r1)
{
  int64_t q = n / size, rem = n % size;
  *r0 = rank * q + (rank < rem ? rank : rem);
  *r1 = *r0 + q + (rank < rem ? 1 : 0);
}

int ar_data_paths_from_dir(const char *dir, ar_data_paths *p, char *storage)
{
  const size_t cap = 4096;
  char *s[4] = {storage, storage + cap, storage + 2 * cap, storage + 3 * cap};
  struct stat st;
  AR_CHECK(stat(dir, &st) == 0, AR_ERR_DATA, "--data %s: no such directory", dir);
  AR_CHECK(S_ISDIR(st.st_mode), AR_ERR_DATA, "--data %s: not a directory", dir);
  snprintf(s[0], cap, "%s/A.npy", dir);
  int self = stat(s[0], &st) == 0;
  if (self) {
    if (!p->a1) p->a1 = s[0];
    if (!p->a2) p->a2 = s[0];
    if (!p->a3) p->a3 = s[0];
  } else {
    snprintf(s[0], cap, "%s/A1.npy", dir);
    snprintf(s[1], cap, "%s/A2.npy", dir);
    snprintf(s[2], cap, "%s/A3.npy", dir);
    if (!p->a1) p->a1 = s[0];
    if (!p->a2) p->a2 = s[1];
    if (!p->a3) p->a3 = s[2];
  }
  snprintf(s[3], cap, "%s/B.npy", dir);
  if (!p->b) p->b = s[3];
  return AR_OK;
}

/* self: one array for A1 = A2 = A3 (self-attention data); kv_same: one for A2 = A3. */
static int problem_alloc(MPI_Comm comm, int64_t n, int d, int m, int self, int kv_same, ar_problem *out)
{
  ar_problem p;
  AR_MALLOC(p, 1);
  *out = p;
  p->comm = MPI_COMM_NULL;
  AR_CALL_MPI(MPI_Comm_dup(comm, &p->comm));
  MPI_Comm_rank(comm, &p->rank);
  MPI_Comm_size(comm, &p->size);
  p->n = n, p->d = d, p->m = m;
  ar_partition(n, p->size, p->rank, &p->r0, &p->r1);
  p->nloc = p->r1 - p->r0;
  AR_MALLOC(p->a1, p->nloc * d);
  AR_MALLOC(p->b, p->nloc * m);
  if (self) {
    p->a2 = p->a3 = p->a1;
  } else {
    AR_MALLOC(p->a2, p->nloc * d);
    if (kv_same) p->a3 = p->a2; /* keys = values: the ring carries one array */
    else AR_MALLOC(p->a3, p->nloc * d);
  }
  return AR_OK;
}

/* Sum over entries of hash(array id, global index, bits): order-free, so any partition of
 * the rows over ranks gives the same value. */
static uint64_t hash_entries(const double *a, int64_t count, int64_t first, uint64_t id)
{
  uint64_t h = 0;
  for (int64_t i = 0; i < count; i++) {
    uint64_t bits;
    memcpy(&bits, &a[i], sizeof bits);
    h += ar_mix64(bits ^ ar_mix64((uint64_t)(first + i) * 0x9e3779b97f4a7c15ULL + id));
  }
  return h;
}

static int problem_finish(ar_problem p)
{
  double loc = 0;
  for (int64_t i = 0; i < p->nloc * p->m; i++) loc += p->b[i] * p->b[i];
  AR_CALL_MPI(MPI_Allreduce(&loc, &p->bnorm2, 1, MPI_DOUBLE, MPI_SUM, p->comm));
  const int64_t first = p->r0 * p->d, cnt = p->nloc * p->d;
  uint64_t h = hash_entries(p->a1, cnt, first, 1) + hash_entries(p->a2, cnt, first, 2) +
               hash_entries(p->a3, cnt, first, 3) + hash_entries(p->b, p->nloc * p->m, p->r0 * p->m, 4);
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, &h, 1, MPI_UINT64_T, MPI_SUM, p->comm));
  p->hash = h + ar_mix64((uint64_t)p->n * 0x100000001b3ULL + (uint64_t)p->d * 977 + (uint64_t)p->m);
  return AR_OK;
}

uint64_t ar_problem_hash(ar_problem p) { return p->hash; }

int ar_problem_create(MPI_Comm comm, int64_t n, int d, int m, const double *a1, const double *a2, const double *a3,
                      const double *b, ar_problem *prob)
{
  *prob = NULL;
  AR_CHECK(n >= 1 && d >= 1 && m >= 1, AR_ERR_DATA, "problem sizes must be positive (n=%lld d=%d m=%d)",
           (long long)n, d, m);
  const int self = a1 == a2 && a2 == a3;
  int err = problem_alloc(comm, n, d, m, self, a2 == a3, prob);
  if (!err) {
    ar_problem p = *prob;
    memcpy(p->a1, a1, sizeof(double) * p->nloc * d);
    memcpy(p->b, b, sizeof(double) * p->nloc * m);
    if (!self) memcpy(p->a2, a2, sizeof(double) * p->nloc * d);
    if (p->a3 != p->a2) memcpy(p->a3, a3, sizeof(double) * p->nloc * d);
    err = problem_finish(p);
  }
  err = ar_error_agree(comm, err);
  if (err) ar_problem_destroy(prob);
  return err;
}

/* Collective: the shape checks every rank makes on the (broadcast) headers. */
static int check_shapes(const ar_data_paths *ps, const ar_npy_header h[4])
{
  const char *name[4] = {ps->a1, ps->a2, ps->a3, ps->b};
  for (int i = 0; i < 4; i++) {
    AR_CHECK(h[i].ndim == 2 || i == 3, AR_ERR_DATA, "%s: must be a 2-D array (n x d), has 1 dimension", name[i]);
    AR_CHECK(h[i].rows > 0, AR_ERR_DATA, "%s: has no rows (n = 0)", name[i]);
    AR_CHECK(h[i].cols > 0, AR_ERR_DATA, "%s: has no columns (shape %lld x 0)", name[i], (long long)h[i].rows);
  }
  for (int i = 1; i < 4; i++)
    AR_CHECK(h[i].rows == h[0].rows, AR_ERR_DATA, "%s: has %lld rows but %s has %lld (all inputs need n rows)",
             name[i], (long long)h[i].rows, name[0], (long long)h[0].rows);
  for (int i = 1; i < 3; i++)
    AR_CHECK(h[i].cols == h[0].cols, AR_ERR_DATA, "%s: has %lld columns but %s has %lld (A1, A2, A3 need d columns)",
             name[i], (long long)h[i].cols, name[0], (long long)h[0].cols);
  AR_CHECK(h[0].cols <= 4096 && h[3].cols <= 1 << 20, AR_ERR_DATA, "%s: d = %lld is too large", name[0],
           (long long)h[0].cols);
  return AR_OK;
}

int ar_problem_load(MPI_Comm comm, const ar_data_paths *ps, ar_problem *prob)
{
  *prob = NULL;
  ar_npy_header h[4];
  const char *name[4] = {ps->a1, ps->a2, ps->a3, ps->b};
  for (int i = 0; i < 4; i++) {
    if (i > 0 && i < 3 && strcmp(name[i], name[0]) == 0) { h[i] = h[0]; continue; }
    AR_CALL(ar_npy_read_header(comm, name[i], &h[i]));
  }
  AR_CALL(check_shapes(ps, h));
  const int self = !strcmp(ps->a2, ps->a1) && !strcmp(ps->a3, ps->a1);
  const int kv_same = !strcmp(ps->a3, ps->a2);
  int err = ar_error_agree(comm, problem_alloc(comm, h[0].rows, (int)h[0].cols, (int)h[3].cols, self, kv_same, prob));
  if (err) {
    ar_problem_destroy(prob);
    return err;
  }
  /* Every input by rows: this rank's rows of each file, one array per distinct file. */
  ar_problem p = *prob;
  double *dst[3] = {p->a1, p->a2, p->a3};
  for (int i = 0; i < 3 && !err; i++) {
    int same = -1;
    for (int k = 0; k < i; k++)
      if (!strcmp(name[i], name[k])) same = k;
    if (same < 0) err = ar_npy_read_rows(comm, name[i], &h[i], p->r0, p->r1, dst[i]);
    else if (dst[i] != dst[same]) memcpy(dst[i], dst[same], sizeof(double) * p->nloc * p->d);
  }
  if (!err) err = ar_npy_read_rows(comm, ps->b, &h[3], p->r0, p->r1, p->b);
  if (!err) err = problem_finish(p);
  err = ar_error_agree(comm, err);
  if (err) ar_problem_destroy(prob);
  return err;
}

void ar_problem_destroy(ar_problem *prob)
{
  ar_problem p = *prob;
  if (!p) return;
  if (p->a2 != p->a1) free(p->a2);
  if (p->a3 != p->a1 && p->a3 != p->a2) free(p->a3);
  free(p->a1), free(p->b);
  if (p->comm != MPI_COMM_NULL) MPI_Comm_free(&p->comm);
  free(p);
  *prob = NULL;
}

void ar_problem_sizes(ar_problem p, int64_t *n, int *d, int *m)
{
  if (n) *n = p->n;
  if (d) *d = p->d;
  if (m) *m = p->m;
}

double ar_problem_bnorm2(ar_problem p) { return p->bnorm2; }

int ar_problem_input_norms(ar_problem p, double *a1, double *a2)
{
  double s[2] = {0, 0};
  for (int64_t i = 0; i < p->nloc * p->d; i++) s[0] += p->a1[i] * p->a1[i], s[1] += p->a2[i] * p->a2[i];
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, s, 2, MPI_DOUBLE, MPI_SUM, p->comm));
  *a1 = sqrt(s[0]), *a2 = sqrt(s[1]);
  return AR_OK;
}
