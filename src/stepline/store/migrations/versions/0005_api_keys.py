"""API keys: the store's own table, made or adopted here.

Before this revision the server made ``stepline_api_keys`` itself, outside
the migrations (SQLAlchemy's ``create_all``, then an ``id`` column added when
missing), so a database may have it already, holding keys, with or without
``id``, with the database's own constraint names, or without any other
stepline table. Such a table is adopted, its rows kept: the columns it lacks
are added (``admin`` false for every key it holds); on PostgreSQL its
constraints are renamed to the schema's names and its ``id`` index made, and
on SQLite, whose unnamed constraints can be neither renamed nor dropped, the
table is made again with the schema's and its rows copied. An adopted table
is the table a new database gets (a test compares it with the schema).

Downgrading keeps the table and its keys: the steplines before this revision
make and use it themselves.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "stepline_api_keys"
PRIMARY_KEY = "pk_stepline_api_keys"
UNIQUE_HASH = "uq_stepline_api_keys_hash"
ID_INDEX = "ix_stepline_api_keys_id"


def _id_column() -> sa.Column[str]:
    # NULL in rows made before keys had ids: such a key's id is its name
    return sa.Column("id", sa.String(), nullable=True)


def _admin_column() -> sa.Column[bool]:
    return sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false())


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("hash", sa.String(), nullable=False),
        sa.Column("models", sa.Text(), nullable=True),
        sa.Column("tools", sa.Text(), nullable=True),
        sa.Column("rate", sa.Text(), nullable=True),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        _id_column(),
        _admin_column(),
    ]


def _constraints() -> list[sa.Constraint]:
    return [
        sa.PrimaryKeyConstraint("name", name=PRIMARY_KEY),
        sa.UniqueConstraint("hash", name=UNIQUE_HASH),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table(TABLE):
        op.create_table(TABLE, *_columns(), *_constraints())
        op.create_index(ID_INDEX, TABLE, ["id"], unique=True)
        return
    # adopted: a table made by an older stepline; ADD COLUMN keeps the rows in place
    columns = {column["name"] for column in inspector.get_columns(TABLE)}
    if "id" not in columns:
        op.add_column(TABLE, _id_column())
    if "admin" not in columns:
        op.add_column(TABLE, _admin_column())
    if op.get_bind().dialect.name == "postgresql":
        _rename_constraints(inspector)
    else:
        _rebuild_on_sqlite()


def _rename_constraints(inspector: sa.Inspector) -> None:
    """Give the PostgreSQL table the schema's constraint names, and its id index."""
    primary_key = inspector.get_pk_constraint(TABLE)["name"]
    if primary_key and primary_key != PRIMARY_KEY:
        op.execute(f'ALTER TABLE {TABLE} RENAME CONSTRAINT "{primary_key}" TO {PRIMARY_KEY}')
    for unique in inspector.get_unique_constraints(TABLE):
        if unique["column_names"] == ["hash"] and unique["name"] != UNIQUE_HASH:
            op.execute(f'ALTER TABLE {TABLE} RENAME CONSTRAINT "{unique["name"]}" TO {UNIQUE_HASH}')
    if ID_INDEX not in {index["name"] for index in inspector.get_indexes(TABLE)}:
        op.create_index(ID_INDEX, TABLE, ["id"], unique=True)


def _rebuild_on_sqlite() -> None:
    """SQLite can neither rename nor drop the old table's unnamed UNIQUE: the table is
    made again with the schema's constraints and index, its rows copied (Alembic's
    batch mode: a new table, INSERT ... SELECT, the old one dropped, the new renamed)."""
    target = sa.Table(
        TABLE,
        sa.MetaData(),
        *_columns(),
        *_constraints(),
        sa.Index(ID_INDEX, "id", unique=True),
    )
    with op.batch_alter_table(TABLE, copy_from=target, recreate="always"):
        pass


def downgrade() -> None:
    """Keep the table and its keys: an older stepline makes and reads it itself."""
