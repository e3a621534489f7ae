"""Credentials as `requests` auth objects, sent to the API's own origin and nowhere else.

Each kind is a `requests.auth.AuthBase` that the session applies to every request it prepares,
including one built from a paginator's absolute next URL or `Link` header. An authenticator is
bound to the origin (scheme, host, port) of the source's base URL and adds nothing to a request
for another origin. The client follows redirects itself and sends no request for another origin
through the session at all (see `client.py`); should a redirect still be followed by requests
(which strips only `Authorization`, and only when the host changes), `ApiSession` strips every
credential its authenticator adds (an API key header or query parameter too). Every secret an authenticator holds, tokens as they arrive, is listed in
`secrets`, so that errors and shown URLs mask it.

The OAuth2 token is fetched on the first request, not when the source is built, and shared by
every thread of the session under one lock: fetched again shortly before it expires, and once
after a 401 when the client asks (`refresh`); a 401 for a token already replaced by another
thread's refresh does not fetch a third one.
"""

from __future__ import annotations

import base64
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from ingestion_assets.errors import SourceError
from ingestion_assets.sources.rest.redaction import redact, redact_url

TOKEN_EXPIRY_MARGIN_SECONDS = 30.0
DEFAULT_PORTS = {"http": 80, "https": 443}

Timeout = tuple[float, float]
Origin = tuple[str, str, int | None]


def origin_of(url: str) -> Origin:
    """A URL's origin: scheme, host and port, the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme)


def without_params(url: str, names: Iterable[str]) -> str:
    """`url` without the query parameters `names` (any case); unchanged when it has none."""
    hidden = {name.lower() for name in names}
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(key, value) for key, value in pairs if key.lower() not in hidden]
    if len(kept) == len(pairs):
        return url
    return urlunsplit(parts._replace(query=urlencode(kept)))


class CredentialsRefusedError(SourceError):
    """The API or its token endpoint (`refused_by`) refused the source's credentials."""

    def __init__(self, message: str, status: int = 0, refused_by: str = "the API") -> None:
        super().__init__(message)
        self.status = status
        self.refused_by = refused_by


class Authenticator(AuthBase, ABC):
    """Puts credentials on the requests for its origin; may refresh them once after a 401."""

    # query parameters that carry a secret: masked in shown URLs, stripped off other origins
    secret_params: tuple[str, ...] = ()

    def __init__(self, base_url: str, header: str | None, secrets: Sequence[str] = ()) -> None:
        self.origin = origin_of(base_url)
        self.header = header
        self.secrets = [secret for secret in secrets if secret]

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if request.url is not None and origin_of(request.url) == self.origin:
            self.apply(request)
        return request

    @abstractmethod
    def apply(self, request: requests.PreparedRequest) -> None:
        """Put the credentials on one request for the API's origin."""

    def strip(self, request: requests.PreparedRequest) -> None:
        """Take every credential this authenticator adds off a request."""
        if self.header is not None:
            request.headers.pop(self.header, None)
        if self.secret_params and request.url is not None:
            request.url = without_params(request.url, self.secret_params)

    def refresh(self, refused: requests.Response) -> bool:
        """Get new credentials after a 401; False when new ones cannot help."""
        return False


class BasicAuthenticator(Authenticator):
    """HTTP basic authentication."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        super().__init__(base_url, "Authorization", [password, token])
        self._header = f"Basic {token}"

    def apply(self, request: requests.PreparedRequest) -> None:
        request.headers["Authorization"] = self._header


class BearerAuthenticator(Authenticator):
    """A static bearer token."""

    def __init__(self, base_url: str, token: str) -> None:
        super().__init__(base_url, "Authorization", [token])
        self._token = token

    def apply(self, request: requests.PreparedRequest) -> None:
        request.headers["Authorization"] = f"Bearer {self._token}"


class ApiKeyAuthenticator(Authenticator):
    """An API key in a header or a query parameter."""

    def __init__(self, base_url: str, name: str, value: str, location: str) -> None:
        in_query = location == "query"
        super().__init__(base_url, None if in_query else name, [value])
        self._name, self._value = name, value
        if in_query:
            self.secret_params = (name,)

    def apply(self, request: requests.PreparedRequest) -> None:
        if self.header is not None:
            request.headers[self.header] = self._value
        else:
            request.prepare_url(request.url, {self._name: self._value})


class _SessionAuthOff(AuthBase):
    """No credentials: an explicit auth keeps the session's own authenticator off a request."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


