{#- The dispositions behind the funnel's `dispositioned`: per account, campaign, IST day and disposition,
    the answered leads that carry it. -#}
select
    account,
    campaign,
    day_ist,
    disposition,
    count(*) as answered_leads
from {{ ref('stg_cloudagent__dial_status') }}
where last_dial_status = 'answered' and disposition is not null
group by account, campaign, day_ist, disposition
