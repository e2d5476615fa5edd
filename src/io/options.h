/* Command-line options: one table per subcommand (name, kind, destination, help).
 *
 * The destination holds the default before parsing: the caller fills it from the library's
 * *_default function (ar_solver_options_default, ar_eval_options_default, ...), so a default
 * is written in one place and --help prints what the library will use.  Parsing checks the
 * syntax (and an option's smallest value); the library validates the meaning of the values
 * (ar_solver_options_check, ...).  Parsing is deterministic on the same argv, so every rank
 * reaches the same verdict without communication; only rank 0 prints.  (STYLE.md "Options".) */
#ifndef AR_OPTIONS_H
#define AR_OPTIONS_H

#include <stdio.h>
#include <stdint.h>

typedef enum {
  AR_OPT_FLAG,     /* int: set to 1 */
  AR_OPT_INT,      /* int */
  AR_OPT_INT64,    /* int64_t */
  AR_OPT_DOUBLE,   /* double */
  AR_OPT_STRING,   /* const char * */
  AR_OPT_CHOICE,   /* int: an enum value, one of the names in choices, as name_of names them */
  AR_OPT_GRID      /* int[2] from "PRxPC" (0x0: automatic) */
} ar_opt_kind;

typedef struct {
  const char *name;    /* without the leading "--" */
  ar_opt_kind kind;
  void *dest;          /* holds the default before parsing */
  const char *help;
  const char *unset;   /* how --help shows a default of 0 / NULL ("auto", "zeros", ...); NULL: none */
  double min;          /* INT, INT64, DOUBLE: smallest value accepted */
  int strict;          /* DOUBLE: the value must be > min (not >=) */
  const char *choices; /* CHOICE: the accepted names, "auto|exact|gauss-newton"; INT: a word that
                        * also stands for 0 ("auto"), shown for 0 */
  const char *(*name_of)(int); /* CHOICE: the enum's names (an X-macro's; NULL past the last) */
} ar_option;

/* Parse argv[first..argc) into the destinations.  Returns AR_OK, or AR_ERR_USAGE with the
 * message naming the option and the value.  With --help / -h anywhere, *help = 1 and nothing
 * is changed (so the help shows the defaults). */
int ar_options_parse(const ar_option *opts, int nopts, int argc, char **argv, int first, int *help);
/* Print "  --name VALUE   help [default: ...]" for every option. */
void ar_options_print_help(FILE *f, const char *usage, const ar_option *opts, int nopts);
/* Print the effective configuration, one "name = value" per line, prefixed. */
void ar_options_print_config(FILE *f, const char *prefix, const ar_option *opts, int nopts);
/* Write the effective configuration as JSON object members ("name": value, ...). */
void ar_options_write_json(FILE *f, const ar_option *opts, int nopts, const char *indent);

#endif
