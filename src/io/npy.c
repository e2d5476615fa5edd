/* .npy files read and written with stdio (headers, small arrays) and MPI-IO (row blocks).
 * Format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* fileno, fseeko */
#endif
#include "npy.h"
#include "error.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

/* npy data and header length fields are little-endian; we copy them without swapping. */
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "npy.c assumes a little-endian host");
#endif

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAX_HEADER (1u << 20) /* numpy itself refuses headers over 10000 bytes by default */
#define NPY_MAX_DIMS 1000

typedef long long ll;

/* ---------------------------------------------------------------------------------------
 * Header parsing (pure, bounded by len: fuzzed) */

/* Magic, version and header length field.  On success *pre is the prefix length (10 or 12)
 * and *hlen the length of the dict text that follows. */
static int npy_prefix(const char *buf, size_t len, const char *name, size_t *pre, uint64_t *hlen)
{
  const unsigned char *b = (const unsigned char *)buf;
  AR_CHECK(memcmp(buf, NPY_MAGIC, len < 6 ? len : 6) == 0, AR_ERR_DATA, "%s: not an npy file (bad magic)",
           name);
  AR_CHECK(len >= 8, AR_ERR_DATA, "%s: truncated header (%zu bytes)", name, len);
  AR_CHECK(b[6] >= 1 && b[6] <= 3 && b[7] == 0, AR_ERR_DATA,
           "%s: unsupported npy format version %d.%d (need 1.0, 2.0 or 3.0)", name, b[6], b[7]);
  *pre = b[6] == 1 ? 10 : 12;
  AR_CHECK(len >= *pre, AR_ERR_DATA, "%s: truncated header (%zu bytes)", name, len);
  *hlen = b[6] == 1 ? (uint64_t)b[8] | (uint64_t)b[9] << 8
                    : (uint64_t)b[8] | (uint64_t)b[9] << 8 | (uint64_t)b[10] << 16 | (uint64_t)b[11] << 24;
  return AR_OK;
}

typedef struct {
  const char *p, *end, *start;
} cursor;

static void skip_ws(cursor *c)
{
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int eat(cursor *c, char ch)
{
  skip_ws(c);
  if (c->p < c->end && *c->p == ch) return c->p++, 1;
  return 0;
}

static int eat_word(cursor *c, const char *w)
{
  size_t n = strlen(w);
  skip_ws(c);
  if ((size_t)(c->end - c->p) >= n && memcmp(c->p, w, n) == 0) return c->p += n, 1;
  return 0;
}

/* A quoted Python string of printable ASCII without escapes (all that numpy writes). */
static int get_str(cursor *c, char *out, size_t cap)
{
  skip_ws(c);
  if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return 0;
  char q = *c->p++;
  size_t n = 0;
  while (c->p < c->end && *c->p != q) {
    unsigned char ch = (unsigned char)*c->p++;
    if (ch < 0x20 || ch > 0x7e || ch == '\\' || n + 1 >= cap) return 0;
    out[n++] = (char)ch;
  }
  if (c->p >= c->end) return 0;
  c->p++;
  out[n] = '\0';
  return 1;
}

/* A non-negative integer (Python 2 'L' suffix allowed): 1 ok, 0 malformed, -1 negative,
 * -2 larger than int64. */
static int get_dim(cursor *c, int64_t *v)
{
  skip_ws(c);
  if (c->p < c->end && *c->p == '-') return -1;
  if (c->p >= c->end || *c->p < '0' || *c->p > '9') return 0;
  int64_t x = 0;
  while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
    int d = *c->p++ - '0';
    if (x > (INT64_MAX - d) / 10) return -2;
    x = x * 10 + d;
  }
  if (c->p < c->end && *c->p == 'L') c->p++;
  *v = x;
  return 1;
}

#define MALFORMED(cond, what) \
  AR_CHECK(cond, AR_ERR_DATA, "%s: malformed npy header (%s at byte %td)", name, what, c.p - c.start)

