"""The site's image archive: an Orthanc server with the DICOMweb plugin.

:class:`OrthancServer` owns one folder::

    DIR/
      config/orthanc.json       the configuration (no secrets; Orthanc merges the folder)
      config/credentials.json   the generated REST/DICOMweb user and password (mode 0600)
      storage/                  Orthanc's storage area (the DICOM files)
      index/                    Orthanc's SQLite index
      orthanc.pid               the running server's process id
      orthanc.log               Orthanc's log (stdout and stderr, appended)

``site init DIR`` is :meth:`OrthancServer.write_config`; ``site start|stop|status`` are
:meth:`~OrthancServer.start`, :meth:`~OrthancServer.stop` and
:meth:`~OrthancServer.status` of :meth:`OrthancServer.load` ``(DIR)``.

Security defaults: HTTP authentication on (one generated user), remote HTTP access off
(Orthanc answers only connections from this host; Orthanc 1.10 has no bind address
option, so the DICOM port listens on every interface and the called AE title is
checked), the Orthanc Explorer, WebDAV, Lua execution and REST writes to the file
system off. With ``tls_pem`` (what ``site init`` gives: the server's key and
certificate in one PEM file) the REST/DICOMweb port speaks HTTPS only (TLS 1.2 or
newer), so the basic authentication never crosses the network in clear: Orthanc's own
HTTP server moves to a private loopback port chosen at each start (remote access off,
so it answers only this host) and :mod:`mammotriage.net.tls_relay` serves the public
port (Orthanc's built-in ``SslEnabled`` crashes on Debian 12, see that module). This
module's own calls verify the server against ``tls_ca``. The DICOM port stays plain
DICOM unless ``dicom_tls`` (``site init --dicom-tls``): then it speaks DICOM TLS only
(DCMTK's, in Orthanc) with the same certificate; senders need no certificate of their
own (``DicomTlsRemoteCertificateRequired`` false; they verify the server with the CA).

The "study complete" signal is Orthanc's ``StableStudy`` change (no new instance for
``stable_age_s`` seconds), read from the ``/changes`` REST feed by
:class:`mammotriage.net.dicomweb.StableStudyWatcher`; no Lua script is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from mammotriage.jsonio import write_atomic
from mammotriage.net.settings import NetworkConfigError, normalise_host, validate_ae_title

__all__ = [
    "DEFAULT_AE_TITLE",
    "DEFAULT_DICOM_PORT",
    "DEFAULT_HTTP_PORT",
    "DICOMWEB_ROOT",
    "OrthancError",
    "OrthancNotFoundError",
    "OrthancServer",
    "OrthancStartError",
    "OrthancStatus",
    "find_dicomweb_plugin",
    "find_orthanc",
    "read_credentials",
    "write_atomic",
]

DEFAULT_AE_TITLE = "MT_ARCHIVE"
DEFAULT_HTTP_PORT = 8042
DEFAULT_DICOM_PORT = 4242
#: Root of the DICOMweb API below the HTTP server (QIDO-RS, WADO-RS, STOW-RS).
DICOMWEB_ROOT = "/dicom-web"
DEFAULT_USER = "mammotriage"

#: Where Debian (``orthanc``), a local build and the official packages put the binary.
ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/local/sbin/Orthanc", "/usr/local/bin/Orthanc",
                      "/usr/bin/Orthanc")
#: Debian's ``orthanc-dicomweb`` links the plugin into the first folder.
PLUGIN_FOLDERS = ("/usr/share/orthanc/plugins", "/usr/local/share/orthanc/plugins",
                  "/usr/lib/orthanc", "/usr/local/lib/orthanc")
PLUGIN_PREFIX = "libOrthancDicomWeb.so"
INSTALL_HINT = "install Debian's orthanc and orthanc-dicomweb packages (apt-get install orthanc orthanc-dicomweb)"


class OrthancError(RuntimeError):
    """The archive server cannot be configured, started or stopped; the message says why."""


class OrthancNotFoundError(OrthancError):
    """The Orthanc binary or its DICOMweb plugin is not installed."""


class OrthancStartError(OrthancError):
    """Orthanc did not come up; the message names the log file and quotes its end."""

    def __init__(self, message: str, log_file: Path) -> None:
        super().__init__(message)
        self.log_file = log_file


def find_orthanc(binary: str | os.PathLike[str] | None = None) -> Path:
    """The Orthanc executable: ``binary`` if given, else PATH, then the usual places."""
    if binary is not None:
        path = Path(binary)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise OrthancNotFoundError(f"Orthanc binary {path} does not exist or is not executable")
    for name in ("Orthanc", "orthanc"):
        found = shutil.which(name)
        if found:
            return Path(found)
    for candidate in ORTHANC_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise OrthancNotFoundError(
        f"Orthanc not found (looked on PATH and in {', '.join(ORTHANC_CANDIDATES)}): {INSTALL_HINT}")


def find_dicomweb_plugin(plugin: str | os.PathLike[str] | None = None,
                         binary: Path | None = None) -> Path:
    """The DICOMweb plugin library: ``plugin`` if given, else the Debian and local folders.

    The folder ``../share/orthanc/plugins`` beside the binary is searched too (an
    Orthanc installed under its own prefix).
    """
    if plugin is not None:
        path = Path(plugin)
        if path.is_file():
            return path
        raise OrthancNotFoundError(f"DICOMweb plugin {path} does not exist")
    folders = list(PLUGIN_FOLDERS)
    if binary is not None:
        folders.append(str(binary.resolve().parent.parent / "share" / "orthanc" / "plugins"))
    for folder in folders:
        base = Path(folder)
        if not base.is_dir():
            continue
        exact = base / PLUGIN_PREFIX
        if exact.exists():
            return exact
        versioned = sorted(p for p in base.glob(PLUGIN_PREFIX + "*") if p.is_file())
        if versioned:
            return versioned[-1]
    raise OrthancNotFoundError(
        f"the Orthanc DICOMweb plugin ({PLUGIN_PREFIX}) was not found in {', '.join(folders)}: "
        f"{INSTALL_HINT}")


def read_credentials(path: Path) -> tuple[str, str]:
    """(user, password) from a ``credentials.json`` written by :meth:`OrthancServer.write_config`.

    Refuses a file that others can read (like ssh does with a private key).
    """
    try:
        mode = path.stat().st_mode
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OrthancError(f"{path}: no credentials file; run 'site init' first") from None
    except (OSError, ValueError) as exc:
        raise OrthancError(f"{path}: cannot read the archive credentials: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise OrthancError(
            f"{path}: the archive credentials are readable by others (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 {path}")
    users = data.get("RegisteredUsers") if isinstance(data, dict) else None
    if not isinstance(users, dict) or len(users) != 1:
        raise OrthancError(f"{path}: expected one user in RegisteredUsers")
    (user, password), = users.items()
    if not isinstance(user, str) or not isinstance(password, str) or not user or not password:
        raise OrthancError(f"{path}: the user and password must be non-empty text")
    return user, password


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise NetworkConfigError(f"{what} must be a TCP port 1..65535, not {value!r}")
    return value


@dataclass(frozen=True)
class OrthancStatus:
    """What :meth:`OrthancServer.status` found (``to_json`` for ``site status --json``)."""

    folder: str
    running: bool
    answering: bool
    pid: int | None
    http_port: int
    dicom_port: int
    ae_title: str
    version: str | None
    log_file: str
    detail: str
    https: bool = False
    dicom_tls: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: The DicomModalities entry of the PACS the archive forwards AI results to.
FORWARD_MODALITY = "mammotriage-pacs"
#: Instance metadata recording an AI result's forwarding ("queued" while its job runs,
#: "sent" once the PACS took it); user-defined metadata index (1024-65535).
FORWARD_METADATA = "MammoTriageForward"
FORWARD_METADATA_ID = 4711
#: The app's AI results: SR (Comprehensive) and SEG whose Manufacturer is the algorithm's.
RESULT_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.66.4")
RESULT_MANUFACTURER = "Mammo Triage"

#: Orthanc's Lua hooks (one Lua context, callbacks run one at a time): an AI result
#: stored for the first time is queued for the PACS (an asynchronous store job) and
#: marked "queued"; a stored again copy (Orthanc calls the hook for a STOW of an instance
#: it has: a job done twice by the site's workers) is not sent again. A job that
#: succeeds marks its instances "sent"; one that fails clears the mark, so the next copy
#: stored, or `mammotriage site forward DIR`, sends it again.
FORWARD_LUA = f"""-- written by mammotriage (net/orthanc.py): the AI results go to the PACS once
local classes = {{{', '.join(f'["{c}"] = true' for c in RESULT_CLASSES)}}}
local key = "{FORWARD_METADATA}"
local pacs = "__PACS_AET__"

