"""Who may call the warm service: bearer tokens read from the environment (never from the config file, never
logged), compared in constant time, each acting either for the operator (every route, every tenant) or for one
tenant (its own searches and ingestion only). And whether the service may listen where it was told to."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from flows.settings import ConfigError, ServeSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """The caller: ``tenant`` None for the operator (or anyone, when no token is configured)."""

    tenant: str | None = None

    @property
    def operator(self) -> bool:
        return self.tenant is None


OPERATOR = Principal()


class Unauthorized(PermissionError):
    """No token, or not one of the configured ones (401)."""


@dataclass(frozen=True)
class Tokens:
    """The configured tokens: (token bytes, principal) pairs; empty when the service is open."""

    entries: tuple[tuple[bytes, Principal], ...] = field(default=(), repr=False)

    @classmethod
    def from_settings(cls, settings: ServeSettings, environ: Mapping[str, str] | None = None) -> Tokens:
        env = os.environ if environ is None else environ
        named = [(settings.token_env, OPERATOR)] if settings.token_env else []
        named += [(t.token_env, Principal(t.tenant)) for t in settings.tenant_tokens]
        entries = []
        for name, principal in named:
            value = env.get(name, "")
            if not value:
                raise ConfigError(f"serve: the token variable {name} is not set in the environment")
            entries.append((value.encode(), principal))
        tokens = [value for value, _ in entries]
        if len(set(tokens)) != len(tokens):
            raise ConfigError("serve: two token variables hold the same token; each principal needs its own")
        return cls(tuple(entries))

    @property
    def required(self) -> bool:
        return bool(self.entries)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer`` header. Every configured token is compared (in
        constant time), whichever matches, so timing tells nothing about which or how much matched."""
        if not self.entries:
            return OPERATOR
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("a bearer token is required")
        presented = given.strip().encode()
        found: Principal | None = None
        for token, principal in self.entries:
            if hmac.compare_digest(presented, token):
                found = principal
        if found is None:
            raise Unauthorized("the bearer token is not valid")
        return found


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: ServeSettings, tokens: Tokens) -> None:
    """Refuse to listen beyond loopback without a token, unless ``serve.allow_anonymous`` says so (then warn,
    at every start)."""
    if is_loopback_host(settings.host) or tokens.required:
        return
    if not settings.allow_anonymous:
        raise ConfigError(
            f"serve.host {settings.host} is reachable from other machines and no token is configured: set "
            "serve.token_env (and/or serve.tenant_tokens), or serve.allow_anonymous: true to serve it open"
        )
    log.warning(
        "serving %s without any token (serve.allow_anonymous): anyone who can reach it can ingest and search",
        settings.host,
    )
