"""The federation on NVIDIA FLARE: the server's workflow and the site's Client API loop.

FLARE carries the messages, runs the rounds and provisions the certificates; the
decisions stay in the app's own modules, so the engine could be swapped:

* :class:`FederationController` - a FLARE ``ModelController`` (the server's workflow):
  each round it sends the global weights with the job's allow-listed parameters and the
  server's versions, collects the sites' updates and aggregates them with
  :func:`mammotriage.learning.federation.aggregate` (FedAvg weighted by corrected images,
  or median / trimmed mean; bad updates rejected per site and round). A site with another
  app or model-format version is refused by name. Its log (``rounds.jsonl``) and the final
  weights (``global.safetensors``, ``federation.json`` with the provenance) go to
  ``out_dir``.
* :func:`run_site` - the site's side through FLARE's Client API (``flare.receive`` /
  ``flare.send``), over :class:`mammotriage.learning.fl_site.SiteClient`. It is started by
  :data:`CLIENT_SCRIPT`, a file installed with the app: the job names no script and
  carries no code (:func:`site_executor`), and the site reads its data and policy from
  its own configuration (``MAMMOTRIAGE_FL_SITES``), never from the job.

Import this module only to federate: it imports ``nvflare``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.job_launcher_spec import add_launcher
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor
from nvflare.app_common.job_launcher.client_process_launcher import ClientProcessJobLauncher
from nvflare.app_common.workflows.model_controller import ModelController

from mammotriage.learning.federation import (
    FederationError,
    SiteUpdate,
    aggregate,
    check_compatible,
    state_digest,
)

#: The Client API script every site runs (installed with the app, next to this module).
CLIENT_SCRIPT = Path(__file__).with_name("fl_client.py")
#: Environment variable naming a site's configuration file (JSON, ``{site: {...}}``).
SITES_ENV = "MAMMOTRIAGE_FL_SITES"


def _site_of(meta: Mapping[str, Any]) -> str:
    """The name of the site a reply came from."""
    return str(meta.get("client_name") or meta.get("site") or "unknown site")


def versions() -> dict[str, str]:
    """What must be equal on the server and every site."""
    from mammotriage import __version__
    from mammotriage.model.package import FORMAT_VERSION

    return {"app_version": str(__version__), "format_version": str(FORMAT_VERSION)}


def to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def to_torch(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors of a received message; raises ValueError for anything but numeric arrays."""
    out = {}
    for k, v in params.items():
        a = np.asarray(v)
        if a.dtype.kind not in "fiub":
            raise ValueError(f"{k} is not a numeric array ({a.dtype})")
        out[str(k)] = torch.from_numpy(np.array(a, copy=True, order="C"))  # keeps 0-d (counters)
    return out


