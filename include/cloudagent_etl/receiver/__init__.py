"""The callback receiver: a plain ASGI app (served by uvicorn) that lands CloudAgent's callbacks.

``create_app(settings)`` builds the app (see :mod:`cloudagent_etl.receiver.app` for its routes and
answers); ``cloudagent-etl receiver --host H --port P`` serves it.
"""
