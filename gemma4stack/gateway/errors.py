"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with an HTTP status.

The official clients map the status to an exception class (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 413/422 ..., 429 RateLimitError, 5xx
InternalServerError) and read the message from this object.
"""
from __future__ import annotations

import math


class APIError(Exception):
    """A request the gateway answers with an error.

    status: HTTP status; etype: "invalid_request_error" | "authentication_error" |
    "rate_limit_error" | "server_error" | ...; retry_after: seconds, sent as Retry-After.
    """

    def __init__(self, status: int, message: str, etype: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 retry_after: float | None = None, routing: dict | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.extra_headers = headers or {}
        self.status, self.message, self.etype = status, message, etype
        self.code, self.param, self.retry_after, self.routing = code, param, retry_after, routing

    def body(self) -> dict:
        d = {"error": {"message": self.message, "type": self.etype, "param": self.param,
                       "code": self.code}}
        if self.routing is not None:
            d["_routing"] = self.routing
        return d

    def headers(self) -> dict:
        if self.retry_after is None:
            return dict(self.extra_headers)
        return {"Retry-After": str(max(1, math.ceil(self.retry_after))), **self.extra_headers}
