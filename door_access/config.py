"""`config.yaml`, parsed once into frozen dataclasses.

Each setting is a dataclass field with its default; `meta(lo=, hi=, choices=)` bounds it.
Unknown keys, wrong types and out-of-range values raise `ConfigError` naming the key and
the line, so a typo in the config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and the line."""


def meta(default, lo=None, hi=None, choices=None, schemes=None):
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "schemes": schemes})


@dataclass(frozen=True)
class PathsConfig:
    images: str = "images"
    weights: str = "weights"
    cache: str = ".cache"
    people: str = "people.yaml"  # per-person door policy; a missing file means no rules


@dataclass(frozen=True)
class PhotoConfig:
    max_pixels: int = meta(40_000_000, lo=1)


@dataclass(frozen=True)
class DetectionConfig:
    model: str = meta("hog", choices=("hog", "cnn"))
    upsample: int = meta(0, lo=0, hi=3)
    max_side: int = meta(640, lo=160, hi=4096)
    workers: int = meta(2, lo=1, hi=8)
    full_scan_every: int = meta(4, lo=1, hi=30)
    photo_upsample: int = meta(1, lo=0, hi=3)
    photo_max_side: int = meta(1024, lo=160)
    min_face: int = meta(32, lo=8)
    min_eye_px: float = meta(28.0, lo=0.0)
    margin: float = meta(0.25, lo=0.0, hi=1.0)
    dominant_ratio: float = meta(2.0, lo=0.0)


@dataclass(frozen=True)
class RecognitionConfig:
    threshold: float = meta(0.85, lo=0.0, hi=2.0)
    margin: float = meta(0.15, lo=0.0, hi=2.0)


@dataclass(frozen=True)
class CameraConfig:
    source: str = "0"
    realtime: bool = False
    lost_after_s: float = meta(3.0, lo=0.1)
    reconnect_min_s: float = meta(0.5, lo=0.01)
    reconnect_max_s: float = meta(10.0, lo=0.01)
    open_timeout_s: float = meta(10.0, lo=0.1, hi=600.0)
    width: int = meta(1280, lo=0, hi=7680)
    height: int = meta(720, lo=0, hi=4320)
    fps: float = meta(30.0, lo=0.0, hi=240.0)


@dataclass(frozen=True)
class PipelineConfig:
    queue_size: int = meta(4, lo=1, hi=256)
    batch_size: int = meta(16, lo=1, hi=128)
    batch_wait_ms: float = meta(15.0, lo=0.0, hi=1000.0)
    encoder_threads: int = meta(1, lo=0, hi=256)
    encodes_per_second: float = meta(8.0, lo=0.1, hi=60.0)
    settled_encodes_per_second: float = meta(1.0, lo=0.1, hi=60.0)
    track_iou: float = meta(0.3, lo=0.0, hi=1.0)
    track_timeout_s: float = meta(1.0, lo=0.05)
    track_max_scale_step: float = meta(1.3, lo=1.01, hi=4.0)
    gallery_poll_s: float = meta(2.0, lo=0.1)


@dataclass(frozen=True)
class VotingConfig:
    window: int = meta(5, lo=1, hi=100)
    required: int = meta(3, lo=1, hi=100)


@dataclass(frozen=True)
class DoorConfig:
    unlock_command: tuple[str, ...] = ()
    relock_command: tuple[str, ...] = ()
    webhook_url: str | None = meta(None, schemes=("http", "https"))
    webhook_secret: str | None = None  # HMAC-SHA256 key for the webhook body's X-Door-Signature header
    hook_timeout_s: float = meta(5.0, lo=0.1, hi=600.0)
    unlock_seconds: float = meta(5.0, lo=0.0)
    cooldown_seconds: float = meta(30.0, lo=0.0)
    id: str = "door"  # this door's name in MQTT topics, the access log and people.yaml `doors:`


@dataclass(frozen=True)
class LockoutConfig:
    failures: int = meta(5, lo=0, hi=1000)
    window_s: float = meta(120.0, lo=1.0)
    cooloff_s: float = meta(60.0, lo=0.0)
    max_cooloff_s: float = meta(600.0, lo=0.0)
    person_daily_failures: int = meta(7, lo=0, hi=1000)


@dataclass(frozen=True)
class WatchdogConfig:
    stall_s: float = meta(10.0, lo=0.5, hi=600.0)


@dataclass(frozen=True)
class TtsConfig:
    enabled: bool = True
    template: str = "Welcome {name}, have a nice day!"
    wav_dir: str | None = None
    rate: int = meta(160, lo=50, hi=400)


