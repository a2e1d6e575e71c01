"""Tunables of a store, validated once when the store is opened. Defaults work on a laptop."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StoreConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    partitions: int = Field(4, ge=1, le=4096, description="Fixed when the store is created (store.json).")
    dedup_window: int = Field(
        10_000, ge=1, description="Command ids remembered per aggregate for idempotent retries (the newest N)."
    )
    max_batch: int = Field(2_000, ge=1, description="Most commands one client->partition call carries.")
    direct_link: bool = Field(
        True,
        description="Send batches over the partition actor's local loopback link when on its node "
        "(fast path); False sends every batch as a Ray actor call.",
    )
    remote_link: bool = Field(
        True,
        description="A client on another node sends its batches over a TLS link to the partition actor "
        "(a pinned throwaway certificate and the link key, both passed through Ray), which the actor opens on "
        "its node's address when such a client first asks; False: that client uses Ray actor calls.",
    )
    max_pending: int = Field(
        50_000, ge=1, description="Commands a client queues per partition before submitters wait (backpressure)."
    )
    submit_timeout_s: float = Field(
        60.0, gt=0, description="How long a submitter waits for queue room (then Overloaded) or for its result (then CommandTimeout)."
    )
    max_event_bytes: int = Field(
        1 << 20, ge=64, description="Largest total JSON payload, in UTF-8 bytes, of the events one command may "
        "append (and of the command's own payload)."
    )
    # Limits of the command envelope (es_actors/write/envelope.py), checked per command in the client
    # and again in the partition actor; a command over one is refused alone (PayloadTooLarge).
    max_id_bytes: int = Field(
        256, ge=16, le=1 << 16, description="Largest aggregate id, command id, correlation id, causation id "
        "or principal, in UTF-8 bytes."
    )
    max_reason_bytes: int = Field(4096, ge=16, le=1 << 20, description="Largest audit reason, in UTF-8 bytes.")
    max_metadata_bytes: int = Field(
        64 << 10, ge=64, le=16 << 20, description="Largest command metadata, as compact JSON in UTF-8 bytes."
    )
    max_metadata_depth: int = Field(
        32, ge=1, le=256, description="Deepest nesting of objects and arrays in command metadata."
    )
    max_events_per_command: int = Field(
        10_000, ge=1, description="Most events one command (or one import) may append; more is PayloadTooLarge."
    )
    seal_rows: int = Field(50_000, ge=1, description="Tail rows after which the tail is sealed into a segment.")
    compact_small_rows: int = Field(10_000, ge=1, description="Segments smaller than this are merged...")
    compact_min_run: int = Field(4, ge=2, description="...once this many small ones lie side by side.")
    gc_grace_s: float = Field(300.0, ge=0, description="How long replaced segment files stay readable.")
    lock_timeout_s: float = Field(10.0, ge=0, description="How long a new owner waits for a partition's lock.")
    retry_deadline_s: float = Field(
        120.0, ge=0, description="How long a client resends a batch (by command id) while its actor restarts."
    )
    max_hydrated: int = Field(
        100_000, ge=1, description="Most aggregates a partition keeps in memory; the least recently used "
        "are passivated and rehydrate (snapshot + later events) on next use."
    )
    snapshot_flush_rows: int = Field(1_000, ge=1, description="Due snapshots are written as one file once this many wait...")
    snapshot_flush_s: float = Field(5.0, ge=0, description="...or once the oldest has waited this long (checked per batch).")
    snapshot_max_files: int = Field(8, ge=1, description="Snapshot files per partition before they are merged into one.")
    projector_poll_s: float = Field(0.02, gt=0, description="How often an idle projector looks for new events.")
    read_model_dir: str | None = Field(
        None,
        description="A store on object storage: the local directory its read models live under (one "
        "subdirectory per store id; derived data a lost node rebuilds from the log). Default: "
        "$ES_ACTORS_READ_MODELS, else ~/.cache/es_actors/read-models. A local-disk store keeps them in its "
        "own directory.",
    )
    object_poll_s: float = Field(
        0.2, ge=0, allow_inf_nan=False,
        description="Object-storage stores (s3://, blobdir://): the followers of a partition in one process share "
        "one look at it (LISTs of its manifests and tail) taken at most this often, so new events reach "
        "projections up to this much later; 0: every poll looks.",
    )
    projection_stall_s: float = Field(
        10.0, gt=0, description="A projection behind its head with no progress for this long shows as stalled."
    )
    parallel_catch_up_events: int = Field(
        2_000_000, ge=0,
        description="A projection this far behind (a new one: the whole log) that declares a merge catches up by a "
        "parallel backfill into its own tables (ADR-016); 0: always one event batch after another.",
    )
    query_max_sql_bytes: int = Field(
        64 * 1024, ge=1, description="Longest query text accepted (DuckDB's parser cannot be interrupted)."
    )
    query_timeout_s: float = Field(
        60.0, gt=0, allow_inf_nan=False,
        description="Queries running longer are cancelled (the default when a query gives no timeout).",
    )
    query_max_rows: int = Field(1_000_000, ge=1, description="Most rows a query may return (else QueryTooLarge)...")
    query_max_bytes: int = Field(
        256 << 20, ge=1, description="...and most bytes (Arrow buffers) its result may take."
    )
