"""Alembic's env.py for pgshift's framework test: online migrations over $ALEMBIC_URL, all
revisions of a run in one transaction (Alembic's default on PostgreSQL)."""

import os

from alembic import context
from sqlalchemy import create_engine

engine = create_engine(os.environ["ALEMBIC_URL"])
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
