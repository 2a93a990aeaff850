{#- Per account, campaign and IST day of the leads' last change: how many leads, dial attempts, leads
    answered on their last attempt, the connect rate and how many answered leads carry a disposition. -#}
select
    account,
    campaign,
    day_ist,
    count(*) as leads,
    coalesce(sum(attempts), 0) as attempts,
    count(*) filter (where last_dial_status = 'answered') as answered,
    round(1.0 * count(*) filter (where last_dial_status = 'answered') / count(*), 4) as connect_rate,
    count(*) filter (where last_dial_status = 'answered' and disposition is not null) as dispositioned,
    count(*) filter (where lead_status = 'Success') as leads_success,
    count(*) filter (where lead_status = 'Fail') as leads_fail,
    count(*) filter (where lead_status = 'Pending') as leads_pending
from {{ ref('stg_cloudagent__dial_status') }}
group by account, campaign, day_ist
