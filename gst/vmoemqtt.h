/* An MQTT publisher that never blocks its caller: messages go into a
 * bounded queue that a worker thread sends through libmosquitto, connecting
 * and reconnecting with backoff (docs/design.md, Publishing).  When the
 * queue is full the oldest message is dropped and counted.  GStreamer-free;
 * vmoemetapublish turns its reports into element warnings. */
#ifndef VMOE_MQTT_H
#define VMOE_MQTT_H

#include <glib.h>

G_BEGIN_DECLS

typedef struct _VmoeMqtt VmoeMqtt;

typedef enum {
  VMOE_MQTT_CONNECTED,        /* (re)connected to the broker */
  VMOE_MQTT_CONNECT_FAILED,   /* first failure after start or a lost link */
  VMOE_MQTT_CONNECTION_LOST,
  VMOE_MQTT_DROPPING,         /* the queue overflowed: dropping begins */
} VmoeMqttEvent;

/* Called from the worker thread, or from vmoe_mqtt_push's caller for
 * VMOE_MQTT_DROPPING; never with a lock of the publisher held. */
typedef void (*VmoeMqttReport) (VmoeMqttEvent event, const gchar *message,
    gpointer user_data);

/* Splits "host:port" (port 1 to 65535; "[v6]:port" for IPv6). */
gboolean vmoe_mqtt_parse_address (const gchar *address, gchar **host, guint *port,
    GError **error);

/* Starts the worker, which connects in the background: a broker that is
 * down at start is a report and retries, never an error here.  client_id
 * NULL lets libmosquitto make one. */
VmoeMqtt *vmoe_mqtt_new (const gchar *host, guint port, const gchar *topic,
    const gchar *client_id, guint max_queue, VmoeMqttReport report,
    gpointer user_data, GError **error);

/* Queues `message` (taken); never blocks on the network. */
void vmoe_mqtt_push (VmoeMqtt *mqtt, gchar *message);

guint64 vmoe_mqtt_get_dropped (VmoeMqtt *mqtt);
guint64 vmoe_mqtt_get_published (VmoeMqtt *mqtt);

/* Sends what is queued for up to drain_ms while connected, then stops the
 * worker and frees everything.  The final counts go to `published` and
 * `dropped` (what was still queued included) unless NULL. */
void vmoe_mqtt_free (VmoeMqtt *mqtt, guint drain_ms, guint64 *published, guint64 *dropped);

G_END_DECLS

#endif
