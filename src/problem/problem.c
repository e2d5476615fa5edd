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

int ar_mask_check(const char *what, int64_t n, const int64_t *o, int64_t K)
{
  AR_CHECK(K >= 1, AR_ERR_DATA, "%s: needs at least 2 offsets (0 and n), has %lld", what, (long long)(K + 1));
  AR_CHECK(o[0] == 0, AR_ERR_DATA, "%s: the first offset must be 0, is %lld", what, (long long)o[0]);
  for (int64_t s = 0; s < K; s++)
    AR_CHECK(o[s + 1] > o[s], AR_ERR_DATA, "%s: offsets must increase strictly (o_%lld = %lld, o_%lld = %lld)", what,
             (long long)s, (long long)o[s], (long long)(s + 1), (long long)o[s + 1]);
  AR_CHECK(o[K] == n, AR_ERR_DATA, "%s: the last offset is %lld but the data has n = %lld rows", what,
           (long long)o[K], (long long)n);
  return AR_OK;
}

int ar_mask_read_segments(MPI_Comm comm, const char *path, int64_t n, int64_t **offsets, int64_t *nseg)
{
  *offsets = NULL, *nseg = 0;
  int rank, err = AR_OK;
  MPI_Comm_rank(comm, &rank);
  int64_t K = 0, *o = NULL;
  if (rank == 0) {
    ar_npy_header h;
    err = ar_npy_read_int64(path, &h, &o);
    if (!err && !(h.ndim == 1 || h.cols == 1))
      err = AR_ERROR(AR_ERR_DATA, "%s: must be a 1-D array of K + 1 offsets, has shape (%lld, %lld)", path,
                     (long long)h.rows, (long long)h.cols);
    if (!err) K = h.rows - 1, err = ar_mask_check(path, n, o, K);
  }
  AR_CALL(ar_error_agree(comm, err));
  AR_CALL_MPI(MPI_Bcast(&K, 1, MPI_INT64_T, 0, comm));
  if (rank != 0) o = malloc(sizeof(int64_t) * (size_t)(K + 1));
  AR_CALL(ar_error_agree(comm, o ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory (segments)")));
  AR_CALL_MPI(MPI_Bcast(o, (int)(K + 1), MPI_INT64_T, 0, comm));
  *offsets = o, *nseg = K;
  return AR_OK;
}

int ar_layout_rows(int64_t n, const ar_mask *m, int size, int rank, int *nranges, int64_t **ranges)
{
  *nranges = 0, *ranges = NULL;
  AR_CHECK(rank >= 0 && rank < size, AR_ERR_INTERNAL, "ar_layout_rows: rank %d of %d", rank, size);
  if (m && m->nseg > 1 && m->offsets) AR_CALL(ar_mask_check("mask", n, m->offsets, m->nseg));
  ar_layout L;
  AR_CALL(ar_layout_make(n, m, size, &L));
  const int k = L.first[rank + 1] - L.first[rank];
  int64_t *r = malloc(sizeof(int64_t) * 2 * (size_t)(k > 0 ? k : 1));
  if (r) memcpy(r, L.ranges + 2 * L.first[rank], sizeof(int64_t) * 2 * (size_t)k);
  ar_layout_free(&L);
  AR_CHECK(r, AR_ERR_MEM, "out of memory");
  *nranges = k, *ranges = r;
  return AR_OK;
}

static uint64_t mask_fingerprint(const ar_problem p)
{
  if (!p->masked) return 0;
  uint64_t h = ar_mix64(0x6d61736bULL + (uint64_t)p->causal * 0x9e3779b97f4a7c15ULL + (uint64_t)p->nseg);
  for (int64_t s = 0; s <= p->nseg; s++) h = ar_mix64(h ^ ((uint64_t)p->offsets[s] + (uint64_t)s * 0xd1b54a32d192ed03ULL));
  return h ? h : 1;
}

/* This rank's rows under the mask: for each, the global keys [lo, hi) it may see, and their
 * count (the unmasked query-key pairs). */
static int mask_rows(ar_problem p)
{
  p->pairs = 0;
  if (!p->masked) {
    p->pairs = (double)p->nloc * (double)p->n;
    return AR_OK;
  }
  AR_MALLOC(p->key_lo, p->nloc);
  AR_MALLOC(p->key_hi, p->nloc);
  const ar_mask m = {p->nseg, p->offsets, p->causal};
  int64_t j = 0;
  for (int i = 0; i < p->nranges; i++) {
    int64_t s = ar_mask_segment(&m, p->ranges[2 * i]);
    for (int64_t g = p->ranges[2 * i]; g < p->ranges[2 * i + 1]; g++, j++) {
      while (g >= p->offsets[s + 1]) s++;
      p->key_lo[j] = p->offsets[s];
      p->key_hi[j] = p->causal ? g + 1 : p->offsets[s + 1];
      p->pairs += (double)(p->key_hi[j] - p->key_lo[j]);
    }
  }
  return AR_OK;
}

/* self: one array for A1 = A2 = A3 (self-attention data); kv_same: one for A2 = A3. */
static int problem_alloc(MPI_Comm comm, int64_t n, int d, int m, const ar_mask *mask, int self, int kv_same,
                         ar_problem *out)
{
  ar_problem p;
  AR_MALLOC(p, 1);
  *out = p;
  p->comm = p->ring = MPI_COMM_NULL;
  AR_CALL_MPI(MPI_Comm_dup(comm, &p->comm));
  MPI_Comm_rank(comm, &p->rank);
  MPI_Comm_size(comm, &p->size);
  p->n = n, p->d = d, p->m = m;
  p->nseg = mask && mask->nseg > 1 && mask->offsets ? mask->nseg : 1;
  p->causal = mask ? mask->causal != 0 : 0;
  p->contiguous = mask ? mask->contiguous != 0 : 0;
  p->masked = p->nseg > 1 || p->causal;
  AR_MALLOC(p->offsets, p->nseg + 1);
  if (p->nseg > 1) {
    AR_CALL(ar_mask_check("segments", n, mask->offsets, mask->nseg));
    memcpy(p->offsets, mask->offsets, sizeof(int64_t) * (size_t)(p->nseg + 1));
  } else {
    p->offsets[0] = 0, p->offsets[1] = n;
  }
  const ar_mask mm = {p->nseg, p->offsets, p->causal, p->contiguous};
  AR_CALL(ar_layout_make(n, &mm, p->size, &p->layout));
  p->nranges = ar_problem_rank_ranges(p, p->rank, &p->ranges);
  p->nloc = p->layout.rows[p->rank];
  AR_CALL(mask_rows(p));
  p->mask_hash = mask_fingerprint(p);
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

/* Collective: the ring of this rank's group (all ranks without a mask). */
static int problem_ring(ar_problem p)
{
  const int g = p->layout.group[p->rank];
  AR_CALL_MPI(MPI_Comm_split(p->comm, g, p->rank, &p->ring));
  MPI_Comm_rank(p->ring, &p->ring_rank);
  MPI_Comm_size(p->ring, &p->ring_size);
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
  AR_CALL(problem_ring(p));
  double loc = 0;
  for (int64_t i = 0; i < p->nloc * p->m; i++) loc += p->b[i] * p->b[i];
  AR_CALL_MPI(MPI_Allreduce(&loc, &p->bnorm2, 1, MPI_DOUBLE, MPI_SUM, p->comm));
  uint64_t h = 0;
  int64_t j = 0;
  for (int i = 0; i < p->nranges; i++) {
    const int64_t g0 = p->ranges[2 * i], k = p->ranges[2 * i + 1] - g0, d = p->d, m = p->m;
    h += hash_entries(p->a1 + j * d, k * d, g0 * d, 1) + hash_entries(p->a2 + j * d, k * d, g0 * d, 2) +
         hash_entries(p->a3 + j * d, k * d, g0 * d, 3) + hash_entries(p->b + j * m, k * m, g0 * m, 4);
    j += k;
  }
  AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, &h, 1, MPI_UINT64_T, MPI_SUM, p->comm));
  p->hash = h + ar_mix64((uint64_t)p->n * 0x100000001b3ULL + (uint64_t)p->d * 977 + (uint64_t)p->m);
  return AR_OK;
}

uint64_t ar_problem_hash(ar_problem p) { return p->hash; }

uint64_t ar_problem_mask_hash(ar_problem p) { return p->mask_hash; }

ar_mask ar_problem_mask(ar_problem p)
{
  const ar_mask m = {p->nseg, p->offsets, p->causal, p->contiguous};
  return m;
}

void ar_problem_layout_info(ar_problem p, ar_layout_info *in)
{
  const ar_layout *L = &p->layout;
  memset(in, 0, sizeof *in);
  in->nseg = p->nseg, in->causal = p->causal, in->masked = p->masked;
  in->groups = L->ngroups, in->zigzag = L->zigzag;
  for (int g = 0; g < L->ngroups; g++) in->max_group = L->group_size[g] > in->max_group ? L->group_size[g] : in->max_group;
  const ar_mask m = {p->nseg, p->offsets, p->causal};
  for (int r = 0; r < L->size; r++) { /* every rank's pairs from its ranges: the same numbers everywhere */
    double pr = 0;
    for (int i = L->first[r]; i < L->first[r + 1]; i++) {
      int64_t a = L->ranges[2 * i], b = L->ranges[2 * i + 1];
      while (a < b) { /* a range may cross segments (packed runs) */
        const int64_t s = ar_mask_segment(&m, a), e = p->offsets[s + 1] < b ? p->offsets[s + 1] : b;
        pr += ar_mask_pairs(a, e, p->offsets[s], p->offsets[s + 1], p->causal);
        a = e;
      }
    }
    in->pairs += pr;
    in->pairs_max = pr > in->pairs_max ? pr : in->pairs_max;
    in->rows_max = L->rows[r] > in->rows_max ? L->rows[r] : in->rows_max;
  }
  in->pairs_avg = in->pairs / L->size;
}

static int create_from(MPI_Comm comm, int64_t n, int d, int m, const ar_mask *mask, const double *a1,
                       const double *a2, const double *a3, const double *b, ar_problem *prob)
{
  *prob = NULL;
  AR_CHECK(n >= 1 && d >= 1 && m >= 1, AR_ERR_DATA, "problem sizes must be positive (n=%lld d=%d m=%d)",
           (long long)n, d, m);
  const int self = a1 == a2 && a2 == a3;
  int err = problem_alloc(comm, n, d, m, mask, self, a2 == a3, prob);
  if (!err) {
    ar_problem p = *prob;
    memcpy(p->a1, a1, sizeof(double) * p->nloc * d);
    memcpy(p->b, b, sizeof(double) * p->nloc * m);
    if (!self) memcpy(p->a2, a2, sizeof(double) * p->nloc * d);
    if (p->a3 != p->a2) memcpy(p->a3, a3, sizeof(double) * p->nloc * d);
  }
  err = ar_error_agree(comm, err);
  if (!err) err = ar_error_agree(comm, problem_finish(*prob));
  if (err) ar_problem_destroy(prob);
  return err;
}

int ar_problem_create(MPI_Comm comm, int64_t n, int d, int m, const ar_mask *mask, const double *a1,
                      const double *a2, const double *a3, const double *b, ar_problem *prob)
{
  return create_from(comm, n, d, m, mask, a1, a2, a3, b, prob);
}

int ar_problem_create_like(ar_problem p, const double *a1, const double *a2, const double *a3, const double *b,
                           ar_problem *out)
{
  const ar_mask m = ar_problem_mask(p);
  AR_CALL(create_from(p->comm, p->n, p->d, p->m, &m, a1, a2, a3, b, out));
  (*out)->hash = p->hash; /* checkpoints stay tied to the user's data */
  return AR_OK;
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

int ar_problem_load(MPI_Comm comm, const ar_data_paths *ps, const ar_mask *mask, ar_problem *prob)
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
  int err = ar_error_agree(comm, problem_alloc(comm, h[0].rows, (int)h[0].cols, (int)h[3].cols, mask, self, kv_same, prob));
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
    if (same < 0) err = ar_npy_read_ranges(comm, name[i], &h[i], p->nranges, p->ranges, dst[i]);
    else if (dst[i] != dst[same]) memcpy(dst[i], dst[same], sizeof(double) * p->nloc * p->d);
  }
  if (!err) err = ar_npy_read_ranges(comm, ps->b, &h[3], p->nranges, p->ranges, p->b);
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
  free(p->a1), free(p->b), free(p->offsets), free(p->key_lo), free(p->key_hi);
  ar_layout_free(&p->layout);
  if (p->ring != MPI_COMM_NULL) MPI_Comm_free(&p->ring);
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
