"""A real federation: FLARE startup kits with mutual TLS, a site or server process run
from its kit, and the proof-of-concept (one server and N sites as separate processes on
127.0.0.1).

* :func:`provision` - FLARE's provisioner (``nvflare.lighter``) for a server, N sites and
  one administrator: a root CA, a certificate and key per participant, and each kit's
  ``fed_*.json`` with ``connection_security: mtls`` (every connection presents a
  certificate signed by the project's root CA, both ways).
* :func:`read_kit` - what a kit is (server / site / admin), its name, organisation, the
  server it connects to and its certificate's validity; a kit that would connect without
  mutual TLS, or whose certificate is expired or not signed by its root CA, is refused.
* :func:`prepare_kit` - the site's own policy, written into the kit's ``local/`` folder
  every time it starts (whatever the kit came with): FLARE's class allow-list enforced
  with the app's classes (:func:`mammotriage.learning.fl_flare.write_component_policy`)
  and an authorization policy in which nobody may bring their own code (``byoc``) or run
  shell commands on the site.
* :func:`kit_command` - the FLARE process for a kit (``server_train`` / ``client_train``
  from the installed FLARE, with this interpreter): ``mammotriage federate --kit DIR``.
* :func:`site_config_from_archive` - a real site's configuration: the active model as
  parent, the newest training snapshot as data, the round log beside the archive, and
  the registry where the final global model becomes a candidate.
* :func:`poc` - the proof-of-concept: provision, start the server and the sites as
  ``mammotriage federate --kit`` processes, check that a site with a certificate from
  another CA is not let in, submit the job through FLARE's admin API over mTLS, wait,
  shut everything down and evaluate the global model (``mammotriage federate --poc N``).

Import this module only to federate: :func:`poc` imports ``nvflare`` and torch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammotriage.learning.federation import FederationError
from mammotriage.learning.fl_config import SimConfig, round_log_path

#: The file in ``startup/`` that tells a kit's role.
ROLE_FILES = {"server": "fed_server.json", "site": "fed_client.json", "admin": "fed_admin.json"}
#: FLARE's process for each role (``python -m``).
ROLE_MODULES = {"server": "nvflare.private.fed.app.server.server_train",
                "site": "nvflare.private.fed.app.client.client_train"}
#: The rights in a site's ``authorization.json``: jobs may be submitted and watched, but
#: nobody may bring their own code to this site or run shell commands on it.
SITE_RIGHTS = {"submit_job": "any", "clone_job": "any", "manage_job": "any", "download_job": "any",
               "view": "any", "operate": "any", "shell_commands": "none", "byoc": "none"}
DEFAULT_ADMIN = "admin@mammotriage.local"


@dataclass(frozen=True)
class Kit:
    """A startup kit as :func:`read_kit` found it."""

    path: Path
    role: str  # server, site or admin
    name: str
    org: str
    server: str  # host:port the kit connects to (a server: where it listens)
    connection_security: str
    not_after: str  # the end of validity of the certificate or of its CA, whichever is first (UTC)
    admin_port: int | None = None
    #: The federation's root CA, as its SHA-256 fingerprint: the kit proves only that its
    #: certificate and its CA go together; that the CA is the federation's is checked by
    #: comparing this with what the coordinator says (by phone, on paper).
    ca_sha256: str = ""


@dataclass
class Kits:
    """What :func:`provision` made: the project folder and one kit per participant."""

    root: Path
    server: Path
    admin: Path
    sites: dict[str, Path] = field(default_factory=dict[str, Path])
    fl_port: int = 0
    admin_port: int = 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _org(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[:60] or "org"


def provision(out_dir: str | Path, sites: Sequence[str], *, server_host: str = "localhost",
              fl_port: int = 8002, admin_port: int = 8003, project: str = "mammotriage",
              admin: str = DEFAULT_ADMIN, org: str = "coordinator",
              site_orgs: Mapping[str, str] | None = None, ca_valid_days: int = 3650) -> Kits:
    """FLARE startup kits with mutual TLS for a server, ``sites`` and one administrator
    (module docstring). The kits are under ``out_dir/<project>/prod_NN``; the root CA's
    key stays in ``out_dir/<project>/state`` (keep it offline: whoever holds it can make
    a site certificate). ``ca_valid_days`` is the root CA's lifetime; FLARE gives each
    participant's certificate 360 days (re-provision before they end)."""
    from nvflare.lighter.constants import ProvisionMode
    from nvflare.lighter.prov_utils import prepare_builders, prepare_packager
    from nvflare.lighter.provision import prepare_project
    from nvflare.lighter.provisioner import Provisioner

    if not sites:
        raise FederationError("a federation needs at least one site")
    participants: list[dict[str, Any]] = [
        {"name": server_host, "type": "server", "org": _org(org), "fed_learn_port": int(fl_port),
         "admin_port": int(admin_port), "connection_security": "mtls"}]
    for s in sites:
        participants.append({"name": s, "type": "client", "org": _org((site_orgs or {}).get(s, s))})
    participants.append({"name": admin, "type": "admin", "org": _org(org), "role": "project_admin"})
    project_dict: dict[str, Any] = {
        "api_version": 3, "name": project, "description": "Mammo Triage federation", "participants": participants,
        "builders": [
            {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder", "args": {"template_file": ["master_template.yml"]}},
            {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
            {"path": "nvflare.lighter.impl.cert.CertBuilder", "args": {"root_valid_days": int(ca_valid_days)}},
            {"path": "nvflare.lighter.impl.signature.SignatureBuilder"}]}
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    import copy

    ctx = Provisioner(str(root), prepare_builders(project_dict), prepare_packager(project_dict)).provision(
        prepare_project(copy.deepcopy(project_dict)), mode=ProvisionMode.NORMAL)
    prod = Path(ctx.get_result_location()) if hasattr(ctx, "get_result_location") else None
    if prod is None or not prod.is_dir():
        prods = sorted((root / project).glob("prod_*"))
        if not prods:
            raise FederationError(f"FLARE's provisioning wrote no startup kits under {root / project}")
        prod = prods[-1]
    kits = Kits(root=prod, server=prod / server_host, admin=prod / admin,
                sites={s: prod / s for s in sites}, fl_port=int(fl_port), admin_port=int(admin_port))
    for k in [kits.server, kits.admin, *kits.sites.values()]:
        read_kit(k)
    return kits


def read_kit(kit: str | Path) -> Kit:
    """The kit's role, name and connection (module docstring); raises FederationError
    with the reason for a kit that is incomplete, not mutual TLS, expired or signed by
    another CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import padding

    path = Path(kit)
    startup = path / "startup"
    roles = [r for r, f in ROLE_FILES.items() if (startup / f).is_file()]
    if len(roles) != 1:
        raise FederationError(f"{path}: not a FLARE startup kit (startup/ must hold exactly one of "
                              f"{', '.join(ROLE_FILES.values())})")
    role = roles[0]
    try:
        conf = json.loads((startup / ROLE_FILES[role]).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FederationError(f"{startup / ROLE_FILES[role]}: unreadable ({exc})") from None
    cert_name = "server.crt" if role == "server" else "client.crt"
    key_name = "server.key" if role == "server" else "client.key"
    for f in ("rootCA.pem", cert_name, key_name):
        if not (startup / f).is_file():
            raise FederationError(f"{path}: startup/{f} is missing: ask the federation's coordinator for the whole kit")
    try:
        if role == "server":
            s = conf["servers"][0]
            sec = str(s.get("connection_security", ""))
            server = str(s["service"]["target"])
            admin_port = int(s.get("admin_port", 0)) or None
        elif role == "site":
            sec = str(conf["client"].get("connection_security", ""))
            server = str(conf["servers"][0]["service"]["target"])
            admin_port = None
        else:
            sec = str(conf["admin"].get("connection_security", ""))
            server = f"{conf['admin']['host']}:{conf['admin']['port']}"
            admin_port = int(conf["admin"]["port"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise FederationError(f"{startup / ROLE_FILES[role]}: not a FLARE {role} configuration ({exc!r} missing)") from None
    if sec.lower() != "mtls":
        raise FederationError(f"{path}: this kit connects with connection_security {sec or 'unset'!r}, not mutual "
                              "TLS (mtls): both ends must prove who they are; ask the coordinator for an mTLS kit")
    try:
        ca = x509.load_pem_x509_certificate((startup / "rootCA.pem").read_bytes())
        cert = x509.load_pem_x509_certificate((startup / cert_name).read_bytes())
    except (OSError, ValueError) as exc:
        raise FederationError(f"{path}: unreadable certificate ({exc})") from None
    try:
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,  # type: ignore[call-arg, union-attr]
                               padding.PKCS1v15(), cert.signature_hash_algorithm)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - cryptography raises InvalidSignature or a key-type error
        raise FederationError(f"{path}: startup/{cert_name} is not signed by this kit's rootCA.pem") from None
    now = dt.datetime.now(dt.UTC)
    if ca.not_valid_after_utc < now:
        raise FederationError(f"{path}: the federation's root CA (startup/rootCA.pem) expired on "
                              f"{ca.not_valid_after_utc:%Y-%m-%d}; ask the coordinator for new kits")
    if cert.not_valid_after_utc < now:
        raise FederationError(f"{path}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                              "ask the coordinator for a new kit")
    if cert.not_valid_before_utc > now + dt.timedelta(minutes=5):
        raise FederationError(f"{path}: the certificate is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                              "UTC: check this computer's clock")

    def attr(oid: Any) -> str:
        got = cert.subject.get_attributes_for_oid(oid)
        return str(got[0].value) if got else ""

    from cryptography.x509.oid import NameOID

    name, org = attr(NameOID.COMMON_NAME), attr(NameOID.ORGANIZATION_NAME)
    if role == "site" and name != str(conf["client"].get("fqsn", name)):
        raise FederationError(f"{path}: the certificate names {name!r}, the configuration {conf['client'].get('fqsn')!r}")
    from cryptography.hazmat.primitives import hashes

    return Kit(path=path, role=role, name=name, org=org, server=server, connection_security="mtls",
               not_after=min(cert.not_valid_after_utc, ca.not_valid_after_utc).isoformat(),
               admin_port=admin_port, ca_sha256=ca.fingerprint(hashes.SHA256()).hex())


def site_resources() -> dict[str, Any]:
    """A site's whole ``local/resources.json``, made here and never taken from a kit:
    the enforced class allow-list (the app's site executor only: a job can build
    nothing else here, none of FLARE's other components either), no log streaming to the
    server, FLARE's resource manager with no GPU claims, and
    :class:`~mammotriage.learning.fl_flare.SiteJobLauncher` as the job-process launcher
    (it refuses a job that carries code)."""
    from mammotriage.learning import fl_flare

    return {"format_version": 2, "class_list_enforcement_mode": "enforce",
            "class_allow_list": list(fl_flare.SITE_CLASSES),
            "allow_log_streaming": False,
            "client": {"retry_timeout": 30, "compression": "Gzip"},
            "components": [
                {"id": "resource_manager",
                 "path": "nvflare.app_common.resource_managers.gpu_resource_manager.GPUResourceManager",
                 "args": {"num_of_gpus": 0, "mem_per_gpu_in_GiB": 0, "expiration_period": 300}},
                {"id": "resource_consumer",
                 "path": "nvflare.app_common.resource_consumers.gpu_resource_consumer.GPUResourceConsumer",
                 "args": {}},
                {"id": "process_launcher", "path": fl_flare.SITE_LAUNCHER, "args": {}}]}


def _merged_configs(kit: Kit) -> list[Path]:
    """Files FLARE would merge into a participant's configuration besides ``fed_*.json``
    and ``local/resources.json`` (``*__resources.json`` and the like in ``startup/`` or
    ``local/``): a kit must not carry them, they could turn off what the site enforces."""
    found = []
    for folder in (kit.path / "startup", kit.path / "local"):
        if folder.is_dir():
            found += [p for p in folder.iterdir() if p.name.endswith("resources.json") and p.name != "resources.json"]
    return sorted(found)


def prepare_kit(kit: Kit) -> list[Path]:
    """Write this participant's own policy into ``local/`` (module docstring); returns
    the files written. A site's ``resources.json`` is :func:`site_resources`, whatever
    the kit came with; a kit with extra configuration files that FLARE would merge in is
    refused."""
    from mammotriage.learning import fl_flare

    extra = _merged_configs(kit)
    if extra:
        raise FederationError(f"{kit.path}: the kit carries configuration that FLARE would merge into this "
                              f"{kit.role}'s ({', '.join(p.name for p in extra)}); remove it or ask the "
                              "coordinator for a plain kit")
    local = kit.path / "local"
    local.mkdir(parents=True, exist_ok=True)
    res = local / "resources.json"
    if kit.role != "site":  # the server (an admin kit runs no process)
        default = local / "resources.json.default"
        if default.is_file() and not res.is_file():
            shutil.copyfile(default, res)
        return [fl_flare.write_component_policy(local, server=kit.role == "server", site=False)]
    res.write_text(json.dumps(site_resources(), indent=1), encoding="utf-8")
    auth = {"format_version": "1.0",
            "permissions": {"project_admin": dict(SITE_RIGHTS),
                            "org_admin": {**SITE_RIGHTS, "submit_job": "none", "clone_job": "none",
                                          "manage_job": "o:submitter", "download_job": "o:submitter",
                                          "operate": "o:site"},
                            "lead": {**SITE_RIGHTS, "clone_job": "n:submitter", "manage_job": "n:submitter",
                                     "download_job": "n:submitter", "operate": "o:site"},
                            "member": {"view": "any"}}}
    auth_file = local / "authorization.json"
    auth_file.write_text(json.dumps(auth, indent=1), encoding="utf-8")
    return [res, auth_file]


def kit_command(kit: Kit) -> list[str]:
    """The FLARE process for a server or site kit, with this interpreter."""
    if kit.role not in ROLE_MODULES:
        raise FederationError(f"{kit.path}: an {kit.role} kit is not run as a process (it is used to submit jobs)")
    cmd = [sys.executable, "-u", "-m", ROLE_MODULES[kit.role], "-m", str(kit.path), "-s", ROLE_FILES[kit.role],
           "--set", "secure_train=true"]
    if kit.role == "site":
        cmd.append(f"uid={kit.name}")
    cmd += [f"org={kit.org}", "config_folder=config"]
    return cmd


def site_config_from_archive(kit: Kit, archive_file: str | Path, *, threads: int = 1,
                             optimizer: str = "sgd") -> dict[str, Any]:
    """This site's configuration from its own archive (module docstring)."""
    from mammotriage.model.registry import active_package
    from mammotriage.store.datasets import list_snapshots

    archive = Path(archive_file)
    active = active_package(archive)
    if not active:
        raise FederationError(f"{archive}: no active model to federate from"
                              + (f" ({active.error})" if active.error else ""))
    snaps = [s for s in list_snapshots(archive) if s.role == "training"]
    if not snaps:
        raise FederationError(f"{archive}: no training snapshot: make one in the Model panel (Run pipeline) or with "
                              "'mammotriage snapshot' first; a federation trains on this site's own snapshot")
    snap = snaps[-1]
    return {"parent": str(active.folder), "archive": str(archive), "threads": int(threads), "seed": 0,
            "optimizer": optimizer, "log": str(round_log_path(archive)),
            "data": {"type": "snapshot", "archive": str(archive), "snapshot": snap.sha256}}


def kit_env(site_config_file: str | Path | None) -> dict[str, str]:
    """The environment of a kit's process: the site's configuration file, and idle
    OpenMP threads that sleep."""
    from mammotriage.learning import fl_flare

    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"
    if site_config_file is not None:
        env[fl_flare.SITES_ENV] = str(Path(site_config_file).resolve())
    return env


def run_kit(kit_dir: str | Path, *, site_config_file: str | Path | None = None,
            archive_file: str | Path | None = None, log: Callable[[str], None] = print) -> int:
    """Run a server or a site from its kit in the foreground until FLARE stops it (an
    administrator's ``shutdown``, or Ctrl+C / SIGTERM here); returns its exit status.
    A site's configuration is ``site_config_file`` (``{site: {...}}``), else
    :func:`site_config_from_archive`."""
    kit = read_kit(kit_dir)
    prepare_kit(kit)
    cfg_file: Path | None = None
    if kit.role == "site":
        if site_config_file is not None:
            cfg_file = Path(site_config_file)
            cfgs = json.loads(cfg_file.read_text(encoding="utf-8"))
            if kit.name not in cfgs:
                raise FederationError(f"{cfg_file} has no configuration for site {kit.name!r}")
        else:
            from mammotriage.learning.snapshot_data import archive_or_default

            site_config = site_config_from_archive(kit, archive_or_default(archive_file))
            cfg_file = kit.path / "local" / "mammotriage-site.json"
            cfg_file.write_text(json.dumps({kit.name: dict(site_config)}, indent=1), encoding="utf-8")
    elif kit.role != "server":
        raise FederationError(f"{kit.path}: an admin kit submits jobs; run a server or a site kit")
    log(f"{kit.role} {kit.name} ({kit.org}): connecting to {kit.server} with mutual TLS, certificate valid until "
        f"{kit.not_after[:10]}; the federation's root CA has SHA-256 fingerprint {kit.ca_sha256} (compare it with "
        "the coordinator's)")
    proc = subprocess.Popen(kit_command(kit), env=kit_env(cfg_file), cwd=str(kit.path))

    def stop(signum: int, _frame: Any) -> None:
        proc.send_signal(signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, old)


# ------------------------------------------------------------------ the proof-of-concept


class _Procs:
    """The PoC's processes: each logs to its own file; all are stopped on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[Any] = []

    def start(self, name: str, cmd: list[str], env: Mapping[str, str] | None = None) -> None:
        f = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop_all
        self._files.append(f)
        self.procs[name] = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=dict(env or os.environ), start_new_session=True)

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop(self, name: str, timeout: float = 20.0) -> int | None:
        p = self.procs.get(name)
        if p is None:
            return None
        # the whole process group, also when its leader is gone: FLARE's own children
        # (the job processes) live in it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return p.returncode

    def wait_all(self, timeout: float) -> dict[str, int | None]:
        end = time.monotonic() + timeout
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, end - time.monotonic()))
        return {n: p.poll() for n, p in self.procs.items()}

    def stop_all(self) -> None:
        for n in list(self.procs):
            self.stop(n)
        for f in self._files:
            f.close()


def _submit_code_job(sess: Any, work: Path, init: Path, cfg: SimConfig, sites: list[str], procs: _Procs,
                     kits: Kits, log: Callable[[str], None], wait_s: float = 90.0) -> dict[str, Any]:
    """Submit a job whose site app carries a ``custom/`` module, wait until every site has
    refused it, abort it; returns what each site did. An honest server marks such a job
    as bringing its own code, and each site's ``authorization.json`` (``byoc: none``)
    refuses the deployment, which the server logs per site; a job deployed anyway (a
    server that lies about it) is refused by :class:`fl_flare.SiteJobLauncher`, in the
    site's log."""
    from mammotriage.learning import fl_sim

    name = "poc-carries-code"
    job = fl_sim.build_job(name, init, work / "code-job-server", cfg, sites)
    job.export_job(str(work / "jobs"))
    for app in (work / "jobs" / name).glob("app*"):
        if (app / "config" / "config_fed_client.json").is_file():
            (app / "custom").mkdir(exist_ok=True)
            (app / "custom" / "payload.py").write_text("import os  # code a site must not run\n",
                                                       encoding="utf-8")
    job_id = sess.submit_job(str(work / "jobs" / name))
    refused: dict[str, bool] = {}
    how: dict[str, str] = {}
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        server_log = "".join(p.read_text(encoding="utf-8", errors="replace") for p in kits.server.glob("log*.txt"))
        for site in sites:
            logs = "".join(p.read_text(encoding="utf-8", errors="replace") for p in kits.sites[site].glob("log*.txt"))
            by_policy = f"'{site}: NVFLARE_ERROR: BYOC not permitted'" in server_log and job_id in server_log
            by_launcher = f"job {job_id} refused at this site: the job carries" in logs
            refused[site] = by_policy or by_launcher
            if refused[site]:
                how[site] = "its authorization policy (byoc: none)" if by_policy else "its job launcher"
        if all(refused.values()):
            break
        time.sleep(2)
    with contextlib.suppress(Exception):  # FLARE may have ended it already
        sess.abort_job(job_id)
    # the next job waits until this one is gone from the server
    while time.monotonic() < end + 60:
        with contextlib.suppress(Exception):
            if str(sess.get_job_meta(job_id).get("status", "")).startswith("FINISHED"):
                break
        time.sleep(2)
    # a job process that started would have written its own log in the job's folder
    ran = sorted(s for s in sites if (kits.sites[s] / job_id / "log.txt").is_file())
    log(f"a job that carries code: refused at {sum(refused.values())} of {len(sites)} sites "
        f"({'; '.join(f'{s}: {h}' for s, h in how.items())})")
    if not all(refused.values()) or ran:
        raise FederationError(f"a job carrying code was not refused at every site ({refused}; a job process "
                              f"started at: {ran or 'none'}); see the logs under {procs.logs}")
    return {"job_id": job_id, "refused_by": sorted(s for s, r in refused.items() if r), "how": how,
            "job_processes_started": ran}


def probe_tls(host: str, port: int, ca: str | Path, cert: str | Path | None = None,
              key: str | Path | None = None, timeout: float = 10.0) -> tuple[bool, str]:
    """One TLS handshake with ``host:port`` trusting ``ca``, presenting ``cert`` (or no
    certificate), then one HTTP request: (accepted, what the server said). Accepted means
    an HTTP reply came back; a server that enforces mutual TLS closes the connection, or
    fails the handshake, for a client certificate it did not sign and for none."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = tls.recv(64)
    except ssl.SSLError as exc:
        return False, str(exc.reason or exc)
    except (OSError, TimeoutError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if not data:  # TLS 1.3: the server checks the certificate after the client's handshake ends
        return False, "closed by the server without a reply"
    return True, data.split(b"\r\n", 1)[0].decode("latin-1")


def _connected(sess: Any) -> list[str]:
    info = sess.get_system_info()
    return sorted(c.name for c in info.client_info)


def poc(out: Path, cfg: SimConfig, seed: int = 0, log: Callable[[str], None] = print,
        timeout: float = 1800.0, checks: bool = True) -> dict[str, Any]:
    """The proof-of-concept (module docstring) with the simulation's phantom sites;
    returns the report (figures in seconds and the global model's sensitivities).
    ``checks``: the TLS probes and the job that carries code, before the real job."""
    from safetensors.torch import load_file, save_file

    from mammotriage.learning import fl_sim
    from mammotriage.learning.fl_site import DetectorSiteEngine, RoundLog

    t_all = time.monotonic()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parent = fl_sim.train_parent(out / "parent", cfg, log)
    base_state = fl_sim._state_of(parent)
    work = out / f"seed{seed}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t = time.monotonic()
    fl_port, admin_port = free_port(), free_port()
    sites, site_cfg = fl_sim.sim_site_configs(work, parent, cfg, seed)
    kits = provision(work / "kits", [n for n, _ in sites], fl_port=fl_port, admin_port=admin_port)
    provision_s = time.monotonic() - t
    log(f"provisioned {len(sites)} sites, a server on localhost:{fl_port} (admin {admin_port}) and an admin "
        f"with mutual TLS in {provision_s:.1f} s: {kits.root}")
    sites_file = work / "sites.json"
    sites_file.write_text(json.dumps(site_cfg, indent=1), encoding="utf-8")
    report: dict[str, Any] = {"config": {**{k: v for k, v in cfg.__dict__.items() if k != "extra"},
                                         "seeds": [seed]},
                              "sites": [{"site": n, "profile": p} for n, p in sites],
                              "ports": {"fl": fl_port, "admin": admin_port}, "kits": str(kits.root),
                              "seconds": {"provision": round(provision_s, 1)}}
    me = [sys.executable, "-m", "mammotriage", "federate"]
    procs = _Procs(work / "logs")
    sess = None

    def terminated(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # the finally below stops every process started here

    old_term = signal.signal(signal.SIGTERM, terminated) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        t = time.monotonic()
        procs.start("server", [*me, "--kit", str(kits.server)], env=kit_env(None))
        for name, _ in sites:
            procs.start(name, [*me, "--kit", str(kits.sites[name]), "--site-config", str(sites_file)],
                        env=kit_env(sites_file))
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        deadline = time.monotonic() + 180
        while True:
            try:
                sess = new_secure_session(DEFAULT_ADMIN, str(kits.admin), timeout=10)
                break
            except Exception as exc:  # noqa: BLE001 - FLARE raises its own errors while the server starts
                if time.monotonic() > deadline or not procs.alive("server"):
                    raise FederationError(f"the admin could not log in to the server ({exc}); "
                                          f"see {procs.logs / 'server.log'}") from None
                time.sleep(2)
        want = sorted(n for n, _ in sites)
        while _connected(sess) != want:
            if time.monotonic() > deadline:
                raise FederationError(f"sites connected: {', '.join(_connected(sess)) or 'none'} of {', '.join(want)} "
                                      f"after 180 s; see the logs under {procs.logs}")
            time.sleep(2)
        ready_s = time.monotonic() - t
        report["seconds"]["start_to_all_connected"] = round(ready_s, 1)
        log(f"server and {len(want)} sites connected over mTLS in {ready_s:.1f} s")
        if checks:
            # the server's side of mutual TLS: a site certificate from another project
            # (its own root CA), or none, is refused in the handshake; a real site's is not
            other = provision(work / "intruder-kits", ["site-0-intruder"], fl_port=fl_port, admin_port=admin_port,
                              project="intruder")
            ca = kits.server / "startup" / "rootCA.pem"
            own = kits.sites[want[0]] / "startup"
            bad = other.sites["site-0-intruder"] / "startup"
            probes = {"site certificate": probe_tls("localhost", fl_port, ca, own / "client.crt", own / "client.key"),
                      "certificate from another CA": probe_tls("localhost", fl_port, ca, bad / "client.crt",
                                                               bad / "client.key"),
                      "no certificate": probe_tls("localhost", fl_port, ca),
                      "admin port, certificate from another CA": probe_tls("localhost", admin_port, ca,
                                                                           bad / "client.crt", bad / "client.key")}
            report["mtls_probes"] = {k: {"accepted": a, "detail": d} for k, (a, d) in probes.items()}
            for k, (a, d) in probes.items():
                log(f"TLS handshake with {k}: {'accepted' if a else 'refused'} ({d})")
            if not probes["site certificate"][0] or any(a for k, (a, _) in probes.items() if k != "site certificate"):
                raise FederationError(f"mutual TLS is not enforced as it must be: {report['mtls_probes']}")
        init = work / "initial.safetensors"
        save_file({k: v.contiguous() for k, v in base_state.items()}, str(init))
        if checks:
            # a job that brings its own code (which FLARE lets the project admin submit):
            # every site must refuse to launch it
            report["code_job"] = _submit_code_job(sess, work, init, cfg, want, procs, kits, log)
        job_name = f"poc-seed{seed}"
        job = fl_sim.build_job(job_name, init, work / "server", cfg, want)
        job.export_job(str(work / "jobs"))
        t = time.monotonic()
        job_id = sess.submit_job(str(work / "jobs" / job_name))
        log(f"job {job_name} submitted as {job_id}")
        meta = sess.wait_for_job(job_id, timeout=timeout, poll_interval=3.0)
        job_s = time.monotonic() - t
        report["seconds"]["job"] = round(job_s, 1)
        report["job"] = {"id": job_id, "status": str(meta.get("status")), "name": job_name}
        log(f"job {job_id}: {meta.get('status')} in {job_s:.1f} s")
        t = time.monotonic()
        try:
            sess.shutdown("all", wait=False)
        except Exception as exc:  # noqa: BLE001 - the server may close the connection first
            log(f"shutdown: {exc}")
        sess = None
        codes = procs.wait_all(60)
        report["seconds"]["shutdown"] = round(time.monotonic() - t, 1)
        report["exit_codes"] = codes
    finally:
        if sess is not None:
            with contextlib.suppress(Exception):  # the server may be gone already
                sess.close()
        procs.stop_all()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    summary_file = work / "server" / "federation.json"
    if not summary_file.is_file():
        raise FederationError(f"the proof-of-concept ended without a global model; the logs are under {procs.logs}")
    fed = json.loads(summary_file.read_text(encoding="utf-8"))
    report["federation"] = {k: fed.get(k) for k in ("completed_rounds", "rounds", "participants", "sites",
                                                     "final_sha256", "history", "candidates")}
    report["site_logs"] = {n: RoundLog(site_cfg[n]["log"]).entries() for n, _ in sites}
    val = fl_sim.sim_validation(cfg, seed, sites)
    evaluator = DetectorSiteEngine(parent, [], threads=cfg.threads, seed=seed)
    report["validation"] = {"images": len(val), "patients": len({s.group for s in val})}
    report["parent"] = fl_sim._figures(evaluator.evaluate(base_state, val))
    report["federated"] = fl_sim._figures(evaluator.evaluate(load_file(str(work / "server" / "global.safetensors")),
                                                             val))
    report["seconds"]["total"] = round(time.monotonic() - t_all, 1)
    return report


def poc_text(report: Mapping[str, Any]) -> str:
    """The proof-of-concept's report as lines a person reads."""
    s = report["seconds"]
    fed = report.get("federation") or {}
    lines = [f"proof-of-concept: 1 server and {len(report['sites'])} sites as separate processes on 127.0.0.1, "
             f"mutual TLS (kits: {report['kits']})",
             f"  provisioning {s.get('provision')} s; start to all sites connected {s.get('start_to_all_connected')} s; "
             f"job {s.get('job')} s; shutdown {s.get('shutdown')} s; total {s.get('total')} s"]
    for k, v in (report.get("mtls_probes") or {}).items():
        lines.append(f"  TLS handshake with {k}: {'accepted' if v['accepted'] else 'refused'} ({v['detail']})")
    if "code_job" in report:
        lines.append(f"  a job that carries code: refused by {', '.join(report['code_job']['refused_by'])}")
    lines.append(f"  job {report.get('job', {}).get('id')}: {report.get('job', {}).get('status')}, "
                 f"{fed.get('completed_rounds')}/{fed.get('rounds')} rounds, participants "
                 f"{', '.join(fed.get('participants') or [])}")
    for m in ("parent", "federated"):
        lines.append(f"  {m:10s} " + "  ".join(f"{k} {v:.3f}" for k, v in report[m].items()))
    return "\n".join(lines)