class FederationController(ModelController):  # type: ignore[misc]  # FLARE ships no types
    """The server's rounds (see the module docstring); every argument is plain JSON, so
    the job's server configuration says exactly what runs."""

    def __init__(self, initial_weights: str, out_dir: str, rounds: int = 3, min_sites: int = 2,
                 method: str = "fedavg", trim: float = 0.2, norm_factor: float = 10.0,
                 job_params: dict[str, Any] | None = None, job_name: str = "mammotriage-federation",
                 server_versions: dict[str, str] | None = None, server_lr: float = 1.0) -> None:
        super().__init__(persistor_id="")
        self.initial_weights = initial_weights
        self.out_dir = out_dir
        self.rounds = int(rounds)
        self.min_sites = int(min_sites)
        self.method = method
        self.trim = float(trim)
        self.norm_factor = float(norm_factor)
        self.job_params = dict(job_params or {})
        self.job_name = job_name
        self.server_versions = dict(server_versions or versions())
        self.server_lr = float(server_lr)

    def _log(self, entry: dict[str, Any]) -> None:
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "rounds.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    def run(self) -> None:
        from safetensors.torch import load_file, save_file

        state = load_file(self.initial_weights)
        start_digest = state_digest(state)
        history: list[dict[str, Any]] = []
        sites_seen: set[str] = set()
        for r in range(self.rounds):
            model = FLModel(params=to_numpy(state), params_type=ParamsType.FULL, current_round=r,
                            total_rounds=self.rounds,
                            meta={"job": self.job_name, "job_params": self.job_params,
                                  "versions": self.server_versions})
            t0 = time.monotonic()
            results = self.send_model_and_wait(task_name="train", data=model)
            updates: list[SiteUpdate] = []
            skipped: dict[str, str] = {}
            for m in results:
                meta = dict(m.meta or {})
                site = _site_of(meta)
                sites_seen.add(site)
                theirs = meta.get("versions") or {}
                if check_compatible(theirs, self.server_versions):
                    skipped[site] = (f"refused: {site} runs app version {theirs.get('app_version', 'unknown')}, "
                                     f"model format {theirs.get('format_version', 'unknown')}; the server runs "
                                     f"{self.server_versions.get('app_version')}, "
                                     f"{self.server_versions.get('format_version')}")
                elif meta.get("refused"):
                    skipped[site] = f"the site did not send: {meta['refused']}"
                elif not m.params:
                    skipped[site] = "the site sent no update (opted out or refused it)"
                else:
                    try:
                        delta = to_torch(m.params)
                    except ValueError as exc:
                        skipped[site] = f"unreadable update: {exc}"
                        continue
                    n = meta.get("n_images")
                    updates.append(SiteUpdate(site, n if isinstance(n, int) else -1, delta))
            updates.sort(key=lambda u: u.site)  # the sum's order, not the arrival order, decides the bits
            entry: dict[str, Any] = {"round": r, "job": self.job_name, "method": self.method,
                                     "seconds": round(time.monotonic() - t0, 2), "not_counted": skipped}
            try:
                res = aggregate(state, updates, round=r, method=self.method, trim=self.trim,
                                norm_factor=self.norm_factor, min_sites=self.min_sites, server_lr=self.server_lr)
            except FederationError as exc:
                entry.update({"completed": False, "reason": str(exc), "sha256": state_digest(state)})
                self.warning(f"round {r}: {exc}")
            else:
                state = res.state
                entry.update({"completed": True, "accepted": res.accepted, "rejected": res.rejected,
                              "updates": res.log, "sha256": state_digest(state)})
                for site, reason in res.rejected.items():
                    self.warning(f"round {r}: update of {site} rejected: {reason}")
            self.info(f"round {r}: {json.dumps({k: entry[k] for k in entry if k != 'updates'})}")
            self._log(entry)
            history.append(entry)
        # the final global model goes back to every site, where it is a candidate, not a deployment
        participants = sorted({s for e in history for s in e.get("accepted", [])})
        completed = sum(1 for e in history if e.get("completed"))
        final_digest = state_digest(state)
        provenance = {"federation": self.job_name, "job": self.job_name, "rounds": self.rounds,
                      "completed_rounds": completed, "method": self.method, "server_lr": self.server_lr,
                      "participants": participants, "job_params": self.job_params,
                      "initial_sha256": start_digest, "final_sha256": final_digest}
        final = FLModel(params=to_numpy(state), params_type=ParamsType.FULL, current_round=self.rounds,
                        total_rounds=self.rounds,
                        meta={"job": self.job_name, "final": True, "provenance": provenance,
                              "versions": self.server_versions})
        candidates: dict[str, Any] = {}
        for m in self.send_model_and_wait(task_name="train", data=final):
            meta = dict(m.meta or {})
            site = _site_of(meta)
            candidates[site] = {k: meta.get(k) for k in ("candidate", "gate_passed", "gate_reasons", "refused")
                                if k in meta}
        out = Path(self.out_dir)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "global.safetensors"))
        summary = {"federation": self.job_name, "rounds": self.rounds, "method": self.method,
                   "server_lr": self.server_lr,
                   "trim": self.trim, "norm_factor": self.norm_factor, "min_sites": self.min_sites,
                   "job_params": self.job_params, "versions": self.server_versions,
                   "initial_sha256": start_digest, "final_sha256": final_digest,
                   "sites": sorted(sites_seen), "participants": participants, "candidates": candidates,
                   "completed_rounds": completed, "history": history}
        (out / "federation.json").write_text(json.dumps(summary, indent=1, sort_keys=True), encoding="utf-8")


