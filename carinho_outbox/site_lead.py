"""The website's lead form, validated and turned into a ``lead.created`` payload.

The site posts whatever its form has (JSON or form-encoded, English or Portuguese field names,
"" for inputs left blank); this model absorbs those differences so ``lead.created`` always has
the catalog's shape. Pure: no I/O.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from carinho_outbox.payloads import Email, OptionalText, PersonName, Phone, cross_field_error

__all__ = ["SiteLeadForm"]

_TRUE_WORDS = frozenset({"true", "1", "yes", "y", "on", "sim", "s", "t"})
_FALSE_WORDS = frozenset({"false", "0", "no", "n", "off", "nao", "não", "f"})


def _parse_consent(value: object) -> object:
    # A checkbox posts "on", a Brazilian form may post "sim"/"não"; a blank value means the
    # field was rendered but not answered, which is the same as not sent (the default).
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    if isinstance(value, str):
        word = value.strip().casefold()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise PydanticCustomError("consent_invalid", "consent must be true or false")
    return value


Consent = Annotated[bool, BeforeValidator(_parse_consent)]


class SiteLeadForm(BaseModel):
    """One submission of the website lead form. Unknown fields are kept and forwarded."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: PersonName = Field(validation_alias=AliasChoices("name", "nome"))
    phone: Phone = Field(
        default=None, validation_alias=AliasChoices("phone", "telefone", "celular", "whatsapp")
    )
    email: Email = Field(default=None, validation_alias=AliasChoices("email", "e-mail"))
    message: OptionalText = Field(
        default=None, validation_alias=AliasChoices("message", "mensagem")
    )
    page_url: OptionalText = None
    consent: Consent = True
    utm_source: OptionalText = None
    utm_medium: OptionalText = None
    utm_campaign: OptionalText = None
    utm_term: OptionalText = None
    utm_content: OptionalText = None
    gclid: OptionalText = None
    fbclid: OptionalText = None

    @model_validator(mode="after")
    def _contact(self) -> SiteLeadForm:
        if self.phone is None and self.email is None:
            raise cross_field_error("missing_contact", "either phone or email is required", "phone")
        return self

    def to_lead_payload(self) -> dict[str, Any]:
        """The ``lead.created`` payload: catalog field names, absent values left out, extras kept.

        ``utm_*``, ``gclid`` and ``fbclid`` stay flat (DESIGN section 4), so CRM and Marketing
        mappings read them the same way whether the lead came from the site or elsewhere.
        """
        return self.model_dump(mode="json", exclude_none=True)
