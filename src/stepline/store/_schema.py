"""The SQL schema of the durable store, as SQLAlchemy Core tables.

These tables describe the current schema for queries; the numbered Alembic
migrations in ``migrations/versions`` are what create and change it, and must
always produce exactly these tables on SQLite and PostgreSQL.

Invariants:

* JSON payloads are stored as text encoded by orjson (:class:`JsonText`), so
  both dialects store and return byte-identical JSON; SQL ``NULL`` means
  "no payload", never JSON ``null``.
* ``steps`` has the natural key (response_id, sequence); ``events`` has the
  primary key (response_id, seq). Both make retried writes idempotent.
* ``events`` has no foreign key to ``responses``: the event writer commits
  batches of many responses and one deleted response must not fail the batch.
* Times are POSIX seconds in double precision.
* ``conversation_items`` has the primary key (conversation_id, position);
  a conversation's ``next_position`` is where its next append starts, so
  positions only grow. Conversations and their items do not depend on any
  response: they outlive the responses that appended to them.
* ``stepline_api_keys`` holds a key's hash, never its token; ``name`` and
  ``hash`` are unique, and ``id`` too where it is set (a row from before
  keys had ids has none: its id is its name).
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from stepline.store._revisions import VERSION_TABLE

__all__ = [
    "VERSION_TABLE",
    "JsonText",
    "api_keys",
    "conversation_items",
    "conversations",
    "events",
    "items",
    "metadata",
    "responses",
    "steps",
]


class JsonText(sa.types.TypeDecorator[Any]):
    """A JSON value stored as text, encoded and decoded with orjson."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return orjson.dumps(value).decode()

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return orjson.loads(value)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("body", JsonText, nullable=False),
    sa.Column("previous_response_id", sa.String, nullable=True),
    sa.Column("store", sa.Boolean, nullable=False),
    sa.Column("background", sa.Boolean, nullable=False),
    sa.Column("owner", sa.String, nullable=True),
    sa.Column("lease_expires_at", sa.Double, nullable=True),
    sa.Column("result", JsonText, nullable=True),
    sa.Column("completed_at", sa.Double, nullable=True),
    sa.Column("key_id", sa.String, nullable=True),
    sa.Index(None, "status", "lease_expires_at"),
    # retention sweeps oldest first and checks whether a response is continued
    sa.Index(None, "created_at"),
    sa.Index(None, "previous_response_id"),
)

steps = sa.Table(
    "steps",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column(
        "response_id",
        sa.String,
        sa.ForeignKey("responses.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("scope", sa.String, nullable=True),
    sa.Column("previous_step_id", sa.String, nullable=True),
    sa.Column("sequence", sa.Integer, nullable=False),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("state", sa.String, nullable=False),
    sa.Column("request", JsonText, nullable=False),
    sa.Column("response", JsonText, nullable=True),
    sa.Column("error", JsonText, nullable=True),
    sa.Column("call_id", sa.String, nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("started_at", sa.Double, nullable=True),
    sa.Column("finished_at", sa.Double, nullable=True),
    sa.UniqueConstraint("response_id", "sequence"),
    sa.Index(None, "response_id", "scope", "sequence"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("response_id", sa.String, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("step_id", sa.String, nullable=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

#: the input and output items of stored responses, by item id, for ``item_reference``
items = sa.Table(
    "items",
    metadata,
    sa.Column(
        "response_id",
        sa.String,
        sa.ForeignKey("responses.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("id", sa.String, nullable=False),
    sa.Column("data", JsonText, nullable=False),
    sa.Index(None, "id"),
)

#: conversations of the Conversations API, owned by the key that created them
conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("metadata", JsonText, nullable=False),
    sa.Column("key_id", sa.String, nullable=True),
    sa.Column("next_position", sa.Integer, nullable=False),
)

#: the items of each conversation, in order of position
conversation_items = sa.Table(
    "conversation_items",
    metadata,
    sa.Column(
        "conversation_id",
        sa.String,
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("id", sa.String, nullable=False),
    sa.Column("data", JsonText, nullable=False),
    sa.Index(None, "conversation_id", "id"),
)

#: API keys made with ``stepline keys create`` (the config's keys are not stored);
#: named for stepline, as the version table is, beside an application's tables
api_keys = sa.Table(
    "stepline_api_keys",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("hash", sa.String, nullable=False, unique=True),
    sa.Column("models", JsonText, nullable=True),
    sa.Column("tools", JsonText, nullable=True),
    sa.Column("rate", JsonText, nullable=True),
    sa.Column("max_concurrent", sa.Integer, nullable=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("id", sa.String, nullable=True),
    # a default, so that an older stepline still running during an upgrade can insert
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index(None, "id", unique=True),
)
