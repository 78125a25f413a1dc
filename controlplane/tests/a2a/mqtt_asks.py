"""An MQTT 5 agent on paho-mqtt (the Eclipse client, not ours) that asks one question through
the gateway: QoS 1 to `agw/to/DEST` with a response topic, correlation data and the user
property `session-id`, then waits for the reply on the response topic and for the PUBACK.
Prints one JSON line of what it saw; exits non-zero on a timeout.

Usage: mqtt_asks.py HOST PORT CA CERT KEY DEST SESSION TEXT
"""

import json
import queue
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, cafile, certfile, keyfile, dest, session, text = sys.argv[1:9]
events = queue.Queue()

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="guest", protocol=mqtt.MQTTv5)
client.tls_set(ca_certs=cafile, certfile=certfile, keyfile=keyfile)
client.on_connect = lambda c, u, flags, rc, props: events.put(("connack", str(rc)))
client.on_subscribe = lambda c, u, mid, rcs, props: events.put(("suback", None))
client.on_publish = lambda c, u, mid, rc, props: events.put(
    ("puback", rc.value, getattr(props, "ReasonString", None))
)
client.on_message = lambda c, u, msg: events.put(
    (
        "message",
        msg.topic,
        msg.payload.decode(),
        getattr(msg.properties, "CorrelationData", b"").decode(),
        dict(getattr(msg.properties, "UserProperty", [])),
    )
)

stash = []


def wait(kind):
    """The next event of `kind`, in arrival order; others wait their turn."""
    for i, event in enumerate(stash):
        if event[0] == kind:
            return stash.pop(i)
    while True:
        event = events.get(timeout=20)
        if event[0] == kind:
            return event
        stash.append(event)


seen = {}
client.connect(host, int(port), keepalive=30)
client.loop_start()
seen["connack"] = wait("connack")[1]
client.subscribe([("agw/inbox/#", 1), ("guest/replies", 1)])
wait("suback")
request = Properties(PacketTypes.PUBLISH)
request.ResponseTopic = "guest/replies"
request.CorrelationData = b"ask-1"
request.ContentType = "text/plain"
request.UserProperty = ("session-id", session)
client.publish("agw/to/" + dest, text.encode(), qos=1, properties=request)
_, code, reason = wait("puback")
seen["puback"] = {"code": code, "reason": reason}
_, topic, payload, correlation, properties = wait("message")
seen["reply"] = {
    "topic": topic,
    "payload": payload,
    "correlation": correlation,
    "session": properties.get("session-id"),
}
client.disconnect()
client.loop_stop()
print(json.dumps(seen))
