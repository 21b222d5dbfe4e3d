/* vmoemetapublish: sends the JSON that vmoemetaconvert attached
 * (GstVmoeJsonMeta) to a file or an MQTT broker, after DL Streamer's
 * gvametapublish (docs/design.md, Publishing).  A pass-through transform,
 * like gvametapublish, so that pipelines written for it keep their shape.
 *
 * A file is written on the streaming thread.  MQTT never is: messages go
 * through the bounded queue of vmoemqtt.c, so a broker that is down or slow
 * costs dropped messages (counted, warned), never a stalled or failed
 * pipeline.  A broker that cannot be reached at start is a warning and
 * retries, not an error: a camera pipeline should not die because the
 * broker starts after it.  An address that cannot be parsed is an error. */
#include "gstvmoemetapublish.h"

#include <errno.h>
#include <json-glib/json-glib.h>
#include <stdio.h>
#include <string.h>

#include "gstvmoejsonmeta.h"
#include "vmoemqtt.h"

GST_DEBUG_CATEGORY_STATIC (gst_vmoe_meta_publish_debug);
#define GST_CAT_DEFAULT gst_vmoe_meta_publish_debug

typedef enum {
  METHOD_FILE,
  METHOD_MQTT,
} PublishMethod;

typedef enum {
  FORMAT_JSON,
  FORMAT_JSON_LINES,
} FileFormat;

enum {
  PROP_0,
  PROP_METHOD,
  PROP_FILE_PATH,
  PROP_FILE_FORMAT,
  PROP_ADDRESS,
  PROP_TOPIC,
  PROP_MQTT_CLIENT_ID,
  PROP_MAX_QUEUE_SIZE,
  PROP_DROPPED,
  PROP_PUBLISHED,
  N_PROPS,
};
static GParamSpec *properties[N_PROPS];

#define DEFAULT_ADDRESS "localhost:1883"
#define DEFAULT_TOPIC "vmoe"
#define DEFAULT_MAX_QUEUE_SIZE 1000
/* At stop, queued messages get this long to reach a connected broker. */
#define DRAIN_MS 2000

struct _GstVmoeMetaPublish {
  GstBaseTransform parent;

  /* Properties, under the object lock. */
  PublishMethod method;
  gchar *file_path;
  FileFormat file_format;
  gchar *address;
  gchar *topic;
  gchar *client_id;
  guint max_queue_size;
  guint64 dropped;                /* of MQTT runs that have stopped */
  guint64 published;              /* file messages written */
  VmoeMqtt *mqtt;                 /* method mqtt, between start and stop */

  /* Streaming thread (and start/stop). */
  FILE *file;
  gboolean file_is_stdout;
  guint64 file_messages;          /* written since the array opened */
  gboolean array_closed;
};

G_DEFINE_TYPE (GstVmoeMetaPublish, gst_vmoe_meta_publish, GST_TYPE_BASE_TRANSFORM);
GST_ELEMENT_REGISTER_DEFINE (vmoemetapublish, "vmoemetapublish", GST_RANK_NONE,
    GST_TYPE_VMOE_META_PUBLISH);

static GType
publish_method_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    { METHOD_FILE, "A file, or stdout", "file" },
    { METHOD_MQTT, "An MQTT broker", "mqtt" },
    { 0, NULL, NULL },
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("GstVmoeMetaPublishMethod", values));
  return type;
}

static GType
file_format_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    { FORMAT_JSON, "One JSON array over the whole stream", "json" },
    { FORMAT_JSON_LINES, "One JSON object per line", "json-lines" },
    { 0, NULL, NULL },
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("GstVmoeMetaPublishFileFormat", values));
  return type;
}

static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK, GST_PAD_ALWAYS, GST_STATIC_CAPS_ANY);
static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC, GST_PAD_ALWAYS, GST_STATIC_CAPS_ANY);

static void
on_mqtt_report (VmoeMqttEvent event, const gchar *message, gpointer user_data)
{
  GstVmoeMetaPublish *self = user_data;
  if (event == VMOE_MQTT_CONNECTED)
    GST_ELEMENT_INFO (self, RESOURCE, OPEN_WRITE, ("%s", message), (NULL));
  else
    GST_ELEMENT_WARNING (self, RESOURCE, WRITE, ("%s", message), (NULL));
}

/* A line of json-lines must not break: a pretty-printed object (a
 * vmoemetaconvert with json-indent) is written compact. */
