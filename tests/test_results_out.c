/* vmoemetaconvert and vmoemetapublish in-process (GstHarness), so that
 * their C code runs under ASan, UBSan and the leaks tracer: what the
 * Python tests (test_metaconvert.py, test_metapublish.py) cannot load.
 * Also the one case they cannot build: an ROI whose token routing
 * statistics come from the GstVmoeMeta with its roi_id.
 *
 *   test_results_out PLUGIN.so */
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <gst/video/video.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

#include "gstvmoejsonmeta.h"
#include "gstvmoemeta.h"

#define CAPS "video/x-raw,format=RGB,width=64,height=48,framerate=30/1"

/* A meta with token routing: two blocks of three experts. */
static void
fill_token_meta (GstVmoeMeta *m, gint roi_id)
{
  static const guint counts[2][3] = { { 4, 0, 7 }, { 1, 2, 3 } };
  m->roi_id = roi_id;
  m->class_id = 2;
  m->label = g_strdup ("coat");
  m->score = 0.5f;
  m->model_name = g_strdup ("token-model");
  m->n_layers = 2;
  m->layers = g_new0 (GstVmoeLayerStats, 2);
  for (guint l = 0; l < 2; l++) {
    m->layers[l].block = 3 + (gint) l;
    m->layers[l].n_experts = 3;
    m->layers[l].tokens_per_expert = g_memdup2 (counts[l], sizeof counts[l]);
    m->layers[l].dropped = 5 * (gint) l;
  }
}

static JsonObject *
pull_json (GstHarness *h, JsonNode **root)
{
  GstBuffer *out = gst_harness_pull (h);
  GstVmoeJsonMeta *jm = gst_buffer_get_vmoe_json_meta (out);
  fail_unless (jm != NULL);
  GError *error = NULL;
  *root = json_from_string (jm->message, &error);
  fail_unless (*root != NULL, "%s", error ? error->message : "");
  gst_buffer_unref (out);
  return json_node_get_object (*root);
}

/* "[a, b, c]" of a JSON array of integers. */
static gchar *
ints_text (JsonArray *a)
{
  GString *s = g_string_new ("[");
  for (guint i = 0; i < json_array_get_length (a); i++)
    g_string_append_printf (s, "%s%" G_GINT64_FORMAT, i ? ", " : "",
        json_array_get_int_element (a, i));
  g_string_append_c (s, ']');
  return g_string_free (s, FALSE);
}

static void
check_layers (JsonObject *attr)
{
  JsonArray *layers = json_object_get_array_member (attr, "layers");
  fail_unless_equals_int (json_array_get_length (layers), 2);
  const gchar *want[] = { "[4, 0, 7]", "[1, 2, 3]" };
  for (guint l = 0; l < 2; l++) {
    JsonObject *layer = json_array_get_object_element (layers, l);
    fail_unless_equals_int (json_object_get_int_member (layer, "block"), 3 + l);
    fail_unless_equals_int (json_object_get_int_member (layer, "dropped"), 5 * l);
    gchar *got = ints_text (json_object_get_array_member (layer, "tokens_per_expert"));
    fail_unless_equals_string (got, want[l]);
    g_free (got);
  }
}

GST_START_TEST (test_full_frame_token_routing)
{
  GstHarness *h = gst_harness_new_parse ("vmoemetaconvert source=s tags={\"k\":[1]}");
  gst_harness_set_src_caps_str (h, CAPS);
  GstBuffer *buf = gst_buffer_new_allocate (NULL, 64 * 48 * 3, NULL);
  GST_BUFFER_PTS (buf) = 5 * GST_SECOND;
  fill_token_meta (gst_buffer_add_vmoe_meta (buf), -1);
  fail_unless_equals_int (gst_harness_push (h, buf), GST_FLOW_OK);
  JsonNode *root;
  JsonObject *o = pull_json (h, &root);
  fail_unless_equals_int64 (json_object_get_int_member (o, "timestamp"), 5 * GST_SECOND);
  fail_unless_equals_string (json_object_get_string_member (o, "source"), "s");
  JsonObject *res = json_object_get_object_member (o, "resolution");
  fail_unless_equals_int (json_object_get_int_member (res, "width"), 64);
  fail_unless_equals_int (json_object_get_int_member (res, "height"), 48);
  JsonArray *tags_k = json_object_get_array_member (json_object_get_object_member (o, "tags"), "k");
  fail_unless_equals_int (json_array_get_int_element (tags_k, 0), 1);
  JsonArray *objects = json_object_get_array_member (o, "objects");
  fail_unless_equals_int (json_array_get_length (objects), 1);
  JsonObject *box = json_array_get_object_element (objects, 0);
  fail_unless_equals_int (json_object_get_int_member (box, "w"), 64);
  fail_unless_equals_int (json_object_get_int_member (box, "h"), 48);
  JsonObject *attr = json_object_get_object_member (box, "vmoe");
  fail_unless_equals_string (json_object_get_string_member (attr, "label"), "coat");
  fail_unless_equals_int (json_object_get_int_member (attr, "label_id"), 2);
  fail_unless_equals_float (json_object_get_double_member (attr, "confidence"), 0.5);
  fail_unless_equals_string (json_object_get_string_member (
          json_object_get_object_member (attr, "model"), "name"), "token-model");
  fail_if (json_object_has_member (attr, "experts"));
  check_layers (attr);
  json_node_unref (root);
  gst_harness_teardown (h);
}
GST_END_TEST;

