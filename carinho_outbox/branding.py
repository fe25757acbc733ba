"""Branding and message texts: one TOML file the operators edit (BRANDING_FILE, default the
packaged branding.toml), read once when a process starts.

Message texts are Jinja2 templates rendered in a sandbox, so an edited file can only reach the
names it is given. Everything is checked at load: a missing text or a template that does not
compile stops the process at start, not at the first send.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

DEFAULT_FILE = Path(__file__).resolve().parent / "branding.toml"
RATING_STYLES = ("button_list", "option_list")

_REQUIRED: dict[str, tuple[str, ...]] = {
    "empresa": ("nome", "atendente", "telefone", "horario", "site", "logo_url"),
    "cores": ("primaria", "secundaria", "fundo", "texto"),
    "whatsapp": (
        "saudacao_lead",
        "boas_vindas_cliente",
        "pedido_avaliacao",
        "avaliacao_alternativa",
        "estilo_avaliacao",
        "titulo_lista",
        "botao_lista",
    ),
    "email": (
        "assunto_boas_vindas",
        "boas_vindas",
        "assunto_avaliacao",
        "pedido_avaliacao",
        "botao_avaliacao",
        "rodape",
    ),
    "formulario": (
        "titulo",
        "pergunta",
        "comentario",
        "enviar",
        "obrigado",
        "ja_respondido",
        "expirado",
        "invalido",
    ),
}


class BrandingError(ValueError):
    """The branding file is missing, unreadable or incomplete."""


# Plain text out: WhatsApp shows it as is, and the e-mail templates escape it where it lands.
_env = SandboxedEnvironment(autoescape=False, undefined=StrictUndefined)


@dataclass(frozen=True)
class Branding:
    company: dict[str, str]
    colors: dict[str, str]
    whatsapp: dict[str, str]
    ratings: dict[int, str]
    email: dict[str, str]
    form: dict[str, str]

    @property
    def rating_style(self) -> str:
        return self.whatsapp["estilo_avaliacao"]

    def context(self, name: str | None, **extra: Any) -> dict[str, Any]:
        """The names a message template may use."""
        full = " ".join((name or "").split())
        return {
            "nome": full,
            "primeiro_nome": full.split(" ")[0] if full else "",
            "empresa": self.company["nome"],
            "atendente": self.company["atendente"],
            "telefone": self.company["telefone"],
            "horario": self.company["horario"],
            "site": self.company["site"],
            **extra,
        }

    def text(self, section: str, key: str, context: Mapping[str, Any]) -> str:
        source = getattr(self, section)[key]
        return _env.from_string(source).render(**context).strip()


def _section(doc: dict[str, Any], name: str, path: Path) -> dict[str, str]:
    raw = doc.get(name)
    if not isinstance(raw, dict):
        raise BrandingError(f"{path}: missing section [{name}]")
    out: dict[str, str] = {}
    for key in _REQUIRED[name]:
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise BrandingError(f"{path}: [{name}] {key} must be a non-empty string")
        out[key] = value
    return out


def load_branding(path: Path | None = None) -> Branding:
    path = path or DEFAULT_FILE
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BrandingError(f"cannot read branding file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BrandingError(f"{path}: not valid TOML: {exc}") from None
    sections = {name: _section(doc, name, path) for name in _REQUIRED}
    if sections["whatsapp"]["estilo_avaliacao"] not in RATING_STYLES:
        raise BrandingError(f"{path}: [whatsapp] estilo_avaliacao must be one of {RATING_STYLES}")
    notes = doc.get("whatsapp", {}).get("notas", {})
    ratings = {n: str(notes.get(str(n), "")).strip() or str(n) for n in range(1, 6)}
    for name, texts in sections.items():
        for key, source in texts.items():
            try:
                _env.parse(source)
            except TemplateError as exc:
                raise BrandingError(f"{path}: [{name}] {key}: {exc}") from None
    return Branding(
        company=sections["empresa"],
        colors=sections["cores"],
        whatsapp=sections["whatsapp"],
        ratings=ratings,
        email=sections["email"],
        form=sections["formulario"],
    )
