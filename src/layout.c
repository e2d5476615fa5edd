/* The row layout (layout.h, docs/layout.md §6): pure index arithmetic on (n, mask, P). */
#include "layout.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

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

/* A unit of the apportionment: one long segment (a group of k ranks), or a run of consecutive
 * short segments (k groups of one rank).  Work and rows in units of one rank's fair share. */
typedef struct {
  int64_t s0, s1; /* segments [s0, s1) */
  int is_long, k, kmax;
  double work, rows, maxload; /* maxload: a run's largest single segment */
} entity;

static double load_k(const entity *e, int k)
{
  double l = fmax(e->work, e->rows) / k;
  return e->is_long ? l : fmax(l, e->maxload);
}

typedef struct {
  const int64_t *o;
  int causal;
  double wbar, rbar;
} seginfo;

static double seg_work(const seginfo *si, int64_t s)
{
  return ar_mask_pairs(si->o[s], si->o[s + 1], si->o[s], si->o[s + 1], si->causal) / si->wbar;
}
static double seg_rows(const seginfo *si, int64_t s) { return (double)(si->o[s + 1] - si->o[s]) / si->rbar; }

/* Cut run e into exactly e->k contiguous parts of load <= T where possible (each part gets
 * at least one segment); part i starts at segment cut[i]. */
static int cut_run(const seginfo *si, const entity *e, double T, int64_t *cut)
{
  int parts = 0;
  double w = 0, r = 0;
  int nonempty = 0;
  for (int64_t s = e->s0; s < e->s1; s++) {
    const double ws = seg_work(si, s), rs = seg_rows(si, s);
    const int over = nonempty && fmax(w + ws, r + rs) > T;
    const int forced = nonempty && (e->s1 - s) <= e->k - parts; /* one segment left for each part to come */
    if (!nonempty || over || forced) {
      if (cut) cut[parts] = s;
      parts++;
      w = ws, r = rs, nonempty = 1;
    } else {
      w += ws, r += rs;
    }
  }
  return parts;
}

/* The smallest max load of a contiguous partition of run e into e->k parts (bisection). */
static double best_threshold(const seginfo *si, const entity *e)
{
  double lo = fmax(e->maxload, fmax(e->work, e->rows) / e->k), hi = fmax(e->work, e->rows) + e->maxload;
  if (cut_run(si, e, lo, NULL) <= e->k) return lo;
  for (int it = 0; it < 100 && hi - lo > 1e-12 * hi; it++) {
    const double mid = 0.5 * (lo + hi);
    if (cut_run(si, e, mid, NULL) <= e->k) hi = mid;
    else lo = mid;
  }
  return hi;
}

/* Append [a, b) to rank r's ranges (first[size] is the running count while building). */
static int push_range(ar_layout *L, int *cap, int r, int64_t a, int64_t b)
{
  if (b <= a) return AR_OK;
  const int nr = L->first[L->size];
  if (nr > L->first[r] && L->ranges[2 * nr - 1] == a) { /* adjacent to the last one: extend it */
    L->ranges[2 * nr - 1] = b;
    return AR_OK;
  }
  if (nr == *cap) {
    *cap = *cap ? 2 * *cap : 64;
    int64_t *g = realloc(L->ranges, sizeof(int64_t) * 2 * (size_t)*cap);
    AR_CHECK(g, AR_ERR_MEM, "out of memory (row layout)");
    L->ranges = g;
  }
  L->ranges[2 * nr] = a, L->ranges[2 * nr + 1] = b;
  L->first[L->size] = nr + 1;
  return AR_OK;
}

/* Rank r's ranges start now (first[size] holds the running count while building). */
static void begin_rank(ar_layout *L, int r) { L->first[r] = L->first[L->size]; }

