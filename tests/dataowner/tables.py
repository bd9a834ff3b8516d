"""The demo table's header as a test reads it (split on whitespace: "vs truth" is two words).

One list for tests/dataowner/test_demo_cli.py and tests/dataowner/test_ledger.py, which both check
the header of ``dataowner.demo.format_table``: a column added to the table is added here once.
"""

from __future__ import annotations

from dataowner.ledger import LEDGER_HEADER

DEMO_COLUMNS: list[str] = [
    "algorithm", "dataset", "n", "iter", "seconds", "agreement", "vs", "truth", *LEDGER_HEADER, "status"
]
