{#- One spelling per dial status, whatever casing or separators CloudAgent used ('Answered', 'NoAnswer',
    'no answer', 'USER_DISCONNECTED'): lower case, words joined by '_'. -#}
{% macro normalized_dial_status(column) -%}
case lower(regexp_replace(trim({{ column }}), '[ _-]', '', 'g'))
    when 'answered' then 'answered'
    when 'noanswer' then 'no_answer'
    when 'fail' then 'fail'
    when 'failed' then 'fail'
    when 'userdisconnected' then 'user_disconnected'
    else lower(regexp_replace(trim({{ column }}), '[ -]+', '_', 'g'))
end
{%- endmacro %}