#: The app's classes a FLARE server may build from a job (its ``class_allow_list``, on
#: top of FLARE's own defaults).
SERVER_CLASSES = ("mammotriage.learning.fl_flare.FederationController",)
#: What a site may build from a job: only the app's own executor, which runs nothing but
#: the installed :data:`CLIENT_SCRIPT` (FLARE's generic Client API executor, which would
#: run any script a job names, is not on the list).
SITE_CLASSES = ("mammotriage.learning.fl_flare.SiteExecutor",)
#: A site's job launcher (its ``process_launcher`` component, not built from jobs).
SITE_LAUNCHER = "mammotriage.learning.fl_flare.SiteJobLauncher"


def write_component_policy(local_dir: str | Path, *, server: bool, site: bool) -> Path:
    """Write FLARE's component policy (``local/resources.json``): FLARE's default class
    allow-list, plus :data:`SERVER_CLASSES` for a server and :data:`SITE_CLASSES` for a
    site (both: the simulator, which runs every role from one workspace), enforced;
    custom code stays off unless a job is signed as bring-your-own-code, which this app
    never asks for."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    path = Path(local_dir) / "resources.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current: dict[str, Any] = {"format_version": 2}
    if path.is_file():
        current = json.loads(path.read_text(encoding="utf-8"))
    allow = list(DEFAULT_CLASS_ALLOW_LIST) + list(SERVER_CLASSES if server else ()) + list(SITE_CLASSES if site else ())
    current.update({"class_allow_list": allow, "class_list_enforcement_mode": "enforce"})
    path.write_text(json.dumps(current, indent=1), encoding="utf-8")
    return path


class SiteExecutor(ClientAPIExecutor):  # type: ignore[misc]  # FLARE ships no types
    """FLARE's in-process Client API executor, fixed to the installed :data:`CLIENT_SCRIPT`:
    a job can name this executor but no script, argument or code."""

    def __init__(self) -> None:
        super().__init__(execution_mode="in_process", task_script_path=str(CLIENT_SCRIPT))


def carried_code(job_meta: Mapping[str, Any], app_dir: str | Path | None) -> str:
    """Why a job deployed at this site carries code ('' when it carries none): a
    ``custom/`` folder holding any file, or the bring-your-own-code flag. ``app_dir``
    None (this site's deployed app could not be found) counts as carrying code."""
    if job_meta.get("byoc"):
        return "the job is marked as bringing its own code"
    if app_dir is None:
        return "this site could not find the job's deployed app to check it"
    custom = Path(app_dir) / "custom"
    if custom.is_dir():
        files = [p for p in custom.rglob("*") if p.is_file() or p.is_symlink()]
        if files:
            return f"the job carries {len(files)} file(s) of code in {custom} (first: {files[0].name})"
    return ""


class SiteJobLauncher(ClientProcessJobLauncher):  # type: ignore[misc]  # FLARE ships no types
    """FLARE's job-process launcher at a site, which launches no job that carries code.

    FLARE decides whether a job is "bring your own code" from what the server says (the
    job's metadata and the submitter's role), so a compromised server could claim a role
    that may. This launcher looks at what actually arrived: before a job's process
    starts it checks the deployed app folder (:func:`carried_code`) and, for a job with
    code, does not offer itself, so FLARE refuses the job here ("no job launcher can
    handle this job"). It is the site's ``process_launcher`` in ``local/resources.json``
    (:func:`mammotriage.learning.fl_deploy.prepare_kit`)."""

    def handle_event(self, event_type: str, fl_ctx: Any) -> None:
        if event_type != EventType.BEFORE_JOB_LAUNCH:
            return
        job_meta = fl_ctx.get_prop(FLContextKey.JOB_META) or {}
        job_id = str(job_meta.get("job_id", ""))
        app_dir = None
        workspace = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
        if workspace is None:
            engine = fl_ctx.get_engine()
            workspace = getattr(engine, "get_workspace", lambda: None)()
        if workspace is not None and job_id:
            try:
                app_dir = workspace.get_app_dir(job_id)
            except Exception:  # noqa: BLE001 - a job id FLARE's workspace refuses: not launched
                app_dir = None
        why = carried_code(job_meta, app_dir)
        if why:
            self.log_error(fl_ctx, f"job {job_id} refused at this site: {why}; this site runs only the "
                           "training installed with the app", fire_event=False)
            return
        add_launcher(self, fl_ctx)


def site_executor() -> SiteExecutor:
    """The executor a job assigns to a site."""
    return SiteExecutor()


# ------------------------------------------------------------------ the site's loop


def load_site_config(site: str) -> dict[str, Any]:
    """This site's configuration from the file :data:`SITES_ENV` names (site-local)."""
    path = os.environ.get(SITES_ENV)
    if not path:
        raise FederationError(f"no site configuration: set {SITES_ENV} to this site's configuration file")
    cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    if site not in cfg:
        raise FederationError(f"{path} has no configuration for site {site!r} (it has {', '.join(sorted(cfg))})")
    return dict(cfg[site])


def run_site(flare: Any) -> None:
    """The Client API loop: receive the global model, train one round, send the update."""
    from mammotriage.learning.fl_sim import build_site_client
    from mammotriage.learning.fl_site import receive_global

    flare.init()
    site = flare.get_site_name()
    cfg = load_site_config(site)
    ours = dict(cfg.get("versions") or versions())
    try:
        client, transform = build_site_client(site, cfg)
        cannot = ""
    except Exception as exc:  # noqa: BLE001 - bad data, a missing parent or key: say so every round, train nothing
        cannot = f"{type(exc).__name__}: {exc}" if isinstance(exc, (KeyError, TypeError)) else str(exc)
    while flare.is_running():
        incoming = flare.receive()
        if incoming is None:
            break
        meta = dict(incoming.meta or {})
        reply: dict[str, Any] = {"versions": ours, "site": site}
        if cannot:
            from mammotriage.learning.fl_site import RoundLog

            RoundLog(cfg.get("log") or "federation-rounds.jsonl").append({"job": meta.get("job"), "round": "final" if meta.get("final") else
                                         incoming.current_round, "site": site, "sent": False,
                                         "reason": f"this site cannot train: {cannot}"})
            flare.send(FLModel(params={}, meta={**reply, "refused": cannot}))
            continue
        why = check_compatible(ours, meta.get("versions") or {})
        if why:
            client.log.append({"job": meta.get("job"), "round": incoming.current_round, "site": site, "sent": False,
                               "reason": f"server refused: {why}"})
            flare.send(FLModel(params={}, meta={**reply, "refused": why}))
            continue
        try:
            state = to_torch(incoming.params or {})
            if meta.get("final"):
                flare.send(FLModel(params={}, meta={**reply, **receive_global(client, cfg, state,
                                                                              meta.get("provenance") or {})}))
                continue
            up = client.round(str(meta.get("job", "")), int(incoming.current_round or 0), state,
                              meta.get("job_params"))
        except (FederationError, ValueError) as exc:
            flare.send(FLModel(params={}, meta={**reply, "refused": str(exc)}))
            continue
        if up is None:
            flare.send(FLModel(params={}, meta={**reply, "opt_out": True}))
            continue
        delta = transform(up.delta) if transform is not None else up.delta
        flare.send(FLModel(params=to_numpy(delta), params_type=ParamsType.DIFF,
                           meta={**reply, "n_images": up.n_images, "sha256": up.sha256, "dp": up.dp}))
