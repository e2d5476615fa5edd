/* Tests of src/io/npy.c.  Run as: mpirun -n K test_npy DATADIR   (DATADIR = tests/data/npy, made
 * by scripts/make-npy-fixtures.py with numpy).  Exits 0 if every check passed on every rank. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#endif
#include "error.h"
#include "npy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int g_rank, g_size, g_fail, g_checks;
static const char *g_dir;
static char g_tmp[256];
static MPI_Comm g_comm;

#define FAIL(...)                                                                   \
  do {                                                                              \
    fprintf(stderr, "test_npy: rank %d: line %d: ", g_rank, __LINE__);              \
    fprintf(stderr, __VA_ARGS__);                                                   \
    fputc('\n', stderr);                                                            \
    g_fail++;                                                                       \
  } while (0)
#define CHECK(cond, ...) do { g_checks++; if (!(cond)) FAIL(__VA_ARGS__); } while (0)
#define EXPECT_OK(rc, what)                                                             \
  do {                                                                                  \
    int rc_ = (rc);                                                                     \
    CHECK(rc_ == AR_OK, "%s: unexpected error %d: %s", what, rc_, ar_error_message()); \
    ar_error_clear();                                                                   \
  } while (0)
#define EXPECT_ERR(rc, code, sub, what)                                                           \
  do {                                                                                            \
    int rc_ = (rc);                                                                               \
    CHECK(rc_ == (code), "%s: got code %d ('%s'), expected %d", what, rc_, ar_error_message(), code); \
    CHECK(strstr(ar_error_message(), sub) != NULL, "%s: message '%s' lacks '%s'", what,            \
          ar_error_message(), sub);                                                               \
    ar_error_clear();                                                                             \
  } while (0)

static const char *path_in(const char *dir, const char *name)
{
  static char bufs[4][512];
  static int k;
  char *b = bufs[k++ % 4];
  snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
  return b;
}
#define FX(name) path_in(g_dir, name)
#define TMP(name) path_in(g_tmp, name)

static double fixture_value(int64_t i, int64_t j) { return 100.0 * (double)i + (double)j + 0.25; }
static double rt_value(int64_t i, int64_t j) { return (double)(i + 1) / 3.0 - (double)j * 1e-3; }

/* Row partitions of n rows: 0 uneven (quadratic), 1 even blocks, 2 all on the last rank. */
static void part(int64_t n, int kind, int64_t *r0, int64_t *r1)
{
  int64_t s = g_size, r = g_rank;
  if (kind == 0) {
    *r0 = n * r * r / (s * s);
    *r1 = n * (r + 1) * (r + 1) / (s * s);
  } else if (kind == 1) {
    int64_t q = n / s, m = n % s;
    *r0 = r * q + (r < m ? r : m);
    *r1 = *r0 + q + (r < m);
  } else {
    *r0 = r == s - 1 ? 0 : n;
    *r1 = n;
  }
}

