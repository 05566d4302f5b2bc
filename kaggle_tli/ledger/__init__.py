"""The run ledger: one CSV row per run, so every model can say where it came from.

``schema.py`` holds the fixed, versioned columns, ``values.py`` how values are written and read back,
``snapshot.py`` the file as parsed, ``store.py`` the locked CSV (:class:`Ledger`) and ``plot.py`` the lineage PNG.
"""

from .schema import (
    INITS,
    LEDGER_COLUMNS,
    LEDGER_NAME,
    SCHEMA_VERSION,
    STAGES,
    STATUSES,
    LedgerError,
    LedgerProblem,
    LedgerSchemaError,
    LedgerWarning,
)
from .store import Ledger

__all__ = [
    "INITS",
    "LEDGER_COLUMNS",
    "LEDGER_NAME",
    "SCHEMA_VERSION",
    "STAGES",
    "STATUSES",
    "Ledger",
    "LedgerError",
    "LedgerProblem",
    "LedgerSchemaError",
    "LedgerWarning",
]
