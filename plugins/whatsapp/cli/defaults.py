"""Where the whatsapp commands' options come from when the command line does not say.

In order: the command line, the environment (``WHATSAPP_APP_SECRET``, ``WHATSAPP_PHONE_NUMBER_ID``,
``WHATSAPP_ACCESS_TOKEN``, ``WHATSAPP_BUSINESS_ACCOUNT_ID``, ``ZAPHUB_URL``), zaphub's config file
(see :func:`defaults_from_config`), then the development defaults of the bundled ``config.yaml``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

import httpx

__all__ = [
    "DEFAULT_APP_SECRET",
    "DEFAULT_ZAPHUB_URL",
    "WEBHOOK_PATH",
    "defaults_from_config",
    "pick",
    "webhook_url",
]

DEFAULT_APP_SECRET = "dev-app-secret"
DEFAULT_ZAPHUB_URL = "http://127.0.0.1:3000"
WEBHOOK_PATH = "/meta-whatsapp/webhook"


def defaults_from_config(args: argparse.Namespace) -> dict[str, str]:
    """Settings found in zaphub's config file (``--config``, ``ZAPHUB_CONFIG`` or ./config.yaml).

    Keys are named like the options of these commands; keys the config leaves empty are left
    out, so the environment and the built-in defaults still apply. An unreadable or invalid
    config is not an error here: these commands also serve hosts configured elsewhere.
    """
    from core.cli import load_plugin_settings
    from core.errors import ZaphubError

    try:
        config, settings = load_plugin_settings(getattr(args, "config", None), "whatsapp")
    except ZaphubError:
        return {}
    host = config.server.host if config.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    found = {
        "app_secret": settings.app_secret,
        "phone_number_id": settings.phone_number_id,
        "access_token": settings.access_token,
        "waba_id": settings.business_account_id,
        "url": f"http://{host}:{config.server.port}",
    }
    return {k: v for k, v in found.items() if v}


def pick(flag: str | None, config: Mapping[str, str], key: str, env: str, default: str) -> str:
    """The flag, else the environment variable ``env``, else the config's ``key``, else ``default``."""
    # A flag beats an environment variable, which beats a config file found in the directory.
    if flag is not None:
        return flag
    return os.environ.get(env) or config.get(key) or default


def webhook_url(url: str) -> str:
    """Accept zaphub's base URL as well as the full webhook URL."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(path=WEBHOOK_PATH)) if parsed.path in ("", "/") else url