static long file_size(const char *path)
{
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static size_t slurp(const char *path, char *buf, size_t cap)
{
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  size_t n = fread(buf, 1, cap, f);
  fclose(f);
  return n;
}

/* ---- readable fixtures written by numpy ---- */
static void test_fixture(const char *name, int64_t rows, int64_t cols, int ndim, int fortran, int es)
{
  ar_npy_header h;
  EXPECT_OK(ar_npy_read_header(g_comm, FX(name), &h), name);
  CHECK(h.rows == rows && h.cols == cols && h.ndim == ndim && h.fortran_order == fortran && h.elem_size == es,
        "%s: header %lld x %lld ndim %d fortran %d es %d", name, (long long)h.rows, (long long)h.cols, h.ndim,
        h.fortran_order, h.elem_size);
  CHECK(h.data_offset % 64 == 0, "%s: data offset %lld", name, (long long)h.data_offset);
  for (int kind = 0; kind < 3; kind++) {
    int64_t r0, r1;
    part(rows, kind, &r0, &r1);
    double *a = malloc((size_t)((r1 - r0) * cols + 1) * sizeof *a);
    for (int64_t k = 0; k < (r1 - r0) * cols; k++) a[k] = -999;
    EXPECT_OK(ar_npy_read_rows(g_comm, FX(name), &h, r0, r1, a), name);
    for (int64_t i = r0; i < r1; i++)
      for (int64_t j = 0; j < cols; j++)
        CHECK(a[(i - r0) * cols + j] == fixture_value(i, j), "%s (partition %d): [%lld, %lld] = %g, expected %g",
              name, kind, (long long)i, (long long)j, a[(i - r0) * cols + j], fixture_value(i, j));
    free(a);
  }
  if (g_rank == 0) {
    ar_npy_header h2;
    double *a = NULL;
    EXPECT_OK(ar_npy_read(FX(name), &h2, &a), name);
    CHECK(a && h2.rows == h.rows && h2.cols == h.cols && h2.ndim == h.ndim && h2.fortran_order == h.fortran_order &&
              h2.elem_size == h.elem_size && h2.data_offset == h.data_offset, "%s: ar_npy_read header differs", name);
    for (int64_t k = 0; a && k < rows * cols; k++)
      CHECK(a[k] == fixture_value(k / cols, k % cols), "%s: ar_npy_read [%lld] = %g", name, (long long)k, a[k]);
    free(a);
  }
}

/* ---- write_rows / read_rows round trip ---- */
static void test_roundtrip(int64_t n, int64_t cols, int wkind, int rkind)
{
  const char *path = TMP("rt.npy");
  char what[96];
  snprintf(what, sizeof what, "round trip %lld x %lld (partitions %d/%d)", (long long)n, (long long)cols, wkind,
           rkind);
  int64_t r0, r1;
  part(n, wkind, &r0, &r1);
  double *a = malloc((size_t)((r1 - r0) * cols + 1) * sizeof *a);
  for (int64_t i = r0; i < r1; i++)
    for (int64_t j = 0; j < cols; j++) a[(i - r0) * cols + j] = rt_value(i, j);
  EXPECT_OK(ar_npy_write_rows(g_comm, path, n, cols, r0, r1, a), what);
  free(a);
  ar_npy_header h;
  EXPECT_OK(ar_npy_read_header(g_comm, path, &h), what);
  CHECK(h.rows == n && h.cols == cols && h.ndim == 2 && !h.fortran_order && h.elem_size == 8 &&
            h.data_offset == 128,
        "%s: header %lld x %lld", what, (long long)h.rows, (long long)h.cols);
  part(n, rkind, &r0, &r1);
  a = malloc((size_t)((r1 - r0) * cols + 1) * sizeof *a);
  EXPECT_OK(ar_npy_read_rows(g_comm, path, &h, r0, r1, a), what);
  for (int64_t i = r0; i < r1; i++)
    for (int64_t j = 0; j < cols; j++)
      CHECK(a[(i - r0) * cols + j] == rt_value(i, j), "%s: [%lld, %lld] = %.17g", what, (long long)i,
            (long long)j, a[(i - r0) * cols + j]);
  free(a);
  if (g_rank == 0) {
    CHECK(file_size(path) == 128 + n * cols * 8, "%s: file size %ld", what, file_size(path));
    /* the same array written by ar_npy_write (stdio) must be byte-identical */
    double *all = malloc((size_t)(n * cols + 1) * sizeof *all);
    for (int64_t k = 0; k < n * cols; k++) all[k] = rt_value(k / cols, k % cols);
    EXPECT_OK(ar_npy_write(TMP("rt_stdio.npy"), n, cols, all), what);
    size_t cap = (size_t)(128 + n * cols * 8 + 16);
    char *b1 = malloc(cap), *b2 = malloc(cap);
    size_t l1 = slurp(path, b1, cap), l2 = slurp(TMP("rt_stdio.npy"), b2, cap);
    CHECK(l1 == l2 && memcmp(b1, b2, l1) == 0, "%s: write_rows and ar_npy_write files differ", what);
    double *back = NULL;
    EXPECT_OK(ar_npy_read(path, NULL, &back), what);
    CHECK(back && memcmp(back, all, (size_t)(n * cols) * sizeof *all) == 0, "%s: ar_npy_read differs", what);
    free(back), free(all), free(b1), free(b2);
  }
  MPI_Barrier(g_comm);
}

/* ---- ar_npy_format_header against numpy's headers ---- */
static void test_format_header(void)
{
  static const struct { int64_t rows, cols; int fortran; const char *file; int overflow; } t[] = {
    {5, 3, 0, "hdr_C_5_3.bin", 0}, {3, 4, 1, "hdr_F_3_4.bin", 0}, {0, 5, 0, "hdr_C_0_5.bin", 0},
    {1, 1, 0, "hdr_C_1_1.bin", 0}, {1000000, 64, 0, "hdr_C_1000000_64.bin", 0},
    {123456789012345678, 2, 0, "hdr_C_123456789012345678_2.bin", 0},
    {2, 1234567890123, 1, "hdr_F_2_1234567890123.bin", 0},
    {7, 1234567890123456789, 0, "hdr_C_7_1234567890123456789.bin", 1},
  };
  for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
    char want[512], got[512];
    size_t lw = slurp(FX(t[k].file), want, sizeof want);
    CHECK(lw > 0, "%s: cannot read fixture", t[k].file);
    memset(got, 'x', sizeof got);
    size_t lg = ar_npy_format_header(got, sizeof got, t[k].rows, t[k].cols, t[k].fortran);
    CHECK(lg == lw && memcmp(got, want, lw) == 0, "%s: format_header differs from numpy (%zu vs %zu bytes)",
          t[k].file, lg, lw);
    memset(got, 'x', sizeof got);
    CHECK(ar_npy_format_header(got, 10, t[k].rows, t[k].cols, t[k].fortran) == lw && got[10] == 'x' &&
              memcmp(got, want, 10) == 0,
          "%s: format_header with a small cap", t[k].file);
    ar_npy_header h;
    int rc = ar_npy_parse_header(want, lw, t[k].file, &h);
    if (t[k].overflow) {
      EXPECT_ERR(rc, AR_ERR_DATA, "is too large", t[k].file);
    } else {
      EXPECT_OK(rc, t[k].file);
      CHECK(h.rows == t[k].rows && h.cols == t[k].cols && h.fortran_order == t[k].fortran && h.data_offset == 128,
            "%s: parsed back wrong", t[k].file);
    }
  }
}

