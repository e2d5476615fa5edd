#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AR_MSG_MAX 1024

static char g_msg[AR_MSG_MAX];
static int g_code;

int ar_error_set(int code, const char *file, int line, const char *func, const char *fmt, ...)
{
  if (g_code) return code;
  g_code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_msg, sizeof g_msg, fmt, ap);
  va_end(ap);
  /* A single line, always: a newline in a path or a library message must not split it. */
  for (char *c = g_msg; *c; c++)
    if (*c == '\n' || *c == '\r') *c = ' ';
  if (getenv("ATTNREG_DEBUG")) fprintf(stderr, "attnreg: debug: %s:%d (%s): %s\n", file, line, func, g_msg);
  return code;
}

const char *ar_error_message(void) { return g_msg; }

void ar_error_clear(void)
{
  g_code = 0;
  g_msg[0] = '\0';
}

int ar_error_agree(MPI_Comm comm, int err)
{
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int mine = err ? rank : size, first;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
  if (first == size) return AR_OK;
  int code = err;
  MPI_Bcast(&code, 1, MPI_INT, first, comm);
  char msg[AR_MSG_MAX];
  if (rank == first) memcpy(msg, g_msg, sizeof msg);
  MPI_Bcast(msg, AR_MSG_MAX, MPI_CHAR, first, comm);
  g_code = code;
  memcpy(g_msg, msg, sizeof msg);
  return code;
}

const char *ar_error_name(int code)
{
  switch (code) {
#define AR_ERR_CASE(name, status, text) case name: return text;
    AR_ERROR_MAP(AR_ERR_CASE)
#undef AR_ERR_CASE
  }
  return "unknown error";
}

int ar_error_exit_status(int code)
{
  switch (code) {
#define AR_ERR_CASE(name, status, text) case name: return status;
    AR_ERROR_MAP(AR_ERR_CASE)
#undef AR_ERR_CASE
  }
  return 1;
}
