"""Database trouble tells the truth: one line at startup, StorageError (never SQLAlchemy's) at runtime."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.config import StorageConfig
from core.errors import StorageError
from core.models import InboundMessage, utcnow
from core.storage import Storage
from tests.conftest import require_service
from tests.helpers import REPO, free_port, pg_admin_url, write_config


def run_zaphub(tmp_path: Path, storage_url: str) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path / "config.yaml", {"storage": {"url": storage_url}})
    return subprocess.run(
        [sys.executable, "-m", "core.cli", "run", "--config", str(config), "--port", str(free_port())],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.postgres
def test_a_missing_database_is_one_line_naming_the_setting_and_the_fix(tmp_path: Path) -> None:
    admin = pg_admin_url()
    require_service("PostgreSQL", admin)
    name = f"zaphub_missing_{uuid.uuid4().hex[:8]}"
    done = run_zaphub(tmp_path, f"{admin.rsplit('/', 1)[0]}/{name}")
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "storage.url" in errors[0] and "ZAPHUB_DATABASE_URL" in errors[0]
    assert f"database {name!r} does not exist: create the database" in errors[0]
    assert "listening" not in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) < 10, done.stderr


def test_an_unreachable_database_is_one_line_naming_the_setting_and_the_fix(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = run_zaphub(tmp_path, f"postgresql://zaphub:secret-pw@127.0.0.1:{port}/zaphub")
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "storage.url" in errors[0] and "ZAPHUB_DATABASE_URL" in errors[0]
    assert f"nothing accepts connections at 127.0.0.1:{port}: start PostgreSQL" in errors[0]
    assert "secret-pw" not in done.stderr
    assert "listening" not in done.stderr and "Traceback" not in done.stderr


async def test_storage_errors_leave_the_storage_layer_as_storage_error(tmp_path: Path) -> None:
    storage = Storage(StorageConfig(url=f"sqlite:///{tmp_path / 'z.db'}"))
    await storage.open()
    try:
        async with storage.write() as conn:  # the database loses its tables under our feet
            await conn.execute(sa.text("DROP TABLE outbox"))
            await conn.execute(sa.text("DROP TABLE statuses"))
            await conn.execute(sa.text("DROP TABLE messages"))
        message = InboundMessage(
            phone_number_id="1", wamid="w", wa_id="5511", profile_name=None, type="text", body="x",
            timestamp=utcnow(), raw={},
        )  # fmt: skip
        calls = [
            storage.get_message(1),
            storage.list_messages(1),
            storage.ingest([message], []),
        ]
        for call in calls:
            with pytest.raises(StorageError) as caught:
                await call
            assert not isinstance(caught.value, sa.exc.SQLAlchemyError)
            assert isinstance(caught.value.__cause__, sa.exc.SQLAlchemyError)  # kept for the log
            assert "SELECT" not in str(caught.value) and "INSERT" not in str(caught.value)  # no SQL
    finally:
        await storage.close()
