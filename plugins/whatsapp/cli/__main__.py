"""``python -m plugins.whatsapp.cli sandbox|simulate …``."""

from plugins.whatsapp.cli import main

raise SystemExit(main())
