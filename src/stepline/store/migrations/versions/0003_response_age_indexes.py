"""Indexes for retention and usage: responses by age, and by the response they continue.

``created_at`` bounds both the retention sweep (oldest first) and the usage
window; ``previous_response_id`` lets the sweep check, per candidate, whether
a stored response still continues it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_responses_created_at", "responses", ["created_at"])
    op.create_index("ix_responses_previous_response_id", "responses", ["previous_response_id"])


def downgrade() -> None:
    op.drop_index("ix_responses_previous_response_id", table_name="responses")
    op.drop_index("ix_responses_created_at", table_name="responses")
