#include "output.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attnreg.h"
#include "error.h"

/* mkdir -p, for rank 0. */
static int make_dirs(const char *option, const char *dir)
{
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s", dir);
  for (char *c = tmp + 1; *c; c++) {
    if (*c != '/') continue;
    *c = '\0';
    if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
      return AR_ERROR(AR_ERR_IO, "%s %s: cannot create %s: %s", option, dir, tmp, strerror(errno));
    *c = '/';
  }
  if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
    return AR_ERROR(AR_ERR_IO, "%s %s: cannot create: %s", option, dir, strerror(errno));
  return AR_OK;
}

int ar_out_begin(MPI_Comm comm, const char *option, const char *dir, ar_out *out)
{
  memset(out, 0, sizeof *out);
  out->comm = comm;
  MPI_Comm_rank(comm, &out->rank);
  int err = AR_OK;
  long pid = (long)getpid();
  if (strlen(dir) >= sizeof out->dir - 300) err = AR_ERROR(AR_ERR_USAGE, "%s: path too long", option);
  if (!err && out->rank == 0) {
    struct stat st;
    if (stat(dir, &st) == 0) {
      if (!S_ISDIR(st.st_mode)) err = AR_ERROR(AR_ERR_IO, "%s %s: exists and is not a directory", option, dir);
    } else {
      err = make_dirs(option, dir);
      out->created = !err;
    }
    if (!err && access(dir, W_OK | X_OK) != 0)
      err = AR_ERROR(AR_ERR_IO, "%s %s: not writable: %s", option, dir, strerror(errno));
  }
  MPI_Bcast(&pid, 1, MPI_LONG, 0, comm);
  snprintf(out->dir, sizeof out->dir, "%s", dir);
  snprintf(out->tag, sizeof out->tag, ".tmp-%ld", pid);
  return ar_error_agree(comm, err);
}

const char *ar_out_path(ar_out *out, const char *name, char *buf, size_t cap)
{
  int known = 0;
  for (int i = 0; i < out->nfiles; i++) known |= !strcmp(out->names[i], name);
  if (!known && out->nfiles < AR_OUT_MAX_FILES) snprintf(out->names[out->nfiles++], sizeof out->names[0], "%s", name);
  snprintf(buf, cap, "%s/.%s%s", out->dir, name, out->tag);
  return buf;
}

FILE *ar_out_fopen(ar_out *out, const char *name)
{
  char path[8192];
  ar_out_path(out, name, path, sizeof path);
  FILE *f = fopen(path, "w");
  if (!f) AR_ERROR(AR_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
  return f;
}

int ar_out_commit(ar_out *out)
{
  int err = AR_OK;
  MPI_Barrier(out->comm);
  if (out->rank == 0) {
    char from[8192], to[8192];
    for (int i = 0; i < out->nfiles && !err; i++) {
      snprintf(from, sizeof from, "%s/.%s%s", out->dir, out->names[i], out->tag);
      snprintf(to, sizeof to, "%s/%s", out->dir, out->names[i]);
      if (rename(from, to) != 0) err = AR_ERROR(AR_ERR_IO, "%s: cannot rename into place: %s", to, strerror(errno));
    }
  }
  return ar_error_agree(out->comm, err);
}

void ar_out_abort(ar_out *out)
{
  if (out->rank != 0 || !out->dir[0]) return;
  char path[8192];
  for (int i = 0; i < out->nfiles; i++) {
    snprintf(path, sizeof path, "%s/.%s%s", out->dir, out->names[i], out->tag);
    unlink(path);
  }
  if (out->created) rmdir(out->dir);
}

void ar_json_string(FILE *f, const char *s)
{
  fputc('"', f);
  for (; s && *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    if ((unsigned char)*s >= 0x20) fputc(*s, f);
  }
  fputc('"', f);
}