static gchar *
compact_json (const gchar *text, GError **error)
{
  if (!strchr (text, '\n'))
    return g_strdup (text);
  JsonNode *node = json_from_string (text, error);
  if (!node)
    return NULL;
  gchar *compact = json_to_string (node, FALSE);
  json_node_unref (node);
  return compact;
}

static gboolean
write_file (GstVmoeMetaPublish *self, const gchar *text)
{
  gboolean ok;
  if (self->file_format == FORMAT_JSON)
    ok = fputs (self->file_messages ? ",\n" : "[\n", self->file) >= 0
        && fputs (text, self->file) >= 0;
  else
    ok = fputs (text, self->file) >= 0 && fputc ('\n', self->file) != EOF;
  if (ok && self->file_is_stdout)
    ok = fflush (self->file) == 0;
  if (!ok) {
    GST_ELEMENT_ERROR (self, RESOURCE, WRITE, ("could not write to %s",
            self->file_is_stdout ? "stdout" : self->file_path), ("%s", g_strerror (errno)));
    return FALSE;
  }
  self->file_messages++;
  GST_OBJECT_LOCK (self);
  self->published++;
  GST_OBJECT_UNLOCK (self);
  return TRUE;
}

/* Ends the JSON array, so that the file is valid once the stream ends. */
static gboolean
close_array (GstVmoeMetaPublish *self)
{
  if (!self->file || self->file_format != FORMAT_JSON || self->array_closed)
    return TRUE;
  self->array_closed = TRUE;
  if (fputs (self->file_messages ? "\n]\n" : "[]\n", self->file) < 0
      || fflush (self->file) != 0) {
    GST_ELEMENT_ERROR (self, RESOURCE, WRITE, ("could not write to %s",
            self->file_is_stdout ? "stdout" : self->file_path), ("%s", g_strerror (errno)));
    return FALSE;
  }
  return TRUE;
}

static GstFlowReturn
gst_vmoe_meta_publish_transform_ip (GstBaseTransform *trans, GstBuffer *buf)
{
  GstVmoeMetaPublish *self = GST_VMOE_META_PUBLISH (trans);
  gpointer state = NULL;
  GstMeta *meta;
  while ((meta = gst_buffer_iterate_meta_filtered (buf, &state, GST_VMOE_JSON_META_API_TYPE))) {
    const gchar *text = ((GstVmoeJsonMeta *) meta)->message;
    if (!text)
      continue;
    if (self->mqtt) {
      vmoe_mqtt_push (self->mqtt, g_strdup (text));
      continue;
    }
    if (self->array_closed) {
      GST_WARNING_OBJECT (self, "a frame after EOS: not written, the JSON array is closed");
      continue;
    }
    gchar *line = NULL;
    if (self->file_format == FORMAT_JSON_LINES) {
      GError *error = NULL;
      line = compact_json (text, &error);
      if (!line) {
        GST_ELEMENT_WARNING (self, STREAM, FORMAT, ("a GstVmoeJsonMeta that is not JSON "
                "was skipped"), ("%s", error->message));
        g_error_free (error);
        continue;
      }
    }
    gboolean ok = write_file (self, line ? line : text);
    g_free (line);
    if (!ok)
      return GST_FLOW_ERROR;
  }
  return GST_FLOW_OK;
}

static gboolean
gst_vmoe_meta_publish_sink_event (GstBaseTransform *trans, GstEvent *event)
{
  GstVmoeMetaPublish *self = GST_VMOE_META_PUBLISH (trans);
  if (GST_EVENT_TYPE (event) == GST_EVENT_EOS && !close_array (self)) {
    gst_event_unref (event);
    return FALSE;
  }
  return GST_BASE_TRANSFORM_CLASS (gst_vmoe_meta_publish_parent_class)->sink_event (trans,
      event);
}

static gboolean
open_file (GstVmoeMetaPublish *self, const gchar *path)
{
  self->file_is_stdout = !path || !*path;
  self->file = self->file_is_stdout ? stdout : fopen (path, "w");
  if (!self->file) {
    GST_ELEMENT_ERROR (self, RESOURCE, OPEN_WRITE, ("could not open '%s' for writing",
            path), ("%s", g_strerror (errno)));
    return FALSE;
  }
  self->file_messages = 0;
  self->array_closed = FALSE;
  return TRUE;
}

