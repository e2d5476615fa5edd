/* The row layout (layout.h, docs/layout.md §6): pure index arithmetic on (n, mask, P). */
#include "layout.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

void ar_partition(int64_t n, int size, int rank, int64_t *r0, int64_t *r1)
{
  int64_t q = n / size, rem = n % size;
  *r0 = rank * q + (rank < rem ? rank : rem);
  *r1 = *r0 + q + (rank < rem ? 1 : 0);
}

double ar_mask_pairs(int64_t a, int64_t b, int64_t o0, int64_t o1, int causal)
{
  if (b <= a) return 0;
  if (!causal) return (double)(b - a) * (double)(o1 - o0);
  const double lo = (double)(a - o0 + 1), hi = (double)(b - o0); /* row g sees g - o0 + 1 keys */
  return (lo + hi) * (hi - lo + 1) / 2;
}

int64_t ar_mask_segment(const ar_mask *m, int64_t g)
{
  if (!m || m->nseg <= 1 || !m->offsets) return 0;
  int64_t lo = 0, hi = m->nseg - 1; /* the largest s with offsets[s] <= g */
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (m->offsets[mid] <= g) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

typedef struct {
  const int64_t *o;
  int causal;
  double wbar, rbar; /* one rank's fair share of the work and of the rows */
} seginfo;

/* A segment's work and rows in units of the fair shares, and its load (the larger). */
static double seg_work(const seginfo *si, int64_t s)
{
  return ar_mask_pairs(si->o[s], si->o[s + 1], si->o[s], si->o[s + 1], si->causal) / si->wbar;
}
static double seg_rows(const seginfo *si, int64_t s) { return (double)(si->o[s + 1] - si->o[s]) / si->rbar; }
/* Time is work; rows (memory) count once a rank would hold more than 1.5 shares of them. */
#define ROWS_SLACK 1.5
static double seg_load(const seginfo *si, int64_t s) { return fmax(seg_work(si, s), seg_rows(si, s) / ROWS_SLACK); }

/* A piece of the layout: global rows [a, b) on rank r. */
typedef struct {
  int r;
  int64_t a, b;
} piece;

typedef struct {
  piece *p;
  int64_t n, cap;
} pieces;

static int add_piece(pieces *ps, int r, int64_t a, int64_t b)
{
  if (b <= a) return AR_OK;
  if (ps->n == ps->cap) {
    ps->cap = ps->cap ? 2 * ps->cap : 256;
    piece *q = realloc(ps->p, sizeof(piece) * (size_t)ps->cap);
    AR_CHECK(q, AR_ERR_MEM, "out of memory (row layout)");
    ps->p = q;
  }
  ps->p[ps->n++] = (piece){r, a, b};
  return AR_OK;
}

/* Segment s over ranks [r0, r0 + k): 2k zigzag pieces when causal (member i holds pieces i and
 * 2k-1-i: the same masked work at every step of the ring), else k contiguous ones. */
static int spread(pieces *ps, const seginfo *si, int64_t s, int r0, int k, int *zigzag)
{
  const int64_t a = si->o[s], len = si->o[s + 1] - a;
  int64_t p0, p1;
  for (int i = 0; i < k; i++) {
    if (si->causal && k > 1) {
      ar_partition(len, 2 * k, i, &p0, &p1);
      AR_CALL(add_piece(ps, r0 + i, a + p0, a + p1));
      ar_partition(len, 2 * k, 2 * k - 1 - i, &p0, &p1);
      AR_CALL(add_piece(ps, r0 + i, a + p0, a + p1));
      *zigzag = 1;
    } else {
      ar_partition(len, k, i, &p0, &p1);
      AR_CALL(add_piece(ps, r0 + i, a + p0, a + p1));
    }
  }
  return AR_OK;
}

/* Longest-processing-time packing: the segments listed in order[0 .. ns) (by decreasing load)
 * whole onto ranks [r0, r0 + k), each to the rank whose load max(work, rows) is smallest, on top
 * of base work bw and rows br per rank.  Returns the largest load; with ps, adds the pieces. */
static double pack(pieces *ps, const seginfo *si, const int64_t *order, int64_t ns, int r0, int k, double bw,
                   double br, int *err)
{
  double *w = calloc((size_t)k, sizeof(double)), *rw = calloc((size_t)k, sizeof(double));
  int *heap = malloc(sizeof(int) * (size_t)k); /* binary min-heap of bins by load, ties by index */
  if (!w || !rw || !heap) {
    *err = AR_ERROR(AR_ERR_MEM, "out of memory (row layout)");
    free(w), free(rw), free(heap);
    return INFINITY;
  }
#define LOAD(i) fmax(bw + w[i], (br + rw[i]) / ROWS_SLACK)
#define LESS(i, j) (LOAD(i) < LOAD(j) || (LOAD(i) == LOAD(j) && (i) < (j)))
  for (int i = 0; i < k; i++) heap[i] = i; /* all loads equal: index order is a heap */
  double worst = fmax(bw, br / ROWS_SLACK);
  for (int64_t t = 0; t < ns && !*err; t++) {
    const int64_t s = order[t];
    const int b = heap[0];
    w[b] += seg_work(si, s), rw[b] += seg_rows(si, s);
    worst = fmax(worst, LOAD(b));
    if (ps) *err = add_piece(ps, r0 + b, si->o[s], si->o[s + 1]);
    for (int i = 0;;) { /* sift the root down */
      int c = 2 * i + 1;
      if (c >= k) break;
      if (c + 1 < k && LESS(heap[c + 1], heap[c])) c++;
      if (!LESS(heap[c], heap[i])) break;
      const int x = heap[i];
      heap[i] = heap[c], heap[c] = x, i = c;
    }
  }
#undef LESS
#undef LOAD
  free(w), free(rw), free(heap);
  return worst;
}

static const int64_t *g_sort_o; /* for the comparators (qsort has no context argument) */
static int by_load(const void *x, const void *y)
{
  const int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
  const int64_t la = g_sort_o[a + 1] - g_sort_o[a], lb = g_sort_o[b + 1] - g_sort_o[b];
  return la != lb ? (la < lb ? 1 : -1) : (a > b) - (a < b); /* longer first: load grows with length */
}
static int by_rank_row(const void *x, const void *y)
{
  const piece *a = x, *b = y;
  return a->r != b->r ? (a->r > b->r) - (a->r < b->r) : (a->a > b->a) - (a->a < b->a);
}

/* The pieces into the layout's ranges (sorted by rank and row, adjacent ones merged). */
static int finish_pieces(ar_layout *L, pieces *ps)
{
  qsort(ps->p, (size_t)ps->n, sizeof(piece), by_rank_row);
  L->ranges = malloc(sizeof(int64_t) * 2 * (size_t)(ps->n > 0 ? ps->n : 1));
  AR_CHECK(L->ranges, AR_ERR_MEM, "out of memory (row layout)");
  int nr = 0;
  int64_t i = 0;
  for (int r = 0; r < L->size; r++) {
    L->first[r] = nr;
    for (; i < ps->n && ps->p[i].r == r; i++) {
      if (nr > L->first[r] && L->ranges[2 * nr - 1] == ps->p[i].a) L->ranges[2 * nr - 1] = ps->p[i].b;
      else L->ranges[2 * nr] = ps->p[i].a, L->ranges[2 * nr + 1] = ps->p[i].b, nr++;
    }
  }
  L->first[L->size] = nr;
  return AR_OK;
}

/* Groups: each long segment (load > 1) gets ranks of its own, by D'Hondt on load; the short
 * ones share the rest, packed whole.  Returns the largest load of a rank (the groups run
 * independently, so that is the time); with ps, lays it out. */
static double plan_groups(ar_layout *L, pieces *ps, const seginfo *si, const int64_t *order, int64_t K,
                          const char *is_long, int P, int *err)
{
  int64_t nlong = 0, nshort = 0;
  double sload = 0, smax = 0;
  for (int64_t s = 0; s < K; s++)
    if (is_long[s]) nlong++;
    else nshort++, sload += seg_load(si, s), smax = fmax(smax, seg_load(si, s));
  int *k = calloc((size_t)(nlong + 1), sizeof(int)), ks = nshort > 0;
  int64_t *ls = malloc(sizeof(int64_t) * (size_t)(nlong + 1));
  if (!k || !ls) {
    *err = AR_ERROR(AR_ERR_MEM, "out of memory (row layout)");
    free(k), free(ls);
    return INFINITY;
  }
  int64_t q = 0;
  for (int64_t s = 0; s < K; s++)
    if (is_long[s]) ls[q] = s, k[q++] = 1;
  for (int left = P - (int)nlong - ks; left > 0; left--) { /* the rest, to the largest load */
    int64_t best = -1;
    double bl = ks ? (ks < nshort ? fmax(sload / ks, smax) : -1) : -1;
    for (int64_t i = 0; i < nlong; i++) {
      const int64_t len = si->o[ls[i] + 1] - si->o[ls[i]], kmax = si->causal ? len / 2 : len;
      const double l = seg_load(si, ls[i]) / k[i];
      if (k[i] < kmax && l > bl) best = i, bl = l;
    }
    if (best >= 0) k[best]++;
    else if (ks > 0 && ks < nshort) ks++;
    else break; /* nothing can use another rank: the rest stay empty */
  }
  double worst = 0;
  int r = 0, g = 0, zz = 0;
  for (int64_t i = 0; i < nlong && !*err; i++) {
    worst = fmax(worst, seg_load(si, ls[i]) / k[i]);
    if (ps) {
      *err = spread(ps, si, ls[i], r, k[i], &zz);
      L->group_first[g] = r, L->group_size[g] = k[i];
      for (int j = 0; j < k[i]; j++) L->group[r + j] = g;
    }
    r += k[i], g++;
  }
  if (ks > 0 && !*err) {
    int64_t *sh = malloc(sizeof(int64_t) * (size_t)nshort), c = 0;
    if (!sh) *err = AR_ERROR(AR_ERR_MEM, "out of memory (row layout)");
    for (int64_t t = 0; t < K && sh; t++)
      if (!is_long[order[t]]) sh[c++] = order[t];
    if (sh) worst = fmax(worst, pack(ps, si, sh, nshort, r, ks, 0, 0, err));
    free(sh);
  }
  if (ps) {
    for (; r < P; r++, g++) L->group[r] = g, L->group_first[g] = r, L->group_size[g] = 1; /* one-rank groups */
    L->ngroups = g, L->zigzag = zz;
  }
  free(k), free(ls);
  return worst;
}

/* One ring of all ranks: every segment long enough for pieces of 16 rows spread over all of them
 * (balanced at every step), the others packed whole on top.  Returns the time in loads: the
 * spread work per rank plus the largest packed load (all at the ring's first step, with the own
 * block). */
static double plan_spread(ar_layout *L, pieces *ps, const seginfo *si, const int64_t *order, int64_t K,
                          const char *spreads, int P, int *err)
{
  const char *is_long = spreads;
  double lw = 0, lr = 0;
  int64_t nshort = 0;
  int zz = 0;
  for (int64_t s = 0; s < K; s++)
    if (is_long[s]) lw += seg_work(si, s) / P, lr += seg_rows(si, s) / P;
    else nshort++;
  for (int64_t s = 0; s < K && ps && !*err; s++)
    if (is_long[s]) *err = spread(ps, si, s, 0, P, &zz);
  int64_t *sh = malloc(sizeof(int64_t) * (size_t)(nshort + 1)), c = 0;
  if (!sh) *err = AR_ERROR(AR_ERR_MEM, "out of memory (row layout)");
  for (int64_t t = 0; t < K && sh; t++)
    if (!is_long[order[t]]) sh[c++] = order[t];
  const double worst = *err ? INFINITY : pack(ps, si, sh, nshort, 0, P, lw, lr, err);
  free(sh);
  if (ps) {
    for (int r = 0; r < P; r++) L->group[r] = 0;
    L->ngroups = 1, L->group_first[0] = 0, L->group_size[0] = P, L->zigzag = zz;
  }
  return worst;
}

static int build_masked(ar_layout *L, const ar_mask *m, int P)
{
  const int64_t K = m->nseg, n = L->n, *o = m->offsets;
  double W = 0;
  for (int64_t s = 0; s < K; s++) W += ar_mask_pairs(o[s], o[s + 1], o[s], o[s + 1], m->causal);
  const seginfo si = {o, m->causal, W / P, (double)n / P};
  char *is_long = calloc((size_t)K, 1);
  int64_t *order = malloc(sizeof(int64_t) * (size_t)K);
  AR_CHECK(is_long && order, AR_ERR_MEM, "out of memory (row layout)");
  for (int64_t s = 0; s < K; s++) order[s] = s;
  g_sort_o = o;
  qsort(order, (size_t)K, sizeof(int64_t), by_load);
  int64_t nlong = 0;
  for (int64_t s = 0; s < K; s++) nlong += is_long[s] = P > 1 && seg_load(&si, s) > 1.0;
  for (int64_t t = K - 1; t >= 0 && nlong + (nlong < K) > P; t--) /* too many for P ranks: pack the smallest */
    if (is_long[order[t]]) is_long[order[t]] = 0, nlong--;
  /* the alternative: one ring of all ranks, the segments with pieces of at least 16 rows spread */
  char *spreads = calloc((size_t)K, 1);
  int err = spreads ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory (row layout)"), nspread = 0;
  for (int64_t s = 0; s < K && spreads; s++)
    nspread += spreads[s] = P > 1 && o[s + 1] - o[s] >= (m->causal ? 2 : 1) * 16 * (int64_t)P;
  const double tg = err ? 0 : plan_groups(L, NULL, &si, order, K, is_long, P, &err);
  const double ts = nspread && !err ? plan_spread(L, NULL, &si, order, K, spreads, P, &err) : INFINITY;
  pieces ps = {0};
  if (!err && ts < 0.95 * tg) plan_spread(L, &ps, &si, order, K, spreads, P, &err);
  else if (!err) plan_groups(L, &ps, &si, order, K, is_long, P, &err);
  if (!err) err = finish_pieces(L, &ps);
  free(ps.p), free(is_long), free(order), free(spreads);
  return err;
}

int ar_layout_make(int64_t n, const ar_mask *m, int P, ar_layout *L)
{
  memset(L, 0, sizeof *L);
  L->n = n, L->size = P;
  L->first = calloc((size_t)P + 1, sizeof(int));
  L->rows = calloc((size_t)P, sizeof(int64_t));
  L->group = calloc((size_t)P, sizeof(int));
  L->group_first = calloc((size_t)P, sizeof(int));
  L->group_size = calloc((size_t)P, sizeof(int));
  int err = L->first && L->rows && L->group && L->group_first && L->group_size
                ? AR_OK
                : AR_ERROR(AR_ERR_MEM, "out of memory (row layout)");
  const int masked = m && (m->causal || (m->nseg > 1 && m->offsets));
  if (!err && (!masked || m->contiguous)) { /* the contiguous partition, one ring of all ranks */
    L->ranges = malloc(sizeof(int64_t) * 2 * (size_t)P);
    if (!L->ranges) err = AR_ERROR(AR_ERR_MEM, "out of memory (row layout)");
    int nr = 0;
    for (int r = 0; r < P && !err; r++) {
      L->first[r] = nr, L->group[r] = 0;
      ar_partition(n, P, r, &L->ranges[2 * nr], &L->ranges[2 * nr + 1]);
      nr += L->ranges[2 * nr + 1] > L->ranges[2 * nr]; /* ranks beyond n rows hold none */
    }
    if (!err) L->first[P] = nr, L->ngroups = 1, L->group_first[0] = 0, L->group_size[0] = P;
  } else if (!err) {
    const int64_t one[2] = {0, n};
    ar_mask mm = *m;
    if (mm.nseg <= 1 || !mm.offsets) mm.nseg = 1, mm.offsets = one;
    err = build_masked(L, &mm, P);
  }
  for (int r = 0; r < P && !err; r++)
    for (int i = L->first[r]; i < L->first[r + 1]; i++) L->rows[r] += L->ranges[2 * i + 1] - L->ranges[2 * i];
  if (err) ar_layout_free(L);
  return err;
}

void ar_layout_free(ar_layout *L)
{
  free(L->first), free(L->ranges), free(L->rows), free(L->group), free(L->group_first), free(L->group_size);
  memset(L, 0, sizeof *L);
}
