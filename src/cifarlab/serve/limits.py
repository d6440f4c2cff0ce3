"""A cap on request bodies, enforced while they arrive, so an upload can never fill memory.

The declared Content-Length is checked first; bodies without one (chunked uploads) are
counted as they stream in. Either way the client gets 413 with a JSON `detail`.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse


class BodyLimit:
    """ASGI middleware answering 413 to any request whose body exceeds `max_bytes`."""

    def __init__(self, app, max_bytes: int, message: str):
        self.app, self.max_bytes, self.message = app, max_bytes, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI passes HTTPExceptions from body parsing to its handler unchanged.
                raise HTTPException(status_code=413, detail=self.message)
            return message

        await self.app(scope, counted_receive, send)