@dataclass(frozen=True)
class AccessLogConfig:
    path: str = "access_log.sqlite"
    snapshots_dir: str | None = "snapshots"
    snapshots_keep: int = meta(200, lo=0)
    keep_days: float = meta(90.0, lo=0.0, hi=36500.0)  # events and snapshots older than this are deleted; 0 = never


@dataclass(frozen=True)
class LivenessConfig:
    enabled: bool = True
    blink_ratio: float = meta(0.6, lo=0.1, hi=0.95)
    reopen_ratio: float = meta(0.8, lo=0.1, hi=1.0)
    closed_ear: float = meta(0.21, lo=0.05, hi=0.5)
    min_closed_s: float = meta(0.03, lo=0.0, hi=2.0)
    motion_threshold: float = meta(0.15, lo=0.01, hi=2.0)
    motion_frames: int = meta(2, lo=1, hi=30)
    window_s: float = meta(10.0, lo=0.1)
    timeout_s: float = meta(4.0, lo=0.1)
    parallax_threshold: float = meta(0.06, lo=0.01, hi=1.0)
    parallax_min_turn: float = meta(0.2, lo=0.01, hi=1.0)
    challenge: str = meta("graded", choices=("off", "on_doubt", "always", "graded"))
    challenge_steps: int = meta(2, lo=1, hi=4)
    challenge_after_s: float = meta(3.5, lo=0.0)
    challenge_deadline_s: float = meta(6.0, lo=0.5, hi=60.0)
    challenge_turn: float = meta(0.3, lo=0.05, hi=1.0)
    challenge_look_up: float = meta(0.08, lo=0.02, hi=1.0)
    challenge_open_mouth: float = meta(0.3, lo=0.05, hi=2.0)
    challenge_smile: float = meta(0.2, lo=0.05, hi=1.0)
    challenge_hold_s: float = meta(0.2, lo=0.0, hi=5.0)


@dataclass(frozen=True)
class DisplayConfig:
    fullscreen: bool = False
    fps: float = meta(15.0, lo=1.0, hi=120.0)
    mirror: bool = True
    message_seconds: float = meta(4.0, lo=0.5, hi=60.0)
    enroll_key: bool = False


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = False
    host: str = "localhost"
    port: int = meta(1883, lo=1, hi=65535)
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca: str | None = None  # CA file; null uses the system's CAs
    tls_insecure: bool = False  # accept any server certificate (testing only)
    prefix: str = "door-access"
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    keepalive_s: int = meta(30, lo=5, hi=3600)
    reconnect_min_s: float = meta(1.0, lo=0.1, hi=600.0)
    reconnect_max_s: float = meta(60.0, lo=0.1, hi=3600.0)
    queue_size: int = meta(1000, lo=1, hi=1_000_000)
    # the commands taken from <prefix>/<door.id>/command; "unlock" and "release" (it lifts a suspension) only
    # over an authenticated or TLS connection
    commands: tuple[str, ...] = meta(("lock",), choices=("unlock", "lock", "reload_gallery", "release"))


@dataclass(frozen=True)
class EnrollConfig:
    min_face_px: int = meta(80, lo=20)
    min_sharpness: float = meta(15.0, lo=0.0)
    min_eye_ratio: float = meta(0.15, lo=0.0, hi=1.0)
    straight_max_turn: float = meta(0.12, lo=0.0, hi=1.0)
    turn: float = meta(0.15, lo=0.01, hi=1.0)
    tilt: float = meta(0.1, lo=0.01, hi=1.0)
    timeout_s: float = meta(60.0, lo=1.0)


@dataclass(frozen=True)
class SpoofConfig:
    enabled: bool = True
    model: bool = True  # the shipped presentation-attack model (weights/fr_liveness.onnx, from setup)
    threshold: float = meta(0.97, lo=0.0, hi=1.0)
    min_frames: int = meta(3, lo=1, hi=100)
    site_model: str | None = None  # null: <paths.cache>/site_attack_model.npz (learn-attacks writes it)
    doubt_ratio: float = meta(0.7, lo=0.0, hi=1.0)
    pass_below: float = meta(0.5, lo=0.0, hi=1.0)  # graded: no challenge only under this mean of the shipped model
    site_deny_ratio: float = meta(1.5, lo=1.0, hi=10.0)  # a site model denies at this multiple of its threshold
    min_face_px: int = meta(80, lo=16)
    flat_motion: float = meta(0.08, lo=0.01, hi=1.0)
    flat_ratio: float = meta(0.25, lo=0.01, hi=1.0)
    sustain_s: float = meta(1.0, lo=0.1, hi=30.0)
    sustain_fraction: float = meta(0.7, lo=0.1, hi=1.0)
    doubt_fraction: float = meta(0.3, lo=0.0, hi=1.0)
    measure_every_s: float = meta(0.06, lo=0.0, hi=5.0)


