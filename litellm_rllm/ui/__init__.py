"""The trace viewer: a static page served by the plugin at ``GET /rllm/ui``.

Hand-written HTML, CSS and vanilla JavaScript in ``static/`` (no build step, nothing fetched
from elsewhere: the page works offline). The page reads only the JSON routes a trainer uses
(``/rllm/sessions``, ``/rllm/sessions/{id}/traces``, and where they exist the trajectory view
and the change feed); ``server.py`` serves the files under a strict Content-Security-Policy.
"""

from litellm_rllm.ui.server import ASSETS, CSP, ui_router

__all__ = ["ASSETS", "CSP", "ui_router"]
