/* The MQTT publisher's worker (vmoemqtt.h).  The worker thread alone
 * touches the mosquitto handle, so libmosquitto needs no locking; the queue
 * and counters are under `lock`.  Each connection attempt gets a fresh
 * handle, which closes a half-open socket of the last one for sure. */
#include "vmoemqtt.h"

#include <errno.h>
#include <mosquitto.h>
#include <string.h>

#define BACKOFF_MIN_US (100 * G_TIME_SPAN_MILLISECOND)
#define BACKOFF_MAX_US (5 * G_TIME_SPAN_SECOND)
/* A connect that neither succeeds nor fails (a host that drops packets)
 * is given up after this and retried. */
#define CONNECT_TIMEOUT_US (5 * G_TIME_SPAN_SECOND)
/* How long the worker waits on the socket when it has nothing to send: the
 * most a new message waits before it is sent. */
#define IDLE_LOOP_MS 10
#define KEEPALIVE_S 30

#define VMOE_MQTT_ERROR g_quark_from_static_string ("vmoe-mqtt-error")

typedef enum { DISCONNECTED, CONNECTING, CONNECTED } LinkState;

struct _VmoeMqtt {
  gchar *host;
  guint port;
  gchar *topic;
  gchar *client_id;
  guint max_queue;
  VmoeMqttReport report;
  gpointer user_data;

  GMutex lock;
  GCond cond;
  GQueue queue;                /* gchar *, oldest first */
  guint64 dropped, published;
  gboolean dropping;           /* reported the current overflow */
  gboolean stopping;
  gint64 drain_deadline;       /* monotonic µs */

  GThread *thread;
  /* Worker thread only. */
  struct mosquitto *mosq;
  LinkState state;
  gint connack;                /* -1 until the broker answers */
  gboolean lost;
};

static GOnce lib_once = G_ONCE_INIT;

static gpointer
lib_init (gpointer unused)
{
  mosquitto_lib_init ();
  return NULL;
}

gboolean
vmoe_mqtt_parse_address (const gchar *address, gchar **host, guint *port, GError **error)
{
  const gchar *colon = address ? strrchr (address, ':') : NULL;
  guint64 value = 0;
  if (!colon || colon == address
      || !g_ascii_string_to_unsigned (colon + 1, 10, 1, 65535, &value, NULL)) {
    g_set_error (error, VMOE_MQTT_ERROR, 0,
        "address '%s' is not host:port with a port from 1 to 65535",
        address ? address : "(null)");
    return FALSE;
  }
  const gchar *start = address, *end = colon;
  if (*start == '[' && end[-1] == ']') {
    start++;
    end--;
  }
  if (end == start) {
    g_set_error (error, VMOE_MQTT_ERROR, 0,
        "address '%s' has no host", address);
    return FALSE;
  }
  *host = g_strndup (start, (gsize) (end - start));
  *port = (guint) value;
  return TRUE;
}

static void
on_connect (struct mosquitto *mosq, void *data, int rc)
{
  ((VmoeMqtt *) data)->connack = rc;
}

static void
on_disconnect (struct mosquitto *mosq, void *data, int rc)
{
  ((VmoeMqtt *) data)->lost = TRUE;
}

static void
report (VmoeMqtt *q, VmoeMqttEvent event, const gchar *format, ...) G_GNUC_PRINTF (3, 4);

static void
report (VmoeMqtt *q, VmoeMqttEvent event, const gchar *format, ...)
{
  va_list args;
  va_start (args, format);
  gchar *message = g_strdup_vprintf (format, args);
  va_end (args);
  if (q->report)
    q->report (event, message, q->user_data);
  g_free (message);
}

static void
close_link (VmoeMqtt *q)
{
  g_clear_pointer (&q->mosq, mosquitto_destroy);
  q->state = DISCONNECTED;
}

/* Starts a non-blocking connect on a fresh handle; FALSE with `why` set if
 * it failed at once (name lookup, socket). */
