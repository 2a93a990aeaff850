{#- The current state of every lead, typed and renamed, dial statuses in one spelling. The phone number, the
    name and the free-form fields (extra) are left out: no model downstream sees them in clear. -#}
with source as (
    -- The one place the models read the table: every model downstream reads this one.
    select * from {{ source('warehouse', 'dial_status') }}
)

select
    account,
    campaign_name as campaign,
    record_key as lead_key,
    lead_status,
    dial_status as dial_legs,
    {{ normalized_dial_status('dial_status_first') }} as first_dial_status,
    {{ normalized_dial_status('dial_status_last') }} as last_dial_status,
    disposition,
    attempts,
    agent_id,
    agent_name,
    ucid,
    skill,
    priority,
    call_started_at,
    call_ended_at,
    call_duration_s,
    created_at,
    updated_at,
    cast(timezone('Asia/Kolkata', updated_at) as date) as day_ist,
    coalesce(call_ended_at, call_started_at, updated_at) as last_attempt_at,
    load_run_id,
    loaded_at
from source
