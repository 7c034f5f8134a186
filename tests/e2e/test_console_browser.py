"""The agent console in a real browser: Debian's headless Chromium driven by Playwright.

The stack is what a user runs (:mod:`tests.e2e.console_stack`: ``zaphub run`` talking to
``zaphub sandbox`` over real HTTP, customers writing through signed webhooks). The page is served
with its Content-Security-Policy enforced; any violation fails the test.

Without Chromium and Playwright the tests skip with the reason, except in CI (``CI=true``), where
they fail."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugins.whatsapp import webhook_builders as wb
from tests.conftest import IN_CI
from tests.e2e.console_stack import CHROMIUM, PRICE, Stack, browser_problem

WAIT_MS = 20_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]

_CUSTOMERS = itertools.count(1)


def customer() -> str:
    """A fresh customer number per use: tests never share a conversation."""
    return f"55219{os.getpid() % 1000:03d}{next(_CUSTOMERS):05d}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = browser_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"the console's browser tests are required in CI but {problem}")
        pytest.skip(problem)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield chromium
        finally:
            chromium.close()


def needs(available: bool, what: str) -> None:
    """Skip a test of a backend feature this server does not have yet (the console hides its control)."""
    if not available:
        pytest.skip(f"the server has no {what} yet")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Stack]:
    """One stack for the tests that do not restart it; each test uses customers of its own."""
    running = Stack(tmp_path_factory.mktemp("console")).start()
    try:
        yield running
    finally:
        running.stop()


# Recorded in the page before its scripts run: every status each outbound message showed, in order,
# and every Content-Security-Policy violation.
RECORDER = """
window.__statuses = {};
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
new MutationObserver(() => {
  for (const el of document.querySelectorAll('[data-testid="message"][data-direction="outbound"]')) {
    const seen = (window.__statuses[el.dataset.messageId] ||= []);
    if (seen[seen.length - 1] !== el.dataset.status) seen.push(el.dataset.status);
  }
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-status']});
"""


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.add_init_script(RECORDER)
    pages: list[Any] = []
    ctx.on("page", lambda page: pages.append(page))
    try:
        yield ctx
        for page in pages:
            if not page.is_closed():
                assert page.evaluate("window.__csp") == [], "Content-Security-Policy violations"
    finally:
        ctx.close()


def signed_in(context: Any, stack: Stack, sub: str = "ana") -> Any:
    """A tab that opened the console with ``#token=…`` and is connected."""
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(f"{stack.url}/console#token={stack.token(sub)}")
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "online")
    return page


def wait_until(predicate: Any, what: str, timeout: float = WAIT_MS / 1000) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def conversation(page: Any, conversation_id: int) -> Any:
    return page.locator(f'[data-testid="conversation"][data-conversation-id="{conversation_id}"]')


def message(page: Any, message_id: int) -> Any:
    return page.locator(f'[data-testid="message"][data-message-id="{message_id}"]')


def shown_messages(page: Any) -> list[tuple[int, str]]:
    rows = page.locator('[data-testid="message"]').evaluate_all(
        "els => els.map(e => [Number(e.dataset.messageId), e.dataset.status])"
    )
    return [(int(i), s) for i, s in rows]


# ---------------------------------------------------------------------------------------------
# Signing in
# ---------------------------------------------------------------------------------------------


def test_sign_in_refuses_bad_tokens_then_a_customer_message_appears_live(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(f"{stack.url}/console")
    expect(page.get_by_test_id("token-input")).to_be_visible()

    page.get_by_test_id("token-input").fill("not-a-token")
    page.get_by_test_id("login").click()
    expect(page.locator("#login-error")).to_contain_text("not a token")

    page.get_by_test_id("token-input").fill(stack.token(secret="someone-elses-secret-0123456789abcdef"))
    page.get_by_test_id("login").click()
    expect(page.locator("#login-error")).to_contain_text("refused")
    expect(page.locator("#login-error")).to_contain_text("bad signature")

    page.get_by_test_id("token-input").fill(stack.token())
    page.get_by_test_id("login").click()
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "online")

    # Customer text is shown as text: markup in a name or a message never becomes elements.
    wa_id = customer()
    hostile = '<img src=x onerror="window.__pwned=1">'
    stack.inbound(f"Olá! <b>Qual</b> o preço? {hostile}", from_=wa_id, name=f"Maria {hostile}")
    conv = stack.conversation_of(wa_id)
    item = conversation(page, conv["id"])
    expect(item).to_be_visible()
    expect(item).to_contain_text(f"Maria {hostile}")
    expect(item.get_by_test_id("unread")).to_have_text("1")

    item.click()
    inbound = stack.messages(conv["id"])[0]
    expect(message(page, inbound["id"])).to_contain_text(f"Olá! <b>Qual</b> o preço? {hostile}")
    expect(message(page, inbound["id"])).to_have_attribute("data-direction", "inbound")
    expect(item.get_by_test_id("unread")).to_have_count(0)
    assert page.locator('img[src="x"], b').count() == 0
    assert page.evaluate("window.__pwned") is None


def test_a_token_in_the_fragment_never_reaches_the_server_nor_the_history(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    token = stack.token("bruno")
    page = context.new_page()
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    entries = page.evaluate("history.length")
    page.goto(f"{stack.url}/console#token={token}")
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "online")

    # One history entry for the console, and it has no token: replaceState removed it in place.
    assert page.url == f"{stack.url}/console"
    assert page.evaluate("history.length") == entries + 1
    assert page.evaluate("sessionStorage.getItem('zaphub.console.token')") == token
    assert page.evaluate("localStorage.getItem('zaphub.console.token')") is None
    assert urls and not [u for u in urls if token in u]

    page.reload()  # the tab keeps its session
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "online")
    other = context.new_page()  # another tab does not inherit it
    other.goto(f"{stack.url}/console")
    expect(other.get_by_test_id("token-input")).to_be_visible()

    page.locator("#menu-button").click()
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("token-input")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('zaphub.console.token')") is None


