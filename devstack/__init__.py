"""The local stack: the whole state service on 127.0.0.1, no Docker, no AWS account.

- ``devstack.template``: ``load_template(path=None, parameters=None, physical_names=None)``
  -> ``StateTemplate`` (``routes()``, ``function(id)``, ``functions()``,
  ``default_authorizer()``, ``tables()``, ``event_buses()``, ``queues()``,
  ``properties(id)``, ``table_create_kwargs(id, name)``); also the module-level
  ``table_create_kwargs(logical_id, table_name, template=None)``.
- ``devstack.moto_server``: ``SerializedMotoServer(port=0)`` (one request at a time, the table's
  first).
- ``devstack.resources``: ``create_resources(template, endpoint_url=None)`` -> physical names.
- ``devstack.oidc`` / ``devstack.token``: the dev issuer and ``mint(sub, scope, ...)``.
- ``devstack.workers``: Lambda's process model (``WorkerPool``).
- ``devstack.failpoints``: arming the core's failpoints (tests and the workers, from
  ``STATE_FAILPOINTS_SPEC``); the core itself keeps only the hook.
- ``devstack.gateway``: API Gateway HTTP API (``Gateway``).
- ``python -m devstack``: all of it in the foreground (``make dev``).
"""