static int build_masked(ar_layout *L, const ar_mask *m, int P)
{
  const int64_t K = m->nseg, n = L->n, *o = m->offsets;
  double W = 0;
  for (int64_t s = 0; s < K; s++) W += ar_mask_pairs(o[s], o[s + 1], o[s], o[s + 1], m->causal);
  seginfo si = {o, m->causal, W / P, (double)n / P};
  char *is_long = calloc((size_t)K, 1);
  entity *E = malloc(sizeof(entity) * (size_t)(2 * K + 2));
  AR_CHECK(is_long && E, AR_ERR_MEM, "out of memory (row layout)");
  for (int64_t s = 0; s < K; s++) is_long[s] = P > 1 && fmax(seg_work(&si, s), seg_rows(&si, s)) > 1.0;
  int ne = 0, err = AR_OK;
  for (;;) { /* entities in segment order; too many for P ranks: the smallest long one is packed */
    ne = 0;
    for (int64_t s = 0; s < K; s++) {
      if (is_long[s] || ne == 0 || E[ne - 1].is_long) {
        entity e = {s, s + 1, is_long[s], 1, 1, 0, 0, 0};
        E[ne++] = e;
      } else {
        E[ne - 1].s1 = s + 1;
      }
      entity *e = &E[ne - 1];
      const double ws = seg_work(&si, s), rs = seg_rows(&si, s);
      e->work += ws, e->rows += rs, e->maxload = fmax(e->maxload, fmax(ws, rs));
    }
    if (ne <= P) break;
    int64_t victim = -1;
    for (int64_t s = 0; s < K; s++)
      if (is_long[s] && (victim < 0 || fmax(seg_work(&si, s), seg_rows(&si, s)) <
                                           fmax(seg_work(&si, victim), seg_rows(&si, victim))))
        victim = s;
    if (victim < 0) break; /* only runs: at most one, so ne = 1 <= P */
    is_long[victim] = 0;
  }
  for (int i = 0; i < ne; i++) {
    entity *e = &E[i];
    const int64_t L0 = o[e->s0 + 1] - o[e->s0];
    const int64_t km = e->is_long ? (m->causal ? L0 / 2 : L0) : e->s1 - e->s0;
    e->kmax = (int)(km < 1 ? 1 : km > P ? P : km);
  }
  /* the ranks left after one each: to the entity whose load falls most (D'Hondt on load) */
  for (int left = P - ne; left > 0; left--) {
    int best = -1, spread = -1;
    double bl = -1, bw = -1;
    for (int i = 0; i < ne; i++) {
      if (E[i].k >= E[i].kmax) continue;
      const double now = load_k(&E[i], E[i].k);
      if (load_k(&E[i], E[i].k + 1) < now && now > bl) best = i, bl = now;
      const double w = fmax(E[i].work, E[i].rows) / E[i].k;
      if (w > bw) spread = i, bw = w;
    }
    if (best < 0) best = spread; /* no load falls: spread the rows anyway */
    if (best < 0) break;         /* every entity at its limit: the remaining ranks stay empty */
    E[best].k++;
  }
  int cap = 0, rank = 0, g = 0;
  L->first[P] = 0;
  for (int i = 0; i < ne && !err; i++) {
    entity *e = &E[i];
    if (e->is_long) {
      const int64_t a = o[e->s0], len = o[e->s0 + 1] - a;
      L->group_first[g] = rank, L->group_size[g] = e->k;
      for (int mbr = 0; mbr < e->k && !err; mbr++, rank++) {
        begin_rank(L, rank);
        L->group[rank] = g;
        int64_t p0, p1;
        if (m->causal && e->k > 1) { /* pieces mbr and 2k-1-mbr of 2k */
          ar_partition(len, 2 * e->k, mbr, &p0, &p1);
          err = push_range(L, &cap, rank, a + p0, a + p1);
          ar_partition(len, 2 * e->k, 2 * e->k - 1 - mbr, &p0, &p1);
          if (!err) err = push_range(L, &cap, rank, a + p0, a + p1);
          L->zigzag = 1;
        } else {
          ar_partition(len, e->k, mbr, &p0, &p1);
          err = push_range(L, &cap, rank, a + p0, a + p1);
        }
      }
      g++;
    } else {
      int64_t *cut = malloc(sizeof(int64_t) * (size_t)(e->k + 1));
      if (!cut) err = AR_ERROR(AR_ERR_MEM, "out of memory (row layout)");
      const int parts = err ? 0 : cut_run(&si, e, best_threshold(&si, e), cut);
      for (int q = 0; q < e->k && !err; q++, rank++, g++) {
        begin_rank(L, rank);
        L->group[rank] = g, L->group_first[g] = rank, L->group_size[g] = 1;
        if (q < parts) err = push_range(L, &cap, rank, o[cut[q]], o[q + 1 < parts ? cut[q + 1] : e->s1]);
      }
      free(cut);
    }
  }
  for (; rank < P && !err; rank++, g++) { /* ranks no entity could use */
    begin_rank(L, rank);
    L->group[rank] = g, L->group_first[g] = rank, L->group_size[g] = 1;
  }
  L->ngroups = g;
  free(is_long), free(E);
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
  if (!err && !masked) { /* the contiguous partition, one ring of all ranks */
    L->ranges = malloc(sizeof(int64_t) * 2 * (size_t)P);
    if (!L->ranges) err = AR_ERROR(AR_ERR_MEM, "out of memory (row layout)");
    for (int r = 0; r < P && !err; r++) {
      L->first[r] = r, L->group[r] = 0;
      ar_partition(n, P, r, &L->ranges[2 * r], &L->ranges[2 * r + 1]);
    }
    if (!err) L->first[P] = P, L->ngroups = 1, L->group_first[0] = 0, L->group_size[0] = P;
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
