"""Tokens and exposure: who a bearer token acts for, and where the service may listen without one."""

from __future__ import annotations

import logging

import pytest

from flows.access import OPERATOR, Principal, Tokens, Unauthorized, check_exposure, is_loopback_host
from flows.settings import ConfigError, ServeSettings, TenantToken

ENV = {"OP": "op-secret-1", "ACME": "acme-secret-2", "GLOBEX": "globex-secret-3"}


def serve_settings(**kw: object) -> ServeSettings:
    return ServeSettings.model_validate(kw)


def test_tokens_name_their_principal() -> None:
    settings = serve_settings(
        token_env="OP",
        tenant_tokens=[TenantToken(tenant="acme", token_env="ACME"), TenantToken(tenant="globex", token_env="GLOBEX")],
    )
    tokens = Tokens.from_settings(settings, ENV)
    assert tokens.authenticate("Bearer op-secret-1") == OPERATOR
    assert tokens.authenticate("bearer acme-secret-2") == Principal("acme")
    assert tokens.authenticate("Bearer globex-secret-3").tenant == "globex"
    for header in (None, "", "Bearer", "Basic op-secret-1", "Bearer op-secret-", "Bearer op-secret-1x"):
        with pytest.raises(Unauthorized):
            tokens.authenticate(header)


def test_no_token_configured_means_an_open_operator_service() -> None:
    tokens = Tokens.from_settings(serve_settings(), {})
    assert not tokens.required and tokens.authenticate(None) == OPERATOR


def test_token_variables_must_be_set_and_distinct() -> None:
    with pytest.raises(ConfigError, match="the token variable OP is not set"):
        Tokens.from_settings(serve_settings(token_env="OP"), {})
    same = serve_settings(token_env="OP", tenant_tokens=[TenantToken(tenant="acme", token_env="OP2")])
    with pytest.raises(ConfigError, match="hold the same token"):
        Tokens.from_settings(same, {"OP": "x", "OP2": "x"})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("127.9.9.9", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("serve.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_an_open_address_needs_a_token_or_a_stated_wish(caplog: pytest.LogCaptureFixture) -> None:
    open_settings = serve_settings(host="0.0.0.0")
    with pytest.raises(ConfigError, match="reachable from other machines"):
        check_exposure(open_settings, Tokens())
    check_exposure(open_settings, Tokens.from_settings(serve_settings(token_env="OP"), ENV))  # a token: fine
    check_exposure(serve_settings(host="127.0.0.1"), Tokens())  # loopback: fine
    with caplog.at_level(logging.WARNING, logger="flows.access"):
        check_exposure(serve_settings(host="0.0.0.0", allow_anonymous=True), Tokens())
    assert "without any token" in caplog.text


def test_tokens_are_never_in_the_settings_repr() -> None:
    settings = serve_settings(token_env="OP")
    tokens = Tokens.from_settings(settings, ENV)
    assert "op-secret-1" not in repr(settings) and "op-secret-1" not in str(settings.model_dump())
    assert tokens.required and "op-secret-1" not in repr(tokens)
