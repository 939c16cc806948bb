"""The operator's web console at ``/console``: every response, its step tree, and a live view.

``install_console`` mounts it on the app. Its pages are rendered on the server
from one store query each (:mod:`stepline.store._listing`); a small
hand-written script (``static/console.js``) follows a running response's
event log in the live view. Nothing needs building: the templates and the
static files ship inside the package. Only an admin key may open it
(:mod:`.access`); on a server without keys, only a loopback client.
"""

from stepline._server.console.routes import install_console

__all__ = ["install_console"]
