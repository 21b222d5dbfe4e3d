/* read-meta: an application that reads GstVmoeMeta in a pad probe.
 *
 * Shows how an application embeds vmoeclassify and reads its results from
 * the buffers themselves (no bus messages): a probe on fakesink's sink pad
 * gets every buffer, downstream of a videoconvert and videoscale, with its
 * GstVmoeMeta intact.
 *
 *   GST_PLUGIN_PATH=build/gst build/pipelines/read-meta MODEL [FRAMES]
 *
 * Built against the installed library (tests/test_install_meta.sh runs this
 * line as written):
 *   cc read-meta.c $(pkg-config --cflags --libs gstreamer-vmoe-1.0) -o read-meta
 */
#include <gst/gst.h>
#include <gst/vmoe/gstvmoemeta.h>

static GstPadProbeReturn
print_meta (GstPad *pad, GstPadProbeInfo *info, gpointer user_data)
{
  GstBuffer *buffer = GST_PAD_PROBE_INFO_BUFFER (info);
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (buffer);
  if (!meta) {
    g_print ("%" GST_TIME_FORMAT ": no classification\n",
        GST_TIME_ARGS (GST_BUFFER_PTS (buffer)));
    return GST_PAD_PROBE_OK;
  }
  g_print ("frame %" G_GUINT64_FORMAT " at %" GST_TIME_FORMAT ": %s (%.3f)",
      meta->frame, GST_TIME_ARGS (GST_BUFFER_PTS (buffer)), meta->label, meta->score);
  for (guint i = 0; i < meta->n_experts; i++)
    g_print ("%s expert %d gate %.3f", i ? "," : ";", meta->experts[i], meta->gates[i]);
  if (meta->superclass)
    g_print (" [%s]", meta->superclass);
  for (guint l = 0; l < meta->n_layers; l++)
    g_print ("; block %d dropped %d", meta->layers[l].block, meta->layers[l].dropped);
  g_print ("%s, %.2f ms\n", meta->fresh ? "" : " (carried)", meta->latency / 1e6);
  return GST_PAD_PROBE_OK;
}

int
main (int argc, char **argv)
{
  gst_init (&argc, &argv);
  if (argc < 2) {
    g_printerr ("usage: %s MODEL [FRAMES]\n", argv[0]);
    return 1;
  }
  int frames = argc > 2 ? atoi (argv[2]) : 10;
  gchar *desc = g_strdup_printf ("videotestsrc num-buffers=%d pattern=ball ! "
      "video/x-raw,width=320,height=240 ! vmoeclassify name=classify inference-interval=2 ! "
      "videoconvert ! videoscale ! video/x-raw,width=160,height=120 ! fakesink name=sink",
      frames);
  GError *error = NULL;
  GstElement *pipeline = gst_parse_launch (desc, &error);
  g_free (desc);
  if (error) {
    /* A missing element still gives a pipeline, and this error. */
    g_printerr ("read-meta: %s (is GST_PLUGIN_PATH set?)\n", error->message);
    return 1;
  }
  GstElement *classify = gst_bin_get_by_name (GST_BIN (pipeline), "classify");
  g_object_set (classify, "model", argv[1], NULL);
  gst_object_unref (classify);
  GstElement *sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");
  GstPad *pad = gst_element_get_static_pad (sink, "sink");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, print_meta, NULL, NULL);
  gst_object_unref (pad);
  gst_object_unref (sink);

  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  GstBus *bus = gst_element_get_bus (pipeline);
  GstMessage *msg = gst_bus_timed_pop_filtered (bus, GST_CLOCK_TIME_NONE,
      GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  int status = 0;
  if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
    GError *err = NULL;
    gchar *debug = NULL;
    gst_message_parse_error (msg, &err, &debug);
    g_printerr ("read-meta: %s (%s)\n", err->message, debug);
    g_error_free (err);
    g_free (debug);
    status = 1;
  }
  gst_message_unref (msg);
  gst_object_unref (bus);
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (pipeline);
  return status;
}
