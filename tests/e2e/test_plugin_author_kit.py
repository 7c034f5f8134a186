"""The plugin author's kit, as a third party uses it: the docs' example package, tested by pytest.

The example of docs/plugins.md (``zaphub-orders-bot``: its plugin and its ``tests/``) is written
file by file as documented, built into a wheel and installed by pip into a directory of its own.
Then ``pytest`` runs the package's own tests from a directory outside this repository, with only
what is installed: zaphub (its ``pytest11`` fixtures and the whatsapp builders) and the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_autoreply_e2e import orders_bot_site, write_docs_example
from tests.helpers import REPO, pg_admin_url

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

__all__ = ["orders_bot_site"]  # a fixture: pytest finds it in this module's namespace


def test_the_documented_example_suite_passes_from_an_installed_wheel(
    tmp_path: Path, orders_bot_site: Path
) -> None:
    site = orders_bot_site  # the docs' example built into a wheel, installed by pip (--target)
    assert (site / "orders_bot" / "__init__.py").exists()
    assert not (site / "tests").exists()  # the suite is not part of the package
    project = write_docs_example(tmp_path / "src")

    # The author's checkout, minus the plugin's source: the tests must use the installed package.
    author = tmp_path / "author"
    author.mkdir()
    shutil.copy(project / "pyproject.toml", author / "pyproject.toml")
    shutil.copytree(project / "tests", author / "tests")
    assert not author.resolve().is_relative_to(REPO)

    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ZAPHUB_", "WHATSAPP_", "CRM_", "PYTEST_"))
    }
    env["PYTHONPATH"] = str(site)
    env["ZAPHUB_TEST_POSTGRES_URL"] = pg_admin_url()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=author,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "5 passed" in output, output
    assert "skipped" not in output, output  # the PostgreSQL test ran
