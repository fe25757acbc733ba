"""The pure parts of the business flows: Z-API answer classification (on the documented
samples), message composition, branding loading, feedback tokens, reading replies, syncs'
contract mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carinho_outbox.adapters.zapi import classify_zapi
from carinho_outbox.branding import BrandingError, load_branding
from carinho_outbox.feedback import Reply, read_reply
from carinho_outbox.feedback_tokens import TokenError, make_token, read_token
from carinho_outbox.messages import (
    EmailComposer,
    MessageError,
    rating_from_id,
    template_for,
    whatsapp_message,
)
from carinho_outbox.syncs import ContractError, later_cursor, schedule_action


def _fixtures() -> Path:
    beside = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "zapi"
    for candidate in (beside, Path("/work/shared/fixtures/zapi")):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("Z-API fixtures not found")


FIX = _fixtures()


def raw(name: str) -> bytes:
    return (FIX / name).read_bytes()


# --- Z-API answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["send-button-list-response-200.json", "send-option-list-response-200.json",
             "send-button-actions-response-200.json"],
)  # fmt: skip
def test_documented_success_answers_are_delivered_with_their_message_id(name: str) -> None:
    assert classify_zapi(200, raw(name)) == ("ok", None, "D241XXXX732339502B68")


def test_documented_send_text_sample_has_no_message_id_so_it_is_not_done() -> None:
    # The published sample echoes the request; without a messageId nothing proves the send.
    kind, error, message_id = classify_zapi(200, raw("send-text-response-200.json"))
    assert (kind, message_id) == ("retry", None)
    assert error == "HTTP 200 without messageId"


def test_value_false_is_retried() -> None:
    kind, error, _ = classify_zapi(200, b'{"value": false}')
    assert kind == "retry"
    assert error is not None and "value=false" in error


@pytest.mark.parametrize(
    "name",
    [
        "error-client-token-not-configured-observed.json",
        "error-client-token-missing-documented.json",
    ],
)
def test_client_token_errors_are_permanent_configuration_errors(name: str) -> None:
    kind, error, _ = classify_zapi(400, raw(name))
    assert kind == "permanent"
    assert error is not None and "ZAPI_CLIENT_TOKEN" in error


def test_ip_not_allowed_403_is_permanent() -> None:
    assert classify_zapi(403, raw("error-ip-not-allowed.json")) == (
        "permanent",
        "HTTP 403: [IP request] not allowed",
        None,
    )


@pytest.mark.parametrize(("status", "kind"), [(500, "retry"), (503, "retry"), (429, "retry"),
                                              (404, "permanent"), (401, "permanent")])  # fmt: skip
def test_other_statuses(status: int, kind: str) -> None:
    assert classify_zapi(status, b"<html>oops</html>")[0] == kind


# --- messages and branding -----------------------------------------------------------------


def test_feedback_request_has_five_rating_buttons_and_the_text_fallback() -> None:
    branding = load_branding()
    msg = whatsapp_message(
        "feedback_request", branding, phone_digits="5541999998888", name="Maria  Souza"
    )
    assert msg.endpoint == "send-button-list"
    assert msg.body["phone"] == "5541999998888"
    assert msg.body["message"].startswith("Olá, Maria! Como foi o atendimento de hoje")
    assert msg.body["message"].endswith(
        "Se os botões não aparecerem, responda de 1 a 5 (1 = ruim, 5 = excelente)."
    )
    assert [b["id"] for b in msg.body["buttonList"]["buttons"]] == [
        "rating_1", "rating_2", "rating_3", "rating_4", "rating_5"
    ]  # fmt: skip


def test_option_list_style(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "carinho_outbox" / "branding.toml").read_text()
    custom = tmp_path / "b.toml"
    custom.write_text(text.replace('avaliacao = "button_list"', 'avaliacao = "option_list"'))
    msg = whatsapp_message("feedback_request", load_branding(custom), phone_digits="1", name=None)
    assert msg.endpoint == "send-option-list"
    assert "responda de 1 a 5" in msg.body["message"]
    options = msg.body["optionList"]["options"]
    assert (options[0]["id"], options[0]["title"]) == ("rating_1", "1 - Ruim")
    assert len(options) == 5
    assert msg.body["optionList"]["buttonLabel"] == "Escolher nota"


def test_broken_branding_files_fail_at_load(tmp_path: Path) -> None:
    good = (Path(__file__).resolve().parents[2] / "carinho_outbox" / "branding.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(good.replace("{{ primeiro_nome }}!", "{{ primeiro_nome !", 1))
    with pytest.raises(BrandingError, match="saudacao_lead"):
        load_branding(bad)
    bad.write_text(good.replace('atendente = "Ana"\n', ""))
    with pytest.raises(BrandingError, match="atendente"):
        load_branding(bad)
    with pytest.raises(BrandingError, match="cannot read"):
        load_branding(tmp_path / "missing.toml")


def test_templates_per_event_and_channel() -> None:
    assert template_for("lead.created", "whatsapp", {}) == "greeting"
    assert template_for("client.registered", "email", {}) == "welcome"
    assert template_for("service.completed", "email", {}) == "feedback_request"
    assert template_for("lead.created", "whatsapp", {"template": "welcome"}) == "welcome"
    with pytest.raises(MessageError):
        template_for("lead.created", "email", {})
    with pytest.raises(MessageError):
        template_for("lead.created", "whatsapp", {"template": "<script>"})


def test_html_email_escapes_names() -> None:
    composer = EmailComposer(load_branding())
    content = composer.compose("welcome", name="<b>Zé</b> & Cia")
    assert "&lt;b&gt;Zé&lt;/b&gt;" in content.html
    assert "<b>Zé</b>" not in content.html
    assert content.subject == "Bem-vindo(a) à Carinho Cuidadores, <b>Zé</b>!"
    assert content.text.startswith("Bem-vindo(a) à Carinho Cuidadores, <b>Zé</b>!\n\n")


# --- tokens and replies ---------------------------------------------------------------------


def test_tokens_verify_expire_and_refuse_tampering() -> None:
    token = make_token("s3cret", "svc-1", issued_at=1_000_000)
    assert read_token("s3cret", token, ttl_s=100, now=1_000_050).service_id == "svc-1"
    with pytest.raises(TokenError, match="expired"):
        read_token("s3cret", token, ttl_s=100, now=1_000_101)
    with pytest.raises(TokenError, match="invalid"):
        read_token("other", token, ttl_s=100, now=1_000_050)
    body, sig = token.split(".")
    forged = make_token("s3cret", "svc-2", issued_at=1_000_000).split(".")[0] + "." + sig
    with pytest.raises(TokenError, match="invalid"):
        read_token("s3cret", forged, ttl_s=100, now=1_000_050)
    for junk in ("", "abc", "a.b.c", body + ".", "é." + sig, "x" * 2000):
        with pytest.raises(TokenError):
            read_token("s3cret", junk, ttl_s=100, now=1_000_050)


@pytest.mark.parametrize(
    ("inbound", "reply"),
    [
        ({"button_id": "rating_4"}, Reply(rating=4)),
        ({"list_id": "rating_2"}, Reply(rating=2)),
        ({"button_id": "1"}, Reply()),
        ({"text": "5"}, Reply(rating=5)),
        ({"text": "nota 3"}, Reply(rating=3)),
        ({"text": "4 horas atrasado"}, Reply()),
        ({"text": "PARAR"}, Reply(opt_out=True)),
        ({"text": "Sair."}, Reply(opt_out=True)),
        ({"text": "não quero sair do plano"}, Reply()),
        ({"media": {"kind": "image"}}, Reply()),
    ],
)
def test_reading_replies(inbound: dict[str, object], reply: Reply) -> None:
    assert read_reply(inbound) == reply


def test_rating_ids() -> None:
    assert rating_from_id("rating_5") == 5
    assert rating_from_id("rating_6") is None
    assert rating_from_id("rating_") is None
    assert rating_from_id(None) is None


# --- contracts → schedules -----------------------------------------------------------------


def test_active_contract_becomes_a_schedule() -> None:
    action, body = schedule_action(
        {
            "id": "ct-2",
            "client_id": "c-9",
            "status": "active",
            "schedule": {
                "weekdays": ["sab", "dom", 6],
                "shift_start": "19:00",
                "shift_end": "07:00",
            },
            "updated_at": "2025-11-10T10:05:00-03:00",
        },
        "America/Sao_Paulo",
    )
    assert action == "upsert"
    assert body == {
        "contract_id": "ct-2",
        "client_id": "c-9",
        "weekdays": [6, 7],
        "shift_start": "19:00",
        "shift_end": "07:00",
        "overnight": True,
        "timezone": "America/Sao_Paulo",
        "caregiver_id": None,
        "starts_on": None,
        "ends_on": None,
    }


@pytest.mark.parametrize(
    "contract",
    [
        {"id": "x", "client_id": "c", "status": "active"},
        {"id": "x", "client_id": "c", "status": "active",
         "schedule": {"weekdays": [8], "shift_start": "08:00", "shift_end": "12:00"}},
        {"id": "x", "client_id": "c", "status": "active",
         "schedule": {"weekdays": [1], "shift_start": "8h", "shift_end": "12:00"}},
        {"id": "x", "status": "cancelled"},
    ],
)  # fmt: skip
def test_bad_contracts_are_refused(contract: dict[str, object]) -> None:
    with pytest.raises(ContractError):
        schedule_action(contract, "America/Sao_Paulo")


def test_cursor_keeps_the_newest_source_timestamp() -> None:
    assert later_cursor(None, "2025-11-10T10:00:00-03:00") == "2025-11-10T10:00:00-03:00"
    assert later_cursor("2025-11-10T10:00:00-03:00", "2025-11-10T12:59:00+00:00") == (
        "2025-11-10T10:00:00-03:00"
    )
    assert later_cursor("2025-11-10T10:00:00-03:00", "2025-11-10T13:01:00+00:00") == (
        "2025-11-10T13:01:00+00:00"
    )
    assert later_cursor("2025-11-10T10:00:00-03:00", "garbage") == "2025-11-10T10:00:00-03:00"


def test_fixture_bodies_are_json() -> None:
    # Guard: the samples this file relies on are what they claim.
    assert json.loads(raw("send-button-list-request.json"))["buttonList"]["buttons"]
