"""`python -m app`: read settings, configure logging, serve (app/lifecycle.py). No other logic."""

from __future__ import annotations

import sys

from app.config import Settings
from app.lifecycle import serve
from app.logs import configure_logging
from app.main import create_app


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    sys.exit(serve(create_app(settings), settings))


if __name__ == "__main__":
    main()
