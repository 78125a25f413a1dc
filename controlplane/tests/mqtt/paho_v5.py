"""An MQTT 5 agent on paho-mqtt (the Eclipse client, not ours) for controlplane/tests/mqtt.rs.

Connects to the gateway's agent port over TLS with the agent's ACA certificate, subscribes to
its inbox and to the error topic, then:
1. publishes at QoS 1 to an agent that does not exist: the PUBACK must carry a failure reason
   code and the gateway's reason string, and the error topic must say NO_ROUTE;
2. asks `peer` a question with a response topic and correlation data, and waits for the reply
   on that topic with the same correlation data.
Prints one JSON line of what it saw; exits non-zero on a timeout.
"""

import json
import queue
import ssl
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, cafile, certfile, keyfile, peer = sys.argv[1:7]
nobody = peer.rsplit("/", 1)[0] + "/nobody"
events = queue.Queue()

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho", protocol=mqtt.MQTTv5)
client.tls_set(ca_certs=cafile, certfile=certfile, keyfile=keyfile)
client.on_connect = lambda c, u, flags, rc, props: events.put(("connack", str(rc)))
client.on_subscribe = lambda c, u, mid, rcs, props: events.put(("suback", [str(r) for r in rcs]))
client.on_publish = lambda c, u, mid, rc, props: events.put(
    ("puback", mid, rc.value, getattr(props, "ReasonString", None))
)
client.on_message = lambda c, u, msg: events.put(
    (
        "message",
        msg.topic,
        msg.payload.decode(),
        getattr(msg.properties, "CorrelationData", b"").decode(),
    )
)


stash = []


def wait(kind):
    """The next event of `kind`, in arrival order; others wait their turn."""
    for i, event in enumerate(stash):
        if event[0] == kind:
            return stash.pop(i)
    while True:
        event = events.get(timeout=10)
        if event[0] == kind:
            return event
        stash.append(event)


seen = {}
client.connect(host, int(port), keepalive=30)
client.loop_start()
seen["connack"] = wait("connack")[1]
client.subscribe([("agw/inbox/#", 1), ("agw/errors", 0), ("paho/replies", 1)])
seen["suback"] = wait("suback")[1]

client.publish("agw/to/" + nobody, b"anyone?", qos=1)
_, _, code, reason = wait("puback")
seen["nack_puback"] = {"code": code, "reason": reason}
_, topic, payload, _ = wait("message")
seen["error_topic"] = {"topic": topic, "body": json.loads(payload)}

request = Properties(PacketTypes.PUBLISH)
request.ResponseTopic = "paho/replies"
request.CorrelationData = b"question-1"
request.ContentType = "text/plain"
client.publish("agw/to/" + peer, b"what time is it?", qos=1, properties=request)
_, topic, payload, correlation = wait("message")
seen["reply"] = {"topic": topic, "payload": payload, "correlation": correlation}
_, _, code, _ = wait("puback")
seen["request_puback"] = code

client.disconnect()
client.loop_stop()
print(json.dumps(seen))
