"""An A2A client we did not write (a2a-sdk 1.3.0, JSON-RPC over HTTPS with the agent's ACA
certificate) talking with a native agent through the gateway. Prints what it saw as JSON.

Usage: a2a_client.py HOST PORT CA CERT KEY BOB_PATH NOBODY_PATH [BINDING]
BINDING: JSONRPC (default), HTTP+JSON or GRPC, the A2A binding the client is let use (gRPC:
over HTTP/2 with the same certificate, the agent named by the card's tenant).
"""

import asyncio
import json
import ssl
import sys

import grpc
import httpx
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.client.errors import A2AClientError
from a2a.types import a2a_pb2 as pb
from a2a.utils.errors import A2AError
from google.protobuf import json_format


def state(task):
    return pb.TaskState.Name(task.status.state)


def texts(message):
    return [p.text for p in message.parts if p.HasField("text")]


async def main():
    host, port, ca, cert, key, bob_path, nobody_path = sys.argv[1:8]
    binding = sys.argv[8] if len(sys.argv) > 8 else "JSONRPC"
    tls = ssl.create_default_context(cafile=ca)
    tls.load_cert_chain(cert, key)
    seen = {}
    # One connection at a time: the gateway routes the client's replies to its latest one.
    limits = httpx.Limits(max_connections=1)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read(),
    )

    # One gRPC channel (one HTTP/2 connection) too, for the same reason.
    channels = {}

    def channel(url):
        if url not in channels:
            channels[url] = grpc.aio.secure_channel(url, credentials)
        return channels[url]

    def config(http, streaming):
        return ClientConfig(
            httpx_client=http,
            streaming=streaming,
            supported_protocol_bindings=[binding],
            grpc_channel_factory=channel,
        )

    async with httpx.AsyncClient(verify=tls, timeout=20, limits=limits) as http:
        base = f"https://{host}:{port}/a2a/"
        card = await A2ACardResolver(http, base + bob_path).get_agent_card()
        seen["card"] = json_format.MessageToDict(card)

        blocking = ClientFactory(config(http, False)).create(card)
        question = pb.Message(
            message_id="m-1",
            role=pb.ROLE_USER,
            context_id="trip-1",
            parts=[pb.Part(text="Book a twin room")],
        )
        events = [e async for e in blocking.send_message(pb.SendMessageRequest(message=question))]
        task = events[-1].task
        seen["blocking"] = {
            "state": state(task),
            "id": task.id,
            "context": task.context_id,
            "reply": texts(task.status.message),
            "artifact": [p.text for a in task.artifacts for p in a.parts],
        }

        streaming = ClientFactory(config(http, True)).create(card)
        follow_up = pb.Message(
            message_id="m-2",
            role=pb.ROLE_USER,
            context_id="trip-1",
            parts=[pb.Part(data=json_format.ParseDict({"breakfast": True}, pb.Part().data))],
        )
        states = []
        async for event in streaming.send_message(pb.SendMessageRequest(message=follow_up)):
            if event.HasField("task"):
                states.append(state(event.task))
            elif event.HasField("status_update"):
                states.append(pb.TaskState.Name(event.status_update.status.state))
                last = event.status_update.status.message
        seen["streaming"] = {"states": states, "reply": texts(last)}

        got = await blocking.get_task(pb.GetTaskRequest(id=task.id))
        seen["get_task"] = {"state": state(got), "history": len(got.history)}

        for name, call in [
            ("cancel_finished", blocking.cancel_task(pb.CancelTaskRequest(id=task.id))),
            ("get_unknown", blocking.get_task(pb.GetTaskRequest(id="no-such-task"))),
        ]:
            try:
                await call
                seen[name] = "no error"
            except (A2AError, A2AClientError) as e:
                seen[name] = type(e).__name__

        nobody_card = await A2ACardResolver(http, base + nobody_path).get_agent_card()
        nobody = ClientFactory(config(http, False)).create(nobody_card)
        lost = pb.Message(message_id="m-3", role=pb.ROLE_USER, parts=[pb.Part(text="anyone?")])
        events = [e async for e in nobody.send_message(pb.SendMessageRequest(message=lost))]
        failed = events[-1].task
        seen["nacked"] = {
            "state": state(failed),
            "reason": json_format.MessageToDict(failed.metadata).get("agw.reason"),
            "text": texts(failed.status.message),
        }
    print(json.dumps(seen))


asyncio.run(main())
