"""An A2A server we did not write (a2a-sdk 1.3.0 on uvicorn, JSON-RPC over HTTP/1.1), for the
gateway to call as an A2A client. Its executor answers as a model agent would:
- "fail ...": the task fails (TASK_STATE_FAILED, the reason in its status message);
- "task ...": a task that completes with an artifact;
- "book ...": a task that asks "which night?" (TASK_STATE_INPUT_REQUIRED); the next message
  in that task completes it with "booked: room 42 for <text>";
- anything else: one message, "echo: <text>" (data parts are echoed as data).

Usage: a2a_server.py PORT [KEEP_ALIVE_S [CERT KEY CA]]   (prints "ready" once it listens; idle
connections are closed after KEEP_ALIVE_S, uvicorn's 5 by default; with CERT, KEY and CA it
serves HTTPS with that certificate chain and requires a client certificate under CA)
"""

import asyncio
import ssl
import sys

import uvicorn
from a2a.helpers.proto_helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import a2a_pb2 as pb
from starlette.applications import Starlette


class Echo(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        message = context.message
        current = context.current_task
        if current is not None and current.status.state == pb.TASK_STATE_INPUT_REQUIRED:
            await event_queue.enqueue_event(
                pb.TaskArtifactUpdateEvent(
                    task_id=context.task_id,
                    context_id=context.context_id,
                    artifact=pb.Artifact(
                        artifact_id="booking", parts=[pb.Part(text="booked: room 42 for " + text)]
                    ),
                )
            )
            await event_queue.enqueue_event(
                pb.TaskStatusUpdateEvent(
                    task_id=context.task_id,
                    context_id=context.context_id,
                    status=pb.TaskStatus(state=pb.TASK_STATE_COMPLETED),
                )
            )
            return
        if text.startswith("book"):
            await event_queue.enqueue_event(
                pb.Task(
                    id=context.task_id,
                    context_id=context.context_id,
                    status=pb.TaskStatus(state=pb.TASK_STATE_SUBMITTED),
                )
            )
            await event_queue.enqueue_event(
                pb.TaskStatusUpdateEvent(
                    task_id=context.task_id,
                    context_id=context.context_id,
                    status=pb.TaskStatus(
                        state=pb.TASK_STATE_INPUT_REQUIRED,
                        message=new_text_message(
                            "which night?", context_id=context.context_id, task_id=context.task_id
                        ),
                    ),
                )
            )
            return
        if text.startswith("fail"):
            task = pb.Task(
                id=context.task_id,
                context_id=context.context_id,
                status=pb.TaskStatus(state=pb.TASK_STATE_SUBMITTED),
            )
            await event_queue.enqueue_event(task)
            await event_queue.enqueue_event(
                pb.TaskStatusUpdateEvent(
                    task_id=context.task_id,
                    context_id=context.context_id,
                    status=pb.TaskStatus(
                        state=pb.TASK_STATE_FAILED,
                        message=new_text_message(
                            "no rooms left", context_id=context.context_id, task_id=context.task_id
                        ),
                    ),
                )
            )
            return
        if text.startswith("task"):
            task = pb.Task(
                id=context.task_id,
                context_id=context.context_id,
                status=pb.TaskStatus(state=pb.TASK_STATE_SUBMITTED),
            )
            await event_queue.enqueue_event(task)
            await event_queue.enqueue_event(
                pb.TaskArtifactUpdateEvent(
                    task_id=context.task_id,
                    context_id=context.context_id,
                    artifact=pb.Artifact(artifact_id="a-1", parts=[pb.Part(text="booked: " + text)]),
                )
            )
            await event_queue.enqueue_event(
                pb.TaskStatusUpdateEvent(
                    task_id=context.task_id,
                    context_id=context.context_id,
                    status=pb.TaskStatus(state=pb.TASK_STATE_COMPLETED),
                )
            )
            return
        parts = [p for p in message.parts if p.HasField("data")] if message else []
        if parts:
            reply = pb.Message(message_id="r-" + message.message_id, role=pb.ROLE_AGENT,
                               context_id=context.context_id, parts=parts)
        else:
            reply = new_text_message("echo: " + text, context_id=context.context_id)
        await event_queue.enqueue_event(reply)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        return None


async def main():
    port = int(sys.argv[1])
    card = pb.AgentCard(
        name="hotel",
        description="books rooms",
        version="1.0",
        supported_interfaces=[
            pb.AgentInterface(url=f"http://127.0.0.1:{port}/", protocol_binding="JSONRPC",
                              protocol_version="1.0")
        ],
        capabilities=pb.AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[pb.AgentSkill(id="book", name="book", description="books rooms", tags=["hotel"])],
    )
    handler = DefaultRequestHandler(Echo(), InMemoryTaskStore(), card)
    routes = create_agent_card_routes(card) + create_jsonrpc_routes(handler, "/")
    keep_alive = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    tls = {}
    if len(sys.argv) > 5:
        tls = dict(ssl_certfile=sys.argv[3], ssl_keyfile=sys.argv[4], ssl_ca_certs=sys.argv[5],
                   ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=port,
                            log_level="warning", timeout_keep_alive=keep_alive, **tls)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await task


asyncio.run(main())
