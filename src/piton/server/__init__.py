"""``piton serve``: a JSON HTTP API over a store's runs (Starlette; extra ``piton[server]``).

Only the serve command imports this package: ``import piton`` does not need Starlette.
``create_app(store, workflows, token=None)`` builds the application; see docs/service.md.
"""

from __future__ import annotations

from piton.server.app import create_app

__all__ = ["create_app"]
