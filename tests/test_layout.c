/* The row layout (layout.c) on many masks and rank counts, without MPI: every row on exactly one
 * rank, each rank's ranges sorted; the ranks of a group consecutive, and every key a row may see
 * held by its group (the invariant that lets groups skip each other's blocks); work and rows near
 * 1/P of the whole where the mask allows; one causal sequence in zigzag pieces, every member
 * equally busy at every step of the ring; packed sets of short segments kept whole, no ring. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "layout.h"

static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void)
{
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return rng;
}

/* pairs (unmasked query-key pairs) between the rows of rank a and the rows of rank b */
static double pair_work(const ar_layout *L, const ar_mask *m, int a, int b, const int *owner)
{
  double w = 0;
  for (int i = L->first[a]; i < L->first[a + 1]; i++)
    for (int64_t g = L->ranges[2 * i]; g < L->ranges[2 * i + 1]; g++) {
      const int64_t s = ar_mask_segment(m, g), o0 = m->nseg > 1 ? m->offsets[s] : 0;
      const int64_t hi = m->causal ? g + 1 : (m->nseg > 1 ? m->offsets[s + 1] : L->n);
      for (int64_t k = o0; k < hi; k++) w += owner[k] == b;
    }
  return w;
}

/* Check the invariants; returns max/avg of the per-rank work and fills *step_eff with the
 * efficiency of the layout: the ideal time (all work over P) over the time of the slowest ring,
 * whose steps each take as long as its busiest member. */
static double check_layout(const char *what, int64_t n, const ar_mask *m, int P, const ar_layout *L,
                           double *step_eff, double *rows_ratio)
{
  int *owner = malloc(sizeof(int) * n);
  for (int64_t g = 0; g < n; g++) owner[g] = -1;
  int64_t total = 0;
  for (int r = 0; r < P; r++) {
    int64_t prev = -1, rows = 0;
    for (int i = L->first[r]; i < L->first[r + 1]; i++) {
      const int64_t a = L->ranges[2 * i], b = L->ranges[2 * i + 1];
      CHECK(a > prev && b > a && b <= n, "%s: rank %d range [%lld, %lld) after %lld", what, r, (long long)a,
            (long long)b, (long long)prev);
      for (int64_t g = a; g < b && g < n && g >= 0; g++) {
        CHECK(owner[g] < 0, "%s: row %lld on ranks %d and %d", what, (long long)g, owner[g], r);
        owner[g] = r;
      }
      prev = b, rows += b - a;
    }
    CHECK(rows == L->rows[r], "%s: rank %d rows %lld, ranges hold %lld", what, r, (long long)L->rows[r],
          (long long)rows);
    total += rows;
  }
  CHECK(total == n, "%s: %lld rows placed of %lld", what, (long long)total, (long long)n);
  for (int g = 0; g < L->ngroups; g++)
    for (int k = 0; k < L->group_size[g]; k++)
      CHECK(L->group[L->group_first[g] + k] == g, "%s: group %d is not consecutive", what, g);
  /* every key of a row is held by a rank of the row's group */
  for (int64_t g = 0; g < n; g++) {
    const int64_t s = ar_mask_segment(m, g), o0 = m->nseg > 1 ? m->offsets[s] : 0;
    const int64_t hi = m->causal ? g + 1 : (m->nseg > 1 ? m->offsets[s + 1] : n);
    for (int64_t k = o0; k < hi; k += 1 + (hi - o0) / 50)
      CHECK(L->group[owner[k]] == L->group[owner[g]], "%s: row %lld (group %d) sees key %lld of group %d", what,
            (long long)g, L->group[owner[g]], (long long)k, L->group[owner[k]]);
  }
  double wmax = 0, wsum = 0, rmax = 0, tmax = 0, wall = 0;
  *step_eff = 1;
  for (int grp = 0; grp < L->ngroups; grp++) {
    const int f = L->group_first[grp], G = L->group_size[grp];
    double smax = 0, savg = 0;
    for (int s = 0; s < G; s++) {
      double mx = 0, sum = 0;
      for (int i = 0; i < G; i++) {
        const double w = pair_work(L, m, f + i, f + (i - s + G) % G, owner);
        mx = w > mx ? w : mx, sum += w;
      }
      smax += mx, savg += sum / G, wall += sum;
    }
    tmax = smax > tmax ? smax : tmax; /* the slowest ring: its steps one after another */
  }
  *step_eff = tmax > 0 ? wall / P / tmax : 1; /* the ideal time over the slowest ring's */
  for (int r = 0; r < P; r++) {
    double w = 0;
    for (int b = 0; b < P; b++)
      if (L->group[b] == L->group[r]) w += pair_work(L, m, r, b, owner);
    wmax = w > wmax ? w : wmax, wsum += w;
    rmax = L->rows[r] > rmax ? L->rows[r] : rmax;
  }
  *rows_ratio = rmax / ((double)n / P);
  free(owner);
  return wmax / (wsum / P);
}

