/* Atomic output directories (output.h).
 *
 * The result files are written into a staging directory next to OUT, PARENT/.NAME.attnreg-XXXXXX
 * (same filesystem, made by mkdtemp), and ar_out_commit makes them appear at once:
 *   - OUT does not exist: one rename() of the staging directory to OUT;
 *   - OUT exists: every other entry of OUT is first carried into the staging directory as a
 *     hard link (OUT itself is not touched), then the two directories are exchanged by one
 *     renameat2(RENAME_EXCHANGE) and the old tree, now under the staging name, is deleted.
 * Until that one system call OUT is exactly as it was, whatever fails and whichever process is
 * killed; after it OUT is the complete new result.  A killed run can leave the hidden staging
 * directory next to OUT; nothing removes it but the user.
 *
 * Fallback, "in place": each result file is renamed into OUT, an existing one moved aside into
 * the staging directory first; a failed rename moves every earlier file back, so a failed commit
 * still leaves OUT's files as they were (only OUT's own modification time changes), but a process
 * killed between these renames can leave a mix.  Used when the exchange cannot work or would do
 * harm: OUT is a mount point or its parent is not writable (then the staging directory is inside
 * OUT: OUT/.attnreg-XXXXXX), OUT holds the working directory (the shell that started the job
 * would be left in a deleted directory), something in OUT cannot be hard-linked (another
 * filesystem mounted inside it, a file the kernel's protected_hardlinks forbids), or the
 * filesystem has no RENAME_EXCHANGE (e.g. NFS).
 *
 * Test hooks (fault.h): "out-rename" fails the k-th rename of a commit (the exchange counts as
 * one), "out-open" the k-th ar_out_fopen, "out-noexchange" makes the exchange report EINVAL (the
 * fallback), "out-inside" puts the staging directory inside OUT (as for a mount point), and "out-kill" kills the process at its k-th point: 1 on entry to ar_out_commit
 * (every rank), then on rank 0 2 just before the exchange (or the first in-place rename) and 3
 * just after it (after the last one). */
#define _GNU_SOURCE /* renameat2, RENAME_EXCHANGE (glibc >= 2.28) */
#include "output.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attnreg.h"
#include "error.h"
#include "fault.h"

#define PATH_CAP 8192

static void kill_point(void)
{
  if (ar_fault("out-kill")) raise(SIGKILL);
}

/* rename(), or the injected failure of the "out-rename" hook (errno EIO). */
static int rename_or_fault(const char *from, const char *to)
{
  if (ar_fault("out-rename")) return errno = EIO, -1;
  return rename(from, to);
}

/* Split path (no trailing '/') into its parent and last component; parent "" for "/x". */
static void split(const char *path, char *parent, size_t cap, const char **base)
{
  const char *slash = strrchr(path, '/');
  if (!slash) {
    snprintf(parent, cap, ".");
    *base = path;
    return;
  }
  snprintf(parent, cap, "%.*s", (int)(slash - path), path);
  *base = slash + 1;
}

/* mkdir -p of dir; *ncreated: how many trailing components were made. */
static int make_dirs(const char *option, const char *out, const char *dir, int *ncreated)
{
  char tmp[PATH_CAP];
  snprintf(tmp, sizeof tmp, "%s", dir);
  *ncreated = 0;
  for (char *c = tmp + 1;; c++) {
    if (*c != '/' && *c != '\0') continue;
    const char end = *c;
    *c = '\0';
    if (mkdir(tmp, 0777) == 0) ++*ncreated;
    else if (errno != EEXIST) return AR_ERROR(AR_ERR_IO, "%s %s: cannot create %s: %s", option, out, tmp, strerror(errno));
    *c = end;
    if (!end) break;
  }
  return AR_OK;
}

/* Delete the tree at path (not following symbolic links); 0 if all of it went. */
static int g_remove_failed;
static int remove_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
  (void)st, (void)flag, (void)f;
  if (remove(p) != 0) g_remove_failed = 1;
  return 0;
}
static int remove_tree(const char *path)
{
  struct stat st;
  if (lstat(path, &st) != 0 && errno == ENOENT) return 0;
  g_remove_failed = 0;
  if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) return -1;
  return g_remove_failed ? -1 : 0;
}

