"""``python -m devstack`` (what ``make dev`` runs): the whole system on 127.0.0.1.

Starts, in the foreground until Ctrl-C or SIGTERM, and stops again everything it
started: the serialized moto server (unless ``AWS_ENDPOINT_URL`` names an external
emulator), the template's resources in it, the dev OIDC issuer (unless
``STATE_OIDC_ISSUER`` names a real one), and the gateway with the template's
routes, authorizer and environment. Prints ``devstack ready`` when it serves.

Environment: PORT (3000), LOCAL_WS_PORT (3001: the template's WebSocket API and its @connections endpoint,
devstack/websocket.py; LOCAL_WS_IDLE_TIMEOUT_SECONDS, LOCAL_WS_MAX_CONNECTION_SECONDS), MOTO_PORT (5000),
OIDC_PORT (3002; LOCAL_OIDC_CLIENTS and LOCAL_OIDC_TOKEN_TTL_SECONDS for its client-credentials token endpoint,
devstack/oidc.py), STATE_DIR
(<repo>/.local), STATE_TEMPLATE (<repo>/template.yaml), AWS_ENDPOINT_URL,
STATE_OIDC_ISSUER, STATE_OIDC_AUDIENCE, REDIS_URL (else a redis-server on REDIS_PORT, 6380, with an AUTH
token kept in the emulator's Secrets Manager; a password in REDIS_URL goes there too; `none`: no Redis),
LOG_LEVEL, LOCAL_MAX_CONCURRENCY (LOCAL_MAX_CONCURRENCY_<LogicalId> for one function; the GET function
runs up to 64 for long-polls), STATE_TTL_SWEEP_SECONDS (1: how often the local TTL emulator runs,
devstack/ttl_sweeper.py, since moto never expires items), LOCAL_THROTTLING_BURST_LIMIT and
LOCAL_THROTTLING_RATE_LIMIT (the gateway's per-route throttling; the template's stage settings by default),
LOCAL_METRICS_PORT (3003: Prometheus ``/metrics`` from the functions' EMF records, devstack/metrics.py),
LOCAL_FUNCTION_ENV (a JSON object of variables every HTTP and WebSocket function gets on top of the template's).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import signal
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


async def run() -> None:  # noqa: C901, PLR0912, PLR0915  the stack's start-up, in order, read top to bottom
    from devstack.gateway import Gateway
    from devstack.gc_pauses import freeze_survivors_of_full_collections
    from devstack.metrics import DEFAULT_METRICS_PORT, METRICS_PORT_ENV, MetricsServer
    from devstack.moto_server import MotoProcess
    from devstack.oidc import DEFAULT_OIDC_PORT, DevIssuer, clients_from_env, token_ttl_from_env
    from devstack.redis_server import RedisServer
    from devstack.resources import client, create_resources, ensure_secret
    from devstack.stream_poller import StreamPoller
    from devstack.template import REPO_ROOT, STACK_NAME, load_template
    from devstack.token import mint
    from devstack.ttl_sweeper import TtlSweeper
    from devstack.websocket import DEFAULT_WS_PORT, WS_PORT_ENV, WebSocketGateway
    from devstack.workers import LogEcho

    state_dir = Path(os.environ.get("STATE_DIR") or REPO_ROOT / ".local").resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    template_path = Path(os.environ.get("STATE_TEMPLATE") or REPO_ROOT / "template.yaml")

    moto: MotoProcess | None = None
    redis: RedisServer | None = None
    issuer: DevIssuer | None = None
    gateway: Gateway | None = None
    sockets: WebSocketGateway | None = None
    echo: LogEcho | None = None
    pollers: list[StreamPoller] = []
    sweeper: TtlSweeper | None = None
    metrics: MetricsServer | None = None
    try:
        # First: it reads the logs from their current end, so it sees every record of this run.
        metrics = MetricsServer(log_dir, port=_env_int(METRICS_PORT_ENV, DEFAULT_METRICS_PORT))
        await metrics.start()
        endpoint_url = os.environ.get("AWS_ENDPOINT_URL")
        if not endpoint_url:
            moto = MotoProcess(port=_env_int("MOTO_PORT", 5000), log_path=log_dir / "moto.log")
            moto = await asyncio.to_thread(moto.start)
            endpoint_url = moto.endpoint_url

        # REDIS_URL=none runs without Redis (no cache, no locks), as a deployment without an endpoint.
        redis_url = os.environ.get("REDIS_URL", "")
        redis_auth_secret_arn = ""
        if redis_url == "none":
            redis_url = ""
        elif urlsplit(redis_url).password is not None:
            # As deployed, the functions never see a password in their environment: it goes into moto's
            # Secrets Manager, and the URL (also what is printed below) goes without it.
            parts = urlsplit(redis_url)
            redis_auth_secret_arn = await asyncio.to_thread(
                ensure_secret,
                client("secretsmanager", endpoint_url),
                f"{STACK_NAME}-redis-auth",
                value=_auth_secret(parts.username, unquote(parts.password or "")),
            )
            host = parts.netloc.rsplit("@", 1)[1]
            redis_url = urlunsplit(parts._replace(netloc=host))
        elif not redis_url:
            # As deployed: an AUTH token in Secrets Manager (moto's), which the functions read by ARN.
            token = secrets.token_urlsafe(32)
            redis_auth_secret_arn = await asyncio.to_thread(
                ensure_secret, client("secretsmanager", endpoint_url), f"{STACK_NAME}-redis-auth", value=token
            )
            redis = await asyncio.to_thread(RedisServer(port=_env_int("REDIS_PORT", 6380), password=token).start)
            redis_url = redis.url

        external_issuer = os.environ.get("STATE_OIDC_ISSUER")
        audience = os.environ.get("STATE_OIDC_AUDIENCE") or "state-service"
        if external_issuer:
            issuer_url = external_issuer
        else:
            issuer = DevIssuer(
                state_dir,
                port=_env_int("OIDC_PORT", DEFAULT_OIDC_PORT),
                clients=clients_from_env(),
                token_ttl=token_ttl_from_env(),
                audience=audience,
            )
            await issuer.start()
            issuer_url = issuer.issuer

        template = load_template(
            template_path,
            parameters=_parameters(template_path, issuer_url, audience, redis_url, redis_auth_secret_arn),
        )
        names = await asyncio.to_thread(create_resources, template, endpoint_url)

        # Failpoints are a test hook: a worker may arm them only because this is the local stack, never a deployment.
        failpoint_env = {k: v for k, v in os.environ.items() if k in ("STATE_FAILPOINTS", "STATE_FAILPOINTS_SPEC")}
        if failpoint_env:
            failpoint_env["STATE_LOCAL_STACK"] = "1"
        # A role policy of one's own (extra roles, protected keys) reaches every function, as a deployed file would.
        if os.environ.get("STATE_POLICY_FILE"):
            failpoint_env["STATE_POLICY_FILE"] = os.environ["STATE_POLICY_FILE"]
        # Settings the template does not give the functions, e.g. a values key or a policy file of a test's own.
        failpoint_env.update(_function_env())
        # Before the functions' environments are built: a management endpoint in them becomes the local one.
        sockets = WebSocketGateway.for_template(
            template,
            state_dir,
            endpoint_url=endpoint_url,
            common_env=failpoint_env,
            port=_env_int(WS_PORT_ENV, DEFAULT_WS_PORT),
        )
        if sockets is not None:
            await sockets.start()
        gateway = Gateway(
            template=template,
            state_dir=state_dir,
            endpoint_url=endpoint_url,
            common_env=failpoint_env,
            port=_env_int("PORT", 3000),
        )
        await gateway.start()
        # The event source mappings (publish_changes on the table's stream), as Lambda would run them.
        pollers = StreamPoller.for_template(
            template, endpoint_url=endpoint_url, state_dir=state_dir, log=lambda line: print(line, flush=True)
        )
        for poller in pollers:
            poller.start()
        metrics.metrics.watch_pollers(pollers)
        # DynamoDB's TTL, which moto lacks: due expiry markers, history items and blob markers are removed.
        sweeper = TtlSweeper.for_template(
            template, names, endpoint_url=endpoint_url, log=lambda line: print(line, flush=True)
        )
        if sweeper is not None:
            sweeper.start()
        echo = LogEcho(log_dir, lambda line: print(line, flush=True))
        echo.start()

        print(f"template      {template.path}")
        print(f"gateway       {gateway.base_url}")
        if sockets is not None:
            print(f"websocket     {sockets.url} (@connections: {sockets.management_url}/@connections/{{id}})")
        print(f"emulator      {endpoint_url}" + ("" if moto else " (external)"))
        print(f"oidc issuer   {issuer_url}" + ("" if issuer else " (external)"))
        print(
            f"redis         {redis_url or 'none (no cache, no locks)'}"
            + ("" if redis or not redis_url else " (external)")
        )
        if redis_auth_secret_arn:
            print(f"redis auth    {redis_auth_secret_arn}")
        for logical_id, name in sorted(names.items()):
            if "." not in logical_id:
                print(f"resource      {logical_id} = {name}")
        print(f"logs          {log_dir}")
        print(f"metrics       {metrics.url}")
        if gateway.throttling is not None:
            burst, rate = gateway.throttling
            print(f"throttling    {burst} burst, {rate:g}/s per route (429 beyond)")
        for route in gateway.routes:
            print(f"route         {route.route_key} -> {route.function}")
        if sockets is not None and sockets.spec is not None:
            for ws_route in sockets.spec.routes.values():
                print(f"ws route      {ws_route.route_key} -> {ws_route.function}")
        if issuer is not None:
            token = mint("dev", "state:read state:write", issuer=issuer_url, state_dir=state_dir, audience=audience)
            print("try:")
            print(
                f"  curl -s -X PUT {gateway.base_url}/state/hello -H 'Content-Type: application/json' "
                f'-H {shlex.quote("Authorization: Bearer " + token)} -d \'{{"value": {{"hi": 1}}}}\''
            )
            print("  more tokens: python -m devstack.token --sub alice --scope 'state:read state:write'")
        # The gateway's and the stream poller's pauses are not a deployment's: keep full collections short.
        freeze_survivors_of_full_collections()
        print("devstack ready", flush=True)

        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()
        print("devstack stopping", flush=True)
    finally:
        if sweeper is not None:
            await asyncio.to_thread(sweeper.stop)
        for poller in pollers:
            await asyncio.to_thread(poller.stop)
        if sockets is not None:
            # Its connections' $disconnect runs while the rest of the stack is still up.
            await sockets.stop()
        if gateway is not None:
            await gateway.stop()
        if echo is not None:
            echo.stop()
        if issuer is not None:
            await issuer.stop()
        if metrics is not None:
            await metrics.stop()
        if moto is not None:
            await asyncio.to_thread(moto.stop)
        if redis is not None:
            await asyncio.to_thread(redis.stop)


def _auth_secret(username: str | None, password: str) -> str:
    """The secret's value as the functions read it: the token, or JSON naming an ACL user."""
    import json

    return json.dumps({"username": unquote(username), "password": password}) if username else password


def _function_env() -> dict[str, str]:
    raw = os.environ.get("LOCAL_FUNCTION_ENV", "")
    if not raw:
        return {}
    import json

    extra = json.loads(raw)
    if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise SystemExit("LOCAL_FUNCTION_ENV must be a JSON object of strings")
    return extra


def _parameters(
    template_path: Path, issuer: str, audience: str, redis_url: str, redis_auth_secret_arn: str
) -> dict[str, str]:
    from devstack.template import load_yaml

    declared = set((load_yaml(template_path).get("Parameters") or {}).keys())
    wanted = {
        "OidcIssuer": issuer,
        "OidcAudience": audience,
        "RedisEndpoint": redis_url,
        "RedisAuthSecretArn": redis_auth_secret_arn,
        "LogLevel": os.environ.get("LOG_LEVEL", "INFO"),
    }
    return {k: v for k, v in wanted.items() if k in declared}


def main() -> None:
    # Ctrl-C before the signal handlers are installed still stops cleanly.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
