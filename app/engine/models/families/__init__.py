"""Model families on the fast path (FusedLlama, the native kernels), one module each: registry.py."""

from app.engine.models.families.registry import (Family, architectures, by_architecture, by_model_type, families,
                                                 model_types)

__all__ = ["Family", "architectures", "by_architecture", "by_model_type", "families", "model_types"]
