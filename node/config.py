"""Settings: one typed object built once at start from a TOML file and ``CXRNODE_*`` variables.

Precedence, lowest to highest: defaults, the config file, the environment. Nothing else in the
node reads the environment.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from node.destinations import HL7Destination, StowTarget, hl7_version_problem, is_hl7_destination
from node.errors import ConfigError

ENV_PREFIX = "CXRNODE_"
ROLES = ("all", "receiver", "worker")
# Bounds of dicom_max_pdu_bytes: each association may hold a PDU of that size in memory.
MIN_PDU_BYTES = 4096
MAX_PDU_BYTES = 64 * 1024 * 1024
# Never printed or logged: shown as "***".
SECRET_SETTINGS = ("admin_token", "dicomweb_token")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: printable, no backslash
# What can be sent to a destination: the SR, the captures (overview and one per finding), the
# presentation states.
OUTPUT_KINDS = ("SR", "SC", "GSPS")
HL7_KIND = "ORU"  # the outbox kind of an HL7 result message
_LO_MAX = 64  # Series Description is LO
_IS_MAX = 2**31 - 1  # Series Number is IS
_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    """A DICOM peer results are sent to, written ``AE@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = _DESTINATION.match(text.strip())
        if not match or not _AE_TITLE.match(match["ae"]):
            raise ConfigError(f"destination {text!r} is not of the form AE@host:port")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ConfigError(f"destination {text!r}: port out of range")
        return cls(match["ae"], match["host"], port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


AnyDestination = Destination | StowTarget | HL7Destination


def parse_destination(text: str) -> AnyDestination:
    """A ``destinations`` entry: ``AE@host:port``, an http(s) STOW-RS URL or an mllp(s) URL.

    Raises
    ------
    ConfigError
        The entry is none of these.
    """
    text = text.strip()
    if text.lower().startswith(("http://", "https://")):
        return StowTarget.parse(text)
    if is_hl7_destination(text):
        return HL7Destination.parse(text)
    return Destination.parse(text)


@dataclass(frozen=True)
class ResultSeries:
    """One series of result objects the node writes into the source's study.

    Attributes
    ----------
    kind : str
        ``"sr"`` (the SR, one per run), ``"gsps"`` (a presentation state per image), ``"sc"``
        (an overview capture per image), ``"finding_sc"`` (a capture per present finding) or
        ``"ig_sc"`` (the same with Integrated Gradients' map, where the model's package asks
        for it: ``explanation_captures``); also what builds it (``node.build``) and what its
        generated description says.
    number : int
        Series Number.
    description : str
        Series Description; empty: generated, saying what the series is ("AI findings (SR)",
        "AI outlines (GSPS)", "AI heatmap overview", "AI heatmap per finding", "AI
        integrated gradients per finding"), the AI's name where it fits and "requires review".
    """

    kind: str
    number: int
    description: str = ""

    @property
    def output(self) -> str:
        """The result kind (`OUTPUT_KINDS`) destinations choose it by."""
        return SERIES_OUTPUTS[self.kind]

    def validate(self) -> ResultSeries:
        """Raise `ConfigError`, naming the setting, for a value DICOM cannot hold."""
        if self.kind not in SERIES_OUTPUTS:
            raise ConfigError(f"result series {self.kind!r} is not one of {list(SERIES_OUTPUTS)}")
        if not 0 <= self.number <= _IS_MAX:
            raise ConfigError(f"{self.kind}_series_number {self.number} is not a DICOM IS value")
        if len(self.description) > _LO_MAX or "\\" in self.description:
            raise ConfigError(
                f"{self.kind}_series_description is longer than {_LO_MAX} characters or holds "
                "a backslash (DICOM LO)"
            )
        return self


# Each result series' kind and the output kind destinations choose it by, in writing order:
# the SR first, which the presentation states reference.
SERIES_OUTPUTS = {"sr": "SR", "gsps": "GSPS", "sc": "SC", "finding_sc": "SC", "ig_sc": "SC"}
DEFAULT_RESULT_SERIES = (
    ResultSeries("sr", 9901),
    ResultSeries("gsps", 9904),
    ResultSeries("sc", 9902),
    ResultSeries("finding_sc", 9903),
    # Empty unless the model's package asks for Integrated Gradients captures.
    ResultSeries("ig_sc", 9905),
)
# The config keys (and, upper case after CXRNODE_, environment variables) of the result
# series: key -> (kind, attribute of ResultSeries).
SERIES_KEYS = {
    f"{kind}_series_{attribute}": (kind, attribute)
    for kind in SERIES_OUTPUTS
    for attribute in ("number", "description")
}


@dataclass(frozen=True)
class Settings:
    """Everything the node can be told. Field names are the config keys, but for
    ``result_series``, set by the keys of `SERIES_KEYS`; the environment variable of a key is
    ``CXRNODE_`` + the key in upper case."""

    ae_title: str = "CXRNODE"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    # Calling AE titles allowed to associate, "AE" (any address) or "AE@address". The AE titles
    # of the destinations are allowed too, from their destination host: the PACS we write back
    # to is normally the one that sends.
    allowed_calling_aes: tuple[str, ...] = ()
    # TLS: with a certificate and key, the DICOM and MLLP listeners speak TLS only; with a CA
    # too, peers must present a certificate it signed. tls_destinations sends results over TLS
    # (trusting tls_ca, presenting the node's certificate).
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_destinations: bool = False
    # Below this much free space on the disk of the spool, the results or the database (the
    # data directory), associations are refused (transient) and the worker claims no run.
    min_free_disk_mb: int = 1024
    # An image whose pixels would decode to more than this (rows x columns x frames x samples x
    # bytes per sample), or a deflated dataset that would inflate past it, is refused at
    # C-STORE and never decoded by the worker.
    max_decoded_mb: int = 256
    # Instances one study may hold; more are refused at C-STORE. A run reads at most
    # max_run_images model images (the rest are skipped, audited), and a batch of studies at
    # most that many together, unless its first study alone has more.
    max_study_instances: int = 500
    max_run_images: int = 16
    # A run the node died under this many times (claims counted) is failed at the next start
    # instead of re-queued: a crash loop ends. A run that met a full disk is queued again
    # after disk_full_retry_s (doubling), and failed after max_job_attempts claims.
    max_job_attempts: int = 3
    disk_full_retry_s: float = 300.0
    # DICOM associations open at once, and from one peer address: the peer's next ones are
    # refused "local limit exceeded", so one sender cannot take every slot.
    dicom_max_associations: int = 10
    dicom_max_associations_per_peer: int = 4
    # pynetdicom's ARTIM/ACSE, DIMSE and network (idle) timeouts. The A-ASSOCIATE-RQ must be
    # complete within dicom_acse_timeout_s of the connection; any read waits at most
    # dicom_network_timeout_s.
    dicom_acse_timeout_s: float = 30.0
    dicom_dimse_timeout_s: float = 30.0
    dicom_network_timeout_s: float = 60.0
    # A PDU (e.g. a P-DATA-TF fragment of an image) must be complete within this of its first
    # byte, or its connection is closed: more than a PDU of dicom_max_pdu_bytes takes on the
    # slowest link.
    dicom_pdu_timeout_s: float = 120.0
    # The maximum P-DATA-TF length the node announces; a PDU declaring more (or an association
    # PDU declaring more than 256 KiB) is answered A-ABORT before its body is read.
    dicom_max_pdu_bytes: int = 4 * 1024 * 1024
    # A DIMSE message (e.g. a C-STORE of one image) must be complete within this of its first
    # fragment, or its connection is closed: more than the largest image takes on the slowest link.
    dicom_message_timeout_s: float = 600.0
    # A TLS handshake (DICOM and MLLP) must finish within this, on the connection's own thread.
    tls_handshake_timeout_s: float = 10.0
    # Refused connections and requests (failed TLS handshakes, peers over their cap, wrong admin
    # tokens) are audited once per peer address and window, with the count.
    refusal_audit_window_s: float = 60.0
    # Where results go: DICOM peers "AE@host:port" (C-STORE), DICOMweb servers
    # "https://[user:password@]host[:port]/dicom-web" (STOW-RS) and HL7 receivers
    # "mllp://[APP[^FACILITY]@]host:port" ("mllps://" over TLS), which get one ORU^R01 per run.
    destinations: tuple[AnyDestination, ...] = (Destination("ORTHANC", "127.0.0.1", 4242),)
    # HL7 result messages: their version (MSH-12), the node's facility (MSH-4; MSH-3 is the AE
    # title), and the labels whose presence makes a result stat (OBR-27 / TQ1-9 = S).
    hl7_result_version: str = "2.5.1"
    hl7_sending_facility: str = ""
    critical_findings: tuple[str, ...] = ()
    data_dir: Path = Path("var")
    db_url: str = ""  # empty: SQLite file <data_dir>/cxrnode.db
    # A model package directory or archive; "default": the bundled trained one; "reference":
    # the untrained multimodal plumbing model, built under <data_dir>/models/.
    model: str = "default"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    # Report feeds. hl7_port 0 turns the MLLP listener off; an empty csv_folder, the CSV feed.
    hl7_host: str = "0.0.0.0"
    hl7_port: int = 2575
    hl7_accession_keys: tuple[str, ...] = ("OBR-3", "OBR-2", "OBR-18")
    hl7_max_frame_bytes: int = 16 * 1024 * 1024
    hl7_idle_timeout_s: float = 300.0
    # A frame must end within hl7_frame_timeout_s of its first byte, whatever trickles in.
    hl7_frame_timeout_s: float = 60.0
    hl7_max_connections: int = 32
    hl7_max_connections_per_peer: int = 8
    csv_folder: str = ""
    csv_poll_interval_s: float = 5.0
    # A larger CSV file is rejected before a byte of it is read.
    csv_max_file_mb: int = 64
    # A study is processed once its sender releases the association that carried it
    # (complete_on_release), or else once no instance arrived for stable_age_s (after an abort,
    # or always when complete_on_release is off: for a PACS that splits a study over several
    # associations in a row, each of which would otherwise bring a new run).
    complete_on_release: bool = True
    stable_age_s: float = 10.0
    # How long a stable study waits for its report before it runs with the indication or
    # image-only; 0 runs at once with whatever text is there.
    pairing_window_s: float = 300.0
    assume_chest_without_body_part: bool = True
    # Queued studies the worker takes at once: their images share one batched forward pass and
    # one batched Grad-CAM (the gain is large on a GPU, small on a CPU); 1: a study at a time.
    batch_studies: int = 8
    # Processes that build the result objects (SR, presentation states, captures) beside the
    # worker, so that one batch's building overlaps the next batch's inference; 0 builds them
    # in the worker thread.
    build_processes: int = 1
    # Spooled instances of finished studies are deleted this long after their last arrival
    # (0 keeps them forever); checked every retention_check_interval_s.
    retention_days: float = 30.0
    retention_check_interval_s: float = 3600.0
    delivery_retry_initial_s: float = 5.0
    delivery_retry_max_s: float = 300.0
    delivery_give_up_after_s: float = 86_400.0
    # The result series, in the order they are written (`ResultSeries`); set with the keys
    # <kind>_series_number and <kind>_series_description (`SERIES_KEYS`).
    result_series: tuple[ResultSeries, ...] = DEFAULT_RESULT_SERIES
    # A finding's region (SR SCOORD, GSPS outline, capture outline) encloses the Grad-CAM heat
    # at or above this fraction of its peak.
    region_level: float = 0.5
    # What each destination gets: `outputs` for every destination not named in
    # `destination_outputs`, whose entries are "AE=SR+GSPS" or "AE@host:port=SC".
    outputs: tuple[str, ...] = OUTPUT_KINDS
    destination_outputs: tuple[str, ...] = ()
    log_level: str = "INFO"
    # Admin HTTP API and page (read-only): admin_port 0 turns it off; it refuses to start
    # without an admin_token (16 characters or more), which every request but the health
    # check must present.
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    admin_token: str = ""
    # GET /metrics on the admin server (Prometheus): behind admin_token unless this is off.
    # The figures are counts and ages, no patient data, but they name the destinations.
    metrics_require_token: bool = True
    # POST /api/predict and the /try page: the largest upload (more: 413, refused before it is
    # read). An upload is held in memory and not stored unless the request asks to keep it
    # (then under <data_dir>/uploads, named by its sha256).
    predict_max_upload_mb: int = 64
    # STOW-RS (DICOMweb) endpoint: studies POSTed to /dicom-web/studies are admitted as C-STORE
    # admits them. dicomweb_port 0 turns it off; it refuses to start without a dicomweb_token
    # (16 characters or more), presented as a bearer token or as the HTTP Basic password. A
    # request is spooled to disk as it arrives, at most stow_max_request_mb.
    dicomweb_host: str = "0.0.0.0"
    dicomweb_port: int = 0
    dicomweb_token: str = ""
    stow_max_request_mb: int = 2048
    # Several node processes may share one PostgreSQL database: "receiver" (SCP, feeds,
    # assembly, delivery, retention, no worker), "worker" (claims and runs jobs only) or "all".
    # Each needs its own node_name (default: the host name); jobs record who claimed them.
    role: str = "all"
    node_name: str = ""

    @property
    def effective_node_name(self) -> str:
        return self.node_name or socket.gethostname()

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'cxrnode.db').resolve()}"

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def known_calling_aes(self) -> tuple[str, ...]:
        """The allowlist: configured entries plus each destination's AE title bound to the
        destination's host. A destination's AE title is thus allowed from that host, from the
        addresses ``allowed_calling_aes`` binds it to, or from anywhere if it lists it unbound."""
        destinations = tuple(f"{d.ae_title}@{d.host}" for d in self.dicom_destinations)
        return tuple(self.allowed_calling_aes) + destinations

    @property
    def dicom_destinations(self) -> tuple[Destination, ...]:
        return tuple(d for d in self.destinations if isinstance(d, Destination))

    @property
    def hl7_destinations(self) -> tuple[HL7Destination, ...]:
        return tuple(d for d in self.destinations if isinstance(d, HL7Destination))

    def outputs_for(self, destination: AnyDestination) -> tuple[str, ...]:
        """The result kinds sent to ``destination``: for an HL7 receiver its result message
        (``ORU``), for the others the `OUTPUT_KINDS` the settings choose."""
        if isinstance(destination, HL7Destination):
            return (HL7_KIND,)
        chosen = tuple(kind.strip().upper() for kind in self.outputs)
        for key, kinds in _destination_outputs(self.destination_outputs):
            if key in (getattr(destination, "ae_title", None), str(destination)):
                chosen = kinds
        return tuple(kind for kind in OUTPUT_KINDS if kind in chosen)

    def series(self, kind: str) -> ResultSeries:
        """The result series of ``kind`` (see `ResultSeries`)."""
        for series in self.result_series:
            if series.kind == kind:
                return series
        raise KeyError(kind)

    @property
    def wanted_outputs(self) -> tuple[str, ...]:
        """The result kinds at least one destination gets: the ones worth building."""
        wanted = {kind for d in self.destinations for kind in self.outputs_for(d)}
        return tuple(kind for kind in OUTPUT_KINDS if kind in wanted)

    def validate(self) -> Settings:
        if not _AE_TITLE.match(self.ae_title):
            raise ConfigError(f"ae_title {self.ae_title!r} is not a valid AE title (1-16 chars)")
        for entry in self.allowed_calling_aes:
            ae = entry.partition("@")[0]
            if not _AE_TITLE.match(ae):
                raise ConfigError(f"allowed_calling_aes: {ae!r} is not a valid AE title")
        if not 0 < self.dicom_port < 65536:
            raise ConfigError(f"dicom_port {self.dicom_port} out of range")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key must be given together")
        if problem := hl7_version_problem(self.hl7_result_version):
            raise ConfigError(f"hl7_result_version: {problem}")
        if any(d.tls for d in self.hl7_destinations) and not (self.tls_ca and self.tls):
            raise ConfigError("an mllps:// destination needs tls_ca, tls_cert and tls_key")
        if self.tls_destinations and not self.tls_ca:
            raise ConfigError("tls_destinations needs tls_ca to verify the destinations")
        if not 0 <= self.hl7_port < 65536:
            raise ConfigError(f"hl7_port {self.hl7_port} out of range (0 turns HL7 off)")
        if self.csv_max_file_mb < 1:
            raise ConfigError(f"csv_max_file_mb {self.csv_max_file_mb} must be at least 1")
        self._validate_limits()
        if self.stable_age_s < 0 or self.pairing_window_s < 0:
            raise ConfigError("stable_age_s and pairing_window_s must be >= 0")
        if self.build_processes < 0:
            raise ConfigError(f"build_processes {self.build_processes} must be 0 or more")
        if self.batch_studies < 1:
            raise ConfigError(f"batch_studies {self.batch_studies} must be at least 1")
        self._validate_resource_limits()
        if not 0 <= self.admin_port < 65536:
            raise ConfigError(f"admin_port {self.admin_port} out of range (0 turns it off)")
        if not 0 <= self.dicomweb_port < 65536:
            raise ConfigError(f"dicomweb_port {self.dicomweb_port} out of range (0 turns it off)")
        if self.dicomweb_port and len(self.dicomweb_token) < 16:
            raise ConfigError(
                "dicomweb_port is set but dicomweb_token is shorter than 16 characters: the "
                "STOW-RS endpoint does not start without one (set CXRNODE_DICOMWEB_TOKEN)"
            )
        if self.stow_max_request_mb < 1:
            raise ConfigError("stow_max_request_mb must be at least 1")
        if self.predict_max_upload_mb < 1:
            raise ConfigError("predict_max_upload_mb must be at least 1")
        self._validate_results()
        if self.role not in ROLES:
            raise ConfigError(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        return self

    def _validate_resource_limits(self) -> None:
        for name in ("max_decoded_mb", "max_study_instances", "max_run_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)} must be at least 1")
        if self.max_job_attempts < 1:
            raise ConfigError(f"max_job_attempts {self.max_job_attempts} must be at least 1")
        if self.min_free_disk_mb < 0 or self.disk_full_retry_s < 0:
            raise ConfigError("min_free_disk_mb and disk_full_retry_s must be >= 0")

    @property
    def max_decoded_bytes(self) -> int:
        return self.max_decoded_mb * 1024 * 1024

    def _validate_limits(self) -> None:
        for total, per_peer in (
            ("dicom_max_associations", "dicom_max_associations_per_peer"),
            ("hl7_max_connections", "hl7_max_connections_per_peer"),
        ):
            if not 1 <= getattr(self, per_peer) <= getattr(self, total):
                raise ConfigError(
                    f"{per_peer} {getattr(self, per_peer)} must be between 1 and {total} "
                    f"({getattr(self, total)})"
                )
        for name in (
            "dicom_acse_timeout_s",
            "dicom_dimse_timeout_s",
            "dicom_network_timeout_s",
            "dicom_pdu_timeout_s",
            "dicom_message_timeout_s",
            "tls_handshake_timeout_s",
            "hl7_idle_timeout_s",
            "hl7_frame_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} {getattr(self, name)} must be more than 0 seconds")
        if not MIN_PDU_BYTES <= self.dicom_max_pdu_bytes <= MAX_PDU_BYTES:
            raise ConfigError(
                f"dicom_max_pdu_bytes {self.dicom_max_pdu_bytes} must be between "
                f"{MIN_PDU_BYTES} and {MAX_PDU_BYTES}"
            )
        if self.refusal_audit_window_s < 0:
            raise ConfigError(f"refusal_audit_window_s {self.refusal_audit_window_s} must be >= 0")

    def _validate_results(self) -> None:
        _check_kinds("outputs", self.outputs)
        names = {d.ae_title for d in self.dicom_destinations} | {str(d) for d in self.destinations}
        for key, kinds in _destination_outputs(self.destination_outputs):
            if key not in names:
                raise ConfigError(
                    f"destination_outputs names {key!r}, which is not one of the destinations "
                    f"({', '.join(str(d) for d in self.destinations)})"
                )
            _check_kinds(f"destination_outputs {key!r}", kinds)
        for destination in self.destinations:
            if not self.outputs_for(destination):
                raise ConfigError(f"destination {destination} would get no result at all")
        if not 0.0 < self.region_level <= 1.0:
            raise ConfigError(f"region_level {self.region_level} is not a fraction in (0, 1]")
        for series in self.result_series:
            series.validate()
        kinds = [series.kind for series in self.result_series]
        if sorted(kinds) != sorted(SERIES_OUTPUTS):
            raise ConfigError(f"result_series has {kinds}, not each of {list(SERIES_OUTPUTS)} once")


def _destination_outputs(entries: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """("AE" or "AE@host:port", kinds) of each ``destination_outputs`` entry."""
    parsed = []
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"destination_outputs entry {entry!r} is not of the form AE=SR+SC+GSPS"
            )
        kinds = tuple(k.strip().upper() for k in value.split("+") if k.strip())
        parsed.append((key.strip(), kinds))
    return parsed


def _check_kinds(what: str, kinds: tuple[str, ...]) -> None:
    unknown = [kind for kind in kinds if kind.strip().upper() not in OUTPUT_KINDS]
    if unknown:
        raise ConfigError(f"{what}: {unknown} not among {', '.join(OUTPUT_KINDS)}")


def load_settings(
    config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from defaults, an optional TOML file and the environment.

    Parameters
    ----------
    config_file:
        A TOML file whose top-level keys are ``Settings`` field names. When None, the file named
        by ``CXRNODE_CONFIG`` is used, if set.
    environ:
        The environment to read (defaults to ``os.environ``).

    Raises
    ------
    ConfigError
        For an unknown key, an unreadable file or a value of the wrong type.
    """
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        config_file = Path(environ[f"{ENV_PREFIX}CONFIG"])
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_read_file(config_file))
    # The result series are set key by key (SERIES_KEYS), not as one value.
    known = {f.name for f in fields(Settings)} - {"result_series"}
    for name in (*known, *SERIES_KEYS):
        key = ENV_PREFIX + name.upper()
        if key in environ:
            values[name] = environ[key]
    settings = Settings()
    converted = {}
    series = {s.kind: s for s in settings.result_series}
    for name, raw in values.items():
        if name in SERIES_KEYS:
            kind, attribute = SERIES_KEYS[name]
            value = _convert(name, raw, getattr(series[kind], attribute))
            series[kind] = replace(series[kind], **{attribute: value})
        elif name in known:
            converted[name] = _convert(name, raw, getattr(settings, name))
        else:
            raise ConfigError(f"unknown setting {name!r} in {config_file}")
    converted["result_series"] = tuple(series[s.kind] for s in settings.result_series)
    return replace(settings, **converted).validate()


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _convert(name: str, raw: Any, default: Any) -> Any:
    """Coerce a file or environment value to the type of the field's default."""
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(f"expected a boolean, got {raw!r}")
            return text in {"1", "true", "yes", "on"}
        if isinstance(default, int | float):
            return type(default)(raw)
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, tuple):
            items = raw if isinstance(raw, list | tuple) else _split_list(str(raw))
            if name == "destinations":
                return tuple(parse_destination(str(item)) for item in items)
            return tuple(str(item).strip() for item in items)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: {exc}") from exc


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def describe(settings: Settings) -> dict[str, Any]:
    """Settings as plain data, for logs and ``cxrnode config``."""
    out: dict[str, Any] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name == "result_series":  # by the keys that set them
            for series in value:
                out[f"{series.kind}_series_number"] = series.number
                out[f"{series.kind}_series_description"] = series.description
            continue
        if isinstance(value, tuple):
            value = [str(v) for v in value]
        elif isinstance(value, Path):
            value = str(value)
        if f.name in SECRET_SETTINGS and value:
            value = "***"
        out[f.name] = value
    out["db_url"] = _hide_password(settings.db_url)
    out["database_url"] = _hide_password(settings.database_url)
    return out


def _hide_password(url: str) -> str:
    """``scheme://user:***@host/db``: a database password never reaches a log."""
    return re.sub(r"^([a-z0-9+]+://[^:/@]*):[^@]*@", r"\1:***@", url)
