"""The SQLite writer's CPU per ingest transaction, in process: ``Storage.ingest`` alone, no HTTP.

Webhook bodies as ``bench/webhooks.py`` sends them (one text message each, a unique wamid,
``--contacts`` senders), parsed by the whatsapp plugin, are stored ``--batch`` messages per
transaction through ``Storage.ingest``, one transaction after another, on a fresh SQLite file.
Every contact is stored first; after ``--warmup`` transactions it times ``--transactions`` more
(warm traffic) and prints, per transaction and per message, the CPU of the **writer thread**
(its own clock, read in that thread), of the **calling thread** (the event loop's share:
sanitising, the hand-off, the caches) and of the whole process, and the wall time. Steadier
than a whole-server run on a shared machine; ``--sync NORMAL`` leaves out the commit's fsync.

    python bench/ingest_writer.py --batch 1     # a paced rate: one webhook per group commit
    python bench/ingest_writer.py --batch 30    # full rate: about 30 webhooks per group commit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.config import StorageConfig  # noqa: E402
from core.models import InboundMessage  # noqa: E402
from core.storage import Storage  # noqa: E402
from plugins.whatsapp import webhook_builders as wb  # noqa: E402
from plugins.whatsapp.models import parse_webhook  # noqa: E402


def messages(n: int, contacts: int, start: int) -> list[InboundMessage]:
    """``n`` parsed text messages as bench/webhooks.py sends them (sender ``i % contacts``)."""
    out: list[InboundMessage] = []
    for i in range(start, start + n):
        msg = wb.text(f"Olá, mensagem {i}", from_=f"55119{i % contacts:08d}")
        out.extend(parse_webhook(wb.encode(wb.envelope(messages=[msg]))).messages)
    return out


async def run(args: argparse.Namespace) -> dict[str, float]:
    """Store the warm-up and the timed transactions; the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        config = StorageConfig(url=f"sqlite+aiosqlite:///{tmp}/bench.db", sqlite_synchronous=args.sync)
        storage = Storage(config)
        await storage.open()
        try:

            async def writer_cpu() -> float:
                # The writer thread's own clock, read in an (empty) transaction of its own.
                return await storage.run_write(lambda _conn: time.thread_time())

            # Every contact first (in large transactions), so the timed part is warm traffic.
            for i in range(-args.contacts, 0, 100):
                await storage.ingest(messages(min(100, -i), args.contacts, i), [])
            total = args.warmup + args.transactions
            batches = [messages(args.batch, args.contacts, i * args.batch) for i in range(total)]
            for batch in batches[: args.warmup]:
                await storage.ingest(batch, [])
            w0, m0, p0, t0 = await writer_cpu(), time.thread_time(), time.process_time(), time.perf_counter()
            for batch in batches[args.warmup :]:
                result = await storage.ingest(batch, [])
                assert len(result.new_messages) == len(batch)
            wall = time.perf_counter() - t0
            w1, m1, p1 = await writer_cpu(), time.thread_time(), time.process_time()
        finally:
            await storage.close()
    n = args.transactions
    return {
        "batch": args.batch,
        "transactions": n,
        "writer_us_per_tx": (w1 - w0) / n * 1e6,
        "writer_us_per_msg": (w1 - w0) / n / args.batch * 1e6,
        "loop_us_per_tx": (m1 - m0) / n * 1e6,
        "process_us_per_tx": (p1 - p0) / n * 1e6,
        "process_us_per_msg": (p1 - p0) / n / args.batch * 1e6,
        "wall_us_per_tx": wall / n * 1e6,
    }


def main() -> None:
    """Parse the arguments, run, print."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--batch", type=int, default=1, help="messages per transaction")
    parser.add_argument("--transactions", type=int, default=2000, help="timed transactions")
    parser.add_argument("--warmup", type=int, default=300, help="transactions before the timing")
    parser.add_argument("--contacts", type=int, default=500)
    parser.add_argument("--sync", choices=["FULL", "NORMAL"], default="FULL")
    args = parser.parse_args()
    r = asyncio.run(run(args))
    print(
        f"{r['transactions']} transactions of {r['batch']}: writer thread {r['writer_us_per_tx']:.0f} µs per "
        f"transaction ({r['writer_us_per_msg']:.1f} per message), calling thread {r['loop_us_per_tx']:.0f}, "
        f"process {r['process_us_per_tx']:.0f} ({r['process_us_per_msg']:.1f} per message), "
        f"wall {r['wall_us_per_tx']:.0f} µs"
    )
    print("result:", json.dumps({k: round(v, 1) for k, v in r.items()}))


if __name__ == "__main__":
    main()