GST_START_TEST (test_roi_layers_from_its_meta)
{
  GstHarness *h = gst_harness_new_parse ("vmoemetaconvert");
  gst_harness_set_src_caps_str (h, CAPS);
  GstBuffer *buf = gst_buffer_new_allocate (NULL, 64 * 48 * 3, NULL);
  GST_BUFFER_PTS (buf) = 0;
  /* Two ROIs; the classified one (id 7) has its param and a GstVmoeMeta,
   * and a meta for another id must not be taken. */
  GstVideoRegionOfInterestMeta *other = gst_buffer_add_video_region_of_interest_meta (buf,
      "car", 1, 1, 5, 5);
  other->id = 6;
  GstVideoRegionOfInterestMeta *roi = gst_buffer_add_video_region_of_interest_meta (buf,
      "person", 8, 9, 10, 11);
  roi->id = 7;
  gst_video_region_of_interest_meta_add_param (roi, gst_structure_new ("vmoe",
          "label", G_TYPE_STRING, "coat", "label_id", G_TYPE_INT, 2,
          "confidence", G_TYPE_DOUBLE, 0.25, NULL));
  fill_token_meta (gst_buffer_add_vmoe_meta (buf), 7);
  GstVmoeMeta *wrong = gst_buffer_add_vmoe_meta (buf);
  fill_token_meta (wrong, 99);
  wrong->layers[0].dropped = 1000;
  fail_unless_equals_int (gst_harness_push (h, buf), GST_FLOW_OK);
  JsonNode *root;
  JsonObject *o = pull_json (h, &root);
  JsonArray *objects = json_object_get_array_member (o, "objects");
  fail_unless_equals_int (json_array_get_length (objects), 2);
  JsonObject *unclassified = json_array_get_object_element (objects, 0);
  fail_unless_equals_int (json_object_get_int_member (unclassified, "id"), 6);
  fail_if (json_object_has_member (unclassified, "vmoe"));
  JsonObject *box = json_array_get_object_element (objects, 1);
  fail_unless_equals_int (json_object_get_int_member (box, "id"), 7);
  fail_unless_equals_string (json_object_get_string_member (box, "roi_type"), "person");
  fail_unless_equals_int (json_object_get_int_member (box, "x"), 8);
  fail_unless_equals_int (json_object_get_int_member (box, "h"), 11);
  JsonObject *attr = json_object_get_object_member (box, "vmoe");
  fail_unless_equals_float (json_object_get_double_member (attr, "confidence"), 0.25);
  check_layers (attr);
  json_node_unref (root);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Converter and file publisher in one harness: the file is one JSON array
 * of the frames' objects once the stream ends. */
GST_START_TEST (test_publish_file_json)
{
  gchar *path = g_build_filename (g_get_tmp_dir (), "vmoe-results-out-XXXXXX", NULL);
  gint fd = g_mkstemp (path);
  fail_unless (fd >= 0);
  close (fd);
  gchar *launch = g_strdup_printf ("vmoemetaconvert add-empty-results=true json-indent=2 ! "
      "vmoemetapublish file-path=%s", path);
  GstHarness *h = gst_harness_new_parse (launch);
  gst_harness_set_src_caps_str (h, CAPS);
  for (gint i = 0; i < 3; i++) {
    GstBuffer *buf = gst_buffer_new_allocate (NULL, 64 * 48 * 3, NULL);
    GST_BUFFER_PTS (buf) = (GstClockTime) i * GST_SECOND;
    fail_unless_equals_int (gst_harness_push (h, buf), GST_FLOW_OK);
    gst_buffer_unref (gst_harness_pull (h));
  }
  fail_unless (gst_harness_push_event (h, gst_event_new_eos ()));
  gchar *text = NULL;
  fail_unless (g_file_get_contents (path, &text, NULL, NULL));
  JsonNode *root = json_from_string (text, NULL);
  fail_unless (root && JSON_NODE_HOLDS_ARRAY (root), "%s", text);
  JsonArray *a = json_node_get_array (root);
  fail_unless_equals_int (json_array_get_length (a), 3);
  for (guint i = 0; i < 3; i++)
    fail_unless_equals_int64 (json_object_get_int_member (
            json_array_get_object_element (a, i), "timestamp"), i * GST_SECOND);
  json_node_unref (root);
  g_free (text);
  gst_harness_teardown (h);
  g_unlink (path);
  g_free (launch);
  g_free (path);
}
GST_END_TEST;

/* No broker on the port: pushing never blocks, the queue keeps the newest
 * max-queue-size messages, and everything counts as dropped at stop. */
GST_START_TEST (test_publish_mqtt_without_broker)
{
  GSocket *probe = g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
      G_SOCKET_PROTOCOL_TCP, NULL);
  GInetAddress *lo = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  GSocketAddress *any = g_inet_socket_address_new (lo, 0);
  fail_unless (g_socket_bind (probe, any, TRUE, NULL));
  GSocketAddress *bound = g_socket_get_local_address (probe, NULL);
  guint port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
  g_object_unref (bound);
  g_object_unref (any);
  g_object_unref (lo);
  g_object_unref (probe);     /* closed: nothing listens there now */

  gchar *launch = g_strdup_printf ("vmoemetaconvert add-empty-results=true ! "
      "vmoemetapublish name=pub method=mqtt address=127.0.0.1:%u max-queue-size=4", port);
  GstHarness *h = gst_harness_new_parse (launch);
  gst_harness_set_src_caps_str (h, CAPS);
  for (gint i = 0; i < 20; i++) {
    GstBuffer *buf = gst_buffer_new_allocate (NULL, 64 * 48 * 3, NULL);
    GST_BUFFER_PTS (buf) = (GstClockTime) i * GST_SECOND;
    fail_unless_equals_int (gst_harness_push (h, buf), GST_FLOW_OK);
    gst_buffer_unref (gst_harness_pull (h));
  }
  GstElement *pub = gst_bin_get_by_name (GST_BIN (h->element), "pub");
  guint64 dropped = 0;
  g_object_get (pub, "dropped", &dropped, NULL);
  fail_unless_equals_uint64 (dropped, 16);
  gst_element_set_state (h->element, GST_STATE_NULL);
  g_object_get (pub, "dropped", &dropped, NULL);
  fail_unless_equals_uint64 (dropped, 20);
  gst_object_unref (pub);
  gst_harness_teardown (h);
  g_free (launch);
}
GST_END_TEST;

static Suite *
results_out_suite (void)
{
  Suite *s = suite_create ("results-out");
  TCase *tc = tcase_create ("general");
  tcase_add_test (tc, test_full_frame_token_routing);
  tcase_add_test (tc, test_roi_layers_from_its_meta);
  tcase_add_test (tc, test_publish_file_json);
  tcase_add_test (tc, test_publish_mqtt_without_broker);
  suite_add_tcase (s, tc);
  return s;
}

int
main (int argc, char **argv)
{
  if (argc != 2) {
    g_printerr ("usage: test_results_out PLUGIN.so\n");
    return 1;
  }
  gst_check_init (NULL, NULL);
  GError *error = NULL;
  GstPlugin *plugin = gst_plugin_load_file (argv[1], &error);
  if (!plugin) {
    g_printerr ("test_results_out: cannot load %s: %s\n", argv[1], error->message);
    return 1;
  }
  gst_object_unref (plugin);
  SRunner *runner = srunner_create (results_out_suite ());
  srunner_run_all (runner, CK_NORMAL);
  int failed = srunner_ntests_failed (runner);
  srunner_free (runner);
  return failed ? 1 : 0;
}
