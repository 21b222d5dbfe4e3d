/* Bounds on untrusted JSON, checked before the text reaches json-glib.  Its
 * parser recurses once per level of nesting (about 80,000 levels of
 * [[[...]]], a 165 KB file, overflow the stack) and builds a node of about
 * 80 bytes per value (a 20 MB array of zeros took 820 MB and 17 s).
 * docs/model-format.md records the limits. */
#include "vmoe-private.h"

#include <string.h>

void
vmoe_json_measure (const char *text, gssize length, VmoeJsonSize *size)
{
  gsize n = length < 0 ? strlen (text) : (gsize) length;
  int depth = 0;
  gboolean in_string = FALSE;
  size->depth = 0;
  size->values = 1;
  for (gsize i = 0; i < n; i++) {
    char ch = text[i];
    if (in_string) {
      if (ch == '\\')
        i++;                  /* the escaped character cannot end the string */
      else if (ch == '"')
        in_string = FALSE;
    } else if (ch == '"') {
      in_string = TRUE;
    } else if (ch == '[' || ch == '{') {
      depth++;
      size->depth = MAX (size->depth, depth);
      size->values++;
    } else if (ch == ']' || ch == '}') {
      depth--;                /* unbalanced text is the parser's to report */
    } else if (ch == ',') {
      size->values++;
    }
  }
}
