"""Customers' personal data: phone numbers to E.164 and keyed pseudonyms, erasure on request, retention.

:mod:`.phones` (parsing, the pseudonym key), :mod:`.records` (whose record is it), :mod:`.erasure`
(``cloudagent-etl erase``) and :mod:`.retention` (``cloudagent-etl purge``). What each does to which table
and body: ``docs/personal-data.md``.
"""
