/* Names of the enums generated from their X-macro lists (include/attnreg.h): options,
 * outputs and checkpoints all go through these, so a name cannot drift from its value. */
#include "attnreg.h"

const char *ar_reason_name(ar_reason r)
{
  switch (r) {
#define AR_REASON_CASE(name, text, conv) case name: return text;
    AR_REASON_MAP(AR_REASON_CASE)
#undef AR_REASON_CASE
  }
  return "UNKNOWN";
}

int ar_reason_converged(ar_reason r)
{
  switch (r) {
#define AR_REASON_CASE(name, text, conv) case name: return conv;
    AR_REASON_MAP(AR_REASON_CASE)
#undef AR_REASON_CASE
  }
  return 0;
}

/* The enums whose list gives X(name, value, text): one function each. */
#define AR_VALUE_NAME(name, value, text) \
  case name:                             \
    return text;
#define AR_NAME_FUNCTION(fn, MAP)        \
  const char *fn(int v)                  \
  {                                      \
    switch (v) { MAP(AR_VALUE_NAME) }    \
    return NULL;                         \
  }

AR_NAME_FUNCTION(ar_hessian_name, AR_HESSIAN_MAP)
AR_NAME_FUNCTION(ar_method_name, AR_METHOD_MAP)
AR_NAME_FUNCTION(ar_linear_solver_name, AR_LINSOLVE_MAP)
AR_NAME_FUNCTION(ar_shift_name, AR_SHIFT_MAP)
