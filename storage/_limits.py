"""Roblox's documented numbers for DataStore and MemoryStore, in one place (see shared/reference).

Only constants and the request-type names live here; the code that enforces them imports them.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["RequestType"]


class RequestType(str, Enum):
    """The request types a DataStore call spends budget from (GetRequestBudgetForRequestType)."""

    STANDARD_READ = "StandardRead"
    STANDARD_WRITE = "StandardWrite"
    STANDARD_LIST = "StandardList"
    STANDARD_REMOVE = "StandardRemove"
    REMOVE_VERSION = "RemoveVersion"
    ORDERED_READ = "OrderedRead"
    ORDERED_WRITE = "OrderedWrite"
    ORDERED_LIST = "OrderedList"
    ORDERED_REMOVE = "OrderedRemove"


# Names and sizes (DataStore).
MAX_STORE_NAME = 50
MAX_SCOPE = 50
MAX_KEY_NAME = 50
MAX_VALUE_CHARS = 4_194_304
MAX_METADATA_KEY = 50
MAX_METADATA_VALUE = 250
MAX_METADATA_TOTAL = 300
MAX_USER_IDS = 4
DEFAULT_SCOPE = "global"

# Integers: increments, ordered data store values and user ids are signed 64-bit.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Reads, versions, listing.
READ_CACHE_MS = 4_000
BACKUP_RETENTION_MS = 30 * 24 * 3600 * 1000
HOUR_MS = 3600 * 1000
VERSION_AT_TIME_FUTURE_MS = 10 * 60 * 1000
LIST_KEYS_DEFAULT_PAGE = 50
LIST_VERSIONS_DEFAULT_PAGE = 1024
MAX_LIST_PAGE = 1024
MAX_SORTED_PAGE = 100

# Per-key throughput (sliding 60 s window, each request rounded up to the next KB).
KEY_WINDOW_MS = 60_000
KEY_READ_BYTES_PER_MINUTE = 25 * 1024 * 1024
KEY_WRITE_BYTES_PER_MINUTE = 4 * 1024 * 1024
KEY_THROTTLE_MAX_WAIT_MS = KEY_WINDOW_MS   # a throttled key's request waits at most this long in all, then fails

# One data store as a whole (Roblox publishes no number: lodestore's choice, 100 x a key's; see DataStoreLimits).
DATASTORE_READ_BYTES_PER_MINUTE = 100 * KEY_READ_BYTES_PER_MINUTE
DATASTORE_WRITE_BYTES_PER_MINUTE = 100 * KEY_WRITE_BYTES_PER_MINUTE

# Storage per experience (2025): 500 MB + 1 MB per lifetime user, on the compressed size of the latest versions;
# going over is not refused, it is priced (Extended Services: $0.12 per GB-month). MB and GB are binary here.
STORAGE_BASE_BYTES = 500 * 1024 * 1024
STORAGE_PER_USER_BYTES = 1024 * 1024
STORAGE_USD_PER_GB_MONTH = 0.12

# MemoryStore.
MS_MAX_KEY = 128
MS_MAX_VALUE_BYTES = 32 * 1024
MS_MAX_EXPIRATION_S = 3_888_000
MS_MAX_ITEMS_PER_STRUCTURE = 1_000_000
MS_MAX_BYTES_PER_STRUCTURE = 100 * 1024 * 1024
MS_MAX_UNITS_PER_STRUCTURE_MINUTE = 100_000
MS_MEMORY_BASE_BYTES = 64 * 1024
MS_MEMORY_PER_USER_BYTES = 1200
MS_UNITS_BASE_MINUTE = 1000
MS_UNITS_PER_CCU_MINUTE = 120
MS_HASHMAP_LIST_MAX = 200
MS_SORTED_RANGE_MAX = 200
MS_QUEUE_READ_MAX = 100
MS_QUEUE_DEFAULT_INVISIBILITY_S = 30