function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags["Manufacturer"] ~= "{RESULT_MANUFACTURER}" or not classes[tags["SOPClassUID"]] then
    return
  end
  local marks = ParseJson(RestApiGet("/instances/" .. instanceId .. "/metadata?expand"))
  if marks[key] == "queued" or marks[key] == "sent" then
    return
  end
  RestApiPut("/instances/" .. instanceId .. "/metadata/" .. key, "queued")
  RestApiPost("/modalities/{FORWARD_MODALITY}/store",
              DumpJson({{Resources = {{instanceId}}, Asynchronous = true, Permissive = false}}, true))
end

local function mark(jobId, value)
  local job = ParseJson(RestApiGet("/jobs/" .. jobId))
  if job["Type"] ~= "DicomModalityStore" or job["Content"]["RemoteAet"] ~= pacs then
    return
  end
  for _, id in ipairs(job["Content"]["ParentResources"] or {{}}) do
    if value then
      RestApiPut("/instances/" .. id .. "/metadata/" .. key, value)
    else
      RestApiDelete("/instances/" .. id .. "/metadata/" .. key)
    end
  end
end

function OnJobSuccess(jobId)
  mark(jobId, "sent")
end

function OnJobFailure(jobId)
  mark(jobId, nil)
end
"""


class OrthancServer:
    """An Orthanc archive living in ``folder``: its configuration and its process.

    Parameters
    ----------
    folder
        The server's folder (created by :meth:`write_config`).
    http_port, dicom_port
        The REST/DICOMweb port and the DICOM (C-STORE SCP) port.
    aet
        Orthanc's AE title; modalities and PACS must call it (the called AE title is checked).
    stable_age_s
        Seconds without a new instance after which Orthanc declares a study stable.
    remote_access
        Let other hosts reach the HTTP server (workstations on the site network);
        ``False`` (default) answers only this host.
    allowed_senders
        ``{AE title: (IP address, port)}`` of the PACS and modalities allowed to store
        (C-STORE) into the archive, checked by calling AE title and host; the port is
        where Orthanc reaches that peer. ``None`` (default): any calling AE title may
        store (let the host firewall decide).
    binary, plugin
        The Orthanc executable and the DICOMweb plugin; found by :func:`find_orthanc`
        and :func:`find_dicomweb_plugin` when not given (at :meth:`write_config`).
    tls_pem, tls_ca
        HTTPS: the PEM file with the server's private key and certificate, and the CA
        certificate clients verify it with. None (default): plain HTTP.
    tls_check_hostname
        Whether this host's calls (to 127.0.0.1) check the certificate's names; False only
        for a site certificate that does not name 127.0.0.1 (the chain is still checked).
    forward_results
        ``(AE title, host, port)`` of the PACS that the AI results (SR and SEG whose
        Manufacturer is the app's) go to, once each (:data:`FORWARD_LUA`); None
        (default): the archive forwards nothing.
    dicom_tls
        ``(certificate, key)`` PEM files: the DICOM port speaks DICOM TLS only (needs
        ``tls_ca``, which Orthanc also trusts for senders that do present a certificate).
    """

    def __init__(self, folder: str | os.PathLike[str], http_port: int = DEFAULT_HTTP_PORT,
                 dicom_port: int = DEFAULT_DICOM_PORT, aet: str = DEFAULT_AE_TITLE, *,
                 stable_age_s: int = 60, remote_access: bool = False,
                 allowed_senders: Mapping[str, tuple[str, int]] | None = None,
                 binary: str | os.PathLike[str] | None = None,
                 plugin: str | os.PathLike[str] | None = None,
                 name: str = "Mammo Triage site archive",
                 tls_pem: str | os.PathLike[str] | None = None, tls_ca: str | os.PathLike[str] | None = None,
                 tls_check_hostname: bool = True,
                 dicom_tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
                 forward_results: tuple[str, str, int] | None = None) -> None:
        self.folder = Path(folder).absolute()
        if dicom_tls is not None and tls_ca is None:
            raise NetworkConfigError("DICOM TLS needs the CA certificate (tls_ca)")
        self.dicom_tls = (Path(dicom_tls[0]).absolute(), Path(dicom_tls[1]).absolute()) if dicom_tls else None
        self.forward_results: tuple[str, str, int] | None = None
        if forward_results is not None:
            f_aet, f_host, f_port = forward_results
            self.forward_results = (validate_ae_title(f_aet, "PACS AE title"),
                                    normalise_host(f_host, "PACS address"), _check_port(f_port, "PACS port"))
        if (tls_pem is None) != (tls_ca is None):
            raise NetworkConfigError("HTTPS needs both the server's PEM file and the CA certificate")
        self.tls_pem = Path(tls_pem).absolute() if tls_pem is not None else None
        self.tls_ca = Path(tls_ca).absolute() if tls_ca is not None else None
        self.tls_check_hostname = bool(tls_check_hostname)
        self.http_port = _check_port(http_port, "HTTP port")
        self.dicom_port = _check_port(dicom_port, "DICOM port")
        if self.http_port == self.dicom_port:
            raise NetworkConfigError(f"the HTTP and DICOM ports must differ (both {http_port})")
        self.aet = validate_ae_title(aet, "archive AE title")
        if isinstance(stable_age_s, bool) or not isinstance(stable_age_s, int) or stable_age_s < 1:
            raise NetworkConfigError(f"stable age must be a whole number of seconds >= 1, not {stable_age_s!r}")
        self.stable_age_s = stable_age_s
        self.remote_access = bool(remote_access)
        self.allowed_senders: dict[str, tuple[str, int]] | None = None
        if allowed_senders is not None:
            self.allowed_senders = {}
            for title, peer in allowed_senders.items():
                aet = validate_ae_title(title, "sender AE title")
                if not isinstance(peer, (tuple, list)) or len(peer) != 2:
                    raise NetworkConfigError(f"sender {aet}: expected (IP address, port), not {peer!r}")
                self.allowed_senders[aet] = (normalise_host(peer[0], f"address of sender {aet}"),
                                             _check_port(peer[1], f"port of sender {aet}"))
        self.name = name
        self._binary = binary
        self._plugin = plugin
        self._proc: subprocess.Popen[bytes] | None = None
        self._relay: subprocess.Popen[bytes] | None = None
        self._internal_port = 0

    # ------------------------------------------------------------------ paths

    @property
    def config_dir(self) -> Path:
        return self.folder / "config"

    @property
    def forward_script(self) -> Path:
        return self.config_dir / "forward-results.lua"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "orthanc.json"

    @property
    def credentials_file(self) -> Path:
        return self.config_dir / "credentials.json"

    @property
    def storage_dir(self) -> Path:
        return self.folder / "storage"

    @property
    def index_dir(self) -> Path:
        return self.folder / "index"

    @property
    def pid_file(self) -> Path:
        return self.folder / "orthanc.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / "orthanc.log"

    @property
    def relay_pid_file(self) -> Path:
        return self.folder / "tls-relay.pid"

    @property
    def url(self) -> str:
        """The REST API's root on this host (https when the server has TLS)."""
        return f"{'https' if self.tls_pem else 'http'}://127.0.0.1:{self.http_port}"

    def session(self) -> requests.Session:
        """A requests session that trusts only the site CA (HTTPS), no proxy from the environment."""
        from mammotriage.net.tls import verify_session

        session = requests.Session()
        session.trust_env = False
        return verify_session(session, self.tls_ca, self.tls_check_hostname)

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS) on this host."""
        return self.url + DICOMWEB_ROOT

    def credentials(self) -> tuple[str, str]:
        """(user, password) of the generated account."""
        return read_credentials(self.credentials_file)

    def forward_pending(self, timeout_s: float = 30.0, *, include_queued: bool = False) -> dict[str, int]:
        """Send to the PACS every AI result whose forward failed (no mark); with
        ``include_queued`` also those marked "queued" (right after Orthanc started: jobs
        are not saved, so a queued mark is a job that a restart lost; at any other time
        it may be a job still running). On the running archive; one store job per
        result. Returns the counts: ``results`` (AI results held), ``sent`` (already at
        the PACS), ``queued`` (sent now: store jobs started)."""
        if self.forward_results is None:
            raise OrthancError(f"{self.folder}: the archive forwards no results (site init --pacs)")
        base, counts = self.url, {"results": 0, "sent": 0, "queued": 0}
        with self.session() as http:
            http.auth = self.credentials()

            def call(method: str, path: str, **kwargs: Any) -> Any:
                answer = http.request(method, base + path, timeout=timeout_s, **kwargs)
                if answer.status_code >= 400:
                    raise OrthancError(f"{method} {path}: HTTP {answer.status_code} {answer.text[:200]}")
                return answer.json() if answer.content else None

            try:
                series = call("POST", "/tools/find", json={"Level": "Series", "Expand": True,
                                                           "Query": {"Manufacturer": RESULT_MANUFACTURER}})
                waiting = []
                for one in series:
                    for instance in one.get("Instances", []):
                        meta = call("GET", f"/instances/{instance}/metadata?expand")
                        if meta.get("SopClassUid") not in RESULT_CLASSES:
                            continue
                        counts["results"] += 1
                        mark = meta.get(FORWARD_METADATA)
                        if mark == "sent":
                            counts["sent"] += 1
                        elif mark is None or include_queued:
                            waiting.append(instance)
                for instance in waiting:  # one job each: a failure clears only its own mark
                    http.put(f"{base}/instances/{instance}/metadata/{FORWARD_METADATA}", data=b"queued",
                             timeout=timeout_s).raise_for_status()
                    call("POST", f"/modalities/{FORWARD_MODALITY}/store",
                         json={"Resources": [instance], "Asynchronous": True, "Permissive": False})
                counts["queued"] = len(waiting)
            except (requests.RequestException, ValueError) as exc:
                raise OrthancError(f"{self.url}: cannot reach the archive ({exc})") from exc
        return counts

    # ------------------------------------------------------------------ configuration

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> OrthancServer:
        """The server :meth:`write_config` set up in ``folder`` (ports, AE title, binary)."""
        path = Path(folder).absolute() / "config" / "orthanc.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OrthancError(f"{path}: no archive configuration; run 'site init' first") from None
        except (OSError, ValueError) as exc:
            raise OrthancError(f"{path}: cannot read the archive configuration: {exc}") from None
        try:
            site = data["MammoTriage"]
            plugins = data["Plugins"]
            tls = site.get("Tls")
            senders = None
            pacs = site.get("ForwardResults")
            if not data["DicomAlwaysAllowStore"]:
                senders = {m["AET"]: (m["Host"], m["Port"]) for k, m in data["DicomModalities"].items()
                           if k != FORWARD_MODALITY}
            return cls(folder, http_port=tls["PublicPort"] if tls else data["HttpPort"], dicom_port=data["DicomPort"],
                       aet=data["DicomAet"], stable_age_s=data["StableAge"],
                       remote_access=tls["RemoteAccess"] if tls else data["RemoteAccessAllowed"],
                       allowed_senders=senders,
                       binary=site["Binary"], plugin=plugins[0], name=data["Name"],
                       tls_pem=tls["Pem"] if tls else None, tls_ca=tls["Ca"] if tls else None,
                       tls_check_hostname=tls.get("CheckHostname", True) if tls else True,
                       dicom_tls=(data["DicomTlsCertificate"], data["DicomTlsPrivateKey"])
                       if data.get("DicomTlsEnabled") else None,
                       forward_results=(str(pacs[0]), str(pacs[1]), int(pacs[2])) if pacs else None)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise OrthancError(f"{path}: not a configuration written by 'site init' ({exc!r})") from None
        except NetworkConfigError as exc:
            raise OrthancError(f"{path}: {exc}") from None

    def configuration(self, binary: Path, plugin: Path) -> dict[str, Any]:
        """The Orthanc configuration (without the credentials, which have their own file)."""
        return {
            "Name": self.name,
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.index_dir),
            "StorageCompression": False,
            "MaximumStorageSize": 0,
            "MaximumPatientCount": 0,
            "Plugins": [str(plugin)],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port if self.tls_pem is None else self._internal_port,
            "HttpDescribeErrors": True,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "RemoteAccessAllowed": self.remote_access and self.tls_pem is None,  # with TLS: the relay's bind
            "AuthenticationEnabled": True,
            "SslEnabled": False,  # with TLS, net.tls_relay terminates it
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": True,
            "DicomPort": self.dicom_port,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": self.allowed_senders is None,
            "DicomCheckModalityHost": self.allowed_senders is not None,
            "DicomModalities": {
                **{f"sender{n}": {"AET": aet, "Host": host, "Port": port, "AllowStore": True}
                   for n, (aet, (host, port)) in enumerate(sorted((self.allowed_senders or {}).items()), 1)},
                **({FORWARD_MODALITY: {"AET": self.forward_results[0], "Host": self.forward_results[1],
                                       "Port": self.forward_results[2], "AllowStore": False, "AllowEcho": True}}
                   if self.forward_results else {}),
            },
            **({"LuaScripts": [str(self.forward_script)], "UserMetadata": {FORWARD_METADATA: FORWARD_METADATA_ID}}
               if self.forward_results else {}),
            "DicomTlsEnabled": self.dicom_tls is not None,
            **({"DicomTlsCertificate": str(self.dicom_tls[0]), "DicomTlsPrivateKey": str(self.dicom_tls[1]),
                "DicomTlsTrustedCertificates": str(self.tls_ca), "DicomTlsRemoteCertificateRequired": False}
               if self.dicom_tls else {}),
            "UnknownSopClassAccepted": False,
            "StableAge": self.stable_age_s,
            "OverwriteInstances": False,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
            "SaveJobs": False,
            "DeidentifyLogs": True,
            "HttpsCACertificates": "",
            "DicomWeb": {
                "Enable": True,
                "Root": DICOMWEB_ROOT + "/",
                "EnableWado": False,
                "Ssl": self.tls_pem is not None,  # https in the URLs the plugin writes
            },
            # Ignored by Orthanc; read back by OrthancServer.load.
            "MammoTriage": {"Binary": str(binary), "Version": 1,
                            **({"ForwardResults": list(self.forward_results)} if self.forward_results else {}),
                            **({"Tls": {"Pem": str(self.tls_pem), "Ca": str(self.tls_ca),
                                        "CheckHostname": self.tls_check_hostname, "PublicPort": self.http_port,
                                        "RemoteAccess": self.remote_access}}
                               if self.tls_pem else {})},
        }

    def write_config(self) -> Path:
        """Write the configuration folder (``site init DIR``); returns ``config/orthanc.json``.

        The credentials are generated once: writing the configuration again (new
        ports, say) keeps the existing user and password, so clients keep working.
        """
        binary = find_orthanc(self._binary)
        plugin = find_dicomweb_plugin(self._plugin, binary)
        for sub in (self.folder, self.config_dir, self.storage_dir, self.index_dir):
            sub.mkdir(parents=True, exist_ok=True)
        os.chmod(self.config_dir, 0o700)
        os.chmod(self.storage_dir, 0o700)
        os.chmod(self.index_dir, 0o700)
        if not self.credentials_file.exists():
            users = {DEFAULT_USER: secrets.token_urlsafe(24)}
            write_atomic(self.credentials_file,
                         (json.dumps({"RegisteredUsers": users}, indent=2) + "\n").encode(), 0o600)
        self.credentials()  # refuses a file others can read
        if self.forward_results:  # the AE title is checked (letters, digits, a few signs): safe in Lua text
            script = FORWARD_LUA.replace("__PACS_AET__", self.forward_results[0])
            write_atomic(self.forward_script, script.encode("utf-8"), 0o600)
        else:
            self.forward_script.unlink(missing_ok=True)
        text = json.dumps(self.configuration(binary, plugin), indent=2) + "\n"
        return write_atomic(self.config_file, text.encode(), 0o600)

    # ------------------------------------------------------------------ process

    def _read_pid(self, pid_file: Path | None = None) -> int | None:
        try:
            pid = int((pid_file or self.pid_file).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None
        return pid if pid > 0 else None

    def _alive(self, pid: int, marker: str | None = None) -> bool:
        """True when ``pid`` is a running Orthanc of this folder (not a reused id)."""
        if self._proc is not None and self._proc.pid == pid and self._proc.poll() is not None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # some other user's process: not ours
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists():
            try:
                args = cmdline.read_bytes().split(b"\0")
                stat_text = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            if stat_text.rsplit(")", 1)[-1].split()[0] == "Z":
                return False
            return (marker or str(self.config_dir)).encode() in args
        return True

    def _answer(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """Orthanc's ``/system`` when the REST API answers with our credentials, else None."""
        try:
            auth = self.credentials()
        except OrthancError:
            return None
        try:
            with self.session() as session:
                response = session.get(self.url + "/system", auth=auth, timeout=timeout)
        except (requests.RequestException, OSError):
            return None
        if response.status_code != 200:
            return None
        try:
            body = response.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return "\n".join(tail) or "(empty log)"

    def start(self, timeout_s: float = 30.0) -> OrthancStatus:
        """Start Orthanc in the background and wait until its REST API answers.

        Orthanc runs in its own session (it outlives the command that started it) and
        its process id goes to ``orthanc.pid``. Starting a running server only reports
        its status. Raises :class:`OrthancStartError`, naming the log file, when
        Orthanc exits or does not answer within ``timeout_s``.
        """
        if not self.config_file.exists():
            raise OrthancError(f"{self.config_file}: no archive configuration; run 'site init' first")
        current = self.status()
        data = json.loads(self.config_file.read_text(encoding="utf-8"))
        if current.running:
            if current.answering:
                return current
            relay = self._read_pid(self.relay_pid_file)
            if self.tls_pem is not None and (relay is None or not self._alive(relay, str(self.tls_pem))):
                # Orthanc runs but its TLS relay is gone (killed): start the relay again
                self._internal_port = int(data["HttpPort"])
                with open(self.log_file, "ab") as log:
                    self._start_relay(log)
                return self._wait_answer(timeout_s)
            raise OrthancError(f"Orthanc (pid {current.pid}) is running but does not answer on "
                               f"{self.url}; see {self.log_file}")
        stored = data.get("MammoTriage", {}).get("Binary") if isinstance(data, dict) else None
        # the binary recorded at 'site init', else a search (Orthanc moved, a restored folder)
        binary = find_orthanc(stored if isinstance(stored, str) and Path(stored).is_file() else None)
        self.credentials()
        if self.tls_pem is not None:
            self._stop_relay()
            self._internal_port = _free_loopback_port()
            data["HttpPort"] = self._internal_port  # Orthanc's own HTTP: loopback only, behind the relay
            write_atomic(self.config_file, (json.dumps(data, indent=2) + "\n").encode(), 0o600)
        with open(self.log_file, "ab") as log:
            log.write(f"--- mammotriage: starting {binary} {self.config_dir}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [str(binary), str(self.config_dir)], cwd=self.folder, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            write_atomic(self.pid_file, f"{self._proc.pid}\n".encode())
            if self.tls_pem is not None:
                self._start_relay(log)
        return self._wait_answer(timeout_s)

    def _wait_answer(self, timeout_s: float) -> OrthancStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            code = self._proc.poll() if self._proc is not None else None
            relay_code = self._relay.poll() if self._relay is not None else None
            if code is not None or relay_code is not None:
                self.stop()
                who = "Orthanc" if code is not None else "the TLS relay"
                raise OrthancStartError(
                    f"{who} exited with status {code if code is not None else relay_code} while starting; "
                    f"see {self.log_file}:\n{self._log_tail()}", self.log_file)
            if self._answer() is not None:
                return self.status()
            if time.monotonic() > deadline:
                self.stop()
                raise OrthancStartError(
                    f"Orthanc did not answer on {self.url} within {timeout_s:.0f} s; see "
                    f"{self.log_file}:\n{self._log_tail()}", self.log_file)
            time.sleep(0.1)

    def _start_relay(self, log: Any) -> None:
        """The TLS relay on the public port, to Orthanc's private one (net.tls_relay)."""
        import mammotriage

        bind = "0.0.0.0" if self.remote_access else "127.0.0.1"
        package_root = str(Path(mammotriage.__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                           if p))
        self._relay = subprocess.Popen(
            [sys.executable, "-m", "mammotriage.net.tls_relay", "--listen", f"{bind}:{self.http_port}",
             "--target", f"127.0.0.1:{self._internal_port}", "--pem", str(self.tls_pem)],
            cwd=self.folder, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env)
        write_atomic(self.relay_pid_file, f"{self._relay.pid}\n".encode())

    def _stop_relay(self, timeout_s: float = 10.0) -> None:
        if self.tls_pem is not None:
            self._stop_pid(self.relay_pid_file, str(self.tls_pem), timeout_s)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``) and its TLS relay; False if none ran."""
        self._stop_relay()
        return self._stop_pid(self.pid_file, None, timeout_s)

    def _stop_pid(self, pid_file: Path, marker: str | None, timeout_s: float) -> bool:
        pid = self._read_pid(pid_file)
        if pid is None or not self._alive(pid, marker):
            pid_file.unlink(missing_ok=True)
            self._reap()
            return False
        with contextlib.suppress(ProcessLookupError):  # it may have just exited
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self._alive(pid, marker) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        if self._alive(pid, marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while self._alive(pid, marker):
                self._reap()
                time.sleep(0.05)
        self._reap()
        pid_file.unlink(missing_ok=True)
        return True

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
        if self._relay is not None and self._relay.poll() is not None:
            self._relay = None

    def status(self) -> OrthancStatus:
        """Whether the server runs (pid file and process) and answers (REST ``/system``)."""
        pid = self._read_pid()
        running = pid is not None and self._alive(pid)
        system = self._answer() if running else None
        if not self.config_file.exists():
            detail = "not configured (run 'site init')"
        elif not running:
            detail = "stopped" if pid is None else f"stopped (stale pid file {self.pid_file})"
        elif system is None:
            detail = f"running but not answering on {self.url}; see {self.log_file}"
        else:
            detail = (f"running, REST on {self.url}, DICOM {self.aet} on port {self.dicom_port}"
                      + (" (DICOM TLS)" if self.dicom_tls else ""))
        version = system.get("Version") if system else None
        return OrthancStatus(
            folder=str(self.folder), running=running, answering=system is not None,
            pid=pid if running else None, http_port=self.http_port, dicom_port=self.dicom_port,
            ae_title=self.aet, version=version if isinstance(version, str) else None,
            log_file=str(self.log_file), detail=detail, https=self.tls_pem is not None,
            dicom_tls=self.dicom_tls is not None)
