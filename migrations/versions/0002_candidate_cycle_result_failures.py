"""candidate cycle result failures

A re-run may recover a candidate that failed in a cycle; ``failures`` keeps the
failed attempts so they still count in the candidate's failure rate.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 11:03:24.171849
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("candidate_cycle_results", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("candidate_cycle_results", schema=None) as batch_op:
        batch_op.drop_column("failures")
