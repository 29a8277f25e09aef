"""lodestore's transaction coordinator: two-phase commit across key actors, with recovery.

Users call it through `Store.tx(keys, fn)` and `Store.tx_immutable(keys, fn)`; this package holds the protocol
(`Coordinator`, plain Python, testable with a fault hook at every step) and the named Ray actor that runs it.

Everything public is exported here; the `_`-prefixed modules are private.
"""

from lodestore.coordinator._actor import COORDINATOR_NAME, CoordinatorActor, coordinator_ref, forget_coordinator, unknown_after_crash
from lodestore.coordinator._coordinator import Coordinator, CoordinatorStatistics, Step, TxRequest
from lodestore.coordinator._errors import KeysChangedError, SimulatedCrash, TxAbortedError, TxError, TxUnknownError

__all__ = ["COORDINATOR_NAME", "CoordinatorActor", "coordinator_ref", "forget_coordinator", "unknown_after_crash", "Coordinator", "CoordinatorStatistics", "Step", "TxRequest",
           "TxError", "TxAbortedError", "TxUnknownError", "KeysChangedError", "SimulatedCrash"]