static gboolean
start_connect (VmoeMqtt *q, const gchar **why)
{
  q->mosq = mosquitto_new (q->client_id, TRUE, q);
  if (!q->mosq) {
    *why = "out of memory";
    return FALSE;
  }
  mosquitto_connect_callback_set (q->mosq, on_connect);
  mosquitto_disconnect_callback_set (q->mosq, on_disconnect);
  q->connack = -1;
  q->lost = FALSE;
  int rc = mosquitto_connect_async (q->mosq, q->host, (int) q->port, KEEPALIVE_S);
  if (rc != MOSQ_ERR_SUCCESS) {
    *why = rc == MOSQ_ERR_ERRNO ? g_strerror (errno) : mosquitto_strerror (rc);
    close_link (q);
    return FALSE;
  }
  q->state = CONNECTING;
  return TRUE;
}

static gpointer
worker (gpointer data)
{
  VmoeMqtt *q = data;
  gint64 backoff = BACKOFF_MIN_US, next_attempt = 0, connecting_since = 0;
  /* Report the first failure after start or after a lost link, not each
   * retry of an outage. */
  gboolean failure_reported = FALSE, ever_connected = FALSE;

  for (;;) {
    gint64 now = g_get_monotonic_time ();
    gchar *message = NULL;
    g_mutex_lock (&q->lock);
    /* At stop, what is queued gets until the deadline, a connect under way
     * included; a broker that has already failed gets no more tries. */
    if (q->stopping && (g_queue_is_empty (&q->queue) || now >= q->drain_deadline
            || (q->state == DISCONNECTED && failure_reported))) {
      g_mutex_unlock (&q->lock);
      break;
    }
    if (q->state == DISCONNECTED && now < next_attempt) {
      g_cond_wait_until (&q->cond, &q->lock, next_attempt);
      g_mutex_unlock (&q->lock);
      continue;
    }
    if (q->state == CONNECTED)
      message = g_queue_pop_head (&q->queue);
    g_mutex_unlock (&q->lock);

    const gchar *why = NULL;
    if (q->state == DISCONNECTED) {
      if (start_connect (q, &why))
        connecting_since = now;
    } else {
      int rc = MOSQ_ERR_SUCCESS;
      if (message) {
        rc = mosquitto_publish (q->mosq, NULL, q->topic, (int) strlen (message), message,
            0, false);
        g_mutex_lock (&q->lock);
        if (rc == MOSQ_ERR_SUCCESS) {
          q->published++;
          q->dropping = FALSE;
          g_free (message);
        } else {
          /* Back at the head: it goes first after the reconnect. */
          g_queue_push_head (&q->queue, message);
        }
        g_mutex_unlock (&q->lock);
      }
      if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_loop (q->mosq, message ? 0 : IDLE_LOOP_MS, 1);
      if (rc != MOSQ_ERR_SUCCESS || q->lost)
        why = rc == MOSQ_ERR_ERRNO ? g_strerror (errno)
            : rc != MOSQ_ERR_SUCCESS ? mosquitto_strerror (rc) : "disconnected";
      else if (q->state == CONNECTING && q->connack > 0)
        why = mosquitto_connack_string (q->connack);
      else if (q->state == CONNECTING && q->connack == 0) {
        q->state = CONNECTED;
        backoff = BACKOFF_MIN_US;
        failure_reported = FALSE;
        report (q, VMOE_MQTT_CONNECTED, "connected to the MQTT broker at %s:%u",
            q->host, q->port);
        ever_connected = TRUE;
      } else if (q->state == CONNECTING && now - connecting_since > CONNECT_TIMEOUT_US)
        why = "timed out";
    }
    if (why) {
      gboolean was_connected = q->state == CONNECTED;
      close_link (q);
      if (was_connected)
        report (q, VMOE_MQTT_CONNECTION_LOST, "lost the MQTT broker at %s:%u (%s); "
            "reconnecting, queuing up to %u messages", q->host, q->port, why, q->max_queue);
      else if (!failure_reported)
        report (q, VMOE_MQTT_CONNECT_FAILED, "could not connect to the MQTT broker at "
            "%s:%u (%s); %s with backoff, queuing up to %u messages", q->host, q->port,
            why, ever_connected ? "reconnecting" : "retrying", q->max_queue);
      failure_reported = TRUE;
      next_attempt = g_get_monotonic_time () + backoff;
      backoff = MIN (backoff * 2, BACKOFF_MAX_US);
    }
  }
  if (q->mosq && q->state == CONNECTED) {
    mosquitto_disconnect (q->mosq);
    mosquitto_loop (q->mosq, 0, 1);
  }
  close_link (q);
  return NULL;
}

