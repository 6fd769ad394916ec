"""`python -m app`: read settings, configure logging, serve (app/lifecycle.py). No other logic."""

from __future__ import annotations

import gc
import sys

from app.openmp import limit_spinning

limit_spinning()  # before anything imports torch (app/openmp.py)

# Start-up allocates millions of long-lived objects (torch, transformers, the web stack, the model):
# the cyclic collector would sweep them over and over, about 0.3 s of a 2 s import on 2 cores.
# app.lifecycle turns it back on, with everything alive by then frozen, once the server is up.
gc.disable()

from app.config import Settings  # noqa: E402
from app.lifecycle import serve  # noqa: E402
from app.logs import configure_logging  # noqa: E402
from app.main import create_app  # noqa: E402


def main() -> None:
    try:
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        app = create_app(settings)
    except (ValueError, OSError) as exc:  # a bad setting or key file (pydantic errors are ValueErrors): no traceback
        print(f"tokenwire: invalid settings: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(app, settings))


if __name__ == "__main__":
    main()
