/* Command-line options: one table per subcommand (name, kind, destination, default, help).
 * Parsing is deterministic on the same argv, so every rank reaches the same verdict without
 * communication; only rank 0 prints.  (STYLE.md "Options, output, timing".) */
#ifndef AR_OPTIONS_H
#define AR_OPTIONS_H

#include <stdio.h>
#include <stdint.h>

typedef enum {
  AR_OPT_FLAG,     /* int: set to 1 */
  AR_OPT_INT,      /* int64_t, with min (inclusive) */
  AR_OPT_DOUBLE,   /* double, with min; strict = value must be > min */
  AR_OPT_STRING,   /* const char * */
  AR_OPT_CHOICE,   /* int index into the '|'-separated list in choices */
  AR_OPT_GRID      /* int[2] from "PRxPC" */
} ar_opt_kind;

typedef struct {
  const char *name;    /* without the leading "--" */
  ar_opt_kind kind;
  void *dest;
  const char *def;     /* default as text (applied before parsing; NULL = unset) */
  const char *help;
  double min;          /* INT/DOUBLE: smallest allowed value */
  int strict;          /* DOUBLE: value must be > min (not >=) */
  const char *choices; /* CHOICE: "exact|gauss-newton" */
} ar_option;

/* Apply defaults, then parse argv[first..argc).  Returns AR_OK, or AR_ERR_USAGE with the
 * message naming the option and the value.  *help is set to 1 by --help / -h. */
int ar_options_parse(const ar_option *opts, int nopts, int argc, char **argv, int first, int *help);
/* Print "  --name VALUE   help (default: ...)" for every option. */
void ar_options_print_help(FILE *f, const char *usage, const ar_option *opts, int nopts);
/* Print the effective configuration, one "name = value" per line, prefixed. */
void ar_options_print_config(FILE *f, const char *prefix, const ar_option *opts, int nopts);
/* Write the effective configuration as JSON object members ("name": value, ...). */
void ar_options_write_json(FILE *f, const ar_option *opts, int nopts, const char *indent);

#endif
