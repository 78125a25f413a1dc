"""gRPC clients we did not write (grpcio, as a2a-sdk uses it) sending the gateway's A2A gRPC
binding what it must refuse. Prints each call's gRPC status code name as JSON.

Usage: a2a_grpc_refusals.py HOST:PORT CA CERT KEY TENANT
"""

import asyncio
import json
import sys

import grpc
from a2a.types import a2a_pb2 as pb


async def main():
    target, ca, cert, key, tenant = sys.argv[1:6]
    read = lambda path: open(path, "rb").read()
    credentials = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
    seen = {}
    async with grpc.aio.secure_channel(target, credentials) as channel:
        service = "/lf.a2a.v1.A2AService/"
        calls = {
            "unknown_method": (service + "NoSuchMethod", b""),
            "garbage": (service + "GetTask", b"\xff\xff\xff\xff"),
            "no_tenant": (service + "GetTask", pb.GetTaskRequest(id="t").SerializeToString()),
            "unknown_task": (
                service + "GetTask",
                pb.GetTaskRequest(tenant=tenant, id="no-such-task").SerializeToString(),
            ),
            "unsupported": (
                service + "ListTasks",
                pb.ListTasksRequest(tenant=tenant).SerializeToString(),
            ),
        }
        for name, (method, body) in calls.items():
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            try:
                await call(body, timeout=10)
                seen[name] = "OK"
            except grpc.aio.AioRpcError as e:
                seen[name] = e.code().name
    # Without a client certificate: no TLS session, so no call.
    anonymous = grpc.ssl_channel_credentials(read(ca))
    async with grpc.aio.secure_channel(target, anonymous) as channel:
        call = channel.unary_unary("/lf.a2a.v1.A2AService/GetTask")
        try:
            await call(pb.GetTaskRequest(tenant=tenant, id="t").SerializeToString(), timeout=10)
            seen["anonymous"] = "OK"
        except grpc.aio.AioRpcError as e:
            seen["anonymous"] = e.code().name
    print(json.dumps(seen))


asyncio.run(main())
