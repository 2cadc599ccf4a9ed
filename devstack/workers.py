"""Lambda's process model for the local stack.

Each function runs in its own worker processes, one event at a time per worker,
as in Lambda's execution environments: Powertools keeps per-process state, and
every function's module is ``app.py``, so two functions can never share an
interpreter. Workers start lazily when concurrency demands one (a cold start),
up to a maximum per function, and are reused warm afterwards. A worker that
overruns the function's Timeout is killed and replaced, as Lambda discards an
environment after a timeout.

This module imports only the standard library at the top (and devstack.log_follow, which does too):
the ``spawn`` children import it to find their entry point, and every import here is paid on each cold
start.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack.log_follow import LogFollower

if TYPE_CHECKING:
    from devstack.template import FunctionSpec

DEFAULT_MAX_CONCURRENCY = 8
# Lambda gives the init phase 10 s of its own, whatever the function's Timeout. Locally, eight workers of
# a function may start at once on two loaded cores (a cold import is ~0.5 s of CPU each), so the stack
# allows twice that before it calls an init a failure; a client only ever sees it as a slower cold start.
INIT_TIMEOUT_SECONDS = 20.0
REGION = "us-east-1"
ACCOUNT_ID = "000000000000"

_SPAWN = multiprocessing.get_context("spawn")
_MAIN_SWAP_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_parent_main() -> Any:
    """Start spawn children without re-running the parent's ``__main__``.

    ``spawn`` normally re-imports the parent's main module in the child (pytest, the
    dev runner, a user's script). A Lambda worker must not run that code: it costs
    time at every cold start and would put the test runner's imports into the
    function's process. While a child starts, ``__main__`` is a bare module, so the
    child imports only this module to find ``worker_main``.
    """
    import types

    with _MAIN_SWAP_LOCK:
        real_main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = real_main


# Lambda's limit on a synchronous invocation's answer (6 MB), the JSON the handler returned.
LAMBDA_RESPONSE_LIMIT_BYTES = 6_291_456


@dataclass(frozen=True)
class InvokeResult:
    """The outcome of one invocation. ``payload`` is the handler's JSON result when ``ok``."""

    ok: bool
    payload: Any = None
    error: str | None = None  # "timeout", "handler", "init", "crash", "marshal"
    error_type: str | None = None
    # The handler's exception text: API Gateway's authorizers answer 401 when it is "Unauthorized".
    error_message: str | None = None
    duration_ms: float = 0.0
    worker_pid: int | None = None
    request_id: str = ""
    cold_start: bool = False


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to become one execution environment (picklable)."""

    logical_id: str
    function_name: str
    code_uri: str
    layers: tuple[str, ...]
    module: str
    handler_name: str
    memory_size: int
    timeout: float
    environment: dict[str, str]
    log_path: str

    @classmethod
    def from_spec(
        cls,
        spec: FunctionSpec,
        *,
        log_dir: Path,
        endpoint_url: str | None,
        overrides: dict[str, str] | None = None,
    ) -> WorkerConfig:
        env = lambda_environment(spec, endpoint_url=endpoint_url, overrides=overrides)
        return cls(
            logical_id=spec.logical_id,
            function_name=spec.function_name,
            code_uri=str(spec.code_uri),
            layers=tuple(str(p) for p in spec.layers),
            module=spec.module,
            handler_name=spec.handler_name,
            memory_size=spec.memory_size,
            timeout=spec.timeout,
            environment=env,
            log_path=str(log_dir / f"{spec.logical_id}.log"),
        )


def lambda_environment(
    spec: FunctionSpec, *, endpoint_url: str | None, overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """The function's environment: the template's variables plus what Lambda itself sets."""
    env = dict(spec.environment)
    env.update(
        {
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            # Dummy credentials: the emulator accepts any; real ones must never leak in.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_LAMBDA_FUNCTION_NAME": spec.function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_size),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.function_name}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
            "LAMBDA_TASK_ROOT": str(spec.code_uri),
            "_HANDLER": spec.handler,
            "TZ": ":UTC",
            "LANG": "en_US.UTF-8",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
    )
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    env.update(overrides or {})
    return env


# --- the worker process -------------------------------------------------------------------------


class LambdaContext:
    """The context object the Python runtime passes to a handler."""

    def __init__(self, config: WorkerConfig, request_id: str, deadline_ms: int, log_stream: str) -> None:
        self.function_name = config.function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{config.function_name}"
        # The runtime reads this from the environment, so it is a string there too.
        self.memory_limit_in_mb = str(config.memory_size)
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{config.function_name}"
        self.log_stream_name = log_stream
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _redirect_output(log_path: str) -> None:
    # Lambda sends a function's stdout/stderr to its log group; here, to one file
    # per function. dup2 catches writes from C extensions and subprocesses too.
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = log
    sys.stderr = log


def _isolate(config: WorkerConfig) -> None:
    os.environ.clear()
    os.environ.update(config.environment)
    # Lambda's search path: the function's code (/var/task), then the layers
    # (/opt/python), then the runtime. Nothing of the repository or the test
    # runner leaks in; the venv's site-packages stands in for the runtime.
    runtime = [p for p in sys.path if p and (p.startswith(sys.prefix) or p.startswith(sys.base_prefix))]
    sys.path[:] = [config.code_uri, *config.layers, *runtime]
    os.chdir(config.code_uri)


def worker_main(config: WorkerConfig, conn: Connection) -> None:
    """Entry point of a worker process: init once, then one event at a time."""
    # Ctrl-C in the dev runner's terminal, and a stop signal to the stack's process group (what the tests
    # send), reach every process of the group; the runner decides when workers stop (after the WebSocket
    # connections' $disconnect ran on them), so neither may kill one mid-event. It kills them itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _redirect_output(config.log_path)
    _isolate(config)
    log_stream = time.strftime("%Y/%m/%d") + f"/[$LATEST]{uuid.uuid4().hex}"
    started = time.perf_counter()
    try:
        if os.environ.get("STATE_FAILPOINTS_SPEC", "").strip():
            # Before the function's code: its first DynamoDB client is then made with the faults attached.
            # Imported only here, so a worker without a spec never loads the arming code.
            from devstack import failpoints

            failpoints.arm_from_environ(os.environ, observer=failpoints.log_firing)
        module = __import__(config.module)
        handler: Callable[[Any, Any], Any] = getattr(module, config.handler_name)
    except BaseException as exc:  # init failure: report it, as Lambda reports Runtime.ImportModuleError
        traceback.print_exc()
        conn.send(("init_error", {"errorType": type(exc).__name__, "errorMessage": str(exc)}))
        return
    init_ms = (time.perf_counter() - started) * 1000
    print(f"INIT_REPORT Init Duration: {init_ms:.2f} ms", flush=True)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        _, event_json, request_id, deadline_ms = message
        print(f"START RequestId: {request_id} Version: $LATEST", flush=True)
        began = time.perf_counter()
        context = LambdaContext(config, request_id, deadline_ms, log_stream)
        try:
            result = handler(json.loads(event_json), context)
        except Exception as exc:
            # The traceback goes to the function's log, never to the client.
            traceback.print_exc()
            reply: tuple[str, Any] = ("error", {"errorType": type(exc).__name__, "errorMessage": str(exc)})
        else:
            try:
                reply = ("ok", json.dumps(result))
            except (TypeError, ValueError) as exc:
                traceback.print_exc()
                reply = ("marshal_error", {"errorType": "Runtime.MarshalError", "errorMessage": str(exc)})
        duration = (time.perf_counter() - began) * 1000
        print(f"END RequestId: {request_id}", flush=True)
        print(
            f"REPORT RequestId: {request_id}\tDuration: {duration:.2f} ms\tMemory Size: {config.memory_size} MB",
            flush=True,
        )
        conn.send(reply)


# --- the parent side ----------------------------------------------------------------------------


@dataclass
class Worker:
    process: Any
    conn: Connection
    pid: int
    invocations: int = 0

    def alive(self) -> bool:
        return bool(self.process.is_alive())

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        self.process.join(timeout=5)
        with contextlib.suppress(Exception):
            self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(("stop",))
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.kill()
        with contextlib.suppress(Exception):
            self.conn.close()


@dataclass
class WorkerPool:
    """The execution environments of one function."""

    config: WorkerConfig
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    _idle: list[Worker] = field(default_factory=list)
    _all: dict[int, Worker] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slots: threading.BoundedSemaphore = field(init=False)
    _executor: ThreadPoolExecutor = field(init=False)
    _closed: bool = False
    cold_starts: int = 0
    spawn_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        # Threads only wait on pipes; one per possible concurrent invocation.
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_concurrency, thread_name_prefix=f"invoke-{self.config.logical_id}"
        )

    @property
    def worker_count(self) -> int:
        with self._lock:
            return len(self._all)

    def _spawn(self) -> Worker | InvokeResult:
        started = time.perf_counter()
        parent, child = _SPAWN.Pipe(duplex=True)
        process = _SPAWN.Process(
            target=worker_main, args=(self.config, child), name=f"lambda-{self.config.logical_id}", daemon=True
        )
        with _without_parent_main():
            process.start()
        child.close()
        worker = Worker(process=process, conn=parent, pid=process.pid or 0)
        if not parent.poll(INIT_TIMEOUT_SECONDS):
            worker.kill()
            return InvokeResult(ok=False, error="init", error_type="Runtime.InitTimeout", worker_pid=worker.pid)
        try:
            kind, info = parent.recv()
        except (EOFError, OSError):
            worker.kill()
            return InvokeResult(ok=False, error="init", error_type="Runtime.ExitError", worker_pid=worker.pid)
        if kind != "ready":
            worker.kill()
            return InvokeResult(ok=False, error="init", error_type=info.get("errorType"), worker_pid=worker.pid)
        self.spawn_ms.append((time.perf_counter() - started) * 1000)
        with self._lock:
            self._all[worker.pid] = worker
            self.cold_starts += 1
        return worker

    def _discard(self, worker: Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.pop(worker.pid, None)

    def invoke_sync(self, event: Any, timeout: float | None = None) -> InvokeResult:
        """Run one event on a free worker (starting one if none is idle); blocks."""
        budget = self.config.timeout if timeout is None else timeout
        request_id = str(uuid.uuid4())
        with self._slots:
            with self._lock:
                if self._closed:
                    return InvokeResult(ok=False, error="crash", error_type="PoolClosed", request_id=request_id)
                worker = self._idle.pop() if self._idle else None
            cold = worker is None
            if worker is None:
                spawned = self._spawn()
                if isinstance(spawned, InvokeResult):
                    return spawned
                worker = spawned
            result = self._run(worker, event, budget, request_id, cold)
            with self._lock:
                keep = result.error not in ("timeout", "crash") and worker.alive() and not self._closed
                if keep:
                    self._idle.append(worker)
            if not keep:
                self._discard(worker)
            return result

    def _run(self, worker: Worker, event: Any, budget: float, request_id: str, cold: bool) -> InvokeResult:
        started = time.perf_counter()
        deadline_ms = int(time.time() * 1000 + budget * 1000)
        base: dict[str, Any] = {"worker_pid": worker.pid, "request_id": request_id, "cold_start": cold}
        try:
            worker.conn.send(("invoke", json.dumps(event), request_id, deadline_ms))
            if not worker.conn.poll(budget):
                # Lambda stops a function at its Timeout and throws the environment away.
                self._log_line(f"{request_id} Task timed out after {budget:.2f} seconds")
                return InvokeResult(ok=False, error="timeout", error_type="Sandbox.Timedout", **base)
            kind, info = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._log_line(f"{request_id} Runtime exited without providing a reason")
            return InvokeResult(ok=False, error="crash", error_type="Runtime.ExitError", **base)
        finally:
            worker.invocations += 1
        duration = (time.perf_counter() - started) * 1000
        if kind == "ok" and len(info) > LAMBDA_RESPONSE_LIMIT_BYTES:
            # Lambda refuses a synchronous answer over its payload limit, and API Gateway then answers 500.
            self._log_line(f"{request_id} Response payload size exceeded maximum allowed payload size")
            return InvokeResult(
                ok=False, error="handler", error_type="Function.ResponseSizeTooLarge", duration_ms=duration, **base
            )
        if kind == "ok":
            return InvokeResult(ok=True, payload=json.loads(info), duration_ms=duration, **base)
        error = "marshal" if kind == "marshal_error" else "handler"
        return InvokeResult(
            ok=False,
            error=error,
            error_type=info.get("errorType"),
            error_message=info.get("errorMessage"),
            duration_ms=duration,
            **base,
        )

    def _log_line(self, text: str) -> None:
        with contextlib.suppress(OSError), open(self.config.log_path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")

    async def invoke(self, event: Any, timeout: float | None = None) -> InvokeResult:
        import asyncio

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.invoke_sync, event, timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()
        with self._lock:
            busy, self._all = list(self._all.values()), {}
        # Workers still busy are killed: the stack is going away.
        idle_pids = {w.pid for w in idle}
        for worker in busy:
            if worker.pid not in idle_pids:
                worker.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)


def max_concurrency_from_env() -> int:
    return int(os.environ.get("LOCAL_MAX_CONCURRENCY", DEFAULT_MAX_CONCURRENCY))


# Functions whose invocations wait rather than work: a long-poll holds its GET worker for up to 25 s, so 50
# clients polling one key would queue behind the default 8. Workers still start only on demand, so the
# higher bound costs nothing until that many requests are in flight.
FUNCTION_MAX_CONCURRENCY = {"GetStateFunction": 64}


def max_concurrency_for(logical_id: str) -> int:
    """`LOCAL_MAX_CONCURRENCY_<LogicalId>` if set, else the larger of the function's own bound
    (FUNCTION_MAX_CONCURRENCY) and `LOCAL_MAX_CONCURRENCY`."""
    own = os.environ.get(f"LOCAL_MAX_CONCURRENCY_{logical_id}")
    if own is not None:
        return int(own)
    return max(FUNCTION_MAX_CONCURRENCY.get(logical_id, 0), max_concurrency_from_env())


# --- console echo of the function logs ----------------------------------------------------------


class LogEcho(LogFollower):
    """Echo new lines of ``<log_dir>/*.log`` to a stream, prefixed with the function name."""

    def __init__(self, log_dir: Path, write: Callable[[str], Any], interval: float = 0.2) -> None:
        super().__init__(log_dir, interval=interval, name="log-echo")
        self.write = write

    def stop(self) -> None:
        super().stop()
        self.poll()

    def poll(self) -> None:
        for path in self.logs():
            if path.name in ("access.log", "websocket-access.log"):
                continue
            for line in self.new_lines(path):
                self.write(f"[{path.stem}] {line}")
