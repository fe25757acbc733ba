"""Small helpers shared by the operator endpoints (issue 6)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ..ops import configured_destinations
from ..payloads import pydantic_error_details
from .errors import ApiError

M = TypeVar("M", bound=BaseModel)


def configured(request: Request) -> set[str]:
    """Which destinations this deployment can deliver to, worked out once per app."""
    state = request.app.state
    names = getattr(state, "ops_configured", None)
    if names is None:
        names = configured_destinations(state.hub.settings)
        state.ops_configured = names
    return names


def validate(model: type[M], data: Any, prefix: str = "") -> M:
    """Model validation with the 422 contract: field paths in details, input never echoed."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(
            422, "validation_error", "invalid parameters", pydantic_error_details(exc, prefix)
        ) from None


def query_dict(request: Request) -> dict[str, str]:
    """Query parameters as a flat dict; a repeated parameter is a 422, not a silent pick."""
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in out:
            raise ApiError(
                422,
                "validation_error",
                "invalid parameters",
                [{"path": key, "message": "given more than once", "type": "repeated"}],
            )
        out[key] = value
    return out


def like_literal(text: str | None) -> str | None:
    """Escape LIKE wildcards so an operator's `50%` or `_id` matches literally."""
    if text is None:
        return None
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def encode_cursor(dead_at: datetime, id: int) -> str:
    raw = f"{dead_at.isoformat()}|{id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
        stamp, _, id_text = raw.partition("|")
        at = datetime.fromisoformat(stamp)
        if at.tzinfo is None:
            raise ValueError("naive")
        return at, int(id_text)
    except (ValueError, UnicodeError, binascii.Error):
        raise ApiError(
            422,
            "validation_error",
            "invalid parameters",
            [{"path": "cursor", "message": "not a cursor this API returned", "type": "cursor"}],
        ) from None


def int_path(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(404, "not_found", "no such dead letter")
    return int(raw)
