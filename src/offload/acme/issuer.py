"""One certificate order, start to finish, through the ``acme`` library (RFC 8555).

The library does the JOSE signing, nonces, polling and retries of the protocol; this module
chooses the challenge, puts its answer where the workers find it (:mod:`offload.acme.storage`),
and removes the answer again whatever happens. Blocking calls: it runs in the ACME process,
never in a worker's event loop.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, cast

from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.b64 import b64encode
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from offload import __version__
from offload.acme.alpn import validation_bundle
from offload.acme.storage import AcmeStorage, replace_private
from offload.config.model import AcmeConfig
from offload.observe.log import fields
from offload.tls.keys import key_pem, new_key

_log = logging.getLogger("offload.acme")

ORDER_TIMEOUT = dt.timedelta(seconds=90)
NETWORK_TIMEOUT = 30


class AcmeFailure(Exception):
    """An order failed; the message says why in a line fit for the log."""


class _TlsAlpn01Response(challenges.KeyAuthorizationChallengeResponse):
    """The (empty) answer to a tls-alpn-01 challenge, which the library does not model."""

    typ: ClassVar[str] = "tls-alpn-01"


def _kind(challenge: messages.ChallengeBody) -> str:
    chall = challenge.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type", ""))
    return str(chall.typ)


def _token(challenge: messages.ChallengeBody) -> str:
    chall = challenge.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("token", ""))
    return str(chall.encode("token"))


def _load_or_create_account_key(storage: AcmeStorage) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(storage.account_key.read_bytes(), None)
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        replace_private(storage.account_key, key_pem(key))
        _log.info("ACME account key created", extra=fields(file=str(storage.account_key)))
        return key
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AcmeFailure(f"{storage.account_key}: the account key must be an EC key")
    return key


class AcmeIssuer:
    """Obtains certificates from one ACME directory with one account."""

    def __init__(self, config: AcmeConfig, storage: AcmeStorage, base_dir: Path) -> None:
        self._config = config
        self._storage = storage
        self._verify: bool | str = (True if config.directory_ca is None
                                    else str(base_dir / config.directory_ca))
        self._client: client.ClientV2 | None = None

    def _connect(self) -> client.ClientV2:
        """The directory and our account on it (registered on first use)."""
        if self._client is not None:
            return self._client
        key = JWKEC(key=_load_or_create_account_key(self._storage))
        # verify_ssl goes to requests' ``verify``, which also takes a CA bundle's path
        net = client.ClientNetwork(key, alg=ES256, verify_ssl=cast(bool, self._verify),
                                   user_agent=f"offload/{__version__}",
                                   timeout=NETWORK_TIMEOUT)
        directory = client.ClientV2.get_directory(self._config.directory, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self._config.email, terms_of_service_agreed=self._config.agree_to_terms)
        try:
            account = acme.new_account(registration)
            _log.info("ACME account registered", extra=fields(account=account.uri))
        except errors.ConflictError as existing:
            acme.query_registration(messages.RegistrationResource(
                uri=existing.location, body=messages.Registration()))
        self._client = acme
        return acme

    def forget_account(self) -> None:
        """Connect afresh before the next order (the account key file changed)."""
        self._client = None

    def issue(self, names: tuple[str, ...]) -> bytes:
        """Order a certificate for ``names``; returns chain + key as one PEM bundle."""
        try:
            acme = self._connect()
            private_key = key_pem(new_key(self._config.key_type))
            order = acme.new_order(crypto_util.make_csr(private_key, list(names)))
            with self._answers(acme, order):
                deadline = dt.datetime.now() + ORDER_TIMEOUT
                order = acme.poll_and_finalize(order, deadline)
        except errors.ValidationError as error:
            raise AcmeFailure(_validation_reason(error)) from None
        except (errors.Error, messages.Error) as error:
            self._client = None  # a fresh directory and nonce next time
            raise AcmeFailure(f"{type(error).__name__}: {error}") from None
        except OSError as error:
            self._client = None
            raise AcmeFailure(f"cannot reach {self._config.directory}: {error}") from None
        if not order.fullchain_pem:
            raise AcmeFailure("the CA returned no certificate")
        return order.fullchain_pem.encode("ascii") + private_key

    @contextmanager
    def _answers(self, acme: client.ClientV2, order: messages.OrderResource) -> Iterator[None]:
        """Answer one challenge per pending authorization; remove every answer afterwards."""
        placed: list[tuple[str, str]] = []
        try:
            for authorization in order.authorizations:
                if authorization.body.status == messages.STATUS_VALID:
                    continue  # validated recently for this account
                name = str(authorization.body.identifier.value)
                challenge = self._choose(authorization.body.challenges, name)
                key_authorization = self._key_authorization(acme, challenge)
                kind = _kind(challenge)
                response: challenges.ChallengeResponse
                if kind == "http-01":
                    token = _token(challenge)
                    self._storage.put_http01(token, key_authorization)
                    placed.append((kind, token))
                    response = challenges.HTTP01Response(key_authorization=key_authorization)
                else:
                    self._storage.put_tls_alpn01(name, validation_bundle(name, key_authorization))
                    placed.append((kind, name))
                    response = _TlsAlpn01Response(key_authorization=key_authorization)
                _log.info("ACME challenge ready", extra=fields(name=name, challenge=kind))
                acme.answer_challenge(challenge, response)
            yield
        finally:
            for kind, value in placed:
                if kind == "http-01":
                    self._storage.remove_http01(value)
                else:
                    self._storage.remove_tls_alpn01(value)

    def _choose(self, offered: Any, name: str) -> messages.ChallengeBody:
        by_kind = {_kind(challenge): challenge for challenge in offered}
        for kind in self._config.challenges:
            if kind in by_kind:
                return cast(messages.ChallengeBody, by_kind[kind])
        raise AcmeFailure(f"{name}: the CA offers none of the challenges allowed "
                          f"({', '.join(self._config.challenges)}); it offers "
                          f"{', '.join(sorted(by_kind)) or 'none'}")

    @staticmethod
    def _key_authorization(acme: client.ClientV2, challenge: messages.ChallengeBody) -> str:
        """RFC 8555 §8.1: token "." base64url(SHA-256 JWK thumbprint of the account key)."""
        key = acme.net.key
        assert key is not None
        thumbprint = b64encode(key.thumbprint()).decode("ascii")
        return f"{_token(challenge)}.{thumbprint}"


def _validation_reason(error: errors.ValidationError) -> str:
    """One line: which name failed and what the CA said."""
    reasons = []
    for authorization in error.failed_authzrs:
        name = authorization.body.identifier.value
        details = [str(c.error.detail or c.error.typ) for c in authorization.body.challenges
                   if c.error is not None]
        reasons.append(f"{name}: {'; '.join(details) or 'challenge failed'}")
    return "validation failed: " + " | ".join(reasons)
