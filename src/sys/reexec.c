/* Running this program again with another OPENBLAS_CORETYPE: a child to try a core, execv to
 * use it (reexec.h). */
#include "reexec.h"

#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blas.h"
#include "error.h"

extern char **environ;

int ar_run_self(const char *coretype, char *const args[], char *out, size_t cap, int *status)
{
  size_t n = 0;
  while (environ[n]) n++;
  char **env = calloc(n + 2, sizeof(char *)), var[96];
  AR_CHECK(env, AR_ERR_MEM, "out of memory");
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "OPENBLAS_CORETYPE=", 18)) env[k++] = environ[i];
  if (coretype) snprintf(var, sizeof var, "OPENBLAS_CORETYPE=%s", coretype), env[k++] = var;
  int fd[2], st = 0;
  pid_t pid;
  if (pipe(fd)) {
    free(env);
    return AR_ERROR(AR_ERR_INTERNAL, "pipe: %s", strerror(errno));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addclose(&fa, fd[0]);
  posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fd[1], 2);
  posix_spawn_file_actions_addclose(&fa, fd[1]);
  int err = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, args, env);
  posix_spawn_file_actions_destroy(&fa);
  free(env);
  close(fd[1]);
  /* Read to the end (beyond cap, into a scratch buffer): a child blocked on a full pipe would
   * never exit. */
  size_t len = 0;
  ssize_t r;
  char scratch[512];
  while ((r = len < cap - 1 ? read(fd[0], out + len, cap - 1 - len) : read(fd[0], scratch, sizeof scratch)) > 0 ||
         (r < 0 && errno == EINTR))
    if (r > 0 && len < cap - 1) len += (size_t)r;
  out[len] = '\0';
  close(fd[0]);
  if (err) return AR_ERROR(AR_ERR_INTERNAL, "cannot start /proc/self/exe: %s", strerror(err));
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return AR_OK;
}

const char *ar_child_reason(int status, char *out)
{
  static char why[512];
  char *e = NULL, *p = out;
  while ((p = strstr(p, "error: "))) e = p += 7;
  if (e) {
    e[strcspn(e, "\n")] = '\0';
    snprintf(why, sizeof why, "%s", e);
  } else if (status > 128) {
    snprintf(why, sizeof why, "killed by signal %d (%s)", status - 128, strsignal(status - 128));
  } else {
    snprintf(why, sizeof why, "exit status %d", status);
  }
  return why;
}

int ar_core_check(const char *core)
{
  char out[8192];
  char *args[] = {"attnreg", "blas", "--check", NULL};
  int st;
  AR_CALL(ar_run_self(core, args, out, sizeof out, &st));
  AR_CHECK(st == 0, AR_ERR_LIB, "OPENBLAS_CORETYPE=%s failed the self-check (%s)", core, ar_child_reason(st, out));
  return AR_OK;
}

void ar_reexec_blas(char **argv)
{
  const char *set = getenv("OPENBLAS_CORETYPE"), *off = getenv("ATTNREG_NO_REEXEC");
  if ((set && *set) || getenv("ATTNREG_REEXEC") || (off && *off && strcmp(off, "0"))) return;
  ar_blas_info b;
  ar_blas_info_get(&b);
  if (!b.fit) return;
  if (ar_core_check(b.fit) == AR_OK) {
    char marker[64];
    snprintf(marker, sizeof marker, "from-%s", b.core);
    if (!setenv("OPENBLAS_CORETYPE", b.fit, 1) && !setenv("ATTNREG_REEXEC", marker, 1)) execv("/proc/self/exe", argv);
    AR_ERROR(AR_ERR_INTERNAL, "cannot re-execute /proc/self/exe with OPENBLAS_CORETYPE=%s: %s", b.fit, strerror(errno));
    unsetenv("OPENBLAS_CORETYPE"), unsetenv("ATTNREG_REEXEC");
  }
  /* Not an error of the command: its message goes to the warning, and the command starts clean. */
  ar_blas_set_refused(ar_error_message());
  ar_error_clear();
}
