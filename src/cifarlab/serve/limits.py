"""What one client can hold of the server: body size and time, requests at once, connections.

Each limit answers with a status and a JSON `detail`, never by dropping work silently:

- a body over `max_bytes` gets 413, checked on the declared Content-Length first and counted
  as it streams in for chunked uploads;
- a body that stops arriving (no bytes for `idle_seconds`, or not all within `total_seconds`)
  gets 408, so a stalled upload does not hold its thread and connection for ever;
- beyond `max_requests` requests in progress, new ones get 429 at once, before their bodies
  are read, which bounds the uploads held in memory and on disk;
- a connection whose request line and headers do not arrive within `HEAD_TIMEOUT_SECONDS` is
  closed (`TimedH11Protocol`; uvicorn itself waits for ever), and uvicorn's own
  `limit_concurrency` answers 503 past `MAX_CONNECTIONS` open connections.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_SECONDS = 20  # From connecting, or from the last response, to a complete header.
MAX_CONNECTIONS = 64  # Open connections, idle keep-alive ones included; uvicorn answers 503.


class BodyLimit:
    """ASGI middleware answering 413 to any request whose body exceeds `max_bytes`, and 408 to
    one whose body stalls for `idle_seconds` or is not complete within `total_seconds`."""

    def __init__(self, app, max_bytes: int, message: str, idle_seconds: float = 20,
                 total_seconds: float = 120):  # fmt: skip
        self.app, self.max_bytes, self.message = app, max_bytes, message
        self.idle_seconds, self.total_seconds = idle_seconds, total_seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
            return
        received = 0
        deadline = asyncio.get_running_loop().time() + self.total_seconds

        async def counted_receive():
            nonlocal received
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), min(self.idle_seconds, left))
            except TimeoutError:
                # FastAPI passes HTTPExceptions from body parsing to its handler unchanged.
                raise HTTPException(
                    status_code=408, detail="The upload arrived too slowly; send it again."
                ) from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(status_code=413, detail=self.message)
            return message

        await self.app(scope, counted_receive, send)


class RequestLimit:
    """ASGI middleware answering 429 to a request that arrives while `max_requests` others
    are still in progress."""

    def __init__(self, app, max_requests: int):
        self.app, self.max_requests, self.in_progress = app, max_requests, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.max_requests:
            busy = JSONResponse(
                {"detail": "The server is busy with other requests; try again in a moment."},
                status_code=429,
                headers={"Retry-After": "1"},
            )
            await busy(scope, receive, send)
            return
        # Requests run on the event loop's one thread, so the count needs no lock.
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that does not send a complete request head
    within `HEAD_TIMEOUT_SECONDS` of connecting or of its last response."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        self._arm_head_timer()  # First: the call below may start a pipelined request.
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
        # A new request replaces `self.cycle`; the same one still there means no head came.
        self._head_timer = self.loop.call_later(
            HEAD_TIMEOUT_SECONDS, self._close_if_no_head, self.cycle
        )

    def _close_if_no_head(self, cycle) -> None:
        waiting = self.cycle is cycle and (cycle is None or cycle.response_complete)
        if waiting and not self.transport.is_closing():
            self.transport.close()
