/* GstVmoeMeta's API type exists as soon as the meta library is loaded into
 * an initialised GStreamer, before any element or call has asked for it:
 * the way PyGObject loads it for the typelib.  This program does not link
 * the library; it opens the file given as its argument. */
#include <gmodule.h>
#include <gst/gst.h>

int
main (int argc, char **argv)
{
  gst_init (&argc, &argv);
  if (argc != 2) {
    g_printerr ("usage: %s LIBGSTVMOEMETA\n", argv[0]);
    return 2;
  }
  if (g_type_from_name ("GstVmoeMetaAPI") != 0) {
    g_printerr ("FAIL: GstVmoeMetaAPI exists before the library is loaded\n");
    return 1;
  }
  GModule *library = g_module_open (argv[1], G_MODULE_BIND_LOCAL);
  if (!library) {
    g_printerr ("FAIL: %s\n", g_module_error ());
    return 1;
  }
  GType api = g_type_from_name ("GstVmoeMetaAPI");
  if (api == 0) {
    g_printerr ("FAIL: loading %s did not register GstVmoeMetaAPI\n", argv[1]);
    return 1;
  }
  /* A registered meta API, without tags, and the one the library returns. */
  if (gst_meta_api_type_get_tags (api) != NULL
      || gst_meta_api_type_has_tag (api, g_quark_from_string (GST_META_TAG_MEMORY_STR))) {
    g_printerr ("FAIL: GstVmoeMetaAPI has tags\n");
    return 1;
  }
  GType (*api_get_type) (void) = NULL;
  if (!g_module_symbol (library, "gst_vmoe_meta_api_get_type", (gpointer *) &api_get_type)
      || api_get_type () != api) {
    g_printerr ("FAIL: gst_vmoe_meta_api_get_type disagrees with the registered type\n");
    return 1;
  }
  g_print ("GstVmoeMetaAPI registered at load: %s\n", g_type_name (api));
  /* Not closed: a library that registered a static type stays resident. */
  return 0;
}
