"""stepline on its in-memory store, for ``python -m benchmarks --store memory``.

A diagnostic, not a way to run stepline: nothing it serves survives the
process. Comparing its figures with the shipped (durable) ones shows how much
of stepline's overhead the SQL store accounts for.
"""

from __future__ import annotations

import argparse

import uvicorn

from stepline._config import load_settings
from stepline._server.app import create_app
from stepline.store._memory import MemoryStore

__all__ = ["main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    app = create_app(load_settings(args.config), store=MemoryStore())
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
