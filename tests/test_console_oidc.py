"""The console's sign-in at an OpenID Connect provider (authorization code with PKCE), against the
REAL provider of tests/oidc (oidc-provider: its login and consent pages, its token endpoint) and a
real `cityos serve --auth required` with the demo city: in chromium, a user signs in on the
provider's page and lands on the console seeing only what the policies give the account's role;
over HTTP, the flow's parameters (S256 challenge, state, nonce) and its refusals (a foreign state,
no pending sign-in, a wrong verifier, a replayed code, the provider's refusal) each end on the
sign-in page with the reason and no session."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from console_browser import PARKING_VIEWERS, browser_fixture, open_tab  # noqa: F401 (the `browser` fixture)
from server_process import LoggedServer
from test_auth_oidc import AUDIENCE, Provider, SigningKey, _require_node

pytestmark = pytest.mark.slow(seconds=60)

PASSWORD = "ada's provider password"
ACCOUNTS = [{"id": "ada", "password": PASSWORD, "name": "Ada", "roles": ["parking-viewer"]}]
SESSION = "cityos_session"
PENDING = "cityos_oidc"


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Provider, LoggedServer]]:
    _require_node()
    folder = tmp_path_factory.mktemp("console-oidc")
    policies = folder / "policies.yaml"
    policies.write_text(yaml.safe_dump(PARKING_VIEWERS))
    provider = Provider(folder)
    server = LoggedServer(
        folder / "serve.log",
        "--demo-on-empty", "--database", str(folder / "city.db"),
        "--auth", "required", "--policy-file", str(policies),
        "--oidc-issuer", provider.issuer, "--oidc-audience", AUDIENCE, "--allow-private-networks",
        "--console-oidc-client-id", "console", "--console-oidc-name", "Test ID",
        "--console-oidc-scopes", "openid api",
    )  # fmt: skip
    provider.extra = {
        "accounts": ACCOUNTS,
        "console_clients": [{"client_id": "console", "redirect_uris": [f"{server.base}/console/oidc/callback"]}],
    }
    provider.start([SigningKey("key-a")])
    try:
        server.start()
        yield provider, server
    finally:
        server.stop()
        provider.stop()


def begin(server: LoggedServer) -> tuple[str, str]:
    """The console's redirect to the provider: (authorization URL, the pending sign-in cookie)."""
    answer = httpx.get(server.base + "/console/oidc/signin", timeout=10)
    assert answer.status_code == 303, answer.text
    pending = answer.cookies.get(PENDING)
    assert pending
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/console/oidc/" in cookie
    return answer.headers["location"], pending


def provider_sign_in(authorization_url: str, password: str = PASSWORD) -> httpx.Response:
    """Through the provider's own login and consent pages as a browser would (its cookies kept):
    the provider's last answer, the redirect back to the console's callback."""
    with httpx.Client(timeout=10) as browser:
        answer = browser.get(authorization_url)
        while answer.status_code in (302, 303) and "/interaction/" in answer.headers["location"]:
            page = browser.get(str(answer.url.join(answer.headers["location"])))
            form = re.search(r'action="([^"]+)"', page.text)
            assert form, page.text
            data = {"login": "ada", "password": password} if form.group(1).endswith("/login") else {}
            answer = browser.post(str(page.url.join(form.group(1))), data=data)
            if answer.status_code in (302, 303) and "/interaction/" not in answer.headers["location"]:
                answer = browser.get(str(answer.url.join(answer.headers["location"])))
        return answer


def code_for(server: LoggedServer) -> tuple[str, str, str]:
    """A sign-in started and done at the provider: (the callback URL with code and state, the
    pending cookie, the state)."""
    url, pending = begin(server)
    back = provider_sign_in(url)
    assert back.status_code in (302, 303), back.text
    callback = back.headers["location"]
    assert callback.startswith(server.base + "/console/oidc/callback?")
    return callback, pending, parse_qs(urlsplit(callback).query)["state"][0]


def call_back(callback: str, pending: str | None) -> httpx.Response:
    cookies = {PENDING: pending} if pending else {}
    return httpx.get(callback, cookies=cookies, timeout=20)


def test_the_sign_in_page_offers_the_provider_and_the_redirect_carries_pkce(
    city: tuple[Provider, LoggedServer],
) -> None:
    provider, server = city
    page = httpx.get(server.base + "/console/signin", timeout=10)
    assert "Sign in with Test ID" in page.text and 'href="/console/oidc/signin"' in page.text
    url, _pending = begin(server)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}" == provider.issuer
    assert query["response_type"] == "code" and query["client_id"] == "console"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["redirect_uri"] == server.base + "/console/oidc/callback"
    assert len(query["state"]) >= 40 and len(query["nonce"]) >= 40 and query["scope"] == "openid api"
    assert begin(server)[0] != url  # a new state, nonce and verifier each time


