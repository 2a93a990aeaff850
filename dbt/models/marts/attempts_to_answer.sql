{#- How many dial attempts answered leads took: per account and campaign, the answered leads at each attempt
    count, their share and the cumulative share (the answer rate a retry limit of that many attempts keeps). -#}
with answered as (
    select account, campaign, attempts, count(*) as answered_leads
    from {{ ref('stg_cloudagent__dial_status') }}
    where last_dial_status = 'answered' and attempts is not null
    group by account, campaign, attempts
)

select
    account,
    campaign,
    attempts,
    answered_leads,
    round(1.0 * answered_leads / sum(answered_leads) over (partition by account, campaign), 4)
        as share_of_answered,
    round(
        1.0 * sum(answered_leads) over (partition by account, campaign order by attempts)
        / sum(answered_leads) over (partition by account, campaign),
        4
    ) as cumulative_share
from answered
