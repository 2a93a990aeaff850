{#- Every group (an account's campaign) has loaded within `max_age_hours`: dbt's source freshness looks at the
    newest row of the whole table, so one busy campaign would hide a stale one. -#}
{% test fresh_per_group(model, group_by, loaded_at_field, max_age_hours) %}
select {{ group_by | join(', ') }}, max({{ loaded_at_field }}) as last_loaded_at
from {{ model }}
group by {{ group_by | join(', ') }}
having max({{ loaded_at_field }}) < now() - interval '{{ max_age_hours }} hours'
{% endtest %}
