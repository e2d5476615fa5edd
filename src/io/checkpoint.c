/* Checkpoint files (checkpoint.h).  Format version 4, little-endian, every field written on its
 * own (no struct is dumped, so padding and layout never reach the file):
 *
 *   "ARCKPT" 0x04 0x00 | layout u64 | kind i32 (1 solve, 2 multi-start) |
 *   identity: AR_CKPT_DATA_FIELDS, AR_CKPT_OPTION_FIELDS in list order |
 *   solve:       the scalars of ar_solver_state in AR_STATE_FIELDS order | D i32 | z[D] f64 |
 *                zf[D] f64 | nhist i32 (= iter + 1) | nhist history rows
 *   multi-start: AR_CKPT_ENSEMBLE_FIELDS | rounds_done i32 | best_k i32 | `starts` rows of
 *                AR_START_FIELDS | D i32 | z[D] f64 (the best point, the user's variables) |
 *                nhist i32 | nhist history rows (the best start's)
 *   | FNV-1a 64 checksum of every byte before it.
 *
 * A history row is the fields of ar_iter_info in AR_ITER_FIELDS order (int: i32, double: f64).
 * layout: FNV-1a of the types and names of every list above, in order: a file written with
 * other lists (a field added, removed or retyped) is refused, without a version bump.
 * Version 3 (solve only, fixed identity) and the separate multi-start format "ARENSM" 1 of
 * earlier versions are refused with a message that says so. */
#include "checkpoint.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"

static const char magic[6] = {'A', 'R', 'C', 'K', 'P', 'T'};
static const char old_ensemble_magic[6] = {'A', 'R', 'E', 'N', 'S', 'M'};
#define MAX_D (1 << 24)
#define MAX_ITER (1 << 24)
#define MAX_STARTS (1 << 20)

const char *ar_ckpt_on_off(int v) { return v == 1 ? "on" : v == 0 ? "off" : NULL; }
const char *ar_ckpt_hidden(int v) { return NULL; }

