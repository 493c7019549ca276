"""`coupon serve --workers N`: aiohttp's documented deployment, gunicorn's arbiter with aiohttp's
worker class. The arbiter binds the port once and forks N workers that share it; SIGTERM stops
them gracefully (each stops listening, finishes what is in flight, closes its pool), a worker
that dies is replaced, and a worker whose arbiter is gone stops by itself."""

from __future__ import annotations

import gc
import os
from typing import Any

import structlog
from aiohttp import web
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from coupon.config import Settings


class _JsonLog(Logger):  # type: ignore[misc]
    """gunicorn's own messages (booting, a worker died) as our JSON lines, on stdout."""

    def setup(self, cfg: Any) -> None:
        self._log = structlog.get_logger("gunicorn")

    def critical(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log.critical(msg % args if args else msg)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log.error(msg % args if args else msg)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log.warning(msg % args if args else msg)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log.info(msg % args if args else msg)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log.debug(msg % args if args else msg)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log.exception(msg % args if args else msg)

    def log(self, lvl: int, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log.log(lvl, msg % args if args else msg)

    def access(self, *args: Any, **kwargs: Any) -> None:
        pass  # the middleware logs every request

    def reopen_files(self) -> None:
        pass

    def close_on_exec(self) -> None:
        pass


class _Arbiter(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, dsn: str, host: str, port: int, workers: int) -> None:
        self._settings, self._dsn = settings, dsn
        self._options = {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": "aiohttp.GunicornUVLoopWebWorker"
            if settings.uvloop
            else "aiohttp.GunicornWebWorker",
            "graceful_timeout": round(settings.shutdown_timeout),
            "backlog": 1024,
            "logger_class": _JsonLog,
            "accesslog": None,
            # no control socket in $HOME: nothing is managed through it, and two servers on a
            # machine would share its path
            "control_socket_disable": True,
            "when_ready": lambda arbiter: print(f"serving on http://{host}:{port}", flush=True),
            "post_fork": _forked,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        settings, dsn = self._settings, self._dsn

        async def app() -> web.Application:
            from coupon.app import create_app

            application = create_app(settings, dsn)
            application.on_startup.append(_freeze)  # after the pool and the rest have started
            return application

        return app


async def _freeze(app: web.Application) -> None:
    """What the worker's start-up made (the app, its pool, prepared statements) lives as long
    as the worker: out of the collector's sight, a full collection no longer walks it (pauses
    and CPU under load)."""
    gc.collect()
    gc.freeze()


def _forked(arbiter: Any, worker: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.get_logger(__name__).info("worker_started", pid=os.getpid())


def serve(settings: Settings, dsn: str, host: str, port: int, workers: int) -> None:
    """Run the arbiter until SIGTERM or SIGINT; exits the process (gunicorn's way)."""
    import coupon.app  # noqa: F401  imported once here, so forked workers start warm

    # what the arbiter made so far lives as long as every worker: out of the collector's sight
    # (and shared between the processes instead of copied on the first full collection)
    gc.collect()
    gc.freeze()
    _Arbiter(settings, dsn, host, port, workers).run()
