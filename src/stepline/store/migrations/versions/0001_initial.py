"""The initial schema: responses, their steps, and their event logs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("previous_response_id", sa.String(), nullable=True),
        sa.Column("store", sa.Boolean(), nullable=False),
        sa.Column("background", sa.Boolean(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("lease_expires_at", sa.Double(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("completed_at", sa.Double(), nullable=True),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_responses"),
    )
    op.create_index(
        "ix_responses_status_lease_expires_at", "responses", ["status", "lease_expires_at"]
    )
    op.create_table(
        "steps",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("response_id", sa.String(), nullable=False),
        sa.Column("scope", sa.String(), nullable=True),
        sa.Column("previous_step_id", sa.String(), nullable=True),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("call_id", sa.String(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_steps"),
        sa.UniqueConstraint("response_id", "sequence", name="uq_steps_response_id_sequence"),
        sa.ForeignKeyConstraint(
            ["response_id"],
            ["responses.id"],
            name="fk_steps_response_id_responses",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_steps_response_id_scope_sequence", "steps", ["response_id", "scope", "sequence"]
    )
    op.create_table(
        "events",
        sa.Column("response_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("response_id", "seq", name="pk_events"),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_index("ix_steps_response_id_scope_sequence", table_name="steps")
    op.drop_table("steps")
    op.drop_index("ix_responses_status_lease_expires_at", table_name="responses")
    op.drop_table("responses")
