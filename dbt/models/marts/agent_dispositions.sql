{#- Disposition outcomes per agent, over ANSWERED calls only (a lead whose last attempt was answered): an
    unanswered call has no agent conversation to dispose of. A disposition left empty counts as '(none)'. -#}
with answered as (
    select *
    from {{ ref('stg_cloudagent__dial_status') }}
    where last_dial_status = 'answered' and agent_id is not null
)

select
    account,
    campaign,
    agent_id,
    max(agent_name) as agent_name,
    coalesce(disposition, '(none)') as disposition,
    count(*) as answered_calls,
    round(
        1.0 * count(*) / sum(count(*)) over (partition by account, campaign, agent_id), 4
    ) as share_of_agent_answered_calls,
    round(avg(call_duration_s), 0) as avg_call_s
from answered
group by account, campaign, agent_id, coalesce(disposition, '(none)')
