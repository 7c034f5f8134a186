"""Take the agent console's screenshots in this folder (the README shows them).

Runs the real thing, the stack of the console's browser tests (``tests/e2e/console_stack.py``):
``zaphub run`` and ``zaphub sandbox`` on free ports, customers writing through signed webhooks, an
agent answering from the console in headless Chromium (Debian's ``chromium`` package, driven by
Playwright). Nothing is staged in the page itself.

    python docs/img/screenshots.py          # writes docs/img/console-*.png
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from plugins.whatsapp import webhook_builders as wb  # noqa: E402
from tests.e2e.console_stack import CHROMIUM, Stack, browser_problem  # noqa: E402

OUT = Path(__file__).resolve().parent

# A product photo for the image message, drawn by the browser itself (no asset to ship).
PHOTO = """
<body style="margin:0">
<canvas id=c width=480 height=360></canvas>
<script>
const g = document.getElementById('c').getContext('2d');
const bg = g.createLinearGradient(0, 0, 480, 360);
bg.addColorStop(0, '#f6e7d8'); bg.addColorStop(1, '#d9c2a7');
g.fillStyle = bg; g.fillRect(0, 0, 480, 360);
g.fillStyle = 'rgba(0,0,0,.12)'; g.beginPath(); g.ellipse(250, 300, 170, 26, 0, 0, 7); g.fill();
g.fillStyle = '#2f6f9f'; g.beginPath(); g.roundRect(110, 90, 260, 200, 28); g.fill();
g.fillStyle = '#3f86bd'; g.beginPath(); g.roundRect(110, 90, 260, 60, [28, 28, 0, 0]); g.fill();
g.strokeStyle = '#f4f4f4'; g.lineWidth = 6; g.beginPath(); g.moveTo(300, 170); g.lineTo(335, 215);
g.lineTo(318, 240); g.lineTo(350, 275); g.stroke();
g.fillStyle = '#fff'; g.font = 'bold 28px sans-serif'; g.fillText('ZAP', 140, 132);
</script>
</body>
"""

CUSTOMERS = [
    # (number, name, minutes ago, messages); a message is ("in"|"out", text) or ("image", caption)
    ("5511987650001", "Ana Beatriz Costa", 180, [("in", "Vocês entregam no sábado?")]),
    ("5521998760002", "Rafael Lima", 95, [("in", "Qual o preço do plano anual?")]),
    ("5531976540003", "Juliana Martins", 40, [("in", "Obrigada pelo atendimento! 😊")]),
    ("5541965430004", "Pedro Henrique", 12, [("in", "Oi, preciso trocar o endereço de entrega")]),
    (
        "5521988887777",
        "Maria Oliveira",
        0,
        [
            ("in", "Bom dia! Meu pedido 4821 chegou com a caixa amassada 😕"),
            ("image", "A caixa chegou assim"),
            ("out", "Bom dia, Maria! Sinto muito. Vou abrir a troca agora mesmo."),
            ("in", "O produto parece ok, mas quero ter certeza que está tudo certo"),
        ],
    ),
    ("5511912340005", "Lucas Andrade", 2, [("in", "Vocês aceitam Pix?"), ("in", "E cartão em 3x?")]),
]


MARIA = "5521988887777"
MARIA_EDIT = "O produto parece ok, mas quero conferir se está tudo certo antes de abrir"


def reply(stack: Stack, wa_id: str, text: str) -> None:
    """An agent's reply to a customer, through the REST API."""
    conv = stack.conversation_of(wa_id)
    sent = stack.api("POST", f"conversations/{conv['id']}/messages", json={"type": "text", "body": text})
    assert sent.status_code == 202, sent.text


def main() -> None:
    """Seed the demo, then shoot the login, the desktop thread (an edit, a reaction), the phone."""
    problem = browser_problem()
    if problem is not None:
        sys.exit(f"cannot take the screenshots: {problem}")
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        stack = Stack(Path(tmp))
        token = stack.token("ana.souza")
        browser = pw.chromium.launch(executable_path=str(CHROMIUM))
        try:
            stack.start()
            scratch = browser.new_page(viewport={"width": 480, "height": 360})
            scratch.set_content(PHOTO)
            photo = stack.upload(scratch.locator("#c").screenshot())
            now = int(time.time())
            last_wamid: dict[str, str] = {}
            for wa_id, name, minutes, messages in CUSTOMERS:
                for i, (kind, text) in enumerate(messages):
                    at = now - minutes * 60 - (len(messages) - i) * 40
                    if kind == "out":
                        time.sleep(0.3)  # the previous inbound is stored first
                        reply(stack, wa_id, text)
                    elif kind == "image":
                        image = wb.image(
                            media_id=photo, caption=text, mime_type="image/png", from_=wa_id, timestamp=at
                        )
                        stack.webhook(image, name=name)
                    else:
                        last_wamid[wa_id] = stack.inbound(text, from_=wa_id, name=name, timestamp=at)
            time.sleep(4)  # auto-replies and statuses (read comes 3 s after a send) settle

            desktop = browser.new_context(viewport={"width": 1280, "height": 760}, color_scheme="light")
            page = desktop.new_page()
            page.goto(f"{stack.url}/console")
            expect(page.get_by_test_id("token-input")).to_be_visible()
            page.get_by_test_id("token-input").fill(token)
            page.screenshot(path=OUT / "console-login.png")

            page.get_by_test_id("login").click()
            expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "online")
            page.locator('[data-testid="conversation"]', has_text="Maria Oliveira").click()
            expect(page.locator('[data-testid="media-image"]')).to_be_visible()
            page.get_by_test_id("composer").fill(
                "Pode ficar tranquila: já separei um novo para você, sai hoje."
            )
            page.get_by_test_id("send").click()
            page.wait_for_function(
                """() => {
                  const sent = document.querySelectorAll('[data-testid=message][data-direction=outbound]');
                  return sent.length === 2 && [...sent].every((e) => e.dataset.status === 'read');
                }""",
                timeout=20000,
            )
            # Maria edits her last message and thanks the first reply with a reaction: both land
            # on their messages live.
            thread = stack.messages(stack.conversation_of(MARIA)["id"])
            first_reply = next(m for m in thread if m["direction"] == "outbound")
            stack.webhook(wb.edit(last_wamid[MARIA], MARIA_EDIT, from_=MARIA), name="Maria Oliveira")
            stack.webhook(wb.reaction(first_reply["wamid"], "❤️", from_=MARIA), name="Maria Oliveira")
            expect(page.get_by_test_id("reactions")).to_have_text("❤️")
            expect(page.get_by_test_id("edited")).to_be_visible()
            page.mouse.move(0, 0)
            page.screenshot(path=OUT / "console-desktop.png")

            phone = browser.new_context(
                viewport={"width": 390, "height": 780}, device_scale_factor=2, is_mobile=True, has_touch=True
            )
            mobile = phone.new_page()
            mobile.goto(f"{stack.url}/console#token={token}")
            expect(mobile.get_by_test_id("connection")).to_have_attribute("data-state", "online")
            expect(mobile.locator('[data-testid="unread"]').first).to_be_visible()
            mobile.screenshot(path=OUT / "console-phone-list.png")
            mobile.locator('[data-testid="conversation"]', has_text="Maria Oliveira").tap()
            expect(mobile.locator('[data-testid="media-image"]')).to_be_visible()
            mobile.screenshot(path=OUT / "console-phone-thread.png")
        finally:
            browser.close()
            stack.stop()
    print("\n".join(str(p.relative_to(REPO)) for p in sorted(OUT.glob("console-*.png"))))


if __name__ == "__main__":
    main()
