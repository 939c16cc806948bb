"""Who may open the console: an admin key through the sign-in page, and nobody else.

Against real ``stepline serve`` processes: in Chromium for the sign-in flow
and the cookie's attributes, and with plain HTTP for what a browser would
never send (a foreign Origin, a cookie on ``/v1``).
"""

from __future__ import annotations

import socket
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.console.conftest import DemoServer, KeyedServer, start_demo

if TYPE_CHECKING:
    from playwright.async_api import Browser

pytestmark = pytest.mark.timeout(90)


async def test_a_keyless_loopback_server_opens_the_console_directly(
    browser: Browser, demo_server: DemoServer
) -> None:
    page = await browser.new_page()
    reply = await page.goto(f"{demo_server.url}/console")
    assert reply is not None and reply.status == 200
    assert page.url == f"{demo_server.url}/console"
    assert await page.locator("#responses").count() == 1
    assert await page.locator("#login").count() == 0
    assert await page.locator(".logout").count() == 0
    assert await page.inner_text("header .who") == "no API keys: open on loopback"


async def test_only_an_admin_key_signs_in(browser: Browser, keyed_server: KeyedServer) -> None:
    url = keyed_server.url
    context = await browser.new_context()
    page = await context.new_page()

    await page.goto(f"{url}/console?status=failed")
    assert page.url == f"{url}/console/login?next=/console%3Fstatus%3Dfailed"
    assert await page.locator("#responses").count() == 0

    async def sign_in(token: str) -> int:
        async with page.expect_response(f"{url}/console/login") as answer:
            await page.fill("#token", token)
            await page.click("#login button[type=submit]")
        return (await answer.value).status

    assert await sign_in("sk-stepline-not-a-key") == 401
    assert await page.inner_text("#message") == "Incorrect API key provided."
    assert await sign_in(keyed_server.tokens["alice"]) == 403
    assert "not an admin key" in await page.inner_text("#message")
    assert await context.cookies() == []

    await page.fill("#token", keyed_server.tokens["admin"])
    await page.click("#login button[type=submit]")
    await page.wait_for_url(f"{url}/console?status=failed")
    assert await page.locator("#responses").count() == 1
    assert await page.inner_text("header .who span") == "key admin"
    (cookie,) = await context.cookies()
    assert cookie["name"] == "stepline_console"
    assert cookie["value"] == keyed_server.tokens["admin"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"
    assert await page.evaluate("document.cookie") == ""  # no script can read it

    await page.click(".logout button")
    await page.wait_for_url(f"{url}/console/login")
    assert await context.cookies() == []
    await page.goto(f"{url}/console")
    assert page.url.startswith(f"{url}/console/login")
    await context.close()


async def test_the_cookie_is_checked_like_a_bearer_token_on_every_request(
    keyed_server: KeyedServer,
) -> None:
    tokens = keyed_server.tokens
    async with httpx.AsyncClient(base_url=keyed_server.url, timeout=30) as http:
        created = await http.post(
            "/v1/responses",
            json={"model": "alpha", "input": "hello"},
            headers=keyed_server.auth("alice"),
        )
        response_id = created.json()["id"]
        pages = ("/console", f"/console/responses/{response_id}", "/console/usage")
        for path in pages:
            admin = await http.get(path, headers=_cookie(tokens["admin"]))
            assert admin.status_code == 200, path
            assert "frame-ancestors 'none'" in admin.headers["content-security-policy"]
            assert admin.headers["cache-control"] == "no-store"
            # an ordinary key's token in the cookie: a key, but not an admin's
            alice = await http.get(path, headers=_cookie(tokens["alice"]))
            assert alice.status_code == 403, path
            assert response_id not in alice.text
            # a token that is no key: back to the sign-in page, the cookie dropped
            wrong = await http.get(path, headers=_cookie("sk-stepline-wrong"))
            assert wrong.status_code == 303, path
            assert wrong.headers["location"].startswith("/console/login?next=")
            assert 'stepline_console=""' in wrong.headers["set-cookie"]
            nothing = await http.get(path)
            assert nothing.status_code == 303, path

        # a bearer header works as the cookie does (for scripts), with the same rule
        assert (await http.get("/console", headers=keyed_server.auth("admin"))).status_code == 200
        assert (await http.get("/console", headers=keyed_server.auth("bob"))).status_code == 403

        # the live stream answers the error envelope, never a stream, to anyone else
        events = f"/console/responses/{response_id}/events"
        refused = await http.get(events, headers=_cookie(tokens["alice"]))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "admin_key_required"
        missing = await http.get(events)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"

        # the console's cookie is no API key
        api = await http.get(f"/v1/responses/{response_id}", headers=_cookie(tokens["admin"]))
        assert api.status_code == 401


async def test_a_sign_in_from_another_site_is_refused(keyed_server: KeyedServer) -> None:
    form = {"token": keyed_server.tokens["admin"], "next": "/console"}
    async with httpx.AsyncClient(base_url=keyed_server.url, timeout=30) as http:
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            refused = await http.post("/console/login", data=form, headers=headers)
            assert refused.status_code == 403
            assert "set-cookie" not in refused.headers
            out = await http.post("/console/logout", headers=headers)
            assert out.status_code == 403
            assert "set-cookie" not in out.headers
        same = await http.post("/console/login", data=form, headers={"Origin": keyed_server.url})
        assert same.status_code == 303
        assert same.headers["location"] == "/console"
        # and the page it goes to never leaves the console
        away = await http.post(
            "/console/login",
            data={**form, "next": "//evil.example/console"},
            headers={"Origin": keyed_server.url},
        )
        assert away.headers["location"] == "/console"


def _cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"stepline_console={token}"}


def _outside_address() -> str | None:
    """An address of this machine other than loopback, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            # no packet is sent: connecting a UDP socket only picks the route's source
            probe.connect(("10.255.255.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_without_keys_the_console_never_opens_beyond_loopback(tmp_path: Path) -> None:
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    async with AsyncExitStack() as exits:
        # on every address, without keys (--insecure)
        server = await start_demo(tmp_path, exits, "--insecure", host="0.0.0.0")
        port = server.served.port
        async with httpx.AsyncClient(timeout=30) as http:
            inside = await http.get(f"http://127.0.0.1:{port}/console")
            assert inside.status_code == 200
            outside = await http.get(f"http://{address}:{port}/console")
            assert outside.status_code == 403
            assert "admin key" in outside.text
            assert 'id="responses"' not in outside.text
            stream = await http.get(f"http://{address}:{port}/console/responses/resp_x/events")
            assert stream.status_code == 403
            # and signing in cannot help: there is no key to sign in with
            form = await http.post(f"http://{address}:{port}/console/login", data={"token": "x"})
            assert form.status_code == 403
            assert "set-cookie" not in form.headers