def test_a_signed_in_user_sees_what_the_policies_allow(city: tuple[Provider, LoggedServer]) -> None:
    _provider, server = city
    callback, pending, _state = code_for(server)
    answer = call_back(callback, pending)
    assert answer.status_code == 200, answer.text
    session = answer.cookies.get(SESSION)
    assert session and session.count(".") == 2  # the provider's JWT access token
    assert '<meta http-equiv="refresh" content="0;url=/">' in answer.text
    cookies = answer.headers.get_list("set-cookie")
    assert any(c.startswith(SESSION) and "HttpOnly" in c and "SameSite=strict" in c for c in cookies)
    assert any(c.startswith(PENDING) and "Max-Age=0" in c for c in cookies)  # the pending sign-in is gone
    overview = httpx.get(server.base + "/", cookies={SESSION: session}, timeout=20)
    assert overview.status_code == 200
    assert "OffStreetParking" in overview.text and "AirQualityObserved" not in overview.text
    # the same token as a bearer token: the API maps it as any OpenID Connect client's
    types = httpx.get(server.base + "/ngsi-ld/v1/types", headers={"Authorization": f"Bearer {session}"}, timeout=10)
    assert types.status_code == 200 and types.json()["typeList"] == ["OffStreetParking"]
    # signing out forgets the session
    out = httpx.post(server.base + "/console/signout", cookies={SESSION: session}, timeout=10)
    assert out.status_code == 303 and any(
        c.startswith(SESSION) and "Max-Age=0" in c for c in out.headers.get_list("set-cookie")
    )


def refused(answer: httpx.Response, status: int, words: str) -> None:
    assert answer.status_code == status, answer.text
    assert words in answer.text, answer.text
    assert 'role="alert"' in answer.text
    assert SESSION not in answer.cookies


def test_a_foreign_state_is_refused(city: tuple[Provider, LoggedServer]) -> None:
    _provider, server = city
    callback, _pending, _state = code_for(server)
    _url, other = begin(server)  # another sign-in of this browser: its state is not this answer's
    refused(call_back(callback, other), 400, "state mismatch")


def test_without_the_pending_sign_in_the_callback_is_refused(city: tuple[Provider, LoggedServer]) -> None:
    _provider, server = city
    callback, _pending, _state = code_for(server)
    refused(call_back(callback, None), 400, "No sign-in is in progress")
    refused(call_back(callback, "not-a-pending-sign-in"), 400, "No sign-in is in progress")


def test_a_wrong_verifier_and_a_replayed_code_are_refused_by_the_provider(
    city: tuple[Provider, LoggedServer],
) -> None:
    import base64

    import orjson

    _provider, server = city
    callback, pending, _state = code_for(server)
    fields = orjson.loads(base64.urlsafe_b64decode(pending + "=" * (-len(pending) % 4)))
    fields[2] = "x" * 64  # another verifier: the challenge was not made from it
    forged = base64.urlsafe_b64encode(orjson.dumps(fields)).rstrip(b"=").decode()
    refused(call_back(callback, forged), 400, "refused the sign-in (invalid_grant")
    # a code is good once: the first exchange succeeds, the second is refused
    callback, pending, _state = code_for(server)
    assert call_back(callback, pending).status_code == 200
    refused(call_back(callback, pending), 400, "refused the sign-in (invalid_grant")


def test_the_providers_refusal_is_shown(city: tuple[Provider, LoggedServer]) -> None:
    _provider, server = city
    url, pending = begin(server)
    state = parse_qs(urlsplit(url).query)["state"][0]
    answer = call_back(
        f"{server.base}/console/oidc/callback?error=access_denied&error_description=End-User+aborted&state={state}",
        pending,
    )
    refused(answer, 400, "access_denied: End-User aborted")
    # a wrong password stays at the provider: no code comes back
    assert provider_sign_in(begin(server)[0], password="wrong").status_code == 401


def test_sign_in_in_a_browser(city: tuple[Provider, LoggedServer], browser: Any) -> None:
    provider, server = city
    tab = open_tab(browser)
    tab.goto(server.base + "/")  # no session: the sign-in page
    assert tab.page.url.endswith("/console/signin")
    assert tab.axe() == []
    tab.shot("signin-oidc")
    tab.page.click("text=Sign in with Test ID")
    tab.page.wait_for_selector("#login")  # the provider's own page
    assert tab.page.url.startswith(provider.issuer + "/interaction/")
    tab.page.fill("#login", "ada")
    tab.page.fill("#password", PASSWORD)
    tab.page.click("button[type=submit]")
    tab.page.click("button:has-text('Allow')")
    tab.page.wait_for_url(server.base + "/", timeout=20000)  # the callback's page moves on by itself
    tab.page.wait_for_selector("text=OffStreetParking")
    text = tab.page.inner_text("main")
    assert "OffStreetParking" in text and "AirQualityObserved" not in text and "Building" not in text
    assert tab.page.is_visible("text=Sign out")
    tab.clean()  # no console error, no refused request on the way
    tab.page.click("text=Sign out")
    tab.page.wait_for_load_state("load")
    tab.goto(server.base + "/console/map")
    assert tab.page.url.endswith("/console/signin")
    tab.page.context.close()
