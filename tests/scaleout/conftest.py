"""Scale-out tests reuse the process harness of the durability tests."""

from tests.durability.conftest import harness, postgres_url

__all__ = ["harness", "postgres_url"]