/* Rank 0: does OUT hold this process's working directory? */
static int holds_cwd(const char *target)
{
  char cwd[PATH_CAP];
  if (!getcwd(cwd, sizeof cwd)) return 0;
  size_t n = strlen(target);
  return !strncmp(cwd, target, n) && (cwd[n] == '\0' || cwd[n] == '/' || n == 1);
}

/* Rank 0 part of ar_out_begin: resolve OUT, choose where to stage, make the staging directory. */
static int prepare(const char *option, ar_out *o)
{
  struct stat st, pst;
  char parent[PATH_CAP], resolved[PATH_CAP];
  const char *base;
  int exists = stat(o->dir, &st) == 0;
  if (exists) {
    AR_CHECK(S_ISDIR(st.st_mode), AR_ERR_IO, "%s %s: exists and is not a directory", option, o->dir);
    AR_CHECK(access(o->dir, W_OK | X_OK) == 0, AR_ERR_IO, "%s %s: not writable: %s", option, o->dir, strerror(errno));
    AR_CHECK(realpath(o->dir, resolved), AR_ERR_IO, "%s %s: %s", option, o->dir, strerror(errno));
  } else {
    AR_CHECK(errno == ENOENT, AR_ERR_IO, "%s %s: cannot create: %s", option, o->dir, strerror(errno));
    char given[PATH_CAP];
    snprintf(given, sizeof given, "%s", o->dir);
    for (size_t n = strlen(given); n > 1 && given[n - 1] == '/'; n--) given[n - 1] = '\0';
    split(given, parent, sizeof parent, &base);
    AR_CHECK(*base && strcmp(base, ".") && strcmp(base, ".."), AR_ERR_IO, "%s %s: cannot create", option, o->dir);
    if (*parent) AR_CALL(make_dirs(option, o->dir, parent, &o->ncreated));
    AR_CHECK(realpath(*parent ? parent : "/", resolved), AR_ERR_IO, "%s %s: %s", option, o->dir, strerror(errno));
    size_t n = strlen(resolved);
    snprintf(resolved + n, sizeof resolved - n, "%s%s", resolved[n - 1] == '/' ? "" : "/", base);
  }
  AR_CHECK(strlen(resolved) <= 3500, AR_ERR_USAGE, "%s %s: path too long", option, o->dir);
  snprintf(o->target, sizeof o->target, "%.3500s", resolved);
  split(o->target, parent, sizeof parent, &base);
  /* the staging directory goes next to OUT when it can be renamed there, else inside OUT */
  int sibling = *base && access(*parent ? parent : "/", W_OK | X_OK) == 0 && !ar_fault("out-inside");
  if (sibling && exists) sibling = stat(*parent ? parent : "/", &pst) == 0 && pst.st_dev == st.st_dev;
  int err = AR_OK;
  if (!exists && !sibling)
    err = AR_ERROR(AR_ERR_IO, "%s %s: cannot create: %s", option, o->dir, strerror(EACCES));
  if (!err) {
    if (sibling) snprintf(o->stage, sizeof o->stage, "%.3500s/.%.200s.attnreg-XXXXXX", parent, base);
    else snprintf(o->stage, sizeof o->stage, "%.3500s/.attnreg-XXXXXX", o->target);
    if (!mkdtemp(o->stage)) {
      err = AR_ERROR(AR_ERR_IO, "%s %s: cannot create the staging directory %s: %s", option, o->dir, o->stage,
                     strerror(errno));
      o->stage[0] = '\0';
    }
  }
  o->inplace = !sibling || (exists && holds_cwd(o->target));
  if (err) ar_out_abort(o); /* the parents it made */
  return err;
}

int ar_out_begin(MPI_Comm comm, const char *option, const char *dir, ar_out *out)
{
  memset(out, 0, sizeof *out);
  out->comm = comm;
  MPI_Comm_rank(comm, &out->rank);
  int err = AR_OK;
  if (strlen(dir) >= 3000) err = AR_ERROR(AR_ERR_USAGE, "%s: path too long", option);
  snprintf(out->dir, sizeof out->dir, "%s", err ? "" : dir);
  if (!err && out->rank == 0) err = prepare(option, out);
  MPI_Bcast(out->stage, sizeof out->stage, MPI_CHAR, 0, comm);
  return ar_error_agree(comm, err);
}

