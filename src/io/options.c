#include "options.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnreg.h"
#include "error.h"
#include "output.h"

/* Position of v in the '|'-separated list, or -1. */
static int choice_index(const char *choices, const char *v)
{
  size_t len = strlen(v);
  int idx = 0;
  for (const char *c = choices; *c; idx++) {
    const char *bar = strchr(c, '|');
    size_t l = bar ? (size_t)(bar - c) : strlen(c);
    if (l == len && strncmp(c, v, l) == 0) return idx;
    if (!bar) break;
    c = bar + 1;
  }
  return -1;
}

/* The enum value whose name is v (name_of is NULL past the last value). */
static int choice_value(const ar_option *o, const char *v)
{
  for (int k = 0; k < 1024 && o->name_of(k); k++)
    if (!strcmp(o->name_of(k), v)) return k;
  return -1;
}

static int set_value(const ar_option *o, const char *v)
{
  char *end;
  switch (o->kind) {
  case AR_OPT_FLAG: *(int *)o->dest = 1; return AR_OK;
  case AR_OPT_STRING:
    AR_CHECK(*v, AR_ERR_USAGE, "--%s: empty value", o->name);
    *(const char **)o->dest = v;
    return AR_OK;
  case AR_OPT_INT:
    if (o->choices && !strcmp(v, o->choices)) return *(int *)o->dest = 0, AR_OK;
    /* fall through */
  case AR_OPT_INT64: {
    errno = 0;
    long long x = strtoll(v, &end, 10);
    AR_CHECK(*v && !*end && !errno, AR_ERR_USAGE, "--%s: expected an integer%s%s, got '%s'", o->name,
             o->kind == AR_OPT_INT && o->choices ? " or " : "", o->kind == AR_OPT_INT && o->choices ? o->choices : "", v);
    AR_CHECK(x >= o->min, AR_ERR_USAGE, "--%s: must be >= %.0f, got %s", o->name, o->min, v);
    AR_CHECK(o->kind == AR_OPT_INT64 || x <= 2147483647LL, AR_ERR_USAGE, "--%s: %s is too large", o->name, v);
    if (o->kind == AR_OPT_INT) *(int *)o->dest = (int)x;
    else *(int64_t *)o->dest = x;
    return AR_OK;
  }
  case AR_OPT_DOUBLE: {
    errno = 0;
    double x = strtod(v, &end);
    AR_CHECK(*v && !*end && !errno && isfinite(x), AR_ERR_USAGE, "--%s: expected a finite number, got '%s'", o->name, v);
    AR_CHECK(o->strict ? x > o->min : x >= o->min, AR_ERR_USAGE, "--%s: must be %s %g, got %s", o->name,
             o->strict ? ">" : ">=", o->min, v);
    *(double *)o->dest = x;
    return AR_OK;
  }
  case AR_OPT_CHOICE: {
    int k = choice_index(o->choices, v) >= 0 ? choice_value(o, v) : -1;
    AR_CHECK(k >= 0, AR_ERR_USAGE, "--%s: '%s' is not one of %s", o->name, v, o->choices);
    *(int *)o->dest = k;
    return AR_OK;
  }
  case AR_OPT_GRID: {
    int a = 0, b = 0, used = 0;
    AR_CHECK(sscanf(v, "%dx%d%n", &a, &b, &used) == 2 && v[used] == '\0' && a > 0 && b > 0, AR_ERR_USAGE,
             "--%s: expected PRxPC with positive integers (e.g. 2x2), got '%s'", o->name, v);
    ((int *)o->dest)[0] = a, ((int *)o->dest)[1] = b;
    return AR_OK;
  }
  }
  return AR_ERROR(AR_ERR_INTERNAL, "option kind");
}

int ar_options_parse(const ar_option *opts, int nopts, int argc, char **argv, int first, int *help)
{
  *help = 0;
  for (int a = first; a < argc; a++)
    if (!strcmp(argv[a], "--help") || !strcmp(argv[a], "-h")) *help = 1;
  if (*help) return AR_OK;
  for (int a = first; a < argc; a++) {
    const char *arg = argv[a];
    AR_CHECK(arg[0] == '-' && arg[1] == '-', AR_ERR_USAGE, "unexpected argument '%s' (options start with --)", arg);
    const char *name = arg + 2, *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    const ar_option *o = NULL;
    for (int i = 0; i < nopts; i++)
      if (strlen(opts[i].name) == len && !strncmp(opts[i].name, name, len)) o = &opts[i];
    AR_CHECK(o, AR_ERR_USAGE, "unknown option '--%.*s' (see --help)", (int)len, name);
    const char *v = NULL;
    if (o->kind == AR_OPT_FLAG) {
      AR_CHECK(!eq, AR_ERR_USAGE, "--%s takes no value", o->name);
    } else if (eq) {
      v = eq + 1;
    } else {
      AR_CHECK(a + 1 < argc, AR_ERR_USAGE, "--%s needs a value", o->name);
      v = argv[++a];
    }
    AR_CALL(set_value(o, v ? v : "1"));
  }
  return AR_OK;
}