/* allow_int: also little-endian int64/int32 (h->integer = 1), for segment offsets. */
static int parse_header(const char *buf, size_t len, const char *name, ar_npy_header *h, int allow_int)
{
  size_t pre;
  uint64_t hlen;
  AR_CALL(npy_prefix(buf, len, name, &pre, &hlen));
  AR_CHECK(hlen <= len - pre, AR_ERR_DATA,
           "%s: truncated header (the header length field says %" PRIu64 " bytes, %zu present)", name, hlen,
           len - pre);
  cursor c = {buf + pre, buf + pre + hlen, buf};
  char descr[32] = "", key[32];
  int seen[3] = {0, 0, 0}, fortran = 0, ndim = 0, comma = 0;
  int64_t dims[2] = {0, 1};

  MALFORMED(eat(&c, '{'), "expected '{'");
  while (!eat(&c, '}')) {
    MALFORMED(get_str(&c, key, sizeof key), "expected a quoted key or '}'");
    MALFORMED(eat(&c, ':'), "expected ':'");
    int k = !strcmp(key, "descr") ? 0 : !strcmp(key, "fortran_order") ? 1 : !strcmp(key, "shape") ? 2 : -1;
    AR_CHECK(k >= 0, AR_ERR_DATA, "%s: unexpected key '%s' in npy header", name, key);
    AR_CHECK(!seen[k], AR_ERR_DATA, "%s: duplicate key '%s' in npy header", name, key);
    seen[k] = 1;
    if (k == 0) {
      skip_ws(&c);
      AR_CHECK(c.p >= c.end || (*c.p != '[' && *c.p != '{'), AR_ERR_DATA,
               "%s: structured dtype is not supported (need float64 or float32)", name);
      MALFORMED(get_str(&c, descr, sizeof descr), "bad 'descr' value");
    } else if (k == 1) {
      if (eat_word(&c, "True")) fortran = 1;
      else MALFORMED(eat_word(&c, "False"), "'fortran_order' must be True or False");
    } else {
      MALFORMED(eat(&c, '('), "'shape' must be a tuple");
      for (comma = 0; !eat(&c, ')'); ndim++) {
        MALFORMED(ndim == 0 || comma, "expected ',' or ')' in 'shape'");
        AR_CHECK(ndim < NPY_MAX_DIMS, AR_ERR_DATA, "%s: too many dimensions in npy header", name);
        int64_t v = 0;
        int r = get_dim(&c, &v);
        AR_CHECK(r != -1, AR_ERR_DATA, "%s: negative dimension in shape", name);
        AR_CHECK(r != -2, AR_ERR_DATA, "%s: dimension in shape is too large", name);
        MALFORMED(r == 1, "expected an integer in 'shape'");
        if (ndim < 2) dims[ndim] = v;
        comma = eat(&c, ',');
      }
      MALFORMED(ndim != 1 || comma, "'shape' must be a tuple");
    }
    if (!eat(&c, ',')) {
      MALFORMED(eat(&c, '}'), "expected ',' or '}'");
      break;
    }
  }
  skip_ws(&c);
  MALFORMED(c.p == c.end, "unexpected text after '}'");
  static const char *const keys[3] = {"descr", "fortran_order", "shape"};
  for (int k = 0; k < 3; k++)
    AR_CHECK(seen[k], AR_ERR_DATA, "%s: npy header lacks the key '%s'", name, keys[k]);

  int es = !strcmp(descr, "<f8") ? 8 : !strcmp(descr, "<f4") ? 4 : 0, integer = 0;
  if (!es && allow_int && (!strcmp(descr, "<i8") || !strcmp(descr, "<i4")))
    es = descr[2] - '0', integer = 1;
  AR_CHECK(es || !allow_int || !((descr[0] == '>' || descr[0] == '!') && (descr[1] == 'i')), AR_ERR_DATA,
           "%s: dtype '%s' is big-endian; need little-endian int64 or int32", name, descr);
  AR_CHECK(es || !allow_int, AR_ERR_DATA, "%s: dtype '%s' is not supported (need int64 or int32)", name, descr);
  AR_CHECK(es || !((descr[0] == '>' || descr[0] == '!') && (!strcmp(descr + 1, "f8") || !strcmp(descr + 1, "f4"))),
           AR_ERR_DATA, "%s: dtype '%s' is big-endian; only little-endian float64/float32 are supported", name,
           descr);
  AR_CHECK(es, AR_ERR_DATA, "%s: dtype '%s' is not supported (need float64 or float32)", name, descr);
  AR_CHECK(ndim > 0, AR_ERR_DATA, "%s: 0-d array (shape ()) is not supported; need a 1-D or 2-D array", name);
  AR_CHECK(ndim <= 2, AR_ERR_DATA, "%s: %d-D array is not supported; need a 1-D or 2-D array", name, ndim);
  int64_t off = (int64_t)(pre + hlen);
  AR_CHECK((dims[1] == 0 || dims[0] <= INT64_MAX / dims[1]) &&
               dims[0] * dims[1] <= (INT64_MAX - off) / es,
           AR_ERR_DATA, "%s: shape (%lld, %lld) is too large", name, (ll)dims[0], (ll)dims[1]);
  memset(h, 0, sizeof *h); /* padding too: headers are broadcast and compared as bytes */
  h->rows = dims[0], h->cols = dims[1], h->ndim = ndim, h->fortran_order = fortran;
  h->elem_size = es, h->data_offset = off, h->integer = integer;
  return AR_OK;
}

