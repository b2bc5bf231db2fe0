"""sqla_models.py — the SQLAlchemy 2 declarative models of the battery schema, shared by the
sync (psycopg 3) and async (asyncpg) SQLAlchemy apps. The class bodies follow BATTERY_SHAPE the
way the two versions of an application would differ: the old version maps User.name and
Order.amount (integer cents), the new one User.full_name and Order.amount_decimal
(numeric(12,2)). NAME and AMOUNT are the shape's attributes, for code shared by both."""

import os
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Computed, DateTime, ForeignKey, Identity, Integer, MetaData, Numeric, Text, func
from sqlalchemy.dialects.postgresql import ENUM, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

OLD = os.environ["BATTERY_SHAPE"] == "old"

ORDER_STATUS = ENUM("new", "paid", "shipped", "cancelled", name="order_status", schema="app", create_type=False)


class Base(DeclarativeBase):
    metadata = MetaData(schema="app")


class Org(Base):
    __tablename__ = "orgs"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    users: Mapped[list["User"]] = relationship(back_populates="org")


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    org_id: Mapped[int] = mapped_column(BigInteger, ForeignKey(Org.id))
    email: Mapped[str] = mapped_column(Text, unique=True)
    if OLD:
        name: Mapped[str] = mapped_column(Text)
    else:
        full_name: Mapped[str] = mapped_column(Text)
    login_count: Mapped[int] = mapped_column(Integer, server_default="0")
    settings: Mapped[dict] = mapped_column(JSONB, server_default="{}")
    email_domain: Mapped[str] = mapped_column(Text, Computed("split_part(email, '@', 2)"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    org: Mapped[Org] = relationship(back_populates="users")
    orders: Mapped[list["Order"]] = relationship(back_populates="user", cascade="all, delete-orphan",
                                                 passive_deletes=True)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey(User.id, ondelete="CASCADE"))
    if OLD:
        amount: Mapped[int] = mapped_column(Integer)
    else:
        amount_decimal: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    status: Mapped[str] = mapped_column(ORDER_STATUS, server_default="new")
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    user: Mapped[User] = relationship(back_populates="orders")


NAME = User.name if OLD else User.full_name
AMOUNT = Order.amount if OLD else Order.amount_decimal
