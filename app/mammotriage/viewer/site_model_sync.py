"""A workstation of a site runs the site's model: its registry follows the site registry.

The workstation's own triage, the model label and the suspicion maps all run the local
registry's active model (:mod:`mammotriage.model.registry`), and the reading session
already adopts a change of it in the background (``ReadingSession.poll_model``). So a
site workstation follows the site by bringing the site's active model into its own
registry: :func:`sync_site_model` fetches the package from the site store
(:class:`~mammotriage.net.site_models` checks: the tar's recorded sha256, members that
are files inside the folder, the weights), registers it (origin ``site``) and promotes
it with the reason "the site's active model" and the site's gate report (so the
recalibrated operating points come along). The site's gate already ran on the server's
side; the local gate is not asked again. :class:`SiteModelSync` runs it on a daemon
thread every ``every_s`` seconds (never the UI thread: the package travels over the
network). Here at ``viewer`` level because it joins ``net`` (the site store's package)
and ``learning`` (promotion), which do not import each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from mammotriage.net.site_models import unpack_package
from mammotriage.store.pg.models import SiteModels

__all__ = ["SiteModelSync", "sync_site_model"]

WHO = "site"


def sync_site_model(dsn: str, archive_file: str | Path, folder: str | Path) -> str | None:
    """Make the site's active model this registry's active one; returns what changed
    (None: nothing to do, the site has none or it is active here already).

    Raises :class:`~mammotriage.store.pg.models.SiteModelError` (or :class:`~mammotriage.model.registry.RegistryError`)
    with the reason when the site's package is refused; the server being away raises
    psycopg's ``OperationalError``.
    """
    from mammotriage.learning.registry import ModelRegistry

    with SiteModels(dsn) as models:
        active = models.active()
        if active is None:
            return None
        with ModelRegistry(archive_file) as registry:
            here = registry.active()
            if here is not None and here.weights_sha256 == active.weights_sha256:
                return None
            package = unpack_package(models.archive(active.weights_sha256), active, folder)
            report = models.promoting_report(active.weights_sha256)
            version = registry.register(package, origin="site", who=WHO)
            promotion = next((e for e in reversed(models.history())
                              if e["weights_sha256"] == active.weights_sha256), None)
            why = "the site's active model" + (
                f" ({promotion['action']} on the site server by {promotion['who']}: {promotion['reason']})"
                if promotion else "")
            registry.promote(version.version, report, WHO, force_reason=why)
    before = f" (was v{here.version})" if here is not None else ""
    return f"the site's model v{active.version} is active here now{before}"


class SiteModelSync:
    """:func:`sync_site_model` on a daemon thread, now and every ``every_s`` seconds.

    ``say`` gets each change and each refusal once (called on the thread: a window
    queues it to the UI thread). A server that is away is retried quietly.
    """

    def __init__(self, dsn: str, archive_file: str | Path, folder: str | Path, *, every_s: float = 30.0,
                 say: Callable[[str], None] = print) -> None:
        self.dsn, self.archive_file, self.folder = dsn, Path(archive_file), Path(folder)
        self.every_s = float(every_s)
        self.say = say
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._told: set[str] = set()

    def run_once(self) -> str | None:
        try:
            changed = sync_site_model(self.dsn, self.archive_file, self.folder)
        except Exception as exc:  # noqa: BLE001 - refused or away: said once, the model here stays
            text = f"the site's model is not taken here: {type(exc).__name__}: {exc}"
            if "OperationalError" not in text and text not in self._told:
                self._told.add(text)
                self.say(text)
            return None
        if changed:
            self.say(changed)
        return changed

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.every_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="site-model-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

