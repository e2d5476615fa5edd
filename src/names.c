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

const char *ar_hessian_name(int kind)
{
  switch (kind) {
#define AR_HESS_CASE(name, value, text) case name: return text;
    AR_HESSIAN_MAP(AR_HESS_CASE)
#undef AR_HESS_CASE
  }
  return NULL;
}

const char *ar_method_name(int method)
{
  switch (method) {
#define AR_METHOD_CASE(name, value, text) case name: return text;
    AR_METHOD_MAP(AR_METHOD_CASE)
#undef AR_METHOD_CASE
  }
  return NULL;
}

const char *ar_linear_solver_name(int ls)
{
  switch (ls) {
#define AR_LINSOLVE_CASE(name, value, text) case name: return text;
    AR_LINSOLVE_MAP(AR_LINSOLVE_CASE)
#undef AR_LINSOLVE_CASE
  }
  return NULL;
}

const char *ar_shift_name(int kind)
{
  switch (kind) {
#define AR_SHIFT_CASE(name, value, text) case name: return text;
    AR_SHIFT_MAP(AR_SHIFT_CASE)
#undef AR_SHIFT_CASE
  }
  return NULL;
}
