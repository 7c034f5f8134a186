"""zaphub: the host that connects the Meta WhatsApp Cloud API to a CRM in real time.

Plugins import the hook marker from here::

    from core import hookimpl
"""

from core.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]

__version__ = "0.1.0"