int ar_out_add(ar_out *out, const char *name)
{
  for (int i = 0; i < out->nfiles; i++)
    if (!strcmp(out->names[i], name)) return AR_OK;
  AR_CHECK(out->nfiles < AR_OUT_MAX_FILES && strlen(name) < sizeof out->names[0], AR_ERR_INTERNAL,
           "output file %s: too many result files or too long a name", name);
  snprintf(out->names[out->nfiles++], sizeof out->names[0], "%s", name);
  return AR_OK;
}

const char *ar_out_path(ar_out *out, const char *name, char *buf, size_t cap)
{
  snprintf(buf, cap, "%s/%s", out->stage, name);
  return buf;
}

FILE *ar_out_fopen(ar_out *out, const char *name)
{
  char path[PATH_CAP];
  ar_out_path(out, name, path, sizeof path);
  FILE *f = ar_fault("out-open") ? (errno = EIO, NULL) : fopen(path, "w");
  if (!f) AR_ERROR(AR_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
  return f;
}

/* Hard-link into dst every entry of src that dst lacks (recursively; directories are made
 * afresh with src's mode, symbolic links copied).  src is not changed.  -1: something cannot
 * be carried over (another filesystem mounted inside, a link refused), so commit in place. */
static int carry_over(const char *src, const char *dst, dev_t dev)
{
  DIR *d = opendir(src);
  if (!d) return -1;
  int rc = 0;
  struct dirent *e;
  char s[PATH_CAP], t[PATH_CAP], l[PATH_CAP];
  struct stat st;
  while (!rc && (e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (snprintf(s, sizeof s, "%s/%s", src, e->d_name) >= (int)sizeof s ||
        snprintf(t, sizeof t, "%s/%s", dst, e->d_name) >= (int)sizeof t) {
      rc = -1;
    } else if (lstat(t, &st) == 0) {
      continue; /* a file of this run: it replaces the old one */
    } else if (lstat(s, &st) != 0) {
      rc = errno == ENOENT ? 0 : -1; /* gone meanwhile */
    } else if (st.st_dev != dev) {
      rc = -1;
    } else if (S_ISDIR(st.st_mode)) {
      rc = mkdir(t, 0700) || carry_over(s, t, dev) || chmod(t, st.st_mode & 07777) ? -1 : 0;
    } else if (S_ISLNK(st.st_mode)) {
      ssize_t n = readlink(s, l, sizeof l - 1);
      rc = n < 0 || n == (ssize_t)sizeof l - 1 ? -1 : (l[n] = '\0', symlink(l, t));
    } else {
      rc = link(s, t);
      continue; /* the same inode: nothing to copy */
    }
    /* made afresh: with the old one's times */
    const struct timespec times[2] = {st.st_atim, st.st_mtim};
    if (!rc) utimensat(AT_FDCWD, t, times, AT_SYMLINK_NOFOLLOW);
  }
  closedir(d);
  return rc ? -1 : 0;
}

/* The fallback commit (see the top of this file). */
static int commit_in_place(ar_out *o)
{
  char from[PATH_CAP], to[PATH_CAP], old[PATH_CAP], aside[PATH_CAP];
  int moved[AR_OUT_MAX_FILES] = {0}, placed = 0, err = AR_OK, i;
  struct stat st;
  snprintf(aside, sizeof aside, "%s/.old", o->stage);
  if (mkdir(aside, 0700) != 0)
    return AR_ERROR(AR_ERR_IO, "%s: cannot create: %s", aside, strerror(errno));
  kill_point();
  for (i = 0; i < o->nfiles && !err; i++) {
    snprintf(to, sizeof to, "%s/%s", o->target, o->names[i]);
    snprintf(old, sizeof old, "%.4096s/%.255s", aside, o->names[i]);
    if (lstat(to, &st) != 0) continue;
    if (rename_or_fault(to, old) != 0) err = AR_ERROR(AR_ERR_IO, "%s: cannot move aside: %s", to, strerror(errno));
    else moved[i] = 1;
  }
  for (i = 0; i < o->nfiles && !err; i++, placed++) {
    snprintf(from, sizeof from, "%.4096s/%.255s", o->stage, o->names[i]);
    snprintf(to, sizeof to, "%s/%s", o->target, o->names[i]);
    if (rename_or_fault(from, to) != 0) err = AR_ERROR(AR_ERR_IO, "%s: cannot rename into place: %s", to, strerror(errno));
  }
  if (err) { /* undo: OUT's files back, ours out */
    for (i = 0; i < o->nfiles; i++) {
      snprintf(to, sizeof to, "%s/%s", o->target, o->names[i]);
      snprintf(old, sizeof old, "%.4096s/%.255s", aside, o->names[i]);
      if (moved[i] ? rename(old, to) != 0 : i < placed && unlink(to) != 0) {
        fprintf(stderr, "attnreg: warning: %s could not be restored (the earlier file is kept as %s): %s\n", to,
                old, strerror(errno));
        o->stage[0] = '\0'; /* so that ar_out_abort keeps it */
      }
    }
    return err;
  }
  kill_point();
  return AR_OK;
}

/* Rank 0 part of ar_out_commit. */
static int commit(ar_out *o)
{
  struct stat st;
  if (!o->inplace && lstat(o->target, &st) != 0 && errno == ENOENT) { /* a new OUT */
    mode_t mask = umask(0);
    umask(mask);
    chmod(o->stage, 0777 & ~mask); /* as mkdir would have made it (mkdtemp: 0700) */
    kill_point();
    if (rename_or_fault(o->stage, o->target) != 0)
      return AR_ERROR(AR_ERR_IO, "%s: cannot rename %s into place: %s", o->dir, o->stage, strerror(errno));
    kill_point();
    return AR_OK;
  }
  if (!o->inplace) {
    if (lstat(o->target, &st) != 0 || !S_ISDIR(st.st_mode))
      return AR_ERROR(AR_ERR_IO, "%s: no longer a directory", o->dir);
    o->inplace = carry_over(o->target, o->stage, st.st_dev) != 0 || chmod(o->stage, st.st_mode & 07777) != 0;
  }
  if (!o->inplace) {
    kill_point();
    int r = ar_fault("out-noexchange") ? (errno = EINVAL, -1) : ar_fault("out-rename") ? (errno = EIO, -1)
                                                                 : renameat2(AT_FDCWD, o->stage, AT_FDCWD, o->target,
                                                                             RENAME_EXCHANGE);
    if (r != 0 && errno != EINVAL && errno != ENOSYS && errno != ENOTSUP && errno != EOPNOTSUPP && errno != EXDEV &&
        errno != EBUSY)
      return AR_ERROR(AR_ERR_IO, "%s: cannot exchange with %s: %s", o->dir, o->stage, strerror(errno));
    o->inplace = r != 0; /* the filesystem cannot exchange: in place */
    if (!o->inplace) {
      kill_point();
      /* the staging name now holds the old OUT: deleted by the caller */
      return AR_OK;
    }
  }
  return commit_in_place(o);
}

int ar_out_commit(ar_out *out)
{
  kill_point();
  MPI_Barrier(out->comm); /* every rank has closed its files */
  int err = out->rank == 0 ? commit(out) : AR_OK;
  err = ar_error_agree(out->comm, err);
  if (!err && out->rank == 0 && remove_tree(out->stage) != 0)
    fprintf(stderr, "attnreg: warning: could not remove %s\n", out->stage);
  if (!err) out->stage[0] = '\0';
  return err;
}

void ar_out_abort(ar_out *out)
{
  if (out->rank != 0) return;
  if (out->stage[0] && remove_tree(out->stage) != 0)
    fprintf(stderr, "attnreg: warning: could not remove %s\n", out->stage);
  out->stage[0] = '\0';
  /* the parents of OUT that ar_out_begin made (rmdir: only if still empty) */
  char p[PATH_CAP];
  snprintf(p, sizeof p, "%s", out->target);
  for (int i = 0; i < out->ncreated; i++) {
    char *slash = strrchr(p, '/');
    if (!slash || slash == p) break;
    *slash = '\0';
    if (rmdir(p) != 0) break;
  }
  out->ncreated = 0;
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