@dataclass(frozen=True)
class LiveSamplesConfig:
    """The door's own verified live samples (liveness/live_samples.py), fitted by `learn-attacks`."""

    enabled: bool = True
    agree_ratio: float = meta(0.2, lo=0.0, hi=1.0)
    per_day: int = meta(3, lo=1, hi=100)
    per_person: int = meta(20, lo=1, hi=10_000)
    total: int = meta(1000, lo=1, hi=1_000_000)


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    photo: PhotoConfig = field(default_factory=PhotoConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    recognition: RecognitionConfig = field(default_factory=RecognitionConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    voting: VotingConfig = field(default_factory=VotingConfig)
    door: DoorConfig = field(default_factory=DoorConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    enroll: EnrollConfig = field(default_factory=EnrollConfig)
    spoof: SpoofConfig = field(default_factory=SpoofConfig)
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    live_samples: LiveSamplesConfig = field(default_factory=LiveSamplesConfig)
    base_dir: Path = field(default=Path("."), compare=False)
    file: Path | None = field(default=None, compare=False)  # the config file read (`check` looks at its mode)

    def path(self, name: str) -> Path:
        """A `paths.*` entry, resolved against the config file's folder."""
        return self.resolve(getattr(self.paths, name))

    def resolve(self, value: str) -> Path:
        """Any path setting, resolved against the config file's folder."""
        return (self.base_dir / value).resolve()


def load_config(path: Path | None) -> Config:
    """Read and check `path`; `None` gives the defaults (relative to the working folder)."""
    if path is None:
        return Config(base_dir=Path.cwd())
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    node = compose_yaml(text, path)
    values = _build(Config, node, "", path, skip={"base_dir", "file"}) if node is not None else {}
    cfg = Config(**values, base_dir=path.resolve().parent, file=path.resolve())
    if cfg.voting.required > cfg.voting.window:
        raise ConfigError(f"{path}: 'voting.required' ({cfg.voting.required}) exceeds 'voting.window' "
                          f"({cfg.voting.window})")
    if not cfg.door.id or any(c in cfg.door.id for c in "/+#") or not cfg.door.id.isprintable():
        raise ConfigError(f"{path}: 'door.id' must be a non-empty name without '/', '+' or '#' (an MQTT topic "
                          f"level), got {cfg.door.id!r}")
    if cfg.mqtt.reconnect_max_s < cfg.mqtt.reconnect_min_s:
        raise ConfigError(f"{path}: 'mqtt.reconnect_max_s' is below 'mqtt.reconnect_min_s'")
    m = cfg.mqtt
    for risky, could in (("unlock", "open the door"), ("release", "lift a suspension after failed attempts")):
        if risky in m.commands and m.username is None and not (m.tls and not m.tls_insecure):
            raise ConfigError(f"{path}{_line_of(node, 'mqtt', 'commands')}: 'mqtt.commands' allows '{risky}', but the "
                              f"broker connection is anonymous and without verified TLS: anyone who reaches the broker "
                              f"could {could}. Set 'mqtt.username' (a broker user with an ACL, see docs/mqtt.md) "
                              f"or 'mqtt.tls: true', or take '{risky}' out of 'mqtt.commands'")
    if 2 * cfg.voting.required <= cfg.voting.window:
        raise ConfigError(f"{path}{_line_of(node, 'voting', 'required')}: 'voting.required' ({cfg.voting.required}) "
                          f"must be a strict majority of "
                          f"'voting.window' ({cfg.voting.window}): more than {cfg.voting.window // 2}")
    if cfg.lockout.max_cooloff_s < cfg.lockout.cooloff_s:
        raise ConfigError(f"{path}: 'lockout.max_cooloff_s' is below 'lockout.cooloff_s'")
    if cfg.liveness.reopen_ratio <= cfg.liveness.blink_ratio:
        raise ConfigError(f"{path}: 'liveness.reopen_ratio' must be above 'liveness.blink_ratio'")
    for key in ("unlock_command", "relock_command"):
        problem = hook_problem(getattr(cfg.door, key))
        if problem:
            raise ConfigError(f"{path}{_line_of(node, 'door', key)}: 'door.{key}' {problem}")
    return cfg


PLACEHOLDER = re.compile(r"\{(?:name|distance)\}")
# Programs that run text as code, or hand a command line to a shell (env -S, sudo -s, su -c, ssh, watch...).
# A hook template holding `{name}` or `{distance}` may name none of them anywhere in its argv.
CODE_RUNNERS = frozenset("""
    sh bash rbash dash ash zsh ksh mksh pdksh oksh lksh yash posh csh tcsh fish rc es elvish nu xonsh pwsh powershell
    cmd busybox toybox python pythonw pypy perl ruby irb jruby node nodejs deno bun php lua luajit tclsh wish expect
    awk gawk mawk nawk sed gsed osascript rscript julia guile racket sbcl clisp ocaml ghci runghc runhaskell scala
    groovy jshell kotlin elixir erl escript swift dc gdb m4 vi vim nvim ex ed emacs make gmake
    env sudo doas su runuser pkexec sg ssh rsh sshpass watch script flock tmux screen xargs parallel find eval exec
""".split())


def _program(word: str) -> str:
    """The program a word names: its file name, lowercased, less `.exe` and a version (python3.11 -> python)."""
    base = word.replace("\\", "/").rsplit("/", 1)[-1].lower().removesuffix(".exe")
    return re.sub(r"[\d.\-]+$", "", base)


def hook_problem(argv: tuple[str, ...]) -> str | None:
    """Why a hook template could turn a name into a command, or None.

    A placeholder may reach only a program that treats it as data: not argv[0], and not when any
    argument names a shell, an interpreter or a command runner (CODE_RUNNERS) -- by its first word,
    or the first word of an `--option=value` -- wherever it stands, so wrappers (`env sh -c`,
    `sudo sh -c`, `timeout 5 bash -c`) are caught too. The name is always in `DOOR_NAME`."""
    if not any(PLACEHOLDER.search(arg) for arg in argv):
        return None
    if PLACEHOLDER.search(argv[0]):
        return f"has a placeholder in its program ({argv[0]!r}): the program must be fixed"
    for arg in argv:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else ""
        for text in (arg, value):
            word = (text.split() or [""])[0].strip("'\"")
            if _program(word) in CODE_RUNNERS:
                return (f"hands {{name}} or {{distance}} to {word!r}, a shell, interpreter or command runner that "
                        "could run a name as code: call the program that opens the door directly, with the name "
                        "as an argument, or let it read DOOR_NAME from its environment")
    return None


def _line_of(node, *keys: str) -> str:
    """' line N' of the first of `keys` (a dotted path) found in the YAML, else '' (a default)."""
    found = ""
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return found
        match = next(((k, v) for k, v in node.value if k.value == key), None)
        if match is None:
            return found
        found, node = f" line {match[0].start_mark.line + 1}", match[1]
    return found


def compose_yaml(text: str, path: Path | str) -> yaml.Node | None:
    """The YAML node tree of `text` (keeping line numbers for messages); ConfigError on a syntax error."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None


def _build(cls, node, prefix: str, path: Path, skip=frozenset()) -> dict:
    if not isinstance(node, yaml.MappingNode):
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(f"{path} line {node.start_mark.line + 1}: '{where}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    hints = typing.get_type_hints(cls)
    out = {}
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        dotted = f"{prefix}{key}"
        line = key_node.start_mark.line + 1
        if key in first_line:
            raise ConfigError(f"{path} line {line}: '{dotted}' is given twice (first on line {first_line[key]})")
        first_line[key] = line
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{path} line {line}: unknown key '{dotted}' (known here: {known})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            out[key] = hint(**_build(hint, value_node, dotted + ".", path))
        else:
            out[key] = _scalar(fields[key], hint, value_node, dotted, line, path)
    return out


def _scalar(f, hint, node, dotted: str, line: int, path: Path):
    where = f"{path} line {line}: '{dotted}'"
    value = yaml.SafeLoader("").construct_object(node, deep=True)
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None and optional:
        return None
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(base) or (str,)
        if not isinstance(value, list) or not all(isinstance(v, item_type) for v in value):
            raise ConfigError(f"{where} must be a list of {item_type.__name__}, got {value!r}")
        if f.metadata.get("choices") and (bad := [v for v in value if v not in f.metadata["choices"]]):
            raise ConfigError(f"{where}: {', '.join(map(repr, bad))} not among {', '.join(f.metadata['choices'])}")
        return tuple(value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if base is str and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # e.g. `camera.source: 0`
    if base is int and isinstance(value, bool) or not isinstance(value, base):
        raise ConfigError(f"{where} must be {base.__name__}, got {value!r}")
    m = f.metadata
    if m.get("schemes"):
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in m["schemes"] or not parts.netloc:
            raise ConfigError(f"{where} must be a URL starting with {' or '.join(s + '://' for s in m['schemes'])}, "
                              f"got {value!r}")
    if m.get("choices") and value not in m["choices"]:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, m['choices']))}, got {value!r}")
    if m.get("lo") is not None and value < m["lo"] or m.get("hi") is not None and value > m["hi"]:
        raise ConfigError(f"{where} = {value!r} is out of range [{m.get('lo')}, {m.get('hi')}]")
    return value
