"""Z-API callback normalisation (carinho_outbox.zapi_inbound), checked against every fixture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carinho_outbox.payloads import PayloadError, validate_payload
from carinho_outbox.zapi_inbound import ZapiResult, extract_rating, is_opt_out, normalize_callback


def _fixtures_dir() -> Path:
    # CI copies shared/ beside the clone: <repo>/../shared/fixtures/zapi.
    beside_repo = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "zapi"
    for candidate in (beside_repo, Path("/work/shared/fixtures/zapi")):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"Z-API fixtures not found (looked in {beside_repo})")


FIXTURES = _fixtures_dir()


def load(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


MSG_ID = "A20DA9C0183A2D35A260F53F5D2B9244"
PHONE = "+5544999999999"
PHONE_RAW = "5544999999999"


def inbound(
    *, instance_id: str, timestamp: str, sender: str = "name", **content: Any
) -> ZapiResult:
    payload = {
        "phone": PHONE,
        "phone_raw": PHONE_RAW,
        "message_id": MSG_ID,
        "sender_name": sender,
        "timestamp": timestamp,
        "instance_id": instance_id,
        **content,
    }
    return ZapiResult(
        kind="inbound",
        callback_type="ReceivedCallback",
        payload=payload,
        message_id=MSG_ID,
        phone=PHONE,
        phone_raw=PHONE_RAW,
        instance_id=instance_id,
        timestamp=timestamp,
    )


def status(value: str) -> ZapiResult:
    return ZapiResult(
        kind="status",
        callback_type="MessageStatusCallback",
        status=value,
        message_ids=("999999999999999999999",),
        phone=PHONE,
        phone_raw=PHONE_RAW,
        instance_id="instance.id",
        timestamp="2021-09-21T14:30:45+00:00",
    )


AD_CLID = (
    "Aff-niaAw7V94N8LGd79Vjr43TlJD4UnoBdpZJQ3LzABitbbG6wgKBSVOth4EN0IDr9glsKWjm2LBaFrJG3Nb0"
    "ILxP49ZtossVBNzlS8cFXBvv2ow7gNw"
)
IMAGE = {
    "kind": "image",
    "url": "https://",
    "mime_type": "image/jpeg",
    "thumbnail_url": "https://",
    "width": 600,
    "height": 315,
    "view_once": True,
}
NOT_A_CALLBACK = ZapiResult(kind="ignored", reason="missing_fields")

# Every fixture file, with the exact outcome. A new fixture without an entry fails
# test_every_fixture_has_an_expectation.
EXPECTED: dict[str, ZapiResult] = {
    "delivery-callback-v2-error.json": ZapiResult(
        kind="delivery",
        callback_type="DeliveryCallback",
        message_id=MSG_ID,
        zaap_id=MSG_ID,
        error="Phone number does not exist",
        phone=PHONE,  # sent as 12 digits: the ninth digit is restored
        phone_raw="554499999999",
        instance_id="instance.id",
        timestamp="2026-04-29T20:21:31.684+00:00",
    ),
    "delivery-callback-v2-success.json": ZapiResult(
        kind="delivery",
        callback_type="DeliveryCallback",
        message_id="A800FB3697F1DE58C48D",
        zaap_id=MSG_ID,
        error=None,
        phone=PHONE,
        phone_raw="554499999999",
        instance_id="instance.id",
        timestamp="2026-04-29T20:20:09.341+00:00",
    ),
    "delivery-callback.json": ZapiResult(
        kind="delivery",
        callback_type="DeliveryCallback",
        message_id=MSG_ID,
        zaap_id=MSG_ID,
        phone=PHONE,
        phone_raw="554499999999",
        instance_id="instance.id",
        timestamp=None,
    ),
    "disconnected-callback.json": ZapiResult(
        kind="ignored",
        reason="disconnected",
        callback_type="DisconnectedCallback",
        error="Device has been disconnected",
        instance_id="instance.id",
        timestamp="2020-01-27T22:15:42+00:00",  # this one is in seconds, not milliseconds
    ),
    "message-status-played.json": status("PLAYED"),
    "message-status-read-by-me.json": status("READ_BY_ME"),
    "message-status-read.json": status("READ"),
    "message-status-received.json": status("RECEIVED"),
    "message-status-sent.json": status("SENT"),
    "received-audio.json": inbound(
        instance_id="instance.id",  # the later duplicate key wins, as in any JSON parser
        timestamp="2021-09-21T12:54:09+00:00",
        media={
            "kind": "audio",
            "url": "https://",
            "mime_type": "audio/ogg; codecs=opus",
            "seconds": 10,
            "voice_note": True,
        },
    ),
    "received-button-response-pt.json": inbound(
        instance_id=MSG_ID,
        timestamp="2021-10-19T12:09:40+00:00",
        sender="Nome",
        button_id="1",
        button_text="Ótimo",
        reference_message_id=MSG_ID,
    ),
    "received-button-response.json": inbound(
        instance_id="instance.id",
        timestamp="2021-10-19T12:09:40+00:00",
        sender="Nome",
        button_id="1",
        button_text="Ótimo",
        reference_message_id=MSG_ID,
    ),
    "received-document.json": inbound(
        instance_id="instance.id",
        timestamp="2021-09-21T12:55:55+00:00",
        media={
            "kind": "document",
            "url": "https://",
            "mime_type": "application/pdf",
            "filename": "nome.pdf",
            "title": "nome",
            "page_count": 1,
        },
    ),
    "received-image-pt.json": inbound(
        instance_id=MSG_ID, timestamp="2021-09-21T12:53:48+00:00", media=IMAGE
    ),
    "received-image.json": inbound(
        instance_id="instance.id", timestamp="2021-09-21T12:53:48+00:00", media=IMAGE
    ),
    "received-list-response-pt.json": inbound(
        instance_id=MSG_ID,
        timestamp="2021-10-19T12:14:43+00:00",
        sender="Nome",
        list_id="1",
        list_title="Z-API",
        list_description="Z-API Asas para sua imaginação",
        reference_message_id=MSG_ID,
    ),
    "received-list-response.json": inbound(
        instance_id="instance.id",
        timestamp="2021-10-19T12:14:43+00:00",
        sender="Nome",
        list_id="1",
        list_title="Z-API",
        list_description="Z-API Wings for your imagination",
        reference_message_id=MSG_ID,
    ),
    "received-location.json": inbound(
        instance_id="instance.id",
        timestamp="2021-09-21T12:56:10+00:00",
        # The fixture's -99.999999999999999 is -100.0 as a double; empty address/url dropped.
        media={"kind": "location", "latitude": -100.0, "longitude": -100.0},
    ),
    "received-poll-vote.json": inbound(
        instance_id=MSG_ID,
        timestamp="2021-09-21T12:50:38+00:00",  # from "moment", the other spelling
        media={
            "kind": "poll_vote",
            "poll_message_id": "ID of the poll message that was responded to",
            "options": ["Z-API"],
        },
    ),
    "received-reaction.json": inbound(
        instance_id=MSG_ID,
        timestamp="2021-09-21T12:55:55+00:00",
        media={
            "kind": "reaction",
            "emoji": "\u2764\ufe0f",
            "referenced_message_id": "3EB0796DC6B777C0C7CD",
        },
    ),
    "received-text-from-ad-pt.json": inbound(
        instance_id=MSG_ID,
        timestamp="2022-07-07T16:02:32+00:00",
        text="mensagem recebida",
        ad={
            "title": "Titulo",
            "body": "texto do anuncio",
            "source_type": "ad",
            "source_id": "23722824350495506",
            "source_url": "https://",
            "ctwa_clid": AD_CLID,
            "media_type": 1,
            "thumbnail_url": "https://",
        },
    ),
    "received-text-pt.json": inbound(
        instance_id=MSG_ID, timestamp="2021-09-21T12:50:38+00:00", text="teste"
    ),
    "received-text.json": inbound(
        instance_id=MSG_ID, timestamp="2021-09-21T12:50:38+00:00", text="test"
    ),
    # Not callbacks (API error bodies, our own send requests and their responses): posted to
    # the webhook by mistake they are ignored, never an error.
    "error-client-token-missing-documented.json": NOT_A_CALLBACK,
    "error-client-token-not-configured-observed.json": NOT_A_CALLBACK,
    "error-ip-not-allowed.json": NOT_A_CALLBACK,
    "send-button-actions-request-call-url.json": NOT_A_CALLBACK,
    "send-button-actions-request-reply.json": NOT_A_CALLBACK,
    "send-button-actions-response-200.json": NOT_A_CALLBACK,
    "send-button-list-request.json": NOT_A_CALLBACK,
    "send-button-list-response-200.json": NOT_A_CALLBACK,
    "send-option-list-request.json": NOT_A_CALLBACK,
    "send-option-list-response-200.json": NOT_A_CALLBACK,
    "send-text-request.json": NOT_A_CALLBACK,
    "send-text-response-200.json": NOT_A_CALLBACK,
}


def test_every_fixture_has_an_expectation() -> None:
    on_disk = {p.name for p in FIXTURES.glob("*.json")}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_normalises_exactly(name: str) -> None:
    assert normalize_callback(load(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(n for n, r in EXPECTED.items() if r.kind == "inbound"))
def test_inbound_payloads_pass_event_validation_unchanged(name: str) -> None:
    result = normalize_callback(load(name))
    assert result.payload is not None
    assert validate_payload("whatsapp.inbound", result.payload) == result.payload


# --- what is dropped -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"fromMe": True}, "from_me"),
        ({"isGroup": True}, "group"),
        ({"phone": "120363019502650977-group"}, "group"),
        ({"phone": "120363019502650977@g.us"}, "group"),
        ({"isNewsletter": True}, "newsletter"),
        ({"phone": "120363166@newsletter"}, "newsletter"),
        ({"broadcast": True}, "broadcast"),
        ({"phone": "5544999999999@broadcast"}, "broadcast"),
        ({"isStatusReply": True}, "status_reply"),
        ({"phone": "status@broadcast", "broadcast": True}, "status_reply"),
        ({"messageId": None}, "missing_fields"),
        ({"phone": ""}, "missing_fields"),
        ({"text": None}, "unsupported_type"),
        ({"text": None, "notification": "GROUP_PARTICIPANT_ADD"}, "notification"),
        ({"text": None, "waitingMessage": True}, "waiting_message"),
    ],
)
def test_dropped_received_callbacks(changes: dict[str, Any], reason: str) -> None:
    body = {**load("received-text.json"), **changes}
    assert normalize_callback(body) == ZapiResult(
        kind="ignored", reason=reason, callback_type="ReceivedCallback"
    )


def test_from_me_wins_over_everything() -> None:
    body = {**load("received-text.json"), "fromMe": True, "isGroup": True}
    assert normalize_callback(body).reason == "from_me"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "missing_fields"),
        ({"type": None}, "missing_fields"),
        ({"type": "ConnectedCallback", "connected": True}, "connected"),
        ({"type": "PresenceChatCallback", "status": "COMPOSING"}, "presence"),
        ({"type": "SomethingNewCallback"}, "unsupported_type"),
        ({"type": "MessageStatusCallback", "status": "READ"}, "missing_fields"),
        ({"type": "MessageStatusCallback", "ids": ["x"]}, "missing_fields"),
        (
            {"type": "MessageStatusCallback", "ids": ["x"], "status": "READ", "isGroup": True},
            "group",
        ),
        ({"type": "DeliveryCallback", "phone": "5544999999999"}, "missing_fields"),
    ],
)
def test_other_ignored_callbacks(body: dict[str, Any], reason: str) -> None:
    result = normalize_callback(body)
    assert (result.kind, result.reason) == ("ignored", reason)


@pytest.mark.parametrize("body", [[], "x", None, 42])
def test_non_object_body_is_ignored(body: Any) -> None:
    assert normalize_callback(body) == ZapiResult(kind="ignored", reason="not_an_object")


# --- field handling ----------------------------------------------------------------------------


def test_lid_sender_keeps_raw_id_and_no_phone() -> None:
    body = {**load("received-text.json"), "phone": "81896604192873@lid"}
    result = normalize_callback(body)
    assert result.kind == "inbound"
    assert result.payload is not None
    assert (result.payload["phone"], result.payload["phone_raw"]) == (None, "81896604192873@lid")
    assert (result.phone, result.phone_raw) == (None, "81896604192873@lid")
    assert validate_payload("whatsapp.inbound", result.payload) == result.payload


def test_millisecond_timestamp_keeps_milliseconds() -> None:
    body = {**load("received-text.json"), "momment": 1632228638123}
    assert normalize_callback(body).timestamp == "2021-09-21T12:50:38.123+00:00"


@pytest.mark.parametrize("momment", [None, "1632228638000", True, -5, 0, float("inf"), 10**30])
def test_unusable_timestamp_is_none(momment: object) -> None:
    body = {**load("received-text.json"), "momment": momment}
    result = normalize_callback(body)
    assert result.kind == "inbound"
    assert result.timestamp is None
    assert result.payload is not None and result.payload["timestamp"] is None


def test_edited_and_forwarded_flags() -> None:
    body = {**load("received-text.json"), "isEdit": True, "forwarded": True}
    payload = normalize_callback(body).payload
    assert payload is not None
    assert (payload["edited"], payload["forwarded"]) == (True, True)


def test_video_sticker_and_contact_media() -> None:
    base = {k: v for k, v in load("received-text.json").items() if k != "text"}
    video = {"videoUrl": "https://v", "mimeType": "video/mp4", "caption": "olha", "seconds": 7}
    sticker = {"stickerUrl": "https://s", "mimeType": "image/webp"}
    contact = {"displayName": "Bia", "vCard": "BEGIN:VCARD", "phones": ["5511987654321"]}
    results = [
        normalize_callback({**base, "video": video}),
        normalize_callback({**base, "sticker": sticker}),
        normalize_callback({**base, "contact": contact}),
    ]
    assert [r.payload["media"] for r in results if r.payload] == [
        {"kind": "video", "url": "https://v", "mime_type": "video/mp4", "caption": "olha",
         "seconds": 7},
        {"kind": "sticker", "url": "https://s", "mime_type": "image/webp"},
        {"kind": "contact", "display_name": "Bia", "vcard": "BEGIN:VCARD",
         "phones": ["5511987654321"]},
    ]  # fmt: skip


def test_non_finite_coordinates_are_dropped() -> None:
    body = {**load("received-location.json")}
    body["location"] = {"latitude": float("nan"), "longitude": float("inf"), "name": "Casa"}
    payload = normalize_callback(body).payload
    assert payload is not None
    assert payload["media"] == {"kind": "location", "name": "Casa"}


def test_delivery_blank_error_is_success() -> None:
    body = {**load("delivery-callback-v2-error.json"), "error": "  "}
    assert normalize_callback(body).error is None


def test_status_is_upper_cased_and_ids_filtered() -> None:
    body = {**load("message-status-read.json"), "status": "read", "ids": ["a", 7, None, ""]}
    result = normalize_callback(body)
    assert (result.status, result.message_ids) == ("READ", ("a", "7"))


def test_lower_case_callback_type_is_understood() -> None:
    body = {**load("received-text.json"), "type": "ReceivedCallBack"}
    result = normalize_callback(body)
    assert (result.kind, result.callback_type) == ("inbound", "ReceivedCallBack")


# --- ratings and opt-out ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rating"),
    [
        ("5", 5),
        ("  1 ", 1),
        ("5\ufe0f\u20e3", 5),
        ("3\u20e3", 3),
        ("nota 4", 4),
        ("Nota: 2", 2),
        ("NOTA 5!", 5),
        ("4/5", 4),
        ("4 / 5", 4),
        ("5 estrelas", 5),
        ("1 estrela", 1),
        ("3 de 5", 3),
        ("avaliação 4", 4),
        ("\u2b50\u2b50\u2b50", 3),
        ("\u2b50 \u2b50", 2),
        ("\uff15", 5),  # fullwidth digit from some keyboards
        ("0", None),
        ("6", None),
        ("10", None),
        ("45", None),
        ("4 horas de atraso", None),
        ("nota 6", None),
        ("sim", None),
        ("", None),
        ("\u2b50" * 6, None),
        ("1 2", None),
    ],
)
def test_extract_rating(text: str, rating: int | None) -> None:
    assert extract_rating(text) == rating


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PARAR", True),
        ("parar", True),
        (" Sair ", True),
        ("STOP", True),
        ("stop.", True),
        ("Cancelar!", True),
        ("CANCELÁR", True),
        ("sáir", True),
        ("quero parar", False),
        ("não quero cancelar o serviço", False),
        ("parar de receber", False),
        ("paraR?", False),
        ("", False),
        ("obrigado", False),
    ],
)
def test_is_opt_out(text: str, expected: bool) -> None:
    assert is_opt_out(text) is expected


# --- properties ----------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=25,
)
ZAPI_KEYS = sorted({k for name in EXPECTED for k in load(name)} | {"sticker", "video", "contact"})


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_never_raises(body: Any) -> None:
    result = normalize_callback(body)
    assert result.kind in {"inbound", "status", "delivery", "ignored"}
    assert (result.reason is not None) == (result.kind == "ignored")


@settings(max_examples=500)
@given(
    base=st.sampled_from(sorted(EXPECTED)),
    overrides=st.dictionaries(st.sampled_from(ZAPI_KEYS), json_values, max_size=6),
)
def test_mutated_fixtures_never_raise_and_inbound_always_validates(
    base: str, overrides: dict[str, Any]
) -> None:
    result = normalize_callback({**load(base), **overrides})
    if result.kind == "inbound":
        assert result.payload is not None
        # What the ingress will do next must not fail for anything Z-API could send, except
        # an unstorable string (NUL) which validate_payload reports as a PayloadError.
        try:
            assert validate_payload("whatsapp.inbound", result.payload) == result.payload
        except PayloadError as exc:
            assert {d["type"] for d in exc.details} <= {"json_nul", "json_unicode"}


@given(st.text(max_size=30))
def test_rating_and_opt_out_never_raise(text: str) -> None:
    rating = extract_rating(text)
    assert rating is None or 1 <= rating <= 5
    assert isinstance(is_opt_out(text), bool)


def test_ids_are_stripped_as_validation_strips_them() -> None:
    # Found by the property above: a messageId of "0\r" came out as "0\r" while
    # validate_payload made it "0", so the payload did not validate to itself.
    inbound = normalize_callback({**load("received-text.json"), "messageId": "0\r"})
    assert inbound.kind == "inbound" and inbound.payload is not None
    assert inbound.payload["message_id"] == "0"
    assert validate_payload("whatsapp.inbound", inbound.payload) == inbound.payload
    status = normalize_callback({**load("message-status-read.json"), "ids": [" A1 ", "\tB2"]})
    assert status.message_ids == ("A1", "B2")
