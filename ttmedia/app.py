"""The ASGI entry point operators name: `uvicorn ttmedia.app:create_app --factory`.

The app itself is wired in `ttmedia.web.app`; this module keeps the documented import path
stable across the package's internal layout.
"""

from ttmedia.web.app import create_app

__all__ = ["create_app"]