# ---------------------------------------------------------------------------------------------
# Replying
# ---------------------------------------------------------------------------------------------


def test_a_reply_goes_to_whatsapp_and_its_ticks_move_sent_delivered_read(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    wa_id = customer()
    stack.inbound("Bom dia, meu pedido 4821 ainda não chegou", from_=wa_id, name="Carla Dias")
    conv = stack.conversation_of(wa_id)
    page = signed_in(context, stack)
    conversation(page, conv["id"]).click()

    page.get_by_test_id("composer").fill("Oi Carla! Já verifiquei: sai hoje para entrega.")
    page.get_by_test_id("composer").press("Enter")
    outbound = page.locator('[data-testid="message"][data-direction="outbound"]')
    expect(outbound).to_have_count(1)
    expect(outbound).to_contain_text("Oi Carla! Já verifiquei: sai hoje para entrega.")
    expect(page.get_by_test_id("composer")).to_have_value("")
    expect(outbound).to_have_attribute("data-status", "read")

    message_id = int(outbound.get_attribute("data-message-id"))
    seen = page.evaluate("window.__statuses")[str(message_id)]
    assert seen[-3:] == ["sent", "delivered", "read"], seen
    assert set(seen[:-3]) <= {"queued", "accepted"}, seen
    assert [s["text"]["body"] for s in stack.sends_to(wa_id)] == [
        "Oi Carla! Já verifiquei: sai hoje para entrega."
    ]
    assert [m["id"] for m in stack.messages(conv["id"])] == [i for i, _ in shown_messages(page)]


def test_a_send_whatsapp_cannot_deliver_says_why(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    wa_id = customer()[:-4] + "0000"  # the sandbox's undeliverable numbers end in 0000 (131026)
    stack.inbound("Oi", from_=wa_id, name="Quitéria Lopes")
    conv = stack.conversation_of(wa_id)
    page = signed_in(context, stack)
    conversation(page, conv["id"]).click()
    page.get_by_test_id("composer").fill("Olá Quitéria!")
    page.get_by_test_id("send").click()

    outbound = page.locator('[data-testid="message"][data-direction="outbound"]')
    expect(outbound).to_have_attribute("data-status", "failed")
    expect(outbound.get_by_test_id("failure")).to_contain_text("131026")
    expect(conversation(page, conv["id"]).locator(".tick")).to_have_attribute("title", "failed")


def test_two_tabs_stay_consistent(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    wa_id, other_id = customer(), customer()
    stack.inbound("Oi, vocês entregam em Niterói?", from_=wa_id, name="Diego Souza")
    stack.inbound("Qual o horário de sábado?", from_=other_id, name="Elisa Prado")
    conv, other = stack.conversation_of(wa_id), stack.conversation_of(other_id)
    first, second = signed_in(context, stack), signed_in(context, stack)
    conversation(first, conv["id"]).click()
    conversation(second, other["id"]).click()

    # Seen in one tab of this agent: no longer unread in the other.
    expect(conversation(second, conv["id"]).get_by_test_id("unread")).to_have_count(0)

    first.get_by_test_id("composer").fill("Entregamos sim!")
    first.get_by_test_id("send").click()
    expect(first.locator('[data-testid="message"][data-direction="outbound"]')).to_have_count(1)
    stack.inbound("Ótimo, obrigado", from_=wa_id, name="Diego Souza")
    expect(conversation(second, conv["id"])).to_contain_text("Ótimo, obrigado")
    expect(conversation(second, conv["id"]).get_by_test_id("unread")).to_have_count(0)

    conversation(second, conv["id"]).click()
    stored = stack.messages(conv["id"])
    assert [m["direction"] for m in stored] == ["inbound", "outbound", "inbound"]
    for page in (first, second):
        for row in stored:
            expect(message(page, row["id"])).to_have_count(1)
        expect(message(page, stored[1]["id"])).to_have_attribute("data-status", "read")
    assert (
        shown_messages(first)
        == shown_messages(second)
        == [
            (m["id"], "read" if m["direction"] == "outbound" else "received")
            for m in stack.messages(conv["id"])
        ]
    )


def test_a_closed_window_offers_the_template_picker(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    wa_id = customer()
    two_days_ago = int(time.time()) - 2 * 86400
    stack.inbound("Oi, tudo bem?", from_=wa_id, name="Fábio Lima", timestamp=two_days_ago)
    conv = stack.conversation_of(wa_id)
    assert conv["window_open"] is False
    page = signed_in(context, stack)
    conversation(page, conv["id"]).click()

    expect(page.locator("#window-closed")).to_be_visible()
    expect(page.get_by_test_id("composer")).to_be_hidden()
    picker = page.locator("#template-form")
    picker.get_by_test_id("template-select").select_option(label="Pedido a caminho")
    picker.get_by_test_id("send-template").click()
    expect(page.locator("#send-error")).to_contain_text("Fill in value 1")
    picker.locator('[data-param="1"]').fill("Fábio")
    picker.locator('[data-param="2"]').fill("4821")
    expect(picker.get_by_test_id("template-preview")).to_have_text(
        "Olá Fábio, seu pedido 4821 saiu para entrega."
    )
    picker.get_by_test_id("send-template").click()

    outbound = page.locator('[data-testid="message"][data-direction="outbound"]')
    expect(outbound).to_have_attribute("data-status", "read")
    (sent,) = stack.sends_to(wa_id)
    assert sent["type"] == "template"
    assert sent["template"]["name"] == "order_update"
    assert sent["template"]["components"] == [
        {"type": "body", "parameters": [{"type": "text", "text": "Fábio"}, {"type": "text", "text": "4821"}]}
    ]


# ---------------------------------------------------------------------------------------------
# Handoff, lifecycle, new conversations (controls appear when the server has the endpoints)
# ---------------------------------------------------------------------------------------------


def test_taking_over_keeps_the_bot_silent_and_handing_back_lets_it_answer(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    needs(
        stack.has_endpoint("/api/conversations/{conversation_id}", "patch"), "PATCH /api/conversations/{id}"
    )
    wa_id, barrier = customer(), customer()
    stack.inbound("Oi", from_=wa_id, name="Nina Alves")
    conv = stack.conversation_of(wa_id)
    page = signed_in(context, stack)
    conversation(page, conv["id"]).click()
    toggle = page.get_by_test_id("mode-toggle")
    badge = page.get_by_test_id("thread-mode")  # who answers, in words
    expect(toggle).to_have_attribute("data-mode", "bot")
    expect(badge).to_have_text("Bot")

    toggle.click()
    expect(toggle).to_have_attribute("data-mode", "human")
    expect(badge).to_have_text("Agent")
    assert stack.api("GET", f"conversations/{conv['id']}").json()["mode"] == "human"
    stack.inbound("Qual o preço?", from_=wa_id, name="Nina Alves")
    # Events reach autoreply in commit order: once a later customer got the rule's reply, the
    # first one's message has been handled, and the bot stayed silent.
    stack.inbound("Qual o preço?", from_=barrier, name="Barreira")
    wait_until(lambda: stack.sends_to(barrier), "the auto-reply to the barrier customer")
    assert stack.sends_to(wa_id) == []
    expect(page.locator('[data-testid="message"]')).to_have_count(2)

    toggle.click()
    expect(toggle).to_have_attribute("data-mode", "bot")
    expect(badge).to_have_text("Bot")
    stack.inbound("E o preço?", from_=wa_id, name="Nina Alves")
    automated = page.locator('[data-testid="message"][data-direction="outbound"]')
    expect(automated).to_contain_text(PRICE)
    expect(automated).to_have_attribute("data-status", "read")


def test_edits_deletions_and_reactions_land_on_their_messages_live(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    needs(stack.has_message_lifecycle(), "message lifecycle (edits, deletions, reactions on messages)")
    wa_id = customer()
    typo = stack.inbound("Quero 2 caixas", from_=wa_id, name="Olga Faria")
    other = stack.inbound("Pode entregar amanhã?", from_=wa_id, name="Olga Faria")
    conv = stack.conversation_of(wa_id)
    first, second = (m["id"] for m in stack.messages(conv["id"]))
    page = signed_in(context, stack)
    conversation(page, conv["id"]).click()
    expect(message(page, second)).to_be_visible()

    edit = {"original_message_id": typo, "message": {"type": "text", "text": {"body": "Quero 3 caixas"}}}
    stack.webhook(wb.message("edit", edit, from_=wa_id), name="Olga Faria")
    expect(message(page, first).get_by_test_id("message-body")).to_contain_text("Quero 3 caixas")
    expect(message(page, first)).to_have_attribute("data-edited", "true")
    expect(message(page, first).get_by_test_id("edited")).to_be_visible()

    stack.webhook(wb.reaction(other, "❤️", from_=wa_id), name="Olga Faria")
    expect(message(page, second).get_by_test_id("reactions")).to_have_text("❤️")
    stack.webhook(wb.message("revoke", {"original_message_id": other}, from_=wa_id), name="Olga Faria")
    expect(message(page, second)).to_have_attribute("data-deleted", "true")
    expect(message(page, second)).not_to_contain_text("Pode entregar amanhã?")
    # Nothing became a message of its own.
    expect(page.locator('[data-testid="message"]')).to_have_count(2)
    assert [m["id"] for m in stack.messages(conv["id"])] == [first, second]


def test_starting_a_conversation_with_a_template(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    needs(stack.has_endpoint("/api/messages", "post"), "POST /api/messages")
    wa_id = customer()
    page = signed_in(context, stack)
    page.get_by_test_id("new-conversation").click()
    page.get_by_test_id("new-to").fill(f"+{wa_id}")
    dialog = page.locator("#new-dialog")
    dialog.get_by_test_id("template-select").select_option(label="Pedido a caminho")
    dialog.locator('[data-param="1"]').fill("Paula")
    dialog.locator('[data-param="2"]').fill("77")
    page.get_by_test_id("new-send").click()

    outbound = page.locator('[data-testid="message"][data-direction="outbound"]')
    expect(outbound).to_have_count(1)
    expect(outbound).to_have_attribute("data-status", "read")
    conv = stack.conversation_of(wa_id)
    expect(conversation(page, conv["id"])).to_have_attribute("aria-current", "true")
    (sent,) = stack.sends_to(wa_id)
    assert sent["template"]["name"] == "order_update"
    assert sent["template"]["components"][0]["parameters"][0]["text"] == "Paula"


# ---------------------------------------------------------------------------------------------
# Reconnection
# ---------------------------------------------------------------------------------------------


def test_the_console_works_against_a_websocket_only_host(tmp_path: Path, context: Any) -> None:
    """``transports: [websocket]`` (required by ``zaphub run --workers N``): the console still connects."""
    from playwright.sync_api import expect

    own = Stack(tmp_path, transports=["websocket"]).start()
    try:
        page = signed_in(context, own)
        wa_id = customer()
        own.inbound("Oi, só websocket aqui", from_=wa_id, name="Iris Lima")
        conv = own.conversation_of(wa_id)
        conversation(page, conv["id"]).click()
        inbound = own.messages(conv["id"])[0]
        expect(message(page, inbound["id"])).to_contain_text("Oi, só websocket aqui")
    finally:
        own.stop()


def test_a_server_restart_while_offline_loses_and_repeats_nothing(
    tmp_path: Path, browser: Any, context: Any
) -> None:
    from playwright.sync_api import expect

    own = Stack(tmp_path).start()
    try:
        wa_id, other_id = customer(), customer()
        own.inbound("Primeira mensagem", from_=wa_id, name="Gabi Rocha")
        own.inbound("Outra conversa", from_=other_id, name="Hugo Melo")
        conv, other = own.conversation_of(wa_id), own.conversation_of(other_id)
        page = signed_in(context, own)
        conversation(page, conv["id"]).click()
        conversation(page, other["id"]).click()
        conversation(page, conv["id"]).click()
        expect(page.locator('[data-testid="message"]')).to_have_count(1)

        # The browser loses the network and the server restarts; meanwhile the customer writes,
        # a colleague replies from the CRM, and another customer writes.
        context.set_offline(True)
        own.restart()
        expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "offline")
        for text in ("Segunda", "Terceira", "Quarta"):
            own.inbound(text, from_=wa_id, name="Gabi Rocha")
        reply = own.api(
            "POST", f"conversations/{conv['id']}/messages", json={"type": "text", "body": "Respondido"}
        )
        assert reply.status_code == 202, reply.text
        own.inbound("Ainda aí?", from_=other_id, name="Hugo Melo")
        own.inbound("Alô?", from_=other_id, name="Hugo Melo")
        context.set_offline(False)

        expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "online")
        stored = own.messages(conv["id"])
        assert len(stored) == 5
        expect(page.locator('[data-testid="message"]')).to_have_count(5)
        expect(message(page, reply.json()["messageId"])).to_have_attribute("data-status", "read")
        assert [i for i, _ in shown_messages(page)] == [m["id"] for m in stored]
        expect(conversation(page, other["id"]).get_by_test_id("unread")).to_have_text("2")
        # And live events flow again on the new connection.
        own.inbound("Quinta", from_=wa_id, name="Gabi Rocha")
        expect(page.locator('[data-testid="message"]')).to_have_count(6)
        assert [i for i, _ in shown_messages(page)] == [m["id"] for m in own.messages(conv["id"])]
    finally:
        own.stop()


def test_a_dropped_connection_catches_up_and_shows_each_message_once(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    wa_id = customer()
    stack.inbound("Antes da queda", from_=wa_id, name="Júlia Reis")
    conv = stack.conversation_of(wa_id)
    page = signed_in(context, stack)
    conversation(page, conv["id"]).click()
    expect(page.locator('[data-testid="message"]')).to_have_count(1)

    context.set_offline(True)  # the socket drops; the server keeps running
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "offline")
    for text in ("Durante 1", "Durante 2"):
        stack.inbound(text, from_=wa_id, name="Júlia Reis")
    context.set_offline(False)

    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "online")
    expect(page.locator('[data-testid="message"]')).to_have_count(3)
    stack.inbound("Depois", from_=wa_id, name="Júlia Reis")
    expect(page.locator('[data-testid="message"]')).to_have_count(4)
    assert [i for i, _ in shown_messages(page)] == [m["id"] for m in stack.messages(conv["id"])]


def test_the_console_resumes_from_the_last_event_it_saw(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    needs(stack.has_endpoint("/api/events", "get"), "event log (eventId, GET /api/events)")

    def event_of(text: str) -> int:
        """The id of the ``whatsapp:message`` event of the customer's message ``text``."""
        after: int | None = 0
        while after is not None:  # the feed pages by 200 at most (max_page_size)
            feed = stack.api("GET", f"events?after={after}&limit=200&types=whatsapp:message").json()
            for e in feed["events"]:
                if e["data"]["message"]["body"] == text:
                    return int(e["id"])
            after = feed["nextAfter"]
        raise AssertionError(f"no whatsapp:message event for {text!r} in the feed")

    def seen_up_to(text: str) -> bool:
        return (page.evaluate("window.zaphubConsole.state().lastEventId") or 0) >= event_of(text)

    wa_id = customer()
    page = signed_in(context, stack)
    stack.inbound("Primeira", from_=wa_id, name="Rita Campos")
    conv = stack.conversation_of(wa_id)
    expect(conversation(page, conv["id"])).to_be_visible()
    wait_until(lambda: seen_up_to("Primeira"), "the first eventId")

    context.set_offline(True)
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "offline")
    stack.inbound("Segunda", from_=wa_id, name="Rita Campos")
    stack.inbound("Terceira", from_=wa_id, name="Rita Campos")
    context.set_offline(False)
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "online")
    expect(conversation(page, conv["id"]).get_by_test_id("unread")).to_have_text("3")
    # The missed events were replayed on the resumed connection: the client stands past them.
    wait_until(lambda: seen_up_to("Terceira"), "the replayed events")


def test_search_finds_conversations_by_name_or_phone(context: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    wa_id, other_id = customer(), customer()
    stack.inbound("Oi", from_=wa_id, name="Lívia Sá")
    stack.inbound("Oi", from_=other_id, name="Otávio Brandão")
    conv, other = stack.conversation_of(wa_id), stack.conversation_of(other_id)
    page = signed_in(context, stack)
    expect(conversation(page, other["id"])).to_be_visible()

    page.get_by_test_id("search").fill("livia")  # accents and case do not matter
    expect(conversation(page, conv["id"])).to_be_visible()
    expect(conversation(page, other["id"])).to_have_count(0)
    page.get_by_test_id("search").fill(other_id[-6:])
    expect(conversation(page, other["id"])).to_be_visible()
    expect(conversation(page, conv["id"])).to_have_count(0)
    page.get_by_test_id("search").fill("")
    expect(conversation(page, conv["id"])).to_be_visible()


# ---------------------------------------------------------------------------------------------
# Phones
# ---------------------------------------------------------------------------------------------


def test_on_a_phone_the_list_and_the_thread_take_turns(browser: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    wa_id = customer()
    stack.inbound("Oi pelo celular", from_=wa_id, name="Iara Nunes")
    conv = stack.conversation_of(wa_id)
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = phone.new_page()
        page.goto(f"{stack.url}/console#token={stack.token()}")
        item = conversation(page, conv["id"])
        expect(item).to_be_visible()
        expect(page.locator("#thread")).to_be_hidden()
        item.tap()
        expect(page.get_by_test_id("composer")).to_be_visible()
        expect(page.locator("#sidebar")).to_be_hidden()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways ({width}px)"
        page.locator("#back").tap()
        expect(item).to_be_visible()
        expect(page.locator("#thread")).to_be_hidden()
    finally:
        phone.close()