/* ---- ar_npy_parse_header on in-memory headers ---- */
static int parse_dict(const char *dict, int version, ar_npy_header *h)
{
  char buf[512];
  size_t pre = version == 1 ? 10 : 12, n = strlen(dict);
  memcpy(buf, "\x93NUMPY", 6);
  buf[6] = (char)version, buf[7] = 0;
  for (size_t k = 8; k < pre; k++) buf[k] = (char)((n >> (8 * (k - 8))) & 0xff);
  memcpy(buf + pre, dict, n);
  return ar_npy_parse_header(buf, pre + n, "mem.npy", h);
}

static void test_parse(void)
{
  static const struct { const char *dict; int version; int64_t rows, cols; int ndim, fortran, es; } ok[] = {
    {"{'shape': (3, 4), 'fortran_order': True, 'descr': '<f4'}", 1, 3, 4, 2, 1, 4},
    {"{ \"descr\" : \"<f8\" ,\n 'fortran_order':False,'shape':(3,4,),}\n   ", 2, 3, 4, 2, 0, 8},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (3L, 4L), }      \n", 1, 3, 4, 2, 0, 8},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (0, 4), }\n", 3, 0, 4, 2, 0, 8},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (9, 0), }\n", 1, 9, 0, 2, 0, 8},
    {"{'descr':'<f8','fortran_order':False,'shape':( 9 , )}", 1, 9, 1, 1, 0, 8},
  };
  for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) {
    ar_npy_header h;
    EXPECT_OK(parse_dict(ok[k].dict, ok[k].version, &h), ok[k].dict);
    CHECK(h.rows == ok[k].rows && h.cols == ok[k].cols && h.ndim == ok[k].ndim &&
              h.fortran_order == ok[k].fortran && h.elem_size == ok[k].es &&
              h.data_offset == (ok[k].version == 1 ? 10 : 12) + (int64_t)strlen(ok[k].dict),
          "parse %s: got %lld x %lld ndim %d", ok[k].dict, (long long)h.rows, (long long)h.cols, h.ndim);
  }
  static const struct { const char *dict, *sub; } bad[] = {
    {"{'descr': '<f8', 'shape': (3, 4)}", "lacks the key 'fortran_order'"},
    {"{'descr': '<f8', 'fortran_order': False}", "lacks the key 'shape'"},
    {"{'fortran_order': False, 'shape': (3, 4)}", "lacks the key 'descr'"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), 'x': 1}", "unexpected key 'x'"},
    {"{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (3, 4)}", "duplicate key"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (3)}", "malformed"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (3 4)}", "malformed"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': [3, 4]}", "malformed"},
    {"{'descr': '<f8', 'fortran_order': false, 'shape': (3, 4)}", "malformed"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4)} x", "malformed"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4)", "malformed"},
    {"{'descr': '<f8 , 'fortran_order': False, 'shape': (3, 4)}", "malformed"},
    {"", "malformed"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (-3, 4)}", "negative dimension"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999, 1)}", "too large"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296)}", "too large"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (1152921504606846976, 1)}", "too large"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': ()}", "0-d array"},
    {"{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2, 3, 4)}", "4-D array"},
    {"{'descr': '<i4', 'fortran_order': False, 'shape': (3, 4)}", "dtype '<i4' is not supported"},
    {"{'descr': '<c8', 'fortran_order': False, 'shape': (3, 4)}", "dtype '<c8' is not supported"},
    {"{'descr': '>f4', 'fortran_order': False, 'shape': (3, 4)}", "dtype '>f4' is big-endian"},
    {"{'descr': '=f8', 'fortran_order': False, 'shape': (3, 4)}", "dtype '=f8' is not supported"},
    {"{'descr': '<f2', 'fortran_order': False, 'shape': (3, 4)}", "dtype '<f2' is not supported"},
    {"{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (3,)}", "structured dtype"},
  };
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    ar_npy_header h;
    EXPECT_ERR(parse_dict(bad[k].dict, 1, &h), AR_ERR_DATA, bad[k].sub, bad[k].dict);
  }
  /* length field larger than the buffer; every prefix of a valid header; bad magic/version */
  char buf[256];
  size_t full = slurp(FX("c_f8.npy"), buf, 128);
  ar_npy_header h;
  CHECK(full == 128, "c_f8.npy: cannot read its header");
  EXPECT_OK(ar_npy_parse_header(buf, full, "c_f8.npy", &h), "full header");
  EXPECT_ERR(ar_npy_parse_header(buf, 100, "c_f8.npy", &h), AR_ERR_DATA, "c_f8.npy: truncated header", "len 100");
  for (size_t len = 0; len < full; len++) {
    int rc = ar_npy_parse_header(buf, len, "c_f8.npy", &h);
    CHECK(rc == AR_ERR_DATA && strstr(ar_error_message(), "truncated header"), "prefix %zu: %d %s", len, rc,
          ar_error_message());
    ar_error_clear();
  }
  EXPECT_ERR(ar_npy_parse_header("PK\x03\x04 zip", 10, "z.npy", &h), AR_ERR_DATA, "z.npy: not an npy file (bad magic)",
             "zip");
  EXPECT_ERR(ar_npy_parse_header("\x93NUMPX", 6, "z.npy", &h), AR_ERR_DATA, "bad magic", "magic");
  /* random mutations must never crash or read past len (run under ASan/valgrind) */
  unsigned s = 12345u + (unsigned)g_rank;
  for (int it = 0; it < 20000; it++) {
    char m[128];
    memcpy(m, buf, sizeof m);
    int nmut = 1 + (int)((s = s * 1103515245u + 12345u) >> 16) % 4;
    for (int q = 0; q < nmut; q++) {
      s = s * 1103515245u + 12345u;
      m[(s >> 8) % 128] = (char)(s >> 20);
    }
    s = s * 1103515245u + 12345u;
    size_t len = (s >> 16) % 4 ? 128 : (s >> 18) % 129; /* mostly whole, sometimes cut */
    char *heap = malloc(len ? len : 1); /* exact-size copy so ASan sees overreads */
    memcpy(heap, m, len);
    (void)ar_npy_parse_header(heap, len, "fuzz.npy", &h);
    ar_error_clear();
    free(heap);
  }
}

