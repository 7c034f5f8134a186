"""Take the agent console's screenshots in this folder (the README shows them).

Runs the real thing: ``zaphub run`` with the built-in Meta sandbox on a free port, customers writing
through signed webhooks, an agent answering from the console in headless Chromium (Debian's
``chromium`` package, driven by Playwright). Nothing is staged in the page itself.

    python docs/img/screenshots.py          # writes docs/img/console-*.png
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import jwt

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from plugins.whatsapp import webhook_builders as wb  # noqa: E402
from tests.helpers import ZaphubProcess, write_config  # noqa: E402

OUT = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
SECRET = "screenshots-app-secret-0123456789abcdef"
JWT_SECRET = "screenshots-jwt-secret-0123456789abcdef"
SANDBOX = "/_sandbox/graph"

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


class Demo:
    """A running zaphub with the sandbox, and helpers that play Meta and the CRM."""

    def __init__(self, tmp: Path) -> None:
        config = {
            "storage": {"url": f"sqlite:///{tmp / 'demo.db'}"},
            "plugins": {
                "whatsapp": {
                    "sandbox": True,
                    "app_secret": SECRET,
                    "verify_token": "demo",
                    "access_token": "demo",
                },
                "crm_realtime": {
                    "jwt_secret": JWT_SECRET,
                    "console": {
                        "templates": [
                            {
                                "name": "order_update",
                                "language": "pt_BR",
                                "label": "Pedido a caminho",
                                "body": "Olá {{1}}, seu pedido {{2}} saiu para entrega.",
                            }
                        ]
                    },
                },
                "autoreply": {
                    "rules": [{"keywords": ["preço"], "reply": "Nossa tabela: exemplo.com.br/precos"}]
                },
            },
        }
        self.proc = ZaphubProcess(write_config(tmp / "config.yaml", config))
        self.http = httpx.Client(base_url=self.proc.url, timeout=10)
        self.token = jwt.encode(
            {"sub": "ana.souza", "exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256"
        )

    def webhook(self, message: dict[str, Any], wa_id: str, name: str) -> None:
        """Post a signed inbound webhook, as Meta does."""
        body, headers = wb.signed(wb.envelope(messages=[message], contacts=[wb.contact(wa_id, name)]), SECRET)
        assert self.http.post("/meta-whatsapp/webhook", content=body, headers=headers).status_code == 200

    def upload(self, png: bytes) -> str:
        """Upload an image to the sandbox's Graph; returns its media id."""
        response = self.http.post(
            f"{SANDBOX}/v25.0/{wb.DEFAULT_PHONE_NUMBER_ID}/media",
            files={"file": ("photo.png", png, "image/png")},
            data={"messaging_product": "whatsapp", "type": "image/png"},
            headers={"Authorization": "Bearer demo"},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def reply(self, wa_id: str, text: str) -> None:
        """Send a reply to a customer through the REST API."""
        auth = {"Authorization": f"Bearer {self.token}"}
        conversations = self.http.get("/api/conversations?limit=200", headers=auth).json()["conversations"]
        (conv,) = [c for c in conversations if c["contact"]["wa_id"] == wa_id]
        sent = self.http.post(
            f"/api/conversations/{conv['id']}/messages", json={"type": "text", "body": text}, headers=auth
        )
        assert sent.status_code == 202, sent.text


def main() -> None:
    """Seed the demo, then shoot the login, the desktop list + thread, and the phone screens."""
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        demo = Demo(Path(tmp))
        demo.proc.start().wait_ready()
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            scratch = browser.new_page(viewport={"width": 480, "height": 360})
            scratch.set_content(PHOTO)
            photo = demo.upload(scratch.locator("#c").screenshot())
            now = int(time.time())
            for wa_id, name, minutes, messages in CUSTOMERS:
                for i, (kind, text) in enumerate(messages):
                    at = now - minutes * 60 - (len(messages) - i) * 40
                    if kind == "out":
                        time.sleep(0.3)  # the previous inbound is stored first
                        demo.reply(wa_id, text)
                    elif kind == "image":
                        demo.webhook(
                            wb.image(
                                media_id=photo, caption=text, mime_type="image/png", from_=wa_id, timestamp=at
                            ),
                            wa_id,
                            name,
                        )
                    else:
                        demo.webhook(wb.text(text, from_=wa_id, timestamp=at), wa_id, name)
            time.sleep(1.5)  # auto-replies and statuses settle

            desktop = browser.new_context(viewport={"width": 1280, "height": 760}, color_scheme="light")
            page = desktop.new_page()
            page.goto(f"{demo.proc.url}/console")
            expect(page.get_by_test_id("token-input")).to_be_visible()
            page.get_by_test_id("token-input").fill(demo.token)
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
            page.mouse.move(0, 0)
            page.screenshot(path=OUT / "console-desktop.png")

            phone = browser.new_context(
                viewport={"width": 390, "height": 780}, device_scale_factor=2, is_mobile=True, has_touch=True
            )
            mobile = phone.new_page()
            mobile.goto(f"{demo.proc.url}/console#token={demo.token}")
            expect(mobile.get_by_test_id("connection")).to_have_attribute("data-state", "online")
            expect(mobile.locator('[data-testid="unread"]').first).to_be_visible()
            mobile.screenshot(path=OUT / "console-phone-list.png")
            mobile.locator('[data-testid="conversation"]', has_text="Maria Oliveira").tap()
            expect(mobile.locator('[data-testid="media-image"]')).to_be_visible()
            mobile.screenshot(path=OUT / "console-phone-thread.png")
        finally:
            browser.close()
            demo.proc.stop()
    print("\n".join(str(p.relative_to(REPO)) for p in sorted(OUT.glob("console-*.png"))))


if __name__ == "__main__":
    main()