static void format_value(const ar_option *o, char *buf, size_t cap)
{
  switch (o->kind) {
  case AR_OPT_FLAG: snprintf(buf, cap, "%s", *(int *)o->dest ? "true" : "false"); break;
  case AR_OPT_STRING: {
    const char *s = *(const char **)o->dest;
    snprintf(buf, cap, "%s", s ? s : "");
    break;
  }
  case AR_OPT_INT:
    if (o->choices && *(int *)o->dest == 0) snprintf(buf, cap, "%s", o->choices);
    else snprintf(buf, cap, "%d", *(int *)o->dest);
    break;
  case AR_OPT_INT64: snprintf(buf, cap, "%lld", (long long)*(int64_t *)o->dest); break;
  case AR_OPT_DOUBLE: snprintf(buf, cap, "%.17g", *(double *)o->dest); break;
  case AR_OPT_CHOICE: {
    const char *name = o->name_of(*(int *)o->dest);
    snprintf(buf, cap, "%s", name ? name : "?");
    break;
  }
  case AR_OPT_GRID: {
    int *g = o->dest;
    if (g[0]) snprintf(buf, cap, "%dx%d", g[0], g[1]);
    else snprintf(buf, cap, "auto");
    break;
  }
  }
}

/* The value of an option as --help shows its default: "" for none. */
static void format_default(const ar_option *o, char *buf, size_t cap)
{
  int zero = 0;
  switch (o->kind) {
  case AR_OPT_FLAG: buf[0] = '\0'; return;
  case AR_OPT_STRING: zero = *(const char **)o->dest == NULL; break;
  case AR_OPT_INT: zero = *(int *)o->dest == 0; break;
  case AR_OPT_INT64: zero = *(int64_t *)o->dest == 0; break;
  case AR_OPT_DOUBLE: zero = *(double *)o->dest == 0; break;
  case AR_OPT_GRID: zero = ((int *)o->dest)[0] == 0; break;
  case AR_OPT_CHOICE: break;
  }
  if (zero) snprintf(buf, cap, "%s", o->unset ? o->unset : "");
  else if (o->kind == AR_OPT_DOUBLE) snprintf(buf, cap, "%g", *(double *)o->dest);
  else format_value(o, buf, cap);
}

void ar_options_print_help(FILE *f, const char *usage, const ar_option *opts, int nopts)
{
  fprintf(f, "%s\n\nOptions:\n", usage);
  for (int i = 0; i < nopts; i++) {
    const ar_option *o = &opts[i];
    const char *meta = o->kind == AR_OPT_FLAG                              ? ""
                       : o->kind == AR_OPT_INT || o->kind == AR_OPT_INT64 ? " N"
                       : o->kind == AR_OPT_DOUBLE                          ? " X"
                       : o->kind == AR_OPT_GRID                            ? " PRxPC"
                       : o->kind == AR_OPT_CHOICE                          ? " CHOICE"
                                                                           : " VALUE";
    char left[64], def[4200];
    snprintf(left, sizeof left, "--%s%s", o->name, meta);
    fprintf(f, "  %-24s %s", left, o->help);
    if (o->kind == AR_OPT_CHOICE) fprintf(f, " (%s)", o->choices);
    format_default(o, def, sizeof def);
    if (def[0]) fprintf(f, " [default: %s]", def);
    fprintf(f, "\n");
  }
  fprintf(f, "  %-24s %s\n", "--help", "print this help and exit");
}

void ar_options_print_config(FILE *f, const char *prefix, const ar_option *opts, int nopts)
{
  char buf[4200];
  for (int i = 0; i < nopts; i++) {
    format_value(&opts[i], buf, sizeof buf);
    fprintf(f, "%s%-16s = %s\n", prefix, opts[i].name, buf);
  }
}

void ar_options_write_json(FILE *f, const ar_option *opts, int nopts, const char *indent)
{
  char buf[4200];
  for (int i = 0; i < nopts; i++) {
    format_value(&opts[i], buf, sizeof buf);
    int numeric = opts[i].kind == AR_OPT_INT64 || opts[i].kind == AR_OPT_DOUBLE ||
                  (opts[i].kind == AR_OPT_INT && !(opts[i].choices && *(int *)opts[i].dest == 0));
    int boolean = opts[i].kind == AR_OPT_FLAG;
    fprintf(f, "%s\"%s\": ", indent, opts[i].name);
    if (numeric || boolean) fprintf(f, "%s", buf);
    else ar_json_string(f, buf);
    fprintf(f, "%s\n", i + 1 < nopts ? "," : "");
  }
}
