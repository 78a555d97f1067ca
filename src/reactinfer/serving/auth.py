"""The API key (`react serve --api-key`, or REACT_API_KEY): every inference route under
/v1 and /v2/models needs `Authorization: Bearer <key>`, compared in constant time; a
request without it, or with another key, gets 401 with an OpenAI-style error. Health
(/v2/health/*, /v2/models/{name}/ready), /metrics and the schema stay open, so probes and
scrapers need no key.

The key is never logged: ServeConfig leaves it out of its repr and `to_dict`."""
from __future__ import annotations

import hmac
import os
from typing import Any

API_KEY_ENV = "REACT_API_KEY"
_GUARDED = ("/v1/", "/v2/models/")


def api_key_from_env(given: str | None) -> str | None:
    """`given` (a command-line flag) if set, else REACT_API_KEY, else None (no key)."""
    key = given if given is not None else os.environ.get(API_KEY_ENV)
    return key or None


def needs_key(path: str) -> bool:
    """Inference and model routes need the key; readiness probes do not."""
    return path.startswith(_GUARDED) and not path.endswith("/ready")


def authorized(scope: dict, key: str) -> bool:
    """Whether the request's `Authorization: Bearer <token>` matches `key`, compared in
    constant time (hmac.compare_digest), whatever the token's length or content."""
    expected = key.encode()
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), expected)
    return False


async def refuse(path: str, send: Any) -> None:
    """401 with the error shape of the route's protocol (OpenAI's under /v1)."""
    import json

    from .shed import error_body

    message = ("a valid API key is needed: send the header 'Authorization: Bearer <key>' "
               "(the key the server was started with: --api-key or REACT_API_KEY)")
    body = json.dumps(error_body(path, 401, message, code="invalid_api_key")).encode()
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b'Bearer realm="reactinfer"')]})
    await send({"type": "http.response.body", "body": body})
