"""The generation engine: torch and transformers only; it knows nothing of HTTP or settings files."""