/* ---- files that must be refused ---- */
static void test_errors(void)
{
  static const struct { const char *file; int code; const char *sub; } t[] = {
    {"does_not_exist.npy", AR_ERR_IO, "does_not_exist.npy: cannot open: No such file or directory"},
    {"empty.npy", AR_ERR_DATA, "empty.npy: empty file"},
    {"not_npy.npy", AR_ERR_DATA, "not_npy.npy: not an npy file (bad magic)"},
    {"truncated.npy", AR_ERR_DATA,
     "truncated.npy: truncated: header promises 5 x 3 float64 (120 bytes of data) but the file holds 20"},
    {"shape_larger.npy", AR_ERR_DATA, "truncated: header promises 100 x 3 float64 (2400 bytes of data) but the file holds 120"},
    {"truncated_header.npy", AR_ERR_DATA, "truncated_header.npy: truncated header"},
    {"bad_version.npy", AR_ERR_DATA, "unsupported npy format version 4.0"},
    {"int64.npy", AR_ERR_DATA, "int64.npy: dtype '<i8' is not supported (need float64 or float32)"},
    {"complex.npy", AR_ERR_DATA, "dtype '<c16' is not supported"},
    {"bigendian.npy", AR_ERR_DATA, "bigendian.npy: dtype '>f8' is big-endian; only little-endian float64/float32"},
    {"object.npy", AR_ERR_DATA, "dtype '|O' is not supported"},
    {"structured.npy", AR_ERR_DATA, "structured dtype is not supported"},
    {"zerod.npy", AR_ERR_DATA, "zerod.npy: 0-d array"},
    {"threed.npy", AR_ERR_DATA, "threed.npy: 3-D array is not supported"},
  };
  for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
    ar_npy_header h;
    EXPECT_ERR(ar_npy_read_header(g_comm, FX(t[k].file), &h), t[k].code, t[k].sub, t[k].file);
    if (g_rank == 0) {
      double *a = (double *)&h;
      EXPECT_ERR(ar_npy_read(FX(t[k].file), &h, &a), t[k].code, t[k].sub, t[k].file);
      CHECK(a == NULL, "%s: ar_npy_read left *a set", t[k].file);
    }
  }
  ar_npy_header h;
  EXPECT_ERR(ar_npy_read_header(g_comm, g_dir, &h), AR_ERR_IO, "is a directory", "directory");

  /* non-finite values: the first one in row-major order of the global array */
  static const struct { const char *file, *sub; } nf[] = {
    {"nan.npy", "nan.npy: non-finite value (nan) at row 1, column 2"},
    {"inf.npy", "inf.npy: non-finite value (-inf) at row 2, column 0"},
    {"f_nan.npy", "f_nan.npy: non-finite value (nan) at row 3, column 1"},
  };
  for (size_t k = 0; k < sizeof nf / sizeof nf[0]; k++) {
    EXPECT_OK(ar_npy_read_header(g_comm, FX(nf[k].file), &h), nf[k].file);
    for (int kind = 0; kind < 3; kind++) {
      int64_t r0, r1;
      part(h.rows, kind, &r0, &r1);
      double *a = malloc((size_t)((r1 - r0) * h.cols + 1) * sizeof *a);
      EXPECT_ERR(ar_npy_read_rows(g_comm, FX(nf[k].file), &h, r0, r1, a), AR_ERR_DATA, nf[k].sub, nf[k].file);
      free(a);
    }
    if (g_rank == 0) {
      double *a = NULL;
      EXPECT_ERR(ar_npy_read(FX(nf[k].file), &h, &a), AR_ERR_DATA, nf[k].sub, nf[k].file);
    }
  }
  /* rows out of range (a caller bug), on one rank only: still agreed */
  EXPECT_OK(ar_npy_read_header(g_comm, FX("c_f8.npy"), &h), "c_f8.npy");
  double a[32];
  int64_t r0 = 0, r1 = g_rank == g_size - 1 ? 6 : 0;
  EXPECT_ERR(ar_npy_read_rows(g_comm, FX("c_f8.npy"), &h, r0, r1, a), AR_ERR_INTERNAL, "out of range", "range");

  /* write errors */
  double v[4] = {1, 2, 3, 4};
  part(2, 1, &r0, &r1);
  EXPECT_ERR(ar_npy_write_rows(g_comm, TMP("no/such/dir.npy"), 2, 2, r0, r1, v + 2 * r0), AR_ERR_IO,
             "dir.npy: cannot open for writing: No such file or directory", "write into a missing directory");
  EXPECT_ERR(ar_npy_write_rows(g_comm, TMP("bad.npy"), 3, 2, r0, r1, v + 2 * r0), AR_ERR_INTERNAL,
             "do not tile", "write with gaps");
  if (g_rank == 0) EXPECT_ERR(ar_npy_write(g_tmp, 2, 2, v), AR_ERR_IO, "Is a directory", "ar_npy_write to a dir");
}