int main(void)
{
  char what[256];
  double eff, rr, imb;
  ar_layout L;
  /* no mask: the contiguous partition, one ring */
  for (int P = 1; P <= 7; P++) {
    const ar_mask none = {0, NULL, 0, 0};
    if (ar_layout_make(1000, &none, P, &L)) return 1;
    CHECK(L.ngroups == 1 && L.group_size[0] == P, "unmasked P=%d: %d groups", P, L.ngroups);
    for (int r = 0; r < P; r++) {
      int64_t r0, r1;
      ar_partition(1000, P, r, &r0, &r1);
      CHECK(L.first[r + 1] - L.first[r] == 1 && L.ranges[2 * L.first[r]] == r0 && L.ranges[2 * L.first[r] + 1] == r1,
            "unmasked P=%d rank %d is not [%lld, %lld)", P, r, (long long)r0, (long long)r1);
    }
    ar_layout_free(&L);
  }
  /* one causal sequence: zigzag over all ranks, balanced at every step */
  for (int P = 2; P <= 8; P++) {
    const int64_t n = 960;
    const ar_mask m = {0, NULL, 1, 0};
    if (ar_layout_make(n, &m, P, &L)) return 1;
    snprintf(what, sizeof what, "causal n=%lld P=%d", (long long)n, P);
    imb = check_layout(what, n, &m, P, &L, &eff, &rr);
    CHECK(L.ngroups == 1 && L.zigzag, "%s: %d groups, zigzag %d", what, L.ngroups, L.zigzag);
    CHECK(imb <= 1.03 && eff >= 0.97, "%s: work max/avg %.4f, efficiency %.4f", what, imb, eff);
    ar_layout_free(&L);
    /* the contiguous layout of the same mask is the textbook imbalance */
    const ar_mask mc = {0, NULL, 1, 1};
    if (ar_layout_make(n, &mc, P, &L)) return 1;
    imb = check_layout(what, n, &mc, P, &L, &eff, &rr);
    CHECK(imb >= 1.5 * P / (P + 1.0), "%s contiguous: max/avg %.3f, expected the last rank's ~2P/(P+1)", what, imb);
    ar_layout_free(&L);
  }
  /* 16 equal segments on 2 ranks: packed whole, 8 a rank, no ring */
  {
    int64_t off[17];
    for (int s = 0; s <= 16; s++) off[s] = 64 * s;
    const ar_mask m = {16, off, 0, 0};
    if (ar_layout_make(1024, &m, 2, &L)) return 1;
    imb = check_layout("16 x 64 on 2", 1024, &m, 2, &L, &eff, &rr);
    CHECK(L.ngroups == 2 && L.group_size[0] == 1 && L.rows[0] == 512 && imb == 1.0, "16 x 64 on 2: %d groups, rows %lld",
          L.ngroups, (long long)L.rows[0]);
    ar_layout_free(&L);
  }
  /* calibration sets: many sequences of unequal lengths (50-150, or 500-1500), causal or not,
   * more sequences than ranks or fewer: work within 10 % of even, every step busy alike */
  for (int t = 0; t < 24; t++) {
    const int P = 2 + t % 7, causal = t % 2, K = t < 12 ? 40 + (int)(next() % 100) : 2 + (int)(next() % 5);
    int64_t *off = malloc(sizeof(int64_t) * (K + 1));
    off[0] = 0;
    for (int s = 0; s < K; s++) off[s + 1] = off[s] + (t < 12 ? 50 + (int64_t)(next() % 101) : 500 + (int64_t)(next() % 1001));
    const ar_mask m = {K, off, causal, 0};
    if (ar_layout_make(off[K], &m, P, &L)) return 1;
    snprintf(what, sizeof what, "calibration set %d: n=%lld K=%d causal=%d P=%d", t, (long long)off[K], K, causal, P);
    imb = check_layout(what, off[K], &m, P, &L, &eff, &rr);
    CHECK(eff >= 0.9 && rr <= 1.6, "%s: efficiency %.3f (work max/avg %.3f), rows %.3f of a share", what, eff, imb, rr);
    if (getenv("AR_LAYOUT_VERBOSE")) {
      printf("%s: work max/avg %.3f, efficiency %.3f, rows %.3f, groups %d, lengths", what, imb, eff, rr, L.ngroups);
      for (int s = 0; s < K && K < 10; s++) printf(" %lld", (long long)(off[s + 1] - off[s]));
      printf("\n");
    }
    ar_layout_free(&L);
    free(off);
  }
  /* random masks: lengths from 1 to long, causal or not, P = 1 .. 12 */
  for (int t = 0; t < 300; t++) {
    const int P = 1 + (int)(next() % 12), K = 1 + (int)(next() % 20), causal = (int)(next() % 2);
    int64_t *off = malloc(sizeof(int64_t) * (K + 1));
    off[0] = 0;
    for (int s = 0; s < K; s++) {
      const uint64_t kind = next() % 4;
      off[s + 1] = off[s] + 1 + (int64_t)(kind == 0 ? 0 : kind == 1 ? next() % 8 : kind == 2 ? next() % 60 : next() % 400);
    }
    const int64_t n = off[K];
    const ar_mask m = {K, off, causal, 0};
    if (ar_layout_make(n, &m, P, &L)) return 1;
    snprintf(what, sizeof what, "random %d: n=%lld K=%d causal=%d P=%d", t, (long long)n, K, causal, P);
    imb = check_layout(what, n, &m, P, &L, &eff, &rr);
    /* memory: no rank holds more than twice its share plus the longest short segment */
    int64_t maxseg = 0;
    for (int s = 0; s < K; s++) maxseg = off[s + 1] - off[s] > maxseg ? off[s + 1] - off[s] : maxseg;
    CHECK(rr * n / P <= 2.0 * n / P + maxseg + 2, "%s: a rank holds %.0f rows (share %.1f, longest segment %lld)",
          what, rr * n / P, (double)n / P, (long long)maxseg);
    if (getenv("AR_LAYOUT_VERBOSE")) printf("%s: work max/avg %.3f, efficiency %.3f, rows %.3f\n", what, imb, eff, rr);
    ar_layout_free(&L);
    free(off);
  }
  printf("test_layout: %s (%d failed checks)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
