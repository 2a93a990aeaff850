{#- The current state of every lead, typed and renamed, dial statuses in one spelling, read from the analyst
    view: the number only as its pseudonym and last four digits, the name masked, only the allow-listed custom
    fields. No model downstream can see a number or a name in clear. -#}
with source as (
    -- The one place the models read the warehouse's leads: every model downstream reads this one.
    select * from {{ source('warehouse', 'analyst_dial_status') }}
)

select
    account,
    campaign_name as campaign,
    -- The warehouse's key without the number: the lead id, or (where the key is a hash of the number and
    -- the created time) the number's pseudonym and the created time.
    coalesce(
        lead_id,
        'pseudonym:' || phone_pseudonym || '@'
            || to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')
    ) as lead_key,
    phone_pseudonym,
    phone_last4,
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
