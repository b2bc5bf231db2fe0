"""reshape: a column renamed and one widened, a NOT NULL column added, an index, a column dropped

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.alter_column("accounts", "username", new_column_name="login")
    op.alter_column("accounts", "balance", type_=sa.BigInteger, existing_type=sa.Integer,
                    existing_nullable=False)
    op.add_column("accounts", sa.Column("status", sa.Text, nullable=False, server_default="active"))
    op.create_index("accounts_email_idx", "accounts", ["email"])
    op.drop_column("accounts", "note")
