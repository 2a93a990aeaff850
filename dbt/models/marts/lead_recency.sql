{#- Every lead with when it was last dialled and how many days ago that was (as of the build: `as_of`), so a
    campaign manager sees which open leads have gone cold. -#}
select
    account,
    campaign,
    lead_key,
    lead_status,
    last_dial_status,
    attempts,
    last_attempt_at,
    cast(timezone('Asia/Kolkata', now()) as date) - cast(timezone('Asia/Kolkata', last_attempt_at) as date)
        as days_since_last_attempt,
    now() as as_of
from {{ ref('stg_cloudagent__dial_status') }}
