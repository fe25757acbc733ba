"""Reading a JSON body safely: media type, size limit while streaming, then parsing."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from .errors import ApiError

MAX_JSON_DEPTH = 32


def _depth(value: Any, limit: int) -> int:
    # Iterative, so hostile nesting cannot blow the Python stack. Only containers are pushed
    # (a scalar's level is its parent's plus one): a batch body has thousands of scalars.
    if not isinstance(value, dict | list):
        return 1
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    deepest = 1
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if children:
            if depth + 1 > deepest:
                deepest = depth + 1
                if deepest > limit:
                    return deepest
            stack.extend((v, depth + 1) for v in children if isinstance(v, dict | list))
    return deepest


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length") from None
        if size > limit:
            raise ApiError(413, "payload_too_large", f"body over {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "payload_too_large", f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")


def parse_json(raw: bytes) -> Any:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {exc}") from None
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ApiError(422, "too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


# How JSON text can carry what Postgres jsonb refuses once parsed by Python: a NUL or a lone
# surrogate only as a \\u escape (raw ones fail json.loads), NaN and Infinity as bare words.
_JSONB_UNSAFE = (b"\\u0000", b"\\ud", b"\\uD", b"NaN", b"Infinity")


def jsonb_safe_text(raw: bytes) -> bool:
    """True when JSON text parsed by parse_json cannot hold anything jsonb refuses, so the
    values need no walk (payloads.json_safety_errors). Conservative: the same bytes inside a
    string (a valid surrogate pair, the word NaN) only mean the values are walked after all."""
    return not any(token in raw for token in _JSONB_UNSAFE)


async def json_body(request: Request, limit: int) -> Any:
    require_json(request)
    return parse_json(await read_body(request, limit))