int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  g_comm = MPI_COMM_WORLD;
  MPI_Comm_rank(g_comm, &g_rank);
  MPI_Comm_size(g_comm, &g_size);
  if (argc != 2) {
    if (g_rank == 0) fprintf(stderr, "usage: test_npy DATADIR\n");
    MPI_Finalize();
    return 2;
  }
  g_dir = argv[1];
  if (g_rank == 0) {
    const char *t = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/test_npy.XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(g_tmp)) g_tmp[0] = '\0';
  }
  MPI_Bcast(g_tmp, sizeof g_tmp, MPI_CHAR, 0, g_comm);
  if (!g_tmp[0]) {
    if (g_rank == 0) fprintf(stderr, "test_npy: cannot create a temporary directory\n");
    MPI_Finalize();
    return 1;
  }

  test_parse();
  test_format_header();
  test_fixture("c_f8.npy", 5, 3, 2, 0, 8);
  test_fixture("f_f8.npy", 5, 3, 2, 1, 8);
  test_fixture("c_f4.npy", 5, 3, 2, 0, 4);
  test_fixture("f_f4.npy", 5, 3, 2, 1, 4);
  test_fixture("v2_f8.npy", 4, 3, 2, 0, 8);
  test_fixture("v3_f4_fortran.npy", 4, 3, 2, 1, 4);
  test_fixture("d1_f8.npy", 7, 1, 1, 0, 8);
  test_fixture("d1_f4_v2.npy", 6, 1, 1, 0, 4);
  test_fixture("zero_rows.npy", 0, 3, 2, 0, 8);
  static const int64_t shapes[][2] = {{50, 4}, {1, 1}, {2, 3}, {3, 1}, {7, 5}, {10, 2}, {0, 3}, {4, 0}, {1000, 7}};
  for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
    for (int w = 0; w < 3; w++) test_roundtrip(shapes[k][0], shapes[k][1], w, (w + 1) % 3);
  /* the last round trip (1000 x 7) overwrote the 4 x 0 file, and a smaller one must truncate */
  test_roundtrip(2, 2, 0, 1);
  test_errors();

  if (g_rank == 0) {
    const char *names[] = {"rt.npy", "rt_stdio.npy", "bad.npy"};
    for (size_t k = 0; k < 3; k++) unlink(TMP(names[k]));
    rmdir(g_tmp);
  }
  int fails = 0, checks = 0;
  MPI_Allreduce(&g_fail, &fails, 1, MPI_INT, MPI_SUM, g_comm);
  MPI_Allreduce(&g_checks, &checks, 1, MPI_INT, MPI_SUM, g_comm);
  if (g_rank == 0) {
    if (fails) fprintf(stderr, "test_npy: %d of %d checks FAILED (%d ranks)\n", fails, checks, g_size);
    else printf("test_npy: all %d checks passed (%d ranks)\n", checks, g_size);
  }
  MPI_Finalize();
  return fails ? 1 : 0;
}
