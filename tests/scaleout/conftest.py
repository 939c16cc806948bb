"""Scale-out tests reuse the process harness of the durability tests."""

from tests.durability.conftest import harness

__all__ = ["harness"]