static uint64_t fnv1a(const unsigned char *p, size_t len)
{
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

/* The layout: every list's types and names as text, hashed. */
#define LAYOUT_FIELD(type, name, ...) #type " " #name ";"
#define LAYOUT_FIELD2(type, name) #type " " #name ";"
static const char layout_text[] =
    "identity:" AR_CKPT_DATA_FIELDS(LAYOUT_FIELD, _) AR_CKPT_OPTION_FIELDS(LAYOUT_FIELD, _)
    "state:" AR_STATE_FIELDS(LAYOUT_FIELD2) "history:" AR_ITER_FIELDS(LAYOUT_FIELD2)
    "ensemble:" AR_CKPT_ENSEMBLE_FIELDS(LAYOUT_FIELD, _) "start:" AR_START_FIELDS(LAYOUT_FIELD2);

static uint64_t layout(void) { return fnv1a((const unsigned char *)layout_text, sizeof layout_text - 1); }

/* ---- writing: a growing buffer; an allocation failure is remembered and reported once */
typedef struct {
  unsigned char *buf;
  size_t len, cap;
  int oom;
} wbuf;

static void put(wbuf *w, const void *p, size_t n)
{
  if (w->oom || n == 0) return;
  if (w->len + n > w->cap) {
    size_t cap = 2 * (w->len + n) + 256;
    unsigned char *b = realloc(w->buf, cap);
    if (!b) {
      w->oom = 1;
      return;
    }
    w->buf = b, w->cap = cap;
  }
  memcpy(w->buf + w->len, p, n);
  w->len += n;
}
static void put_int(wbuf *w, int v)
{
  int32_t x = v;
  put(w, &x, 4);
}
static void put_int64_t(wbuf *w, int64_t v) { put(w, &v, 8); }
static void put_uint64_t(wbuf *w, uint64_t v) { put(w, &v, 8); }
static void put_double(wbuf *w, double v) { put(w, &v, 8); }
static void put_doubles(wbuf *w, const double *v, int n) { put(w, v, sizeof(double) * (size_t)n); }

#define PUT_FIELD(type, name, ...) put_##type(w, S->name);
#define PUT_FIELD2(type, name) put_##type(w, S->name);

static void put_history(wbuf *w, const ar_iter_info *h, int n)
{
  put_int(w, n);
  for (int i = 0; i < n; i++) {
    const ar_iter_info *S = &h[i];
    AR_ITER_FIELDS(PUT_FIELD2)
  }
}

int ar_checkpoint_serialize(const ar_checkpoint *c, unsigned char **out, size_t *len)
{
  *out = NULL, *len = 0;
  AR_CHECK(c->kind == AR_CKPT_SOLVE || c->kind == AR_CKPT_ENSEMBLE, AR_ERR_INTERNAL, "checkpoint kind %d", c->kind);
  wbuf wb = {0}, *w = &wb;
  put(w, magic, 6);
  const unsigned char version[2] = {AR_CKPT_VERSION, 0};
  put(w, version, 2);
  put_uint64_t(w, layout());
  put_int(w, c->kind);
  {
    const ar_ckpt_identity *S = &c->id;
    AR_CKPT_DATA_FIELDS(PUT_FIELD, _)
    AR_CKPT_OPTION_FIELDS(PUT_FIELD, _)
  }
  if (c->kind == AR_CKPT_SOLVE) {
    const ar_solver_state *S = &c->st;
    AR_STATE_FIELDS(PUT_FIELD2)
    put_int(w, S->D);
    put_doubles(w, S->z, S->D);
    put_doubles(w, S->zf, S->D);
    put_history(w, S->history, S->iter + 1);
  } else {
    const ar_ckpt_ensemble *e = &c->ens;
    {
      const ar_ckpt_ensemble_identity *S = &e->id;
      AR_CKPT_ENSEMBLE_FIELDS(PUT_FIELD, _)
    }
    put_int(w, e->rounds_done);
    put_int(w, e->best_k);
    for (int k = 0; k < e->id.starts; k++) {
      const ar_start_row *S = &e->rows[k];
      AR_START_FIELDS(PUT_FIELD2)
    }
    const int D = c->id.d * c->id.d + c->id.d * c->id.m;
    put_int(w, D);
    put_doubles(w, e->z, D);
    put_history(w, e->history, e->nhist);
  }
  const uint64_t sum = w->oom ? 0 : fnv1a(w->buf, w->len);
  put_uint64_t(w, sum);
  if (w->oom) {
    free(w->buf);
    return AR_ERROR(AR_ERR_MEM, "out of memory building the checkpoint");
  }
  *out = w->buf, *len = w->len;
  return AR_OK;
}

/* ---- parsing: every read checks the bytes left; counts are checked against them before any
 * allocation, so a corrupt count cannot ask for more memory than the file could fill */
typedef struct {
  const unsigned char *p;
  size_t len, off;
  int ok;
} rbuf;

static void get(rbuf *r, void *dst, size_t n)
{
  if (!r->ok || r->len - r->off < n) {
    r->ok = 0;
    memset(dst, 0, n);
    return;
  }
  memcpy(dst, r->p + r->off, n);
  r->off += n;
}
static void get_int(rbuf *r, int *v)
{
  int32_t x;
  get(r, &x, 4);
  *v = x;
}
static void get_int64_t(rbuf *r, int64_t *v) { get(r, v, 8); }
static void get_uint64_t(rbuf *r, uint64_t *v) { get(r, v, 8); }
static void get_double(rbuf *r, double *v) { get(r, v, 8); }
/* n doubles into a new array (NULL when the bytes are not there, or out of memory: *oom) */
static double *get_doubles(rbuf *r, int n, int *oom)
{
  if (!r->ok || n < 0 || (r->len - r->off) / sizeof(double) < (size_t)n) return r->ok = 0, NULL;
  double *v = malloc(sizeof(double) * (n > 0 ? n : 1));
  if (!v) return *oom = 1, NULL;
  get(r, v, sizeof(double) * n);
  return v;
}

#define GET_FIELD(type, name, ...) get_##type(r, &S->name);
#define GET_FIELD2(type, name) get_##type(r, &S->name);
#define ROW_BYTES(type, name) +(sizeof(type) == sizeof(double) ? 8 : 4)

static int valid_kind(int k) { return k == AR_HESS_EXACT || k == AR_HESS_GAUSS_NEWTON; }

/* A history of nhist rows (count first); *valid = 0 when a row is not one the solver writes. */
static ar_iter_info *get_history(rbuf *r, int *nhist, int *valid, int *oom)
{
  get_int(r, nhist);
  const size_t row_bytes = 0 AR_ITER_FIELDS(ROW_BYTES);
  if (!r->ok || *nhist < 0 || *nhist > MAX_ITER || (r->len - r->off) / row_bytes < (size_t)*nhist)
    return r->ok = 0, NULL;
  ar_iter_info *h = malloc(sizeof *h * (*nhist > 0 ? *nhist : 1));
  if (!h) return *oom = 1, NULL;
  for (int i = 0; i < *nhist; i++) {
    ar_iter_info *S = &h[i];
    AR_ITER_FIELDS(GET_FIELD2)
    *valid &= S->iter == i && (S->accepted == 0 || S->accepted == 1) && valid_kind(S->hessian) &&
              (S->chord == 0 || S->chord == 1) && S->cg_iters >= 0;
  }
  return h;
}

static int all_finite(const double *v, int n)
{
  int ok = 1;
  for (int i = 0; i < n; i++) ok &= isfinite(v[i]) != 0;
  return ok;
}

/* The solve part; returns a description of what is wrong, or NULL. */
static const char *parse_solve(rbuf *r, ar_checkpoint *c, int D, int *oom)
{
  ar_solver_state *S = &c->st;
  AR_STATE_FIELDS(GET_FIELD2)
  get_int(r, &S->D);
  if (!r->ok) return "truncated checkpoint";
  if (S->D != D) return "inconsistent sizes in checkpoint";
  if (S->iter < 0 || S->iter >= MAX_ITER || !valid_kind(S->h_kind) || !valid_kind(S->hk_next) ||
      (S->h_fresh != 0 && S->h_fresh != 1) || (S->accepted != 0 && S->accepted != 1) || S->nchord < 0 ||
      S->nchord > S->iter)
    return "invalid solver state in checkpoint";
  /* contraction may be +inf after a step to a non-finite gradient */
  if (!isfinite(S->mu) || !isfinite(S->nu) || !isfinite(S->g0norm) || !isfinite(S->fact_shift) ||
      !(S->contraction >= 0))
    return "non-finite values in checkpoint";
  if (!(S->z = get_doubles(r, D, oom)) || !(S->zf = get_doubles(r, D, oom))) return "truncated checkpoint";
  if (!all_finite(S->z, D) || !all_finite(S->zf, D)) return "non-finite values in checkpoint";
  int nh = 0, valid = 1;
  S->history = get_history(r, &nh, &valid, oom);
  if (!S->history) return "truncated history in checkpoint";
  if (nh != S->iter + 1) return "inconsistent history in checkpoint";
  return valid ? NULL : "invalid history in checkpoint";
}

/* The multi-start part. */
static const char *parse_ensemble(rbuf *r, ar_checkpoint *c, int D, int *oom)
{
  ar_ckpt_ensemble *e = &c->ens;
  {
    ar_ckpt_ensemble_identity *S = &e->id;
    AR_CKPT_ENSEMBLE_FIELDS(GET_FIELD, _)
  }
  get_int(r, &e->rounds_done);
  get_int(r, &e->best_k);
  const int K = e->id.starts, R = e->id.round;
  if (!r->ok) return "truncated checkpoint";
  if (K < 1 || K > MAX_STARTS || R < 1 || R > MAX_STARTS || e->rounds_done < 0 ||
      e->rounds_done > (K + R - 1) / R || e->best_k < -1 || e->best_k >= K ||
      (e->best_k >= 0 && e->best_k >= e->rounds_done * R) || (e->id.no_race != 0 && e->id.no_race != 1))
    return "inconsistent multi-start checkpoint";
  if ((r->len - r->off) / (sizeof(double) * AR_START_NFIELDS) < (size_t)K) return "truncated checkpoint";
  if (!(e->rows = malloc(sizeof(ar_start_row) * K))) return *oom = 1, "out of memory";
  int rows_ok = 1;
  for (int k = 0; k < K; k++) {
    ar_start_row *S = &e->rows[k];
    AR_START_FIELDS(GET_FIELD2)
    const int finished = k < e->rounds_done * R;
    rows_ok &= (S->done == 0 || (S->done == 1 && finished)) && S->group >= 0 && S->iterations >= 0 &&
               S->reason >= 0 && S->reason <= AR_CONVERGED_LOSS_TARGET && (S->stopped_early == 0 || S->stopped_early == 1);
  }
  if (!rows_ok || (e->best_k >= 0 && e->rows[e->best_k].done != 1)) return "inconsistent multi-start checkpoint";
  int Dz = 0;
  get_int(r, &Dz);
  if (!r->ok) return "truncated checkpoint";
  if (Dz != D) return "inconsistent sizes in checkpoint";
  if (!(e->z = get_doubles(r, D, oom))) return "truncated checkpoint";
  if (!all_finite(e->z, D)) return "non-finite values in checkpoint";
  int valid = 1;
  e->history = get_history(r, &e->nhist, &valid, oom);
  if (!e->history) return "truncated history in checkpoint";
  if ((e->best_k >= 0) != (e->nhist > 0)) return "inconsistent multi-start checkpoint";
  return valid ? NULL : "invalid history in checkpoint";
}

int ar_checkpoint_parse(const unsigned char *buf, size_t len, const char *name, ar_checkpoint *c)
{
  memset(c, 0, sizeof *c);
  AR_CHECK(len < 8 || memcmp(buf, old_ensemble_magic, 6), AR_ERR_DATA,
           "%s: a multi-start checkpoint of an earlier attnreg (format ARENSM %d), which this attnreg does not read "
           "(it reads format version %d): start again without --restart", name, buf[6], AR_CKPT_VERSION);
  AR_CHECK(len >= 8 && !memcmp(buf, magic, 6), AR_ERR_DATA, "%s: not an attnreg checkpoint", name);
  AR_CHECK(buf[6] == AR_CKPT_VERSION && buf[7] == 0, AR_ERR_DATA,
           "%s: checkpoint format version %d, written by %s attnreg, is not supported: this attnreg reads version %d "
           "(start again without --restart)", name, buf[6], buf[6] < AR_CKPT_VERSION ? "an earlier" : "another",
           AR_CKPT_VERSION);
  AR_CHECK(len >= 16, AR_ERR_DATA, "%s: truncated checkpoint", name);
  uint64_t sum;
  memcpy(&sum, buf + len - 8, 8);
  AR_CHECK(sum == fnv1a(buf, len - 8), AR_ERR_DATA, "%s: checksum mismatch (corrupt or truncated checkpoint)", name);
  rbuf rb = {buf, len - 8, 8, 1}, *r = &rb;
  uint64_t lay = 0;
  get_uint64_t(r, &lay);
  AR_CHECK(r->ok && lay == layout(), AR_ERR_DATA,
           "%s: a checkpoint of format version %d with other fields, written by another version of attnreg, which this "
           "one does not read (start again without --restart)", name, AR_CKPT_VERSION);
  get_int(r, &c->kind);
  {
    ar_ckpt_identity *S = &c->id;
    AR_CKPT_DATA_FIELDS(GET_FIELD, _)
    AR_CKPT_OPTION_FIELDS(GET_FIELD, _)
  }
  AR_CHECK(r->ok, AR_ERR_DATA, "%s: truncated checkpoint", name);
  AR_CHECK(c->kind == AR_CKPT_SOLVE || c->kind == AR_CKPT_ENSEMBLE, AR_ERR_DATA, "%s: unknown checkpoint kind %d",
           name, c->kind);
  const int d = c->id.d, m = c->id.m;
  const int64_t D = (int64_t)d * d + (int64_t)d * m;
  AR_CHECK(c->id.n > 0 && d > 0 && m > 0 && D <= MAX_D, AR_ERR_DATA,
           "%s: inconsistent sizes in checkpoint (n=%lld d=%d m=%d)", name, (long long)c->id.n, d, m);
  int oom = 0;
  const char *bad = c->kind == AR_CKPT_SOLVE ? parse_solve(r, c, (int)D, &oom) : parse_ensemble(r, c, (int)D, &oom);
  if (!bad && r->off != r->len) bad = "trailing bytes in checkpoint";
  if (bad) {
    ar_checkpoint_free(c);
    return oom ? AR_ERROR(AR_ERR_MEM, "%s: out of memory", name) : AR_ERROR(AR_ERR_DATA, "%s: %s", name, bad);
  }
  return AR_OK;
}

/* ---- files */
static int write_atomic(const char *path, const unsigned char *buf, size_t len)
{
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  int ok = f && fwrite(buf, 1, len, f) == len;
  ok = f && fflush(f) == 0 && ok && fsync(fileno(f)) == 0;
  if (f && fclose(f) != 0) ok = 0;
  if (!ok || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return AR_ERROR(AR_ERR_IO, "--checkpoint %s: cannot write: %s", path, strerror(e));
  }
  return AR_OK;
}

int ar_checkpoint_save(MPI_Comm comm, const char *path, const ar_checkpoint *c)
{
  int rank, err = AR_OK;
  MPI_Comm_rank(comm, &rank);
  if (rank == 0) {
    unsigned char *buf;
    size_t len;
    err = ar_checkpoint_serialize(c, &buf, &len);
    if (!err) err = write_atomic(path, buf, len);
    free(buf);
  }
  return ar_error_agree(comm, err);
}

/* Rank 0: the whole file into *buf. */
static int read_file(const char *name, const char *path, unsigned char **out, size_t *len)
{
  *out = NULL, *len = 0;
  FILE *f = fopen(path, "rb");
  AR_CHECK(f, AR_ERR_DATA, "%s: cannot open: %s", name, strerror(errno));
  unsigned char *buf = NULL;
  size_t cap = 0, got;
  do {
    if (*len == cap) {
      cap = cap ? 2 * cap : 1 << 16;
      unsigned char *b = cap <= ((size_t)1 << 32) ? realloc(buf, cap) : NULL;
      if (!b) {
        free(buf);
        fclose(f);
        return AR_ERROR(AR_ERR_DATA, "%s: too large or out of memory", name);
      }
      buf = b;
    }
    got = fread(buf + *len, 1, cap - *len, f);
    *len += got;
  } while (got > 0);
  const int rerr = ferror(f);
  fclose(f);
  if (rerr) {
    free(buf);
    return AR_ERROR(AR_ERR_IO, "%s: read error", name);
  }
  *out = buf;
  return AR_OK;
}

int ar_checkpoint_load(MPI_Comm comm, const char *option, const char *path, ar_checkpoint *c)
{
  memset(c, 0, sizeof *c);
  char name[4200];
  snprintf(name, sizeof name, "%s %s", option, path);
  int rank;
  MPI_Comm_rank(comm, &rank);
  unsigned char *buf = NULL;
  size_t len = 0;
  int err = rank == 0 ? read_file(name, path, &buf, &len) : AR_OK;
  AR_CALL_AGREE(comm, err);
  uint64_t n = len;
  err = MPI_Bcast(&n, 1, MPI_UINT64_T, 0, comm) == MPI_SUCCESS ? AR_OK : AR_ERROR(AR_ERR_MPI, "MPI_Bcast failed");
  if (!err && rank != 0 && !(buf = malloc(n > 0 ? n : 1)))
    err = AR_ERROR(AR_ERR_MEM, "%s: out of memory", name);
  err = ar_error_agree(comm, err);
  /* in pieces below 2 GB: MPI counts are int */
  for (uint64_t off = 0; !err && off < n; off += (uint64_t)1 << 30) {
    const int cnt = (int)(n - off < ((uint64_t)1 << 30) ? n - off : (uint64_t)1 << 30);
    if (MPI_Bcast(buf + off, cnt, MPI_BYTE, 0, comm) != MPI_SUCCESS) err = AR_ERROR(AR_ERR_MPI, "MPI_Bcast failed");
  }
  if (!err) err = ar_checkpoint_parse(buf, n, name, c);
  free(buf);
  return ar_error_agree(comm, err);
}

void ar_checkpoint_free(ar_checkpoint *c)
{
  free(c->st.z), free(c->st.zf), free(c->st.history);
  c->st.z = c->st.zf = NULL, c->st.history = NULL;
  free(c->ens.rows), free(c->ens.z), free(c->ens.history);
  c->ens.rows = NULL, c->ens.z = NULL, c->ens.history = NULL, c->ens.nhist = 0;
}