VmoeMqtt *
vmoe_mqtt_new (const gchar *host, guint port, const gchar *topic, const gchar *client_id,
    guint max_queue, VmoeMqttReport report_func, gpointer user_data, GError **error)
{
  g_once (&lib_once, lib_init, NULL);
  if (!topic || !*topic || strpbrk (topic, "+#")) {
    g_set_error (error, VMOE_MQTT_ERROR, 0,
        "topic '%s' must be non-empty, without the wildcards + and #",
        topic ? topic : "(null)");
    return NULL;
  }
  VmoeMqtt *q = g_new0 (VmoeMqtt, 1);
  q->host = g_strdup (host);
  q->port = port;
  q->topic = g_strdup (topic);
  q->client_id = g_strdup (client_id && *client_id ? client_id : NULL);
  q->max_queue = MAX (max_queue, 1);
  q->report = report_func;
  q->user_data = user_data;
  g_mutex_init (&q->lock);
  g_cond_init (&q->cond);
  g_queue_init (&q->queue);
  q->thread = g_thread_try_new ("vmoe-mqtt", worker, q, error);
  if (!q->thread) {
    vmoe_mqtt_free (q, 0, NULL, NULL);
    return NULL;
  }
  return q;
}

void
vmoe_mqtt_push (VmoeMqtt *q, gchar *message)
{
  gboolean report_drop = FALSE;
  guint64 dropped;
  g_mutex_lock (&q->lock);
  while (q->queue.length >= q->max_queue) {
    g_free (g_queue_pop_head (&q->queue));
    q->dropped++;
    report_drop = !q->dropping;
    q->dropping = TRUE;
  }
  dropped = q->dropped;
  g_queue_push_tail (&q->queue, message);
  g_cond_signal (&q->cond);
  g_mutex_unlock (&q->lock);
  if (report_drop)
    report (q, VMOE_MQTT_DROPPING, "the MQTT queue is full (%u messages): dropping the "
        "oldest (%" G_GUINT64_FORMAT " so far, see the dropped property)", q->max_queue,
        dropped);
}

guint64
vmoe_mqtt_get_dropped (VmoeMqtt *q)
{
  g_mutex_lock (&q->lock);
  guint64 n = q->dropped;
  g_mutex_unlock (&q->lock);
  return n;
}

guint64
vmoe_mqtt_get_published (VmoeMqtt *q)
{
  g_mutex_lock (&q->lock);
  guint64 n = q->published;
  g_mutex_unlock (&q->lock);
  return n;
}

void
vmoe_mqtt_free (VmoeMqtt *q, guint drain_ms, guint64 *published, guint64 *dropped)
{
  if (q->thread) {
    g_mutex_lock (&q->lock);
    q->stopping = TRUE;
    q->drain_deadline = g_get_monotonic_time () + drain_ms * G_TIME_SPAN_MILLISECOND;
    g_cond_signal (&q->cond);
    g_mutex_unlock (&q->lock);
    g_thread_join (q->thread);
  }
  if (published)
    *published = q->published;
  if (dropped)
    *dropped = q->dropped + q->queue.length;
  g_queue_clear_full (&q->queue, g_free);
  g_mutex_clear (&q->lock);
  g_cond_clear (&q->cond);
  g_free (q->host);
  g_free (q->topic);
  g_free (q->client_id);
  g_free (q);
}
