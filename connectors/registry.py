"""Source settings by ``kind`` (a discriminated union: a bad kind names the allowed ones) and the factory
that turns settings into a connector."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import Field

from connectors.base import RemoteSource, SourceSettingsBase
from connectors.confluence import ConfluenceSettings, ConfluenceSource
from connectors.hubspot import HubSpotSettings, HubSpotSource
from connectors.mediawiki import MediaWikiSettings, MediaWikiSource
from connectors.salesforce import SalesforceSettings, SalesforceSource


class PdfSourceSettings(SourceSettingsBase):
    kind: Literal["pdf"] = "pdf"
    paths: list[str] = Field(min_length=1, description="PDF files and directories (walked recursively).")


SourceSettings = Annotated[
    PdfSourceSettings | MediaWikiSettings | HubSpotSettings | SalesforceSettings | ConfluenceSettings,
    Field(discriminator="kind"),
]


def remote_source(settings: SourceSettings, *, gate: Callable[[], None] | None = None) -> RemoteSource:
    """The connector of a remote source. ``gate`` is called before every request attempt (a quota shared
    with other processes); the caller closes the connector (``with`` or ``close()``)."""
    if isinstance(settings, MediaWikiSettings):
        return MediaWikiSource(settings, gate=gate)
    if isinstance(settings, HubSpotSettings):
        return HubSpotSource(settings, gate=gate)
    if isinstance(settings, SalesforceSettings):
        return SalesforceSource(settings, gate=gate)
    if isinstance(settings, ConfluenceSettings):
        return ConfluenceSource(settings, gate=gate)
    raise ValueError(f"source {settings.name!r} of kind {settings.kind!r} is not a remote source")
