"""Credentials put on each request: basic, bearer, API key, OAuth2 client credentials."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Sequence

import requests

from ingestion_assets.errors import SourceError
from ingestion_assets.sources.rest.redaction import redact, redact_url

TOKEN_EXPIRY_MARGIN_SECONDS = 30.0


class Authenticator:
    """Adds credentials to requests; may refresh them once after a 401."""

    secret_params: tuple[str, ...] = ()

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        self.secrets = [secret for secret in secrets if secret]

    def apply(self, headers: dict[str, str], params: dict[str, str]) -> None:
        """Put the credentials on one request."""

    def refresh(self) -> bool:
        """Get new credentials after a 401; False when there is nothing to refresh."""
        return False


class BasicAuthenticator(Authenticator):
    """HTTP basic authentication."""

    def __init__(self, username: str, password: str) -> None:
        super().__init__([password])
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._header = f"Basic {token}"
        self.secrets.append(token)

    def apply(self, headers: dict[str, str], params: dict[str, str]) -> None:
        headers["Authorization"] = self._header


class BearerAuthenticator(Authenticator):
    """A static bearer token."""

    def __init__(self, token: str) -> None:
        super().__init__([token])
        self._token = token

    def apply(self, headers: dict[str, str], params: dict[str, str]) -> None:
        headers["Authorization"] = f"Bearer {self._token}"


class ApiKeyAuthenticator(Authenticator):
    """An API key in a header or a query parameter."""

    def __init__(self, name: str, value: str, location: str) -> None:
        super().__init__([value])
        self._name, self._value, self._location = name, value, location
        if location == "query":
            self.secret_params = (name,)

    def apply(self, headers: dict[str, str], params: dict[str, str]) -> None:
        target = params if self._location == "query" else headers
        target[self._name] = self._value


class OAuth2ClientCredentialsAuthenticator(Authenticator):
    """OAuth2 client credentials: fetches a token, refreshes it before expiry or after a 401."""

    def __init__(
        self,
        session: requests.Session,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None,
        credentials_in: str,
        timeout: tuple[float, float],
        label: str,
    ) -> None:
        super().__init__([client_secret])
        self._session, self._token_url = session, token_url
        self._client_id, self._client_secret = client_id, client_secret
        self._scope, self._credentials_in, self._timeout = scope, credentials_in, timeout
        self._label = label
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.token_requests = 0

    def _fetch(self) -> None:
        data = {"grant_type": "client_credentials"}
        if self._scope:
            data["scope"] = self._scope
        auth = None
        if self._credentials_in == "basic":
            auth = (self._client_id, self._client_secret)
        else:
            data.update(client_id=self._client_id, client_secret=self._client_secret)
        self.token_requests += 1
        try:
            response = self._session.post(
                self._token_url, data=data, auth=auth, timeout=self._timeout
            )
        except requests.RequestException as error:
            raise SourceError(
                f"{self._label}: the OAuth2 token request to "
                f"{redact_url(self._token_url, self.secrets)} failed: "
                f"{redact(type(error).__name__, self.secrets)}"
            ) from None
        if response.status_code in (400, 401, 403):
            raise SourceError(
                f"{self._label}: the token endpoint refused the client credentials "
                f"(HTTP {response.status_code}); check credentials for {self._label} (client_id "
                "and the client secret's environment variable)"
            )
        if not response.ok:
            raise SourceError(
                f"{self._label}: the token endpoint answered HTTP {response.status_code}"
            )
        try:
            body = response.json()
            token = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise SourceError(
                f"{self._label}: the token endpoint's answer has no access_token"
            ) from None
        self.secrets.append(token)
        self._token = token
        # no expires_in: an hour, the common default; 0 means already expired
        expires_in = float(body["expires_in"]) if body.get("expires_in") is not None else 3600.0
        self._expires_at = time.monotonic() + max(0.0, expires_in - TOKEN_EXPIRY_MARGIN_SECONDS)

    def apply(self, headers: dict[str, str], params: dict[str, str]) -> None:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._fetch()
            headers["Authorization"] = f"Bearer {self._token}"

    def refresh(self) -> bool:
        with self._lock:
            self._fetch()
        return True