static gboolean
gst_vmoe_meta_publish_start (GstBaseTransform *trans)
{
  GstVmoeMetaPublish *self = GST_VMOE_META_PUBLISH (trans);
  GST_OBJECT_LOCK (self);
  PublishMethod method = self->method;
  gchar *path = g_strdup (self->file_path);
  gchar *address = g_strdup (self->address);
  gchar *topic = g_strdup (self->topic);
  gchar *client_id = g_strdup (self->client_id);
  guint max_queue = self->max_queue_size;
  GST_OBJECT_UNLOCK (self);

  gboolean ok;
  if (method == METHOD_FILE) {
    ok = open_file (self, path);
  } else {
    GError *error = NULL;
    gchar *host = NULL;
    guint port = 0;
    VmoeMqtt *mqtt = NULL;
    ok = vmoe_mqtt_parse_address (address, &host, &port, &error)
        && (mqtt = vmoe_mqtt_new (host, port, topic, client_id, max_queue,
                on_mqtt_report, self, &error));
    if (ok) {
      GST_OBJECT_LOCK (self);
      self->mqtt = mqtt;
      GST_OBJECT_UNLOCK (self);
    } else {
      GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS, ("%s", error->message), (NULL));
      g_error_free (error);
    }
    g_free (host);
  }
  g_free (path);
  g_free (address);
  g_free (topic);
  g_free (client_id);
  return ok;
}

static gboolean
gst_vmoe_meta_publish_stop (GstBaseTransform *trans)
{
  GstVmoeMetaPublish *self = GST_VMOE_META_PUBLISH (trans);
  gboolean ok = close_array (self);
  if (self->file && !self->file_is_stdout && fclose (self->file) != 0 && ok) {
    GST_ELEMENT_ERROR (self, RESOURCE, CLOSE, ("could not close %s", self->file_path),
        ("%s", g_strerror (errno)));
    ok = FALSE;
  }
  self->file = NULL;
  /* Freed without the object lock: the worker's last report posts a
   * message, which takes it. */
  GST_OBJECT_LOCK (self);
  VmoeMqtt *mqtt = self->mqtt;
  self->mqtt = NULL;
  GST_OBJECT_UNLOCK (self);
  if (mqtt) {
    guint64 published, dropped;
    vmoe_mqtt_free (mqtt, DRAIN_MS, &published, &dropped);
    GST_OBJECT_LOCK (self);
    self->dropped += dropped;
    self->published += published;
    GST_OBJECT_UNLOCK (self);
  }
  return ok;
}

