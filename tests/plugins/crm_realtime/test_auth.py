"""Settings validation, token verification (HS256, RS256, ES256) and ``zaphub token``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from core.cli import main
from core.config import convert_section
from core.errors import ConfigError
from plugins.crm_realtime.auth import AuthError, TokenVerifier, issue_token
from plugins.crm_realtime.config import CrmRealtimeSettings
from tests.helpers import write_config

SECRET = "auth-test-secret-0123456789abcdef0123"


def settings(**section: Any) -> CrmRealtimeSettings:
    return convert_section(section, CrmRealtimeSettings, "plugins.crm_realtime")


def pem_pair(kind: str) -> tuple[bytes, str]:
    key: Any
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({}, "plugins.crm_realtime: jwt_secret and jwt_public_key are both empty: set CRM_JWT_SECRET"),
        ({"jwt_secret": SECRET, "namespace": "crm"}, "namespace 'crm' must start with '/'"),
        ({"jwt_secret": SECRET, "jwt_algorithms": ["RS256"]}, "lists RS256 but jwt_public_key is empty"),
        ({"jwt_public_key": "/no/such/key.pem"}, "jwt_public_key: cannot read '/no/such/key.pem'"),
        (
            {"jwt_public_key": "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----"},
            "is not a PEM public key",
        ),
        ({"jwt_secret": SECRET, "jwt_algorithms": ["none"]}, "'none' is not supported"),
        ({"jwt_secret": SECRET, "scope_claim": " "}, "scope_claim is empty"),
        (
            {"jwt_secret": SECRET, "jwt_secrt": "x"},
            "plugins.crm_realtime.jwt_secrt: unknown key (did you mean",
        ),
        ({"jwt_secret": SECRET, "transports": ["carrier-pigeon"]}, "plugins.crm_realtime.transports[0]"),
    ],
)
def test_settings_errors_name_the_key_and_the_fix(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(**section)
    assert message in str(info.value)


def test_algorithms_are_inferred_from_the_keys(tmp_path: Path) -> None:
    assert settings(jwt_secret=SECRET).algorithms == ("HS256",)
    _, rsa_public = pem_pair("rsa")
    assert settings(jwt_public_key=rsa_public).algorithms == ("RS256",)
    key_file = tmp_path / "ec.pem"
    key_file.write_text(pem_pair("ec")[1])
    assert settings(jwt_public_key=str(key_file), jwt_secret=SECRET).algorithms == ("HS256", "ES256")
    with pytest.raises(ConfigError, match="lists ES256 but jwt_public_key is a RSA key"):
        settings(jwt_public_key=rsa_public, jwt_algorithms=["ES256"])
    with pytest.raises(ConfigError, match=r"only RSA .* and EC .* keys are supported"):
        settings(jwt_public_key=pem_pair("ed")[1])


def test_hs256_tokens_and_their_claims() -> None:
    s = settings(jwt_secret=SECRET, jwt_audience="crm", jwt_issuer="https://idp.example.com")
    verifier = TokenVerifier(s)
    agent = verifier.verify(issue_token(s, sub="ana", ttl=60, scope=["111", "222"]))
    assert agent.sub == "ana"
    assert agent.scope == frozenset({"111", "222"})
    assert agent.allows("111")
    assert not agent.allows("333")
    assert agent.expires_at > time.time()
    assert verifier.verify("Bearer " + issue_token(s, sub="ana")).scope is None

    def reason(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
        base = {"sub": "ana", "exp": int(time.time()) + 60, "aud": "crm", "iss": "https://idp.example.com"}
        token = jwt.encode({k: v for k, v in {**base, **claims}.items() if v is not None}, key, algorithm=alg)
        with pytest.raises(AuthError) as info:
            verifier.verify(token)
        return info.value.reason

    assert reason({"aud": "other"}) == "wrong audience (aud)"
    assert reason({"aud": None}) == "token has no aud claim"
    assert reason({"iss": "https://evil.example.com"}) == "wrong issuer (iss)"
    assert reason({"exp": None}) == "token has no exp claim"
    assert reason({"sub": None}) == "token has no sub claim"
    assert reason({"sub": 42}) == "invalid token"
    assert reason({"exp": int(time.time()) - 1}) == "token expired"
    assert reason({"nbf": int(time.time()) + 60}) == "token not yet valid (nbf)"
    assert (
        reason({"phone_number_ids": {"a": 1}}) == "claim phone_number_ids must be a list of phone number ids"
    )
    assert reason({"phone_number_ids": [None]}) == "claim phone_number_ids must be a list of phone number ids"
    assert reason({}, key=SECRET * 2, alg="HS512") == "algorithm HS512 not accepted (expected HS256)"
    # Numbers and comma-separated strings are accepted as scope.
    token = jwt.encode(
        {
            "sub": "a",
            "exp": int(time.time()) + 60,
            "aud": "crm",
            "iss": "https://idp.example.com",
            "phone_number_ids": [111, "222 "],
        },
        SECRET,
    )
    assert verifier.verify(token).scope == frozenset({"111", "222"})


def test_leeway_tolerates_clock_skew() -> None:
    s = settings(jwt_secret=SECRET, jwt_leeway_seconds=30)
    token = jwt.encode({"sub": "a", "exp": int(time.time()) - 10}, SECRET)
    assert TokenVerifier(s).verify(token).sub == "a"


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_public_key_tokens(kind: str) -> None:
    private, public = pem_pair(kind)
    s = settings(jwt_public_key=public)
    verifier = TokenVerifier(s)
    token = issue_token(s, sub="idp-user", private_key=private)
    assert verifier.verify(token).sub == "idp-user"
    # Without a secret, HS256 is not accepted: no algorithm confusion with the public key.
    forged = jwt.encode(
        {"sub": "x", "exp": int(time.time()) + 60}, "guess-0123456789abcdef0123456789ab", "HS256"
    )
    with pytest.raises(AuthError, match="algorithm HS256 not accepted"):
        verifier.verify(forged)
    other_private, _ = pem_pair(kind)
    with pytest.raises(AuthError, match="bad signature"):
        verifier.verify(issue_token(s, sub="x", private_key=other_private))
    with pytest.raises(ValueError, match="pass --private-key FILE"):
        issue_token(s, sub="x")


def test_short_dev_secrets_work_without_warnings() -> None:
    s = settings(jwt_secret="dev-jwt-secret")
    assert s.short_secret
    assert TokenVerifier(s).verify(issue_token(s, sub="dev")).sub == "dev"  # -W error would raise


def test_token_command_prints_a_token_the_host_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "config.yaml", {"plugins": {"crm_realtime": {"jwt_secret": SECRET}}})
    assert main(["token", "--config", str(config), "--sub", "ana", "--ttl", "120", "--scope", "111,222"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    agent = TokenVerifier(settings(jwt_secret=SECRET)).verify(token)
    assert agent.sub == "ana"
    assert agent.scope == frozenset({"111", "222"})
    assert 100 < agent.expires_at - time.time() <= 120
    assert "sub=ana" in err
    assert "scope=111,222" in err

    private, public = pem_pair("ec")
    (tmp_path / "public.pem").write_text(public)
    (tmp_path / "private.pem").write_bytes(private)
    config = write_config(
        tmp_path / "config.yaml",
        {"plugins": {"crm_realtime": {"jwt_public_key": str(tmp_path / "public.pem")}}},
    )
    assert main(["token", "--config", str(config), "--sub", "bia"]) == 2
    assert "pass --private-key FILE" in capsys.readouterr().err
    assert (
        main(
            ["token", "--config", str(config), "--sub", "bia", "--private-key", str(tmp_path / "private.pem")]
        )
        == 0
    )
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    wrong, _ = pem_pair("ec")
    (tmp_path / "wrong.pem").write_bytes(wrong)
    assert (
        main(["token", "--config", str(config), "--sub", "bia", "--private-key", str(tmp_path / "wrong.pem")])
        == 2
    )
    assert "does --private-key match jwt_public_key?" in capsys.readouterr().err
