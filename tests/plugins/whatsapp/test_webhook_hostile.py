"""Signed webhooks with odd content: no valid message is lost to an invalid neighbour, no 5xx forever.

PostgreSQL refuses what SQLite stores (NUL in text, an id over its column, an integer over its
column); both must store the same. The property test posts the same random signed envelopes to
both backends and compares what they stored.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.app import create_app
from core.config import parse_config
from plugins.whatsapp import webhook_builders as wb
from tests.conftest import _fresh_postgres
from tests.helpers import serve

SECRET = "test-app-secret-0123456789abcdef"
PNID = wb.DEFAULT_PHONE_NUMBER_ID
URL = "/meta-whatsapp/webhook"
_anchor = itertools.count()


def make_app(storage_url: str) -> Any:
    config = parse_config(
        {
            "storage": {"url": storage_url},
            "plugins": {
                "whatsapp": {
                    "verify_token": "vt-123",
                    "app_secret": SECRET,
                    "phone_number_id": PNID,
                    "access_token": "EAAtest",
                }
            },
        }
    )
    return create_app(config)


class Client(httpx.AsyncClient):
    host: Any


@contextlib.asynccontextmanager
async def running(storage_url: str) -> AsyncIterator[Client]:
    app = make_app(storage_url)
    async with serve(app) as url, Client(base_url=url, timeout=30) as c:
        c.host = app.state.host
        yield c


async def post(client: Client, payload: Any) -> httpx.Response:
    body = wb.encode(payload) if not isinstance(payload, bytes) else payload
    headers = {"content-type": "application/json", "x-hub-signature-256": wb.sign(body, SECRET)}
    return await client.post(URL, content=body, headers=headers)


async def stored(client: Client) -> dict[str, list[tuple[Any, ...]]]:
    """Everything an inbound webhook can write, in a backend-neutral, sorted form."""
    from core.storage.schema import contacts, messages, statuses

    queries = {
        "contacts": sa.select(contacts.c.wa_id, contacts.c.name),
        "messages": sa.select(
            messages.c.wamid,
            messages.c.type,
            messages.c.body,
            messages.c.media_id,
            messages.c.media_mime_type,
            messages.c.context_wamid,
            messages.c.raw,
        ),
        "statuses": sa.select(
            statuses.c.wamid,
            statuses.c.status,
            statuses.c.timestamp,
            statuses.c.error_code,
            statuses.c.error_title,
            statuses.c.raw,
        ),
    }
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with client.host.storage.read() as conn:
        for name, query in queries.items():
            out[name] = sorted(
                (tuple(wb.encode(v) for v in row) for row in await conn.execute(query)), key=repr
            )
    return out


async def wamids(client: Client) -> set[str]:
    from core.storage.schema import messages

    async with client.host.storage.read() as conn:
        return set((await conn.execute(sa.select(messages.c.wamid))).scalars())


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _fresh_postgres()


# -- strategies --------------------------------------------------------------------------------

_chars = st.characters(exclude_categories=("Cs",))  # JSON text cannot carry lone surrogates
texts = st.one_of(st.text(_chars, max_size=12), st.text(_chars, max_size=6).map(lambda s: f"a\x00{s}"))
long_ids = st.integers(240, 300).map(lambda n: "w" * n)
wamids_st = st.one_of(st.text("abc0", min_size=1, max_size=8).map(lambda s: f"wamid.{s}"), long_ids, texts)
wa_ids = st.one_of(st.sampled_from(["5511999990001", "5511999990002"]), st.integers(60, 70).map("9".__mul__))
codes = st.one_of(st.none(), st.integers(-(2**40), 2**40), st.integers(2**31, 2**70), st.just(2**63))
callbacks = st.one_of(st.none(), st.integers(0, 2**70).map(lambda n: f"zaphub:{n}"))
types = st.sampled_from(["text", "image", "poll", "t" * 70])


@st.composite
def inbound_messages(draw: st.DrawFn) -> dict[str, Any]:
    type_ = draw(types)
    opts: dict[str, Any] = {"wamid": draw(wamids_st), "from_": draw(wa_ids)}
    if draw(st.booleans()):
        opts["context"] = {"from": PNID, "id": draw(wamids_st)}
    if type_ == "text":
        return wb.message("text", {"body": draw(texts)}, **opts)
    media = {"id": draw(wamids_st), "mime_type": draw(st.sampled_from(["image/jpeg", "x/" + "y" * 130]))}
    return wb.message(type_, {**media, "caption": draw(texts)}, **opts)


@st.composite
def statuses_st(draw: st.DrawFn) -> dict[str, Any]:
    status = draw(st.sampled_from(["sent", "delivered", "failed", "s" * 40, "x\x00"]))
    item = wb.status(draw(wamids_st), "sent" if status == "failed" else status)
    item["status"] = status
    item["timestamp"] = draw(st.sampled_from([item["timestamp"], "9" * 40]))
    if draw(st.booleans()):
        item["biz_opaque_callback_data"] = draw(callbacks)
    if status == "failed" or draw(st.booleans()):
        item["errors"] = [{"code": draw(codes), "title": draw(texts), "message": draw(texts)}]
    return item


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    msgs = draw(st.lists(inbound_messages(), max_size=3))
    names = {m["from"]: draw(texts) for m in msgs}
    anchor = wb.text("valid neighbour", wamid=f"wamid.anchor.{next(_anchor)}")
    return wb.envelope(
        messages=[*msgs, anchor],
        statuses=draw(st.lists(statuses_st(), max_size=3)),
        contacts=[wb.contact(w, n) for w, n in names.items()] + [wb.contact(wb.DEFAULT_FROM)],
    )


@pytest.fixture
async def both(sqlite_url: str, postgres_url: str) -> AsyncIterator[tuple[Client, Client]]:
    """One server on SQLite and one on PostgreSQL, shared by every example of the property test."""
    async with running(sqlite_url) as lite, running(postgres_url) as pg:
        yield lite, pg


@pytest.mark.postgres
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(payload=envelopes())
async def test_both_backends_store_the_same_random_signed_envelopes(
    both: tuple[Client, Client], payload: dict[str, Any]
) -> None:
    lite, pg = both
    answers = [await post(lite, payload), await post(pg, payload)]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    anchor = payload["entry"][0]["changes"][0]["value"]["messages"][-1]["id"]
    assert anchor in await wamids(lite)
    assert anchor in await wamids(pg)
    assert await stored(lite) == await stored(pg)


# -- the cases the property test generalises, named ------------------------------------------


@pytest.fixture
async def client(storage_url: str) -> AsyncIterator[Client]:
    async with running(storage_url) as c:
        yield c


async def test_nul_characters_are_stored_replaced_and_kept_raw(client: Client) -> None:
    msg = wb.text("ol\x00á", wamid="wamid.nul")
    caption = wb.image(caption="foto\x00", wamid="wamid.nul.caption")
    payload = wb.envelope(messages=[msg, caption], contacts=[wb.contact(wb.DEFAULT_FROM, "Ana\x00")])
    r = await post(client, payload)
    assert r.status_code == 200, r.text
    stored_msgs = {m.wamid: m for m in (await client.host.storage.list_messages(1))}
    assert stored_msgs["wamid.nul"].body == "ol\ufffdá"
    assert stored_msgs["wamid.nul"].raw == msg  # Meta's original, NUL included
    assert stored_msgs["wamid.nul.caption"].body == "foto\ufffd"
    contact = await client.host.storage.get_contact(1)
    assert contact is not None and contact.name == "Ana\ufffd"


async def test_an_id_over_its_column_sets_that_message_aside_not_its_neighbours(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    too_long = wb.text("odd", wamid="w" * 300)
    good = wb.text("fine", wamid="wamid.good")
    r = await post(client, wb.envelope(messages=[too_long, good]))
    assert r.status_code == 200, r.text
    assert await wamids(client) == {"wamid.good"}
    assert "set aside" in caplog.text and "wamid is 300 characters" in caplog.text
    metrics = (await client.get("/metrics")).text
    assert "zaphub_inbound_set_aside_total 1.0" in metrics


async def test_error_codes_and_callback_ids_beyond_the_columns_are_stored(client: Client) -> None:
    failed = wb.status("wamid.unknown", "failed", error_code=2**70, error_title="bad\x00")
    failed["biz_opaque_callback_data"] = f"zaphub:{2**70}"
    int32 = wb.status("wamid.unknown", "delivered", error_code=2**31)
    r = await post(client, wb.envelope(statuses=[failed, int32]))
    assert r.status_code == 200, r.text
    from core.storage.schema import statuses

    async with client.host.storage.read() as conn:
        rows = (await conn.execute(sa.select(statuses).order_by(statuses.c.status))).all()
    assert [(row.status, row.error_code, row.error_title) for row in rows] == [
        ("delivered", None, "Error 2147483648"),
        ("failed", None, "bad\ufffd"),
    ]
    assert rows[1].raw["errors"][0]["code"] == 2**70  # the original is kept


async def test_json_nested_too_deep_is_refused_with_400(client: Client) -> None:
    deep = b'{"object":"whatsapp_business_account","entry":' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = await post(client, deep)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "bad_json"
    assert "too deeply" in r.json()["error"]["message"]
