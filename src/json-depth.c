/* A bound on JSON nesting, checked before untrusted text reaches json-glib,
 * whose parser recurses once per level: about 80,000 levels of [[[...]]]
 * (a 165 KB file) overflow the stack.  docs/model-format.md records the
 * limit. */
#include "vmoe-private.h"

#include <string.h>

gboolean
vmoe_json_depth_within_limit (const char *text, gssize length)
{
  gsize n = length < 0 ? strlen (text) : (gsize) length;
  int depth = 0;
  gboolean in_string = FALSE;
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
      if (++depth > VMOE_JSON_MAX_DEPTH)
        return FALSE;
    } else if (ch == ']' || ch == '}') {
      depth--;                /* unbalanced text is the parser's to report */
    }
  }
  return TRUE;
}