int ar_npy_parse_header(const char *buf, size_t len, const char *name, ar_npy_header *h)
{
  return parse_header(buf, len, name, h, 0);
}

/* ---------------------------------------------------------------------------------------
 * Shared helpers */

static const char *dtype_name(int es) { return es == 8 ? "float64" : "float32"; }

/* Read and check the header of an open file: regular, non-empty, npy, holds all its data. */
static int read_header_stdio(FILE *f, const char *path, ar_npy_header *h, int allow_int)
{
  struct stat st;
  AR_CHECK(fstat(fileno(f), &st) == 0, AR_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
  AR_CHECK(!S_ISDIR(st.st_mode), AR_ERR_IO, "%s: is a directory", path);
  AR_CHECK(S_ISREG(st.st_mode), AR_ERR_IO, "%s: not a regular file", path);
  int64_t size = (int64_t)st.st_size;
  AR_CHECK(size > 0, AR_ERR_DATA, "%s: empty file", path);
  char first[12];
  size_t want = size < 12 ? (size_t)size : 12, pre;
  uint64_t hlen;
  AR_CHECK(fread(first, 1, want, f) == want, AR_ERR_IO, "%s: read error: %s", path, strerror(errno));
  AR_CALL(npy_prefix(first, want, path, &pre, &hlen));
  AR_CHECK(hlen <= NPY_MAX_HEADER, AR_ERR_DATA, "%s: npy header too long (%" PRIu64 " bytes)", path, hlen);
  AR_CHECK((int64_t)(pre + hlen) <= size, AR_ERR_DATA,
           "%s: truncated header (the header length field says %" PRIu64 " bytes but the file holds %lld)", path,
           hlen, (ll)(size - (int64_t)pre));
  char *buf;
  AR_MALLOC(buf, pre + hlen);
  int err = fseeko(f, 0, SEEK_SET) == 0 && fread(buf, 1, pre + hlen, f) == pre + hlen
                ? parse_header(buf, pre + hlen, path, h, allow_int)
                : AR_ERROR(AR_ERR_IO, "%s: read error: %s", path, strerror(errno));
  free(buf);
  AR_CALL(err);
  int64_t need = h->rows * h->cols * h->elem_size, have = size - h->data_offset;
  AR_CHECK(have >= need, AR_ERR_DATA,
           "%s: truncated: header promises %lld x %lld %s (%lld bytes of data) but the file holds %lld", path,
           (ll)h->rows, (ll)h->cols, dtype_name(h->elem_size), (ll)need, (ll)have);
  return AR_OK;
}

/* nloc x cols elements of es bytes at src (column-major if fortran) to row-major doubles at
 * out.  src may alias out unless fortran (float32 is widened in place, from the end). */
static void to_doubles(const char *src, int es, int fortran, int64_t nloc, int64_t cols, double *out)
{
  if (fortran) {
    for (int64_t j = 0; j < cols; j++)
      for (int64_t i = 0; i < nloc; i++) {
        const char *s = src + (j * nloc + i) * es;
        if (es == 8) memcpy(&out[i * cols + j], s, 8);
        else {
          float f;
          memcpy(&f, s, 4);
          out[i * cols + j] = f;
        }
      }
  } else if (es == 4) {
    for (int64_t k = nloc * cols; k-- > 0;) {
      float f;
      memcpy(&f, src + 4 * k, 4);
      out[k] = f;
    }
  } else if (src != (const char *)out) {
    memcpy(out, src, (size_t)(nloc * cols) * 8);
  }
}

/* First non-finite value of a row-major block holding the global rows of nr ranges
 * [rg[2i], rg[2i+1]) one after another. */
static int check_finite(const char *path, const double *a, int64_t cols, int nr, const int64_t *rg)
{
  int64_t k = 0;
  for (int i = 0; i < nr; i++)
    for (int64_t g = rg[2 * i]; g < rg[2 * i + 1]; g++)
      for (int64_t c = 0; c < cols; c++, k++)
        if (!isfinite(a[k]))
          return AR_ERROR(AR_ERR_DATA, "%s: non-finite value (%s) at row %lld, column %lld", path,
                          isnan(a[k]) ? "nan" : a[k] > 0 ? "inf" : "-inf", (ll)g, (ll)c);
  return AR_OK;
}

/* Create/truncate path and write hdr and then data (may be NULL) with stdio. */
static int write_stdio(const char *path, const char *hdr, size_t hl, const double *data, size_t n)
{
  FILE *f = fopen(path, "wb");
  AR_CHECK(f, AR_ERR_IO, "%s: cannot open for writing: %s", path, strerror(errno));
  int ok = fwrite(hdr, 1, hl, f) == hl && (n == 0 || fwrite(data, sizeof *data, n, f) == n);
  int e = errno;
  if (fclose(f) != 0 && ok) ok = 0, e = errno;
  AR_CHECK(ok, AR_ERR_IO, "%s: write error: %s", path, strerror(e));
  return AR_OK;
}

/* Record a failed MPI call (does not return early: the caller agrees with the other ranks). */
static int mpi_fail(int rc, const char *path, const char *what)
{
  if (rc == MPI_SUCCESS) return AR_OK;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return AR_ERROR(AR_ERR_IO, "%s: %s: %s", path, what, msg);
}

/* ---------------------------------------------------------------------------------------
 * Public functions */

size_t ar_npy_format_header(char *buf, size_t cap, int64_t rows, int64_t cols, int fortran_order)
{
  /* As numpy 1.24 _write_array_header: sorted-key dict repr, then spaces so the growth axis
   * can reach 21 digits in place, then padding and '\n' to a multiple of 64 bytes. */
  char out[256], *d = out + 10;
  int n = snprintf(d, 160, "{'descr': '<f8', 'fortran_order': %s, 'shape': (%lld, %lld), }",
                   fortran_order ? "True" : "False", (ll)rows, (ll)cols);
  char digits[32];
  for (int g = snprintf(digits, sizeof digits, "%lld", (ll)(fortran_order ? cols : rows)); g < 21; g++)
    d[n++] = ' ';
  size_t hlen = (size_t)n + 1, pad = 64 - (10 + hlen) % 64, total = 10 + hlen + pad;
  memset(d + n, ' ', pad);
  d[n + pad] = '\n';
  memcpy(out, NPY_MAGIC "\x01\x00", 8);
  out[8] = (char)((hlen + pad) & 0xff);
  out[9] = (char)((hlen + pad) >> 8);
  memcpy(buf, out, total < cap ? total : cap);
  return total;
}

int ar_npy_read_header(MPI_Comm comm, const char *path, ar_npy_header *h)
{
  int rank, err = AR_OK;
  MPI_Comm_rank(comm, &rank);
  memset(h, 0, sizeof *h);
  if (rank == 0) {
    FILE *f = fopen(path, "rb");
    if (!f) err = AR_ERROR(AR_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    else {
      err = read_header_stdio(f, path, h, 0);
      fclose(f);
    }
  }
  AR_CALL(ar_error_agree(comm, err));
  AR_CALL_MPI(MPI_Bcast(h, (int)sizeof *h, MPI_BYTE, 0, comm));
  return AR_OK;
}

int ar_npy_read_rows(MPI_Comm comm, const char *path, const ar_npy_header *h, int64_t r0, int64_t r1,
                     double *out)
{
  const int64_t rg[2] = {r0, r1};
  return ar_npy_read_ranges(comm, path, h, 1, rg, out);
}

int ar_npy_read_ranges(MPI_Comm comm, const char *path, const ar_npy_header *h, int nr, const int64_t *rg,
                       double *out)
{
  const int64_t cols = h->cols;
  const int es = h->elem_size, fortran = h->fortran_order && cols > 1;
  int64_t nloc = 0;
  int err = AR_OK, nblocks = 0;
  char *raw = NULL;
  for (int i = 0; i < nr && !err; i++) {
    if (rg[2 * i] < 0 || rg[2 * i + 1] < rg[2 * i] || rg[2 * i + 1] > h->rows || (i > 0 && rg[2 * i] < rg[2 * i - 1]))
      err = AR_ERROR(AR_ERR_INTERNAL, "%s: rows [%lld, %lld) out of range or order (the file has %lld)", path,
                     (ll)rg[2 * i], (ll)rg[2 * i + 1], (ll)h->rows);
    nloc += rg[2 * i + 1] - rg[2 * i];
    nblocks += rg[2 * i + 1] > rg[2 * i];
  }
  if (err) {
  } else if (nloc > INT_MAX || cols > INT_MAX || (fortran && (h->rows > INT_MAX || (int64_t)nblocks * cols > INT_MAX)))
    err = AR_ERROR(AR_ERR_DATA, "%s: %lld x %lld (of %lld rows) is too large for MPI-IO (INT_MAX rows or columns)",
                   path, (ll)nloc, (ll)cols, (ll)h->rows);
  else if (fortran && nloc > 0 && !(raw = malloc((size_t)(nloc * cols * es))))
    err = AR_ERROR(AR_ERR_MEM, "out of memory allocating %lld bytes", (ll)(nloc * cols * es));
  if ((err = ar_error_agree(comm, err))) {
    free(raw);
    return err;
  }

  MPI_File fh = MPI_FILE_NULL;
  err = mpi_fail(MPI_File_open(comm, path, MPI_MODE_RDONLY, MPI_INFO_NULL, &fh), path, "cannot open");
  if ((err = ar_error_agree(comm, err))) { /* no collective close: not every rank may hold fh */
    free(raw);
    return err;
  }
  MPI_Datatype etype = es == 8 ? MPI_DOUBLE : MPI_FLOAT, ftype = etype, rowtype = etype;
  MPI_Offset disp = h->data_offset;
  int count = 0;
  if (nloc > 0 && cols > 0) {
    /* the file view: the blocks of rows, in file order (C order: whole rows; Fortran order:
     * for every column, the ranges' stretches of it) */
    const int nb = fortran ? (int)(nblocks * cols) : nblocks;
    int *len = malloc(sizeof(int) * (size_t)nb);
    MPI_Aint *at = malloc(sizeof(MPI_Aint) * (size_t)nb);
    if (!len || !at) err = AR_ERROR(AR_ERR_MEM, "out of memory (file view of %d blocks)", nb);
    int b = 0;
    for (int64_t c = 0; !err && c < (fortran ? cols : 1); c++)
      for (int i = 0; i < nr; i++)
        if (rg[2 * i + 1] > rg[2 * i]) {
          len[b] = (int)((rg[2 * i + 1] - rg[2 * i]) * (fortran ? 1 : cols));
          at[b++] = (MPI_Aint)((fortran ? c * h->rows + rg[2 * i] : rg[2 * i] * cols) * es);
        }
    count = (int)nloc;
    if (!err) err = mpi_fail(MPI_Type_contiguous((int)cols, etype, &rowtype), path, "row type");
    if (!err) err = mpi_fail(MPI_Type_commit(&rowtype), path, "row type");
    if (!err) err = mpi_fail(MPI_Type_create_hindexed(nb, len, at, etype, &ftype), path, "view");
    if (!err) err = mpi_fail(MPI_Type_commit(&ftype), path, "view");
    free(len), free(at);
  }
  err = ar_error_agree(comm, err);
  if (!err) err = mpi_fail(MPI_File_set_view(fh, disp, etype, ftype, "native", MPI_INFO_NULL), path, "cannot set view");
  if (!(err = ar_error_agree(comm, err))) {
    MPI_Status st;
    int got = 0;
    void *buf = fortran ? (void *)raw : (void *)out;
    err = mpi_fail(MPI_File_read_all(fh, buf, count, rowtype, &st), path, "read error");
    if (!err && count > 0 && (MPI_Get_count(&st, rowtype, &got) != MPI_SUCCESS || got != count))
      err = AR_ERROR(AR_ERR_IO, "%s: short read (%d of %d rows)", path, got, count);
  }
  int cerr = mpi_fail(MPI_File_close(&fh), path, "cannot close");
  if (ftype != etype) MPI_Type_free(&ftype);
  if (rowtype != etype) MPI_Type_free(&rowtype);
  if (!err) err = cerr;
  if (!err && count > 0) {
    to_doubles(fortran ? raw : (const char *)out, es, fortran, nloc, cols, out);
    err = check_finite(path, out, cols, nr, rg);
  }
  free(raw);
  return ar_error_agree(comm, err);
}

int ar_npy_read_int64(const char *path, ar_npy_header *h, int64_t **a)
{
  *a = NULL;
  FILE *f = fopen(path, "rb");
  AR_CHECK(f, AR_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  int err = read_header_stdio(f, path, h, 1);
  if (!err && !h->integer) err = AR_ERROR(AR_ERR_DATA, "%s: dtype is float%d; need int64 or int32", path, 8 * h->elem_size);
  const int64_t n = err ? 0 : h->rows * h->cols;
  int64_t *out = NULL;
  if (!err && n > (INT64_MAX / 8)) err = AR_ERROR(AR_ERR_DATA, "%s: array too large", path);
  if (!err && !(out = malloc(n ? (size_t)n * 8 : 1)))
    err = AR_ERROR(AR_ERR_MEM, "out of memory allocating %lld bytes", (ll)n * 8);
  if (!err && (fseeko(f, (off_t)h->data_offset, SEEK_SET) != 0 ||
               fread(out, (size_t)h->elem_size, (size_t)n, f) != (size_t)n))
    err = AR_ERROR(AR_ERR_IO, "%s: read error: %s", path, ferror(f) ? strerror(errno) : "unexpected end of file");
  fclose(f);
  if (!err && h->elem_size == 4)
    for (int64_t k = n; k-- > 0;) { /* widen in place, from the end */
      int32_t v;
      memcpy(&v, (const char *)out + 4 * k, 4);
      out[k] = v;
    }
  if (!err && h->fortran_order && h->cols > 1) { /* to row-major */
    int64_t *t = malloc((size_t)n * 8);
    if (!t) err = AR_ERROR(AR_ERR_MEM, "out of memory");
    for (int64_t i = 0; !err && i < h->rows; i++)
      for (int64_t j = 0; j < h->cols; j++) t[i * h->cols + j] = out[j * h->rows + i];
    if (!err) memcpy(out, t, (size_t)n * 8);
    free(t);
  }
  if (err) {
    free(out);
    return err;
  }
  *a = out;
  return AR_OK;
}

int ar_npy_write_rows(MPI_Comm comm, const char *path, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                      const double *local)
{
  int rank, err = AR_OK;
  MPI_Comm_rank(comm, &rank);
  const int64_t nloc = r1 - r0;
  int64_t total = 0;
  AR_CALL_MPI(MPI_Allreduce(&nloc, &total, 1, MPI_INT64_T, MPI_SUM, comm));
  if (rows < 0 || cols < 0 || r0 < 0 || r1 < r0 || r1 > rows || total != rows)
    err = AR_ERROR(AR_ERR_INTERNAL, "%s: row blocks do not tile the %lld rows ([%lld, %lld) here)", path,
                   (ll)rows, (ll)r0, (ll)r1);
  else if (nloc > INT_MAX || cols > INT_MAX || (cols > 0 && rows > INT64_MAX / 8 / cols))
    err = AR_ERROR(AR_ERR_INTERNAL, "%s: %lld x %lld is too large to write", path, (ll)rows, (ll)cols);
  char hdr[256];
  size_t hl = ar_npy_format_header(hdr, sizeof hdr, rows, cols, 0);
  if (!err && rank == 0) err = write_stdio(path, hdr, hl, NULL, 0); /* creates or truncates */
  AR_CALL(ar_error_agree(comm, err));

  MPI_File fh = MPI_FILE_NULL;
  err = mpi_fail(MPI_File_open(comm, path, MPI_MODE_WRONLY | MPI_MODE_CREATE, MPI_INFO_NULL, &fh), path,
                 "cannot open for writing");
  AR_CALL(ar_error_agree(comm, err)); /* no collective close: not every rank may hold fh */
  MPI_Datatype rowtype = MPI_DOUBLE;
  int count = 0;
  if (nloc > 0 && cols > 0) {
    count = (int)nloc;
    err = mpi_fail(MPI_Type_contiguous((int)cols, MPI_DOUBLE, &rowtype), path, "row type");
    if (!err) err = mpi_fail(MPI_Type_commit(&rowtype), path, "row type");
  }
  MPI_Status st;
  MPI_Offset off = (MPI_Offset)hl + r0 * cols * 8;
  if (!err) err = mpi_fail(MPI_File_write_at_all(fh, off, local, count, rowtype, &st), path, "write error");
  int cerr = mpi_fail(MPI_File_close(&fh), path, "cannot close");
  if (rowtype != MPI_DOUBLE) MPI_Type_free(&rowtype);
  return ar_error_agree(comm, err ? err : cerr);
}

int ar_npy_write(const char *path, int64_t rows, int64_t cols, const double *a)
{
  AR_CHECK(rows >= 0 && cols >= 0 && (cols == 0 || rows <= INT64_MAX / 8 / cols), AR_ERR_INTERNAL,
           "%s: bad shape %lld x %lld", path, (ll)rows, (ll)cols);
  char hdr[256];
  size_t hl = ar_npy_format_header(hdr, sizeof hdr, rows, cols, 0);
  return write_stdio(path, hdr, hl, a, (size_t)(rows * cols));
}

int ar_npy_write_int64(const char *path, int64_t n, const int64_t *a)
{
  AR_CHECK(n >= 0 && n <= INT64_MAX / 8, AR_ERR_INTERNAL, "%s: bad length %lld", path, (ll)n);
  char d[128];
  int len = snprintf(d, sizeof d, "{'descr': '<i8', 'fortran_order': False, 'shape': (%lld,), }", (ll)n);
  while ((10 + len + 1) % 64) d[len++] = ' ';
  d[len++] = '\n';
  char hdr[160];
  memcpy(hdr, NPY_MAGIC "\x01\x00", 8);
  hdr[8] = (char)(len & 0xff), hdr[9] = (char)(len >> 8);
  memcpy(hdr + 10, d, (size_t)len);
  FILE *f = fopen(path, "wb");
  AR_CHECK(f, AR_ERR_IO, "%s: cannot open for writing: %s", path, strerror(errno));
  int ok = fwrite(hdr, 1, (size_t)(10 + len), f) == (size_t)(10 + len) && fwrite(a, 8, (size_t)n, f) == (size_t)n;
  int e = errno;
  if (fclose(f) != 0 && ok) ok = 0, e = errno;
  AR_CHECK(ok, AR_ERR_IO, "%s: write error: %s", path, strerror(e));
  return AR_OK;
}

int ar_npy_read(const char *path, ar_npy_header *h, double **a)
{
  ar_npy_header tmp;
  if (!h) h = &tmp;
  *a = NULL;
  FILE *f = fopen(path, "rb");
  AR_CHECK(f, AR_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  int err = read_header_stdio(f, path, h, 0);
  const int64_t n = h->rows * h->cols;
  const int fortran = h->fortran_order && h->cols > 1;
  double *out = NULL;
  char *raw = NULL;
  if (!err && n > INT64_MAX / 8) err = AR_ERROR(AR_ERR_DATA, "%s: array too large", path);
  if (!err && !(out = malloc(n ? (size_t)n * 8 : 1)))
    err = AR_ERROR(AR_ERR_MEM, "out of memory allocating %lld bytes", (ll)n * 8);
  if (!err && !(raw = fortran ? malloc(n ? (size_t)n * h->elem_size : 1) : (char *)out))
    err = AR_ERROR(AR_ERR_MEM, "out of memory allocating %lld bytes", (ll)n * h->elem_size);
  if (!err && (fseeko(f, (off_t)h->data_offset, SEEK_SET) != 0 ||
               fread(raw, (size_t)h->elem_size, (size_t)n, f) != (size_t)n))
    err = AR_ERROR(AR_ERR_IO, "%s: read error: %s", path, ferror(f) ? strerror(errno) : "unexpected end of file");
  fclose(f);
  if (!err) {
    to_doubles(raw, h->elem_size, fortran, h->rows, h->cols, out);
    const int64_t all[2] = {0, h->rows};
    err = check_finite(path, out, h->cols, 1, all);
  }
  if (raw != (char *)out) free(raw);
  if (err) {
    free(out);
    return err;
  }
  *a = out;
  return AR_OK;
}
