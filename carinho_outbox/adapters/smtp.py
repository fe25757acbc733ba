"""The `email` channel: multipart/alternative mail (plain text + responsive HTML, both from the
Jinja2 templates in templates/email/) through SMTP.

stdlib smtplib runs in a thread (asyncio.to_thread), one connection per message: automated
mail is a few hundred messages a day, so a pool buys nothing and a fresh connection never
trips over a server that closed an idle one. STARTTLS (SMTP_STARTTLS) and login (SMTP_USER /
SMTP_PASSWORD) are optional. The Message-ID is derived from the delivery id, so every retry of
one delivery carries the same id and a receiving server can drop the duplicate; it is stored
as the delivery's external_id.

Classification: 5xx replies → permanent (the server refused this message or our credentials);
4xx replies, timeouts, disconnects and connection errors → retry. A server without STARTTLS
while SMTP_STARTTLS is on, a TLS certificate failure or a refused login are configuration
errors → permanent, so nothing is sent in clear or spins in retries.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formataddr, formatdate, parseaddr
from typing import Any

from ..contacts import Audience, RecipientUnknown, skipped
from ..masking import mask_text
from ..messages import EmailComposer, EmailContent, MessageError, template_for
from ..records import Job, SendResult

CHANNEL = "email"


def build_mime(
    content: EmailContent,
    *,
    mail_from: str,
    to_name: str | None,
    to_address: str,
    message_id: str,
    extra_headers: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = content.subject
    msg["From"] = mail_from
    msg["To"] = formataddr((to_name or "", to_address))
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = message_id
    # RFC 3834: an automatic message; well-behaved auto-responders do not answer it.
    msg["Auto-Submitted"] = "auto-generated"
    for key, value in (extra_headers or {}).items():
        msg[key] = value
    msg.set_content(content.text, subtype="plain", charset="utf-8")
    msg.add_alternative(content.html, subtype="html", charset="utf-8")
    return msg


def message_id_for(job: Job, mail_from: str) -> str:
    domain = parseaddr(mail_from)[1].rpartition("@")[2] or "carinho.local"
    return f"<carinho.dlv{job.id}@{domain}>"


def classify_smtp_error(exc: BaseException) -> tuple[bool, str]:
    """(permanent, error text without addresses) for an exception of one SMTP session."""
    name = type(exc).__name__
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return all(c >= 500 for c in codes), f"{name}: recipient refused ({codes})"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return True, f"{name}: {exc.smtp_code} login refused (check SMTP_USER/SMTP_PASSWORD)"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return True, f"{name}: the server does not offer it (STARTTLS or AUTH)"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return False, f"{name}: connection closed by the server"
    if isinstance(exc, smtplib.SMTPResponseException):
        text = (
            exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else ""
        )
        return exc.smtp_code >= 500, mask_text(f"{name}: {exc.smtp_code} {text[:200]}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True, f"{name}: TLS certificate not trusted"
    if isinstance(exc, smtplib.SMTPException):
        return False, mask_text(f"{name}: {str(exc)[:200]}")
    return False, f"connection error: {name}"


class SmtpAdapter:
    name = CHANNEL

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user: str | None,
        password: str | None,
        starttls: bool,
        mail_from: str,
        timeout_s: float,
        composer: EmailComposer,
        audience: Audience,
        feedback_link: Callable[[dict[str, Any]], str] | None,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.starttls = starttls
        self.mail_from = mail_from
        self.timeout_s = timeout_s
        self.composer = composer
        self.audience = audience
        self.feedback_link = feedback_link

    def _deliver(self, msg: EmailMessage, to_address: str) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(msg, to_addrs=[to_address])

    async def send(self, job: Job, data: dict[str, Any]) -> SendResult:
        started = time.perf_counter()
        try:
            template = template_for(job.type, CHANNEL, data)
            recipient = await self.audience.recipient(job.type, data)
        except (MessageError, RecipientUnknown) as exc:
            return SendResult(ok=False, permanent=True, error=str(exc))
        if recipient.blocked:
            return skipped(recipient.blocked, CHANNEL, started)
        if not recipient.email:
            return skipped("no e-mail", CHANNEL, started)
        link = None
        if template == "feedback_request":
            if self.feedback_link is None:
                return SendResult(
                    ok=False, permanent=True, error="FEEDBACK_SECRET is not set: no link to send"
                )
            link = self.feedback_link(data)
        try:
            content = self.composer.compose(template, name=recipient.name, link=link)
        except MessageError as exc:
            return SendResult(ok=False, permanent=True, error=str(exc))
        if template == "feedback_request":
            await self.audience.feedback_requested(data=data, recipient=recipient, channel=CHANNEL)
        message_id = message_id_for(job, self.mail_from)
        msg = build_mime(
            content,
            mail_from=self.mail_from,
            to_name=recipient.name,
            to_address=recipient.email,
            message_id=message_id,
            extra_headers={"X-Carinho-Delivery": f"dlv_{job.id}"},
        )
        summary = f"SMTP {self.host}:{self.port} to {mask_text(recipient.email)} ({template})"
        try:
            await asyncio.to_thread(self._deliver, msg, recipient.email)
        except (smtplib.SMTPException, OSError) as exc:
            permanent, error = classify_smtp_error(exc)
            return SendResult(
                ok=False,
                permanent=permanent,
                error=error,
                request_summary=summary,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        return SendResult(
            ok=True,
            response=f"250 accepted {message_id}",
            request_summary=summary,
            external_id=message_id,
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    async def aclose(self) -> None:
        """One connection per message: nothing stays open."""
