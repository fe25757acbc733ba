"""Normalise Z-API webhook callbacks into what the hub acts on.

Z-API posts every kind of callback (messages, read receipts, delivery reports, connection
changes) with one loose JSON shape that varies between API versions ("momment" vs "moment",
fields present or not). :func:`normalize_callback` never raises: anything it cannot use comes
back as ``kind="ignored"`` with a reason, because Z-API retries non-2xx answers and a callback
we will never understand should not be retried. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from carinho_outbox.phones import canonical_whatsapp_id

__all__ = [
    "OPT_OUT_WORDS",
    "ZapiResult",
    "extract_rating",
    "is_opt_out",
    "normalize_callback",
]

ResultKind = Literal["inbound", "status", "delivery", "ignored"]

# Below this a "momment" is seconds, above it milliseconds: 10**11 s is the year 5138, while
# 10**11 ms is 1973. Z-API documents milliseconds but DisconnectedCallback sends seconds.
_MS_THRESHOLD = 10**11
_MAX_TEXT_LEN = 65_536  # WhatsApp caps messages well below this


@dataclass(frozen=True, slots=True)
class ZapiResult:
    """The outcome of one callback.

    - ``inbound``: ``payload`` is ready for ``validate_payload("whatsapp.inbound", ...)``.
    - ``status``: ``status`` (SENT, RECEIVED, READ, PLAYED, READ_BY_ME, ...) for ``message_ids``.
    - ``delivery``: the send of ``message_id`` finished; ``error`` is None on success.
    - ``ignored``: ``reason`` says why (from_me, group, newsletter, broadcast, status_reply,
      notification, waiting_message, disconnected, connected, presence, unsupported_type,
      missing_fields, not_an_object).
    """

    kind: ResultKind
    reason: str | None = None
    callback_type: str | None = None
    payload: dict[str, Any] | None = None
    status: str | None = None
    message_ids: tuple[str, ...] = ()
    message_id: str | None = None
    zaap_id: str | None = None
    error: str | None = None
    phone: str | None = None
    phone_raw: str | None = None
    instance_id: str | None = None
    timestamp: str | None = None


def _str(value: object) -> str | None:
    """A non-empty string from a JSON value, stripped as payload validation strips it (so the
    normalised callback validates to itself), or None. Ids sometimes arrive as numbers."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _num(value: object) -> float | int | None:
    # NaN/Infinity get through Python's json parser but not into Postgres jsonb.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _obj(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _timestamp(body: dict[str, Any]) -> str | None:
    raw = body.get("momment", body.get("moment"))
    value = _num(raw)
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    millis = int(value) if value >= _MS_THRESHOLD else int(value * 1000)
    try:
        moment = datetime.fromtimestamp(millis / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds" if millis % 1000 else "seconds")


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _ignored(reason: str, callback_type: str | None, **extra: Any) -> ZapiResult:
    return ZapiResult(kind="ignored", reason=reason, callback_type=callback_type, **extra)


def _media(body: dict[str, Any]) -> dict[str, Any] | None:
    """The media descriptor for a non-text message, keys snake_case, absent values left out."""
    if image := _obj(body.get("image")):
        return _drop_none(
            {
                "kind": "image",
                "url": _str(image.get("imageUrl")),
                "mime_type": _str(image.get("mimeType")),
                "caption": _str(image.get("caption")),
                "thumbnail_url": _str(image.get("thumbnailUrl")),
                "width": _num(image.get("width")),
                "height": _num(image.get("height")),
                "view_once": image.get("viewOnce")
                if isinstance(image.get("viewOnce"), bool)
                else None,
            }
        )
    if audio := _obj(body.get("audio")):
        return _drop_none(
            {
                "kind": "audio",
                "url": _str(audio.get("audioUrl")),
                "mime_type": _str(audio.get("mimeType")),
                "seconds": _num(audio.get("seconds")),
                # ptt = recorded in the app (a voice note) rather than a forwarded audio file.
                "voice_note": audio.get("ptt") if isinstance(audio.get("ptt"), bool) else None,
            }
        )
    if video := _obj(body.get("video")):
        return _drop_none(
            {
                "kind": "video",
                "url": _str(video.get("videoUrl")),
                "mime_type": _str(video.get("mimeType")),
                "caption": _str(video.get("caption")),
                "seconds": _num(video.get("seconds")),
            }
        )
    if document := _obj(body.get("document")):
        return _drop_none(
            {
                "kind": "document",
                "url": _str(document.get("documentUrl")),
                "mime_type": _str(document.get("mimeType")),
                "filename": _str(document.get("fileName")),
                "title": _str(document.get("title")),
                "caption": _str(document.get("caption")),
                "page_count": _num(document.get("pageCount")),
            }
        )
    if location := _obj(body.get("location")):
        return _drop_none(
            {
                "kind": "location",
                "latitude": _num(location.get("latitude")),
                "longitude": _num(location.get("longitude")),
                "name": _str(location.get("name")),
                "address": _str(location.get("address")),
                "url": _str(location.get("url")),
            }
        )
    if reaction := _obj(body.get("reaction")):
        referenced = _obj(reaction.get("referencedMessage")) or {}
        return _drop_none(
            {
                "kind": "reaction",
                # An empty value is WhatsApp's way of removing a reaction; keep it as "".
                "emoji": reaction.get("value") if isinstance(reaction.get("value"), str) else None,
                "referenced_message_id": _str(referenced.get("messageId")),
            }
        )
    if sticker := _obj(body.get("sticker")):
        return _drop_none(
            {
                "kind": "sticker",
                "url": _str(sticker.get("stickerUrl")),
                "mime_type": _str(sticker.get("mimeType")),
            }
        )
    if contact := _obj(body.get("contact")):
        phones = contact.get("phones")
        return _drop_none(
            {
                "kind": "contact",
                "display_name": _str(contact.get("displayName")),
                "vcard": _str(contact.get("vCard")),
                "phones": [p for p in phones if isinstance(p, str)]
                if isinstance(phones, list)
                else None,
            }
        )
    if poll := _obj(body.get("pollVote")):
        options = poll.get("options")
        names = (
            [n for o in options if isinstance(o, dict) and (n := _str(o.get("name")))]
            if isinstance(options, list)
            else []
        )
        return _drop_none(
            {
                "kind": "poll_vote",
                "poll_message_id": _str(poll.get("pollMessageId")),
                "options": names,
            }
        )
    return None


def _ad(body: dict[str, Any]) -> dict[str, Any] | None:
    """Click-to-WhatsApp ad attribution; ``ctwa_clid`` is what Meta's conversions API wants."""
    reply = _obj(body.get("externalAdReply"))
    if reply is None:
        return None
    ad = _drop_none(
        {
            "title": _str(reply.get("title")),
            "body": _str(reply.get("body")),
            "source_type": _str(reply.get("sourceType")),
            "source_id": _str(reply.get("sourceId")),
            "source_url": _str(reply.get("sourceUrl")),
            "ctwa_clid": _str(reply.get("ctwaClid")),
            "media_type": _num(reply.get("mediaType")),
            "thumbnail_url": _str(reply.get("thumbnailUrl")),
        }
    )
    return ad or None


def _chat_kind(body: dict[str, Any], phone_raw: str) -> str | None:
    """Why this chat is not a one-to-one conversation with a person, if it is not."""
    lowered = phone_raw.lower()
    # Status replies first: they also arrive with a "@broadcast" chat id.
    if body.get("isStatusReply") is True or lowered == "status@broadcast":
        return "status_reply"
    if body.get("isGroup") is True or lowered.endswith(("@g.us", "-group")):
        return "group"
    if body.get("isNewsletter") is True or lowered.endswith("@newsletter"):
        return "newsletter"
    if body.get("broadcast") is True or lowered.endswith("@broadcast"):
        return "broadcast"
    return None


def _received(body: dict[str, Any], callback_type: str) -> ZapiResult:
    phone_value = _str(body.get("phone"))
    if body.get("fromMe") is True:
        # Our own sends (and what an attendant types on the phone) echo back; they are not
        # customer messages.
        return _ignored("from_me", callback_type)
    chat_reason = _chat_kind(body, phone_value or "")
    if chat_reason is not None:
        return _ignored(chat_reason, callback_type)
    message_id = _str(body.get("messageId"))
    if phone_value is None or message_id is None:
        return _ignored("missing_fields", callback_type)
    phone_raw, phone = canonical_whatsapp_id(phone_value)
    common = {
        "phone": phone,
        "phone_raw": phone_raw,
        "message_id": message_id,
        "sender_name": _str(body.get("senderName")) or _str(body.get("chatName")),
        "timestamp": _timestamp(body),
        "instance_id": _str(body.get("instanceId")),
    }
    content: dict[str, Any] = {}
    text_obj = _obj(body.get("text"))
    buttons = _obj(body.get("buttonsResponseMessage"))
    list_reply = _obj(body.get("listResponseMessage"))
    if text_obj is not None and isinstance(text_obj.get("message"), str):
        content["text"] = text_obj["message"][:_MAX_TEXT_LEN]
    elif buttons is not None and _str(buttons.get("buttonId")):
        content["button_id"] = _str(buttons.get("buttonId"))
        content["button_text"] = _str(buttons.get("message"))
    elif list_reply is not None and _str(list_reply.get("selectedRowId")):
        content["list_id"] = _str(list_reply.get("selectedRowId"))
        content["list_title"] = _str(list_reply.get("title"))
        content["list_description"] = _str(list_reply.get("message"))
    elif (media := _media(body)) is not None:
        content["media"] = media
    elif body.get("notification"):
        # Z-API reports chat events (participant added, call missed, ...) as ReceivedCallback.
        return _ignored("notification", callback_type)
    elif body.get("waitingMessage") is True:
        # WhatsApp has not decrypted it yet; the real content arrives in a later callback.
        return _ignored("waiting_message", callback_type)
    else:
        return _ignored("unsupported_type", callback_type)
    extra = {
        "reference_message_id": _str(body.get("referenceMessageId")),
        "ad": _ad(body),
        "edited": True if body.get("isEdit") is True else None,
        "forwarded": True if body.get("forwarded") is True else None,
    }
    payload = {**common, **_drop_none(content), **_drop_none(extra)}
    return ZapiResult(
        kind="inbound",
        callback_type=callback_type,
        payload=payload,
        message_id=message_id,
        phone=phone,
        phone_raw=phone_raw,
        instance_id=common["instance_id"],
        timestamp=common["timestamp"],
    )


def _message_status(body: dict[str, Any], callback_type: str) -> ZapiResult:
    if body.get("isGroup") is True:
        return _ignored("group", callback_type)
    status = _str(body.get("status"))
    ids = body.get("ids")
    message_ids = tuple(i for i in (_str(x) for x in ids) if i) if isinstance(ids, list) else ()
    if status is None or not message_ids:
        return _ignored("missing_fields", callback_type)
    phone_raw, phone = (None, None)
    if (phone_value := _str(body.get("phone"))) is not None:
        phone_raw, phone = canonical_whatsapp_id(phone_value)
    return ZapiResult(
        kind="status",
        callback_type=callback_type,
        status=status.strip().upper(),
        message_ids=message_ids,
        phone=phone,
        phone_raw=phone_raw,
        instance_id=_str(body.get("instanceId")),
        timestamp=_timestamp(body),
    )


def _delivery(body: dict[str, Any], callback_type: str) -> ZapiResult:
    message_id = _str(body.get("messageId"))
    if message_id is None:
        return _ignored("missing_fields", callback_type)
    phone_raw, phone = (None, None)
    if (phone_value := _str(body.get("phone"))) is not None:
        phone_raw, phone = canonical_whatsapp_id(phone_value)
    error = body.get("error")
    return ZapiResult(
        kind="delivery",
        callback_type=callback_type,
        message_id=message_id,
        zaap_id=_str(body.get("zaapId")),
        error=(error.strip() or None) if isinstance(error, str) else None,
        phone=phone,
        phone_raw=phone_raw,
        instance_id=_str(body.get("instanceId")),
        timestamp=_timestamp(body),
    )


# Connection-level callbacks: worth an operator alert (disconnected) but no event of ours.
_CONNECTION_TYPES = {
    "DisconnectedCallback": "disconnected",
    "ConnectedCallback": "connected",
    "PresenceChatCallback": "presence",
}


def normalize_callback(body: dict[str, Any]) -> ZapiResult:
    """Classify and normalise one Z-API callback body. Never raises."""
    if not isinstance(body, dict):
        return _ignored("not_an_object", None)
    callback_type = _str(body.get("type"))
    if callback_type is None:
        return _ignored("missing_fields", None)
    # Z-API has spelled it "ReceivedCallBack" in places; compare case-insensitively.
    folded = callback_type.casefold()
    if folded == "receivedcallback":
        return _received(body, callback_type)
    if folded == "messagestatuscallback":
        return _message_status(body, callback_type)
    if folded == "deliverycallback":
        return _delivery(body, callback_type)
    reason = _CONNECTION_TYPES.get(callback_type, "unsupported_type")
    error = body.get("error")
    return _ignored(
        reason,
        callback_type,
        error=error if isinstance(error, str) and error.strip() else None,
        instance_id=_str(body.get("instanceId")),
        timestamp=_timestamp(body),
    )


# ------------------------------------------------------------------------------------------
# Replies to our automated messages
# ------------------------------------------------------------------------------------------

_KEYCAP_RE = re.compile("([1-5])\ufe0f?\u20e3")  # "5️⃣" is 5 + variation selector + keycap
_STARS_RE = re.compile("^[\u2b50\u2605\U0001f31f]{1,5}$")  # ⭐ ★ 🌟 repeated
_RATING_RE = re.compile(
    r"^(?:nota|avaliacao|avalio|dou)?\s*:?\s*([1-5])"
    r"\s*(?:/\s*5|de\s+5|estrelas?|pontos?)?\s*[.!]*$"
)
OPT_OUT_WORDS = frozenset({"parar", "sair", "stop", "cancelar"})


def _fold(text: str) -> str:
    """NFKD, drop accents and emoji variation selectors, casefold, collapse whitespace."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch) and ch != "\ufe0f")
    return " ".join(stripped.casefold().split())


def extract_rating(text: str) -> int | None:
    """The 1-5 rating in a reply to a feedback request, or None if the reply is not one.

    Recognises the whole message being "4", "4️⃣", "nota 4", "4/5", "4 estrelas" or ⭐⭐⭐⭐.
    Anything longer is a comment, not a rating: "4 horas atrasado" must not score 4.
    """
    if not isinstance(text, str) or len(text) > 64:
        return None
    # Keycap digits survive NFKD only partly, so map them first.
    folded = _fold(_KEYCAP_RE.sub(r"\1", text.strip()))
    if not folded:
        return None
    if _STARS_RE.match(folded.replace(" ", "")):
        return len(folded.replace(" ", ""))
    match = _RATING_RE.match(folded)
    return int(match.group(1)) if match else None


def is_opt_out(text: str) -> bool:
    """True when the whole message asks to stop messages (PARAR, SAIR, STOP, CANCELAR).

    Whole-message only: "não quero cancelar o serviço" is not an opt-out.
    """
    if not isinstance(text, str) or len(text) > 64:
        return False
    folded = _fold(text).strip(" .!")
    return folded in OPT_OUT_WORDS
