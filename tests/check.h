/* The check macro of the test programs that run without MPI (testutil.h is the MPI tests'). */
#ifndef AR_CHECK_TESTS_H
#define AR_CHECK_TESTS_H

#include <stdio.h>

static int failures;

#define CHECK(cond, ...)                                        \
  do {                                                          \
    if (!(cond)) {                                              \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
      fprintf(stderr, __VA_ARGS__);                             \
      fprintf(stderr, "\n");                                    \
      failures++;                                               \
    }                                                           \
  } while (0)

#endif
