"""HTTP pieces the services' APIs share."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

ErrorTranslator = Callable[[Sequence[Any]], list[dict[str, str]]]


def field_error_route(translate: ErrorTranslator) -> type[APIRoute]:
    """A route class whose validation failures are answered 422 ``{"detail": translate(errors)}``,
    e.g. ``[{"field": "requests[0].message.to[0]", "error": "..."}]``, instead of FastAPI's ``loc`` lists."""

    class FieldErrorRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handle = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    return await handle(request)
                except RequestValidationError as exc:
                    return JSONResponse({"detail": translate(exc.errors())}, status_code=422)

            return route

    return FieldErrorRoute
