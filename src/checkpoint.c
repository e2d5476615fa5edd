/* Checkpoint file format (little-endian), version 3:
 *   "ARCKPT" 0x03 0x00 | n i64 | d i32 | m i32 | data_hash u64 | method i32 | hessian i32 |
 *   chord_steps i32 | linear_solver i32 | whiten i32 | shift i32 | lambda_x f64 | lambda_y f64 |
 *   the scalar fields of ar_solver_state in the order of AR_STATE_FIELDS (int: i32, double: f64) |
 *   D i32 | z[D] f64 | zf[D] f64 | nhist i32 (= iter + 1) | nhist rows, each the fields of
 *   ar_iter_info in the order of AR_ITER_FIELDS | FNV-1a 64 checksum of every byte before it.
 * (Version 2 had no linear_solver, whiten, shift or cg_iters.) */
#include "checkpoint.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"

static const char magic[8] = {'A', 'R', 'C', 'K', 'P', 'T', 3, 0};
#define AR_CKPT_MAX_D (1 << 24)
#define AR_CKPT_MAX_ITER (1 << 24)

static uint64_t fnv1a(const unsigned char *p, size_t len)
{
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

typedef struct {
  unsigned char *buf;
  size_t len, cap;
  int oom;
} wbuf;

static void put(wbuf *w, const void *p, size_t n)
{
  if (w->oom) return;
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
#define PUT(w, v) put((w), &(v), sizeof(v))
static void put_int(wbuf *w, int v)
{
  int32_t x = v;
  PUT(w, x);
}
static void put_double(wbuf *w, double v) { PUT(w, v); }

/* The solver state and the history follow their field lists (attnreg.h): ints as i32,
 * doubles as f64, in list order. */
#define PUT_STATE(type, name) put_##type(&w, s->name);
#define PUT_ITER(type, name) put_##type(&w, h->name);
#define GET_STATE(type, name) ok = ok && get_##type(&r, &s->name);
#define GET_ITER(type, name) ok = ok && get_##type(&r, &h->name);

/* Bytes of one history row in the file. */
#define ROW_BYTES(type, name) +(sizeof(type) == sizeof(double) ? 8 : 4)

static int valid_kind(int k) { return k == AR_HESS_EXACT || k == AR_HESS_GAUSS_NEWTON; }

int ar_checkpoint_write(const char *path, const ar_checkpoint *c)
{
  const ar_solver_state *s = &c->st;
  wbuf w = {0};
  put(&w, magic, sizeof magic);
  PUT(&w, c->n), put_int(&w, c->d), put_int(&w, c->m), PUT(&w, c->data_hash), put_int(&w, c->method);
  put_int(&w, c->hessian), put_int(&w, c->chord_steps), put_int(&w, c->linear_solver), put_int(&w, c->whiten);
  put_int(&w, c->shift);
  PUT(&w, c->lambda_x), PUT(&w, c->lambda_y);
  AR_STATE_FIELDS(PUT_STATE)
  put_int(&w, s->D);
  put(&w, s->z, sizeof(double) * s->D);
  put(&w, s->zf, sizeof(double) * s->D);
  put_int(&w, s->iter + 1);
  for (int i = 0; i <= s->iter; i++) {
    const ar_iter_info *h = &s->history[i];
    AR_ITER_FIELDS(PUT_ITER)
  }
  uint64_t sum = w.oom ? 0 : fnv1a(w.buf, w.len);
  PUT(&w, sum);
  if (w.oom) {
    free(w.buf);
    return AR_ERROR(AR_ERR_MEM, "%s: out of memory building the checkpoint", path);
  }
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  int ok = f && fwrite(w.buf, 1, w.len, f) == w.len;
  ok = f && fflush(f) == 0 && ok && fsync(fileno(f)) == 0;
  if (f && fclose(f) != 0) ok = 0;
  free(w.buf);
  if (!ok || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return AR_ERROR(AR_ERR_IO, "--checkpoint %s: cannot write: %s", path, strerror(e));
  }
  return AR_OK;
}

typedef struct {
  const unsigned char *p;
  size_t len, off;
} rbuf;

static int get(rbuf *r, void *dst, size_t n)
{
  if (r->len - r->off < n) return 0;
  memcpy(dst, r->p + r->off, n);
  r->off += n;
  return 1;
}
#define GET(r, v) get((r), &(v), sizeof(v))
static int get_int(rbuf *r, int *v)
{
  int32_t x;
  if (!GET(r, x)) return 0;
  *v = x;
  return 1;
}
static int get_double(rbuf *r, double *v) { return GET(r, *v); }

int ar_checkpoint_parse(const unsigned char *buf, size_t len, const char *name, ar_checkpoint *c)
{
  memset(c, 0, sizeof *c);
  rbuf r = {buf, len, 0};
  char mg[8];
  AR_CHECK(get(&r, mg, 8) && !memcmp(mg, magic, 6), AR_ERR_DATA, "%s: not an attnreg checkpoint", name);
  AR_CHECK(mg[6] == 3 && mg[7] == 0, AR_ERR_DATA, "%s: checkpoint format version %d is not supported (this attnreg "
           "reads version 3)", name, mg[6]);
  AR_CHECK(len >= 16, AR_ERR_DATA, "%s: truncated checkpoint", name);
  uint64_t sum;
  memcpy(&sum, buf + len - 8, 8);
  AR_CHECK(sum == fnv1a(buf, len - 8), AR_ERR_DATA, "%s: checksum mismatch (corrupt or truncated checkpoint)", name);
  r.len = len - 8;
  ar_solver_state *s = &c->st;
  int ok = GET(&r, c->n) && get_int(&r, &c->d) && get_int(&r, &c->m) && GET(&r, c->data_hash) &&
           get_int(&r, &c->method) && get_int(&r, &c->hessian) && get_int(&r, &c->chord_steps) &&
           get_int(&r, &c->linear_solver) && get_int(&r, &c->whiten) && get_int(&r, &c->shift) &&
           GET(&r, c->lambda_x) && GET(&r, c->lambda_y);
  AR_STATE_FIELDS(GET_STATE)
  ok = ok && get_int(&r, &s->D);
  AR_CHECK(ok, AR_ERR_DATA, "%s: truncated checkpoint", name);
  const int d = c->d, m = c->m, D = s->D;
  AR_CHECK(c->n > 0 && d > 0 && m > 0 && D > 0 && D <= AR_CKPT_MAX_D && (int64_t)d * d + (int64_t)d * m == D,
           AR_ERR_DATA, "%s: inconsistent sizes in checkpoint (n=%lld d=%d m=%d D=%d)", name, (long long)c->n, d, m, D);
  const int kinds_ok = valid_kind(s->h_kind) && valid_kind(s->hk_next) && (s->h_fresh == 0 || s->h_fresh == 1);
  AR_CHECK(s->iter >= 0 && s->iter < AR_CKPT_MAX_ITER && ar_method_name(c->method) &&
               (valid_kind(c->hessian) || c->hessian == AR_HESS_AUTO) && kinds_ok && c->chord_steps >= 0 &&
               (c->linear_solver == AR_LINSOLVE_CHOLESKY || c->linear_solver == AR_LINSOLVE_CG) &&
               (c->whiten == 0 || c->whiten == 1) && ar_shift_name(c->shift) &&
               s->nchord >= 0 && s->nchord <= s->iter,
           AR_ERR_DATA, "%s: invalid solver state in checkpoint", name);
  AR_CHECK((r.len - r.off) / 2 >= sizeof(double) * (size_t)D, AR_ERR_DATA, "%s: truncated checkpoint", name);
  s->z = malloc(sizeof(double) * D);
  s->zf = malloc(sizeof(double) * D);
  if (!s->z || !s->zf) {
    ar_checkpoint_free(c);
    return AR_ERROR(AR_ERR_MEM, "%s: out of memory", name);
  }
  get(&r, s->z, sizeof(double) * D);
  get(&r, s->zf, sizeof(double) * D);
  int nh = 0;
  const size_t row_bytes = 0 AR_ITER_FIELDS(ROW_BYTES);
  if (!get_int(&r, &nh) || nh != s->iter + 1 || (r.len - r.off) / row_bytes < (size_t)nh) {
    ar_checkpoint_free(c);
    return AR_ERROR(AR_ERR_DATA, "%s: truncated or inconsistent history in checkpoint", name);
  }
  s->history = malloc(sizeof(ar_iter_info) * nh);
  if (!s->history) {
    ar_checkpoint_free(c);
    return AR_ERROR(AR_ERR_MEM, "%s: out of memory", name);
  }
  int hist_ok = 1;
  for (int i = 0; i < nh; i++) {
    ar_iter_info *h = &s->history[i];
    AR_ITER_FIELDS(GET_ITER)
    hist_ok &= (h->accepted == 0 || h->accepted == 1) && valid_kind(h->hessian) && (h->chord == 0 || h->chord == 1) &&
               h->cg_iters >= 0;
  }
  int finite = isfinite(s->mu) && isfinite(s->nu) && isfinite(s->g0norm) && isfinite(s->fact_shift) &&
               s->contraction >= 0; /* may be +inf after a step to a non-finite gradient */
  for (int i = 0; i < D; i++) finite &= isfinite(s->z[i]) && isfinite(s->zf[i]);
  if (!ok || r.off != r.len || !finite || !hist_ok) {
    ar_checkpoint_free(c);
    return AR_ERROR(AR_ERR_DATA, "%s: %s", name,
                    !ok        ? "truncated history in checkpoint"
                    : !finite  ? "non-finite values in checkpoint"
                    : !hist_ok ? "invalid history in checkpoint"
                               : "trailing bytes in checkpoint");
  }
  return AR_OK;
}

int ar_checkpoint_read(const char *path, ar_checkpoint *c)
{
  memset(c, 0, sizeof *c);
  FILE *f = fopen(path, "rb");
  AR_CHECK(f, AR_ERR_DATA, "--restart %s: cannot open: %s", path, strerror(errno));
  unsigned char *buf = NULL;
  size_t len = 0, cap = 0, got;
  do {
    if (len == cap) {
      cap = cap ? 2 * cap : 1 << 16;
      unsigned char *b = cap <= ((size_t)1 << 32) ? realloc(buf, cap) : NULL;
      if (!b) {
        free(buf);
        fclose(f);
        return AR_ERROR(AR_ERR_DATA, "--restart %s: too large or out of memory", path);
      }
      buf = b;
    }
    got = fread(buf + len, 1, cap - len, f);
    len += got;
  } while (got > 0);
  int rerr = ferror(f);
  fclose(f);
  int err = rerr ? AR_ERROR(AR_ERR_IO, "--restart %s: read error", path) : ar_checkpoint_parse(buf, len, path, c);
  free(buf);
  return err;
}

void ar_checkpoint_free(ar_checkpoint *c)
{
  free(c->st.z);
  free(c->st.zf);
  free(c->st.history);
  c->st.z = NULL;
  c->st.zf = NULL;
  c->st.history = NULL;
}
