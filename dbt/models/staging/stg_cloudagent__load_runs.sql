{#- One row per load of one callback payload, with its counts. -#}
select
    load_run_id,
    account,
    request_id,
    payload_id,
    status as load_status,
    started_at,
    finished_at,
    rows_in,
    inserted,
    updated,
    unchanged,
    duplicates,
    rejected,
    seconds as load_seconds
from {{ source('warehouse', 'load_runs') }}
