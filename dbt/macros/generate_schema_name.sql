{#- Models land in <target schema>_<folder schema> (analytics_staging, analytics_marts), never in the schema
    the load writes: an analyst's build can drop and recreate its own relations only. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}{{ target.schema }}{%- else -%}{{ target.schema }}_{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
