"""The record layout, public: how a store's records, shards and transaction patches look, for the tools that read or
write them without a session (the coordinator cleaning records, `lodestore inspect` repairing them).

    >>> from lodestore.actors import records
    >>> file, chunks = records.make_file({"coins": 5})        # inline: no chunks
    >>> records.read_file(file, [])
    {'coins': 5}

The names are those of `actors._records`, which documents the layout; this module only re-exports them (trio's
`trio.lowlevel` does the same), so no other package imports a private module. It owns nothing, never does I/O, and
nothing in it can be delivered twice.
"""

from lodestore.actors._records import (MAX_DATA_DEPTH, RECORD_NESTING, SHARD_LIMIT_CHARS, FrozenDict, InlineFile,
                                       Record, RecordError, ShardedFile, TxInfo, apply_patch, check_data, check_record,
                                       checksum, committed, copy_data, digest, freeze, inline_file, is_record,
                                       make_file, make_patch, new_record, pending_txinfo, read_file, shard_key,
                                       shard_keys, thaw, tx_id_of)

__all__ = ["SHARD_LIMIT_CHARS", "RECORD_NESTING", "MAX_DATA_DEPTH", "check_data", "RecordError", "TxInfo",
           "InlineFile", "ShardedFile", "Record", "new_record", "pending_txinfo", "digest", "inline_file", "is_record",
           "check_record", "tx_id_of", "checksum", "shard_key", "shard_keys", "make_file", "read_file", "make_patch",
           "apply_patch", "committed", "FrozenDict", "freeze", "thaw", "copy_data"]