class OAuth2ClientCredentialsAuthenticator(Authenticator):
    """OAuth2 client credentials: a bearer token fetched when first needed, refreshed before
    expiry or after a 401; one token for every thread of the session."""

    def __init__(
        self,
        base_url: str,
        session: requests.Session,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None,
        credentials_in: str,
        timeout: Timeout,
        label: str,
    ) -> None:
        super().__init__(base_url, "Authorization", [client_secret])
        self._session, self._token_url = session, token_url
        self._client_id, self._client_secret = client_id, client_secret
        self._scope, self._credentials_in, self._timeout = scope, credentials_in, timeout
        self._label = label
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def _fetch(self) -> None:
        data = {"grant_type": "client_credentials"}
        if self._scope:
            data["scope"] = self._scope
        # the session's auth is this authenticator: it must not be asked for a token here
        auth: AuthBase = _SessionAuthOff()
        if self._credentials_in == "basic":
            auth = HTTPBasicAuth(self._client_id, self._client_secret)
        else:
            data.update(client_id=self._client_id, client_secret=self._client_secret)
        try:
            response = self._session.post(
                self._token_url,
                data=data,
                auth=auth,
                timeout=self._timeout,
                # a 307 would send the client secret on to wherever it points
                allow_redirects=False,
            )
        except requests.RequestException as error:
            raise SourceError(
                f"{self._label}: the OAuth2 token request to "
                f"{redact_url(self._token_url, self.secrets)} failed: "
                f"{redact(type(error).__name__, self.secrets)}"
            ) from None
        if response.status_code in (400, 401, 403):
            raise CredentialsRefusedError(
                f"{self._label}: the token endpoint refused the client credentials "
                f"(HTTP {response.status_code}); check credentials for {self._label} (client_id "
                "and the client secret's environment variable)",
                response.status_code,
                "the token endpoint",
            )
        if not 200 <= response.status_code < 300:  # a redirect too: it is not followed
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

    def apply(self, request: requests.PreparedRequest) -> None:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._fetch()
            token = self._token
        request.headers["Authorization"] = f"Bearer {token}"

    def refresh(self, refused: requests.Response) -> bool:
        sent = refused.request.headers.get("Authorization") if refused.request else None
        if not sent:
            # the refused request carried no token of ours: a new one would not be sent either
            return False
        with self._lock:
            # pages fetched in parallel may all be refused the same expired token: fetch once
            if sent == f"Bearer {self._token}":
                self._fetch()
        return True


class ApiSession(requests.Session):
    """A session whose redirects to another host drop every credential its authenticator adds,
    not only `Authorization`."""

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        # (the stubs leave these two untyped; requests itself annotates them)
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]
        previous, following = response.request.url, prepared_request.url
        if (
            isinstance(self.auth, Authenticator)
            and previous is not None
            and following is not None
            # the hop requests strips `Authorization` on: another host, port or scheme
            and self.should_strip_auth(previous, following)  # type: ignore[no-untyped-call]
        ):
            self.auth.strip(prepared_request)


# ---- settings: what each kind needs, from a spec's `auth` or the resource's resolved config ----


class BasicSettings(Protocol):
    """HTTP basic authentication's settings."""

    @property
    def type(self) -> Literal["basic"]: ...
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str: ...


class BearerSettings(Protocol):
    """A static bearer token's settings."""

    @property
    def type(self) -> Literal["bearer"]: ...
    @property
    def token(self) -> str: ...


class ApiKeySettings(Protocol):
    """An API key's settings."""

    @property
    def type(self) -> Literal["api_key"]: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> str: ...
    @property
    def location(self) -> Literal["header", "query"]: ...


class ClientCredentialsSettings(Protocol):
    """OAuth2 client credentials' settings."""

    @property
    def type(self) -> Literal["oauth2_client_credentials"]: ...
    @property
    def token_url(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def client_secret(self) -> str: ...
    @property
    def scope(self) -> str | None: ...
    @property
    def credentials_in(self) -> Literal["body", "basic"]: ...


AuthSettings = BasicSettings | BearerSettings | ApiKeySettings | ClientCredentialsSettings


def _basic(
    settings: BasicSettings, base_url: str, session: requests.Session, timeout: Timeout, label: str
) -> Authenticator:
    return BasicAuthenticator(base_url, settings.username, settings.password)


def _bearer(
    settings: BearerSettings, base_url: str, session: requests.Session, timeout: Timeout, label: str
) -> Authenticator:
    return BearerAuthenticator(base_url, settings.token)


def _api_key(
    settings: ApiKeySettings, base_url: str, session: requests.Session, timeout: Timeout, label: str
) -> Authenticator:
    return ApiKeyAuthenticator(base_url, settings.name, settings.value, settings.location)


def _client_credentials(
    settings: ClientCredentialsSettings,
    base_url: str,
    session: requests.Session,
    timeout: Timeout,
    label: str,
) -> Authenticator:
    return OAuth2ClientCredentialsAuthenticator(
        base_url,
        session,
        settings.token_url,
        settings.client_id,
        settings.client_secret,
        settings.scope,
        settings.credentials_in,
        timeout,
        label,
    )


# one builder per `type`; each builder's settings protocol matches its key
_BUILDERS: dict[str, Callable[[Any, str, requests.Session, Timeout, str], Authenticator]] = {
    "basic": _basic,
    "bearer": _bearer,
    "api_key": _api_key,
    "oauth2_client_credentials": _client_credentials,
}


def authenticator_for(
    settings: AuthSettings,
    base_url: str,
    session: requests.Session,
    timeout: Timeout,
    label: str,
) -> Authenticator:
    """The authenticator of an auth setting, bound to base_url's origin (OAuth2 fetches its
    tokens through `session`; errors name `label`)."""
    return _BUILDERS[settings.type](settings, base_url, session, timeout, label)
