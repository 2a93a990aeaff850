"""The landing zone: export requests we made, and the raw callback bodies CloudAgent posted back.

This package owns ``export_requests``, ``callback_payloads``, ``callback_payload_chunks`` and
``export_request_runs``: it is the only one that writes them and the only one that knows the states of a
request. Everything else asks it through :func:`callback_status`, the named transitions
(:func:`mark_failed`, :func:`mark_expired`, :func:`mark_loaded`, :func:`mark_load_failed`,
:func:`mark_payload_loaded`, :func:`mark_payload_failed`) and the readers below.

- :mod:`.schema`: the tables, :class:`RequestState` and :class:`CallbackStatus`;
- :mod:`.lifecycle`: the moves between states (one conditional ``UPDATE`` each) and :func:`callback_status`;
- :mod:`.requests`: claiming the one live export of a window, recording CloudAgent's answer, reading rows;
- :mod:`.tokens`: per-request callback tokens (only their SHA-256 is stored) and when a URL closes;
- :mod:`.storing`: storing callback bodies (the same body once; late ones flagged, never dropped);
- :mod:`.reading`: landed payloads and their bodies for a load, and the load's outcome;
- :mod:`.sweeps`: what no running wait or load will take care of;
- :mod:`.personal_data`: bodies rewritten without an erased person's records, and purged by retention.
"""

from cloudagent_etl.landing.lifecycle import (
    callback_status,
    mark_expired,
    mark_failed,
    mark_load_failed,
    mark_loaded,
)
from cloudagent_etl.landing.personal_data import (
    PurgedBody,
    payload_ids_with_bodies,
    purge_bodies,
    purgeable_bodies,
    purged_bodies,
    remove_records,
)
from cloudagent_etl.landing.reading import (
    LandedPayload,
    iter_payload_body,
    landed_payload,
    late_payload_counts,
    mark_payload_failed,
    mark_payload_loaded,
    open_payload_body,
    payload_body,
    received_payload_ids,
)
from cloudagent_etl.landing.requests import (
    ClaimedExport,
    ExportRequest,
    NewExportRequest,
    callback_url,
    claim_export,
    describe_request,
    find_request_by_unique_id,
    first_window_starts,
    get_export_request,
    latest_request_per_campaign,
    latest_requests_of_run,
    record_unique_id,
    requests_overlapping,
    requests_with_payloads,
    require_export_request,
    shown_callback_url,
)
from cloudagent_etl.landing.schema import (
    CHUNK_BYTES,
    CallbackStatus,
    RequestState,
    callback_payload_chunks,
    callback_payloads,
    export_request_runs,
    export_requests,
)
from cloudagent_etl.landing.storing import CallbackBody, StoredCallback, check_can_store, store_callback
from cloudagent_etl.landing.sweeps import (
    expire_overdue,
    requests_with_unloaded_payloads,
    unloaded_payload_counts,
)
from cloudagent_etl.landing.tokens import (
    TokenCheck,
    closed_for_callbacks,
    token_sha256,
    verify_callback_token,
)

__all__ = [
    "CHUNK_BYTES",
    "CallbackBody",
    "CallbackStatus",
    "ClaimedExport",
    "ExportRequest",
    "LandedPayload",
    "NewExportRequest",
    "PurgedBody",
    "RequestState",
    "StoredCallback",
    "TokenCheck",
    "callback_payload_chunks",
    "callback_payloads",
    "callback_status",
    "callback_url",
    "check_can_store",
    "claim_export",
    "closed_for_callbacks",
    "describe_request",
    "expire_overdue",
    "export_request_runs",
    "export_requests",
    "find_request_by_unique_id",
    "first_window_starts",
    "get_export_request",
    "iter_payload_body",
    "landed_payload",
    "late_payload_counts",
    "latest_request_per_campaign",
    "latest_requests_of_run",
    "mark_expired",
    "mark_failed",
    "mark_load_failed",
    "mark_loaded",
    "mark_payload_failed",
    "mark_payload_loaded",
    "open_payload_body",
    "payload_body",
    "payload_ids_with_bodies",
    "purge_bodies",
    "purgeable_bodies",
    "purged_bodies",
    "received_payload_ids",
    "record_unique_id",
    "remove_records",
    "requests_overlapping",
    "requests_with_payloads",
    "requests_with_unloaded_payloads",
    "require_export_request",
    "shown_callback_url",
    "store_callback",
    "token_sha256",
    "unloaded_payload_counts",
    "verify_callback_token",
]
