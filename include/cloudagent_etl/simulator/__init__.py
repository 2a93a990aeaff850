"""A local CloudAgent stand-in: the Campaign Dial Status export API, its callbacks, and seeded data.

``contract`` holds its own copy of the documented contract (it imports nothing from ``cloudagent_etl.api``),
``accounts`` the simulated accounts (several side by side), ``data`` the deterministic records, ``server``
the HTTP app, ``cli`` the ``cloudagent-etl simulate`` command.
"""
