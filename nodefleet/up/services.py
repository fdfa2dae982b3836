"""The services ``nodefleet up`` runs, and running each one in this process (supervised: restarted with backoff).

:data:`SERVICES` is the plain list, in start order.  A service is reached
through the seam of ``services/README.md``: the package ``services.<name>``
with ``app.serve(settings)`` and its settings class ``<Name>Settings`` in
``settings.py``.  They are imported by name when ``nodefleet up`` loads them,
so the shared core (nodefleet/) has no import of a service; a listed service
that cannot be loaded is an error, not skipped.  A new service is one more name here.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import StartupError
from ..logging import get_logger
from ..settings import CommonSettings

log = get_logger(__name__)

SERVICES = ("telemetry", "provisioner", "scheduler", "ota")
"""Every service ``nodefleet up`` runs, in start order."""

SERVICES_PACKAGE = "services"

# A crashed service is restarted after this many seconds, doubling up to the cap.
RESTART_BACKOFF = 1.0
RESTART_BACKOFF_CAP = 30.0
# A service that ran this long before failing starts over at the shortest backoff.
HEALTHY_RUN = 60.0
# Without a ``ready`` parameter, a service counts as started once it survived this long.
NO_READY_GRACE = 0.2


class ServiceLoadError(StartupError):
    """A service package exists but does not follow the service seam."""


class ServiceStartError(StartupError):
    """A service failed, or did not report ready in time, while starting."""


@dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    """One service as ``nodefleet up`` runs it: its ``serve`` and its settings class."""

    name: str
    serve: Callable[..., Awaitable[None]]
    settings_class: type[CommonSettings]

    @property
    def reports_ready(self) -> bool:
        return "ready" in inspect.signature(self.serve).parameters

    def unit(self, overrides: dict[str, Any]) -> Unit:
        """A runnable unit with settings built from the environment plus ``overrides``."""
        settings = self.settings_class(**overrides)
        if self.reports_ready:
            return Unit(name=self.name, run=lambda ready: self.serve(settings, ready=ready), reports_ready=True)
        return Unit(name=self.name, run=lambda ready: self.serve(settings), reports_ready=False)


def load_services(names: Iterable[str] = SERVICES, *, package: str = SERVICES_PACKAGE) -> list[ServiceSpec]:
    """The listed services, each through its seam; ServiceLoadError naming the first that cannot be loaded."""
    specs = []
    for name in names:
        try:
            app = importlib.import_module(f"{package}.{name}.app")
            settings_module = importlib.import_module(f"{package}.{name}.settings")
        except Exception as exc:  # missing, or failing as it is imported
            raise ServiceLoadError(f"service {name} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        serve = getattr(app, "serve", None)
        if not inspect.iscoroutinefunction(serve):
            raise ServiceLoadError(f"{package}.{name}.app must define `async def serve(settings)`")
        settings_class = getattr(settings_module, f"{name.capitalize()}Settings", None)
        if not (isinstance(settings_class, type) and issubclass(settings_class, CommonSettings)):
            raise ServiceLoadError(f"{package}.{name}.settings must define {name.capitalize()}Settings, "
                                   f"a CommonSettings")
        specs.append(ServiceSpec(name=name, serve=serve, settings_class=settings_class))
    return specs


@dataclass(frozen=True, kw_only=True)
class Unit:
    """Something run as a task until cancelled; ``run(ready)`` sets ``ready`` once it works."""

    name: str
    run: Callable[[asyncio.Event], Awaitable[None]]
    reports_ready: bool = True


class Supervised:
    """Runs one unit as a task: waits for its start, restarts it with backoff if it crashes later."""

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None

    async def start(self, *, timeout: float, abort: asyncio.Event) -> None:
        """Start the unit; raise ServiceStartError if it fails or is not ready within ``timeout``.

        Returns early without error if ``abort`` is set meanwhile (the caller checks it).
        """
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._task = asyncio.create_task(self._loop(), name=f"service:{self.unit.name}")
        aborted = asyncio.ensure_future(abort.wait())
        try:
            done, _ = await asyncio.wait(
                {self._started, aborted, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            aborted.cancel()
        if self._task in done and not self._started.done():  # the supervisor itself broke
            error = self._task.exception()
            raise ServiceStartError(f"service {self.unit.name} could not be run: {error!r}")
        if self._started in done:
            self._started.result()  # raises ServiceStartError if it failed before ready
        elif abort.is_set():
            return
        else:
            raise ServiceStartError(f"service {self.unit.name} did not report ready within {timeout:g} s")

    async def _loop(self) -> None:
        assert self._started is not None
        backoff = RESTART_BACKOFF
        loop = asyncio.get_running_loop()
        while True:
            ready = asyncio.Event()
            began = loop.time()
            attempt = asyncio.create_task(self.unit.run(ready), name=f"serve:{self.unit.name}")
            try:
                if not self._started.done():
                    failure = await self._first_start(attempt, ready)
                    if failure is not None:
                        self._started.set_exception(failure)
                        return
                    self._started.set_result(None)
                await attempt
                log.error("service_returned", service=self.unit.name, hint="serve() should run until cancelled")
            except asyncio.CancelledError:
                await _cancel_and_wait(attempt, self.unit.name)
                raise
            except Exception:
                log.exception("service_failed", service=self.unit.name)
            if loop.time() - began >= HEALTHY_RUN:
                backoff = RESTART_BACKOFF
            self.restarts += 1
            log.warning("service_restarting", service=self.unit.name, in_seconds=backoff, restarts=self.restarts)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_CAP)

    async def _first_start(self, attempt: asyncio.Task[None], ready: asyncio.Event) -> ServiceStartError | None:
        """Wait until the first attempt is ready (None) or has ended (its failure)."""
        if self.unit.reports_ready:
            signal = asyncio.ensure_future(ready.wait())
        else:
            signal = asyncio.ensure_future(asyncio.sleep(NO_READY_GRACE))
        try:
            await asyncio.wait({attempt, signal}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            signal.cancel()
        if not attempt.done():
            return None
        if attempt.cancelled():
            return ServiceStartError(f"service {self.unit.name} was cancelled while starting")
        error = attempt.exception()
        if error is None:
            return ServiceStartError(f"service {self.unit.name} returned while starting: serve() should run until cancelled")
        log.error("service_start_failed", service=self.unit.name, exc_info=error)
        return ServiceStartError(f"service {self.unit.name} failed while starting: {type(error).__name__}: {error}")

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Cancel the unit and wait (bounded) for it to finish its cleanup."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            log.warning("service_stop_timeout", service=self.unit.name, timeout=timeout)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("service_stop_error", service=self.unit.name, error=repr(task.exception()))


async def _cancel_and_wait(task: asyncio.Task[None], name: str) -> None:
    """Cancel ``task`` and let its cleanup run to the end."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception as exc:
        log.warning("service_stop_error", service=name, error=repr(exc))