static void
gst_vmoe_meta_publish_set_property (GObject *object, guint prop_id, const GValue *value,
    GParamSpec *pspec)
{
  GstVmoeMetaPublish *self = GST_VMOE_META_PUBLISH (object);
  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_METHOD:
      self->method = g_value_get_enum (value);
      break;
    case PROP_FILE_PATH:
      g_free (self->file_path);
      self->file_path = g_value_dup_string (value);
      break;
    case PROP_FILE_FORMAT:
      self->file_format = g_value_get_enum (value);
      break;
    case PROP_ADDRESS:
      g_free (self->address);
      self->address = g_value_dup_string (value);
      break;
    case PROP_TOPIC:
      g_free (self->topic);
      self->topic = g_value_dup_string (value);
      break;
    case PROP_MQTT_CLIENT_ID:
      g_free (self->client_id);
      self->client_id = g_value_dup_string (value);
      break;
    case PROP_MAX_QUEUE_SIZE:
      self->max_queue_size = g_value_get_uint (value);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_vmoe_meta_publish_get_property (GObject *object, guint prop_id, GValue *value,
    GParamSpec *pspec)
{
  GstVmoeMetaPublish *self = GST_VMOE_META_PUBLISH (object);
  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_METHOD:
      g_value_set_enum (value, self->method);
      break;
    case PROP_FILE_PATH:
      g_value_set_string (value, self->file_path);
      break;
    case PROP_FILE_FORMAT:
      g_value_set_enum (value, self->file_format);
      break;
    case PROP_ADDRESS:
      g_value_set_string (value, self->address);
      break;
    case PROP_TOPIC:
      g_value_set_string (value, self->topic);
      break;
    case PROP_MQTT_CLIENT_ID:
      g_value_set_string (value, self->client_id);
      break;
    case PROP_MAX_QUEUE_SIZE:
      g_value_set_uint (value, self->max_queue_size);
      break;
    case PROP_DROPPED:
      g_value_set_uint64 (value, self->dropped
          + (self->mqtt ? vmoe_mqtt_get_dropped (self->mqtt) : 0));
      break;
    case PROP_PUBLISHED:
      g_value_set_uint64 (value, self->published
          + (self->mqtt ? vmoe_mqtt_get_published (self->mqtt) : 0));
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_vmoe_meta_publish_finalize (GObject *object)
{
  GstVmoeMetaPublish *self = GST_VMOE_META_PUBLISH (object);
  g_free (self->file_path);
  g_free (self->address);
  g_free (self->topic);
  g_free (self->client_id);
  G_OBJECT_CLASS (gst_vmoe_meta_publish_parent_class)->finalize (object);
}

static void
gst_vmoe_meta_publish_init (GstVmoeMetaPublish *self)
{
  self->address = g_strdup (DEFAULT_ADDRESS);
  self->topic = g_strdup (DEFAULT_TOPIC);
  self->max_queue_size = DEFAULT_MAX_QUEUE_SIZE;
  gst_base_transform_set_passthrough (GST_BASE_TRANSFORM (self), TRUE);
}

static void
gst_vmoe_meta_publish_class_init (GstVmoeMetaPublishClass *klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseTransformClass *trans_class = GST_BASE_TRANSFORM_CLASS (klass);

  gobject_class->set_property = gst_vmoe_meta_publish_set_property;
  gobject_class->get_property = gst_vmoe_meta_publish_get_property;
  gobject_class->finalize = gst_vmoe_meta_publish_finalize;

  const GParamFlags rw = G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS;
  const GParamFlags ro = G_PARAM_READABLE | G_PARAM_STATIC_STRINGS;
  properties[PROP_METHOD] = g_param_spec_enum ("method", "Method", "Where to publish",
      publish_method_get_type (), METHOD_FILE, rw);
  properties[PROP_FILE_PATH] = g_param_spec_string ("file-path", "File path",
      "method=file: the file to write (unset: stdout)", NULL, rw);
  properties[PROP_FILE_FORMAT] = g_param_spec_enum ("file-format", "File format",
      "method=file: a JSON array, valid once the stream ends, or JSON lines",
      file_format_get_type (), FORMAT_JSON, rw);
  properties[PROP_ADDRESS] = g_param_spec_string ("address", "Address",
      "method=mqtt: the broker's host:port", DEFAULT_ADDRESS, rw);
  properties[PROP_TOPIC] = g_param_spec_string ("topic", "Topic",
      "method=mqtt: the topic to publish to", DEFAULT_TOPIC, rw);
  properties[PROP_MQTT_CLIENT_ID] = g_param_spec_string ("mqtt-client-id", "MQTT client id",
      "method=mqtt: the client id (unset: a random one)", NULL, rw);
  properties[PROP_MAX_QUEUE_SIZE] = g_param_spec_uint ("max-queue-size", "Max queue size",
      "method=mqtt: messages held while the broker is slow or away; beyond it the "
      "oldest are dropped", 1, 1000000, DEFAULT_MAX_QUEUE_SIZE, rw);
  properties[PROP_DROPPED] = g_param_spec_uint64 ("dropped", "Dropped",
      "method=mqtt: messages dropped because the queue was full or left at stop",
      0, G_MAXUINT64, 0, ro);
  properties[PROP_PUBLISHED] = g_param_spec_uint64 ("published", "Published",
      "Messages written to the file or handed to the broker's connection",
      0, G_MAXUINT64, 0, ro);
  g_object_class_install_properties (gobject_class, N_PROPS, properties);

  gst_element_class_set_static_metadata (element_class, "V-MoE JSON publisher",
      "Filter/Analyzer/Video", "Publishes vmoemetaconvert's JSON to a file or an "
      "MQTT broker, as DL Streamer's gvametapublish does", "gst-vmoe");
  gst_element_class_add_static_pad_template (element_class, &sink_template);
  gst_element_class_add_static_pad_template (element_class, &src_template);

  trans_class->transform_ip = GST_DEBUG_FUNCPTR (gst_vmoe_meta_publish_transform_ip);
  trans_class->sink_event = GST_DEBUG_FUNCPTR (gst_vmoe_meta_publish_sink_event);
  trans_class->start = GST_DEBUG_FUNCPTR (gst_vmoe_meta_publish_start);
  trans_class->stop = GST_DEBUG_FUNCPTR (gst_vmoe_meta_publish_stop);

  gst_type_mark_as_plugin_api (publish_method_get_type (), 0);
  gst_type_mark_as_plugin_api (file_format_get_type (), 0);
  GST_DEBUG_CATEGORY_INIT (gst_vmoe_meta_publish_debug, "vmoemetapublish", 0,
      "vmoe JSON publisher");
}
