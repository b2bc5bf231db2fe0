"""accounts

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("balance", sa.Integer, nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("note", sa.Text),
    )
