"""`door-access check`: is this machine ready to run the door? Each part ok or a problem with its fix.

Quick and model-free (no TensorFlow, no dlib): it looks at files, programs and devices only,
so an installer can run it first. It also reports any photo, template, snapshot or log file that
other users of the machine can read, and a config file holding a secret that others can read.
`door-access gallery` checks the photos' faces in depth.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from door_access.config import Config


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_camera(cfg: Config) -> Check:
    import cv2

    from door_access.faces.capture import SourceError, parse_source

    source = cfg.camera.source
    try:
        spec = parse_source(source)
    except SourceError as exc:
        return Check("camera", False, str(exc), "set camera.source in config.yaml to a webcam index, file or URL")
    cap = cv2.VideoCapture(spec)
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    finally:
        cap.release()
    if not ok or frame is None:
        what = f"no camera at index {spec}" if isinstance(spec, int) else f"cannot read from {source!r}"
        return Check("camera", False, what,
                     "plug in a webcam (check `ls /dev/video*` and that this user is in the 'video' group) "
                     "or set camera.source in config.yaml")
    return Check("camera", True, f"{source}: {frame.shape[1]}x{frame.shape[0]}")


def _playback_devices() -> bool:
    """An ALSA card with a playback device, or a sound server aplay can play through."""
    try:
        listed = subprocess.run(["aplay", "-l"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    if "card " in listed:
        return True
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}"))
    return (runtime / "pulse" / "native").exists() or (runtime / "pipewire-0").exists()


def check_speaker(cfg: Config) -> Check:
    tts = cfg.tts
    if not tts.enabled:
        return Check("speaker", True, "speech is off (tts.enabled: false)")
    if tts.wav_dir:
        return Check("speaker", True, f"welcomes are written as WAV files to {cfg.resolve(tts.wav_dir)}")
    if not (ctypes.util.find_library("espeak-ng") or ctypes.util.find_library("espeak")):
        return Check("speaker", False, "the espeak-ng library is missing (pyttsx3 speaks with it)",
                     "apt-get install espeak-ng (or run `make setup` as root)")
    if sys.platform.startswith("linux"):
        if not shutil.which("aplay"):
            return Check("speaker", False, "'aplay' is missing: pyttsx3's espeak driver plays welcomes through it",
                         "apt-get install alsa-utils (or run `make setup` as root)")
        if not _playback_devices():
            return Check("speaker", False, "no sound card or sound server found (`aplay -l` lists none)",
                         "connect a speaker and check `aplay -l`, or set tts.wav_dir / tts.enabled: false")
    return Check("speaker", True, "espeak-ng and a playback device found")


def check_models(cfg: Config) -> Check:
    from door_access.tools.assets import MANIFEST

    weights = cfg.path("weights")
    try:
        manifest = json.loads((weights / MANIFEST).read_text())
    except (OSError, ValueError):
        return Check("models", False, f"no finished setup in {weights}", "run `door-access setup` (or `make setup`)")
    bad = [rel for rel, (size, _sha) in manifest.items()
           if not (weights / rel).is_file() or (weights / rel).stat().st_size != size]
    if bad:
        return Check("models", False, f"missing or changed in {weights}: {', '.join(sorted(bad))}",
                     "run `door-access setup --force`")
    return Check("models", True, f"{len(manifest)} files in {weights}")


def check_gallery(images_dir: Path) -> Check:
    from door_access.faces.photos import is_photo

    if not images_dir.is_dir():
        return Check("gallery", False, f"images folder {images_dir} does not exist",
                     f"mkdir -p {images_dir} and add photos as {images_dir}/NAME/*.jpg")
    people: dict[str, int] = {}
    try:
        for entry in images_dir.iterdir():
            if entry.is_dir() and not entry.name.startswith("."):
                count = sum(1 for p in entry.iterdir() if p.is_file() and is_photo(p))
                if count:
                    people[entry.name] = count
            elif entry.is_file() and is_photo(entry):
                people[entry.stem] = people.get(entry.stem, 0) + 1
    except OSError as exc:
        return Check("gallery", False, f"cannot read {images_dir}: {exc}", f"make {images_dir} readable by this user")
    if not people:
        return Check("gallery", False, f"nobody is enrolled in {images_dir}",
                     f"add photos as {images_dir}/NAME/*.jpg (then `door-access gallery` checks their faces)")
    return Check("gallery", True, f"{len(people)} people, {sum(people.values())} photos in {images_dir}")


def _program_problem(argv: tuple[str, ...]) -> str | None:
    program = argv[0]
    path = Path(program) if os.sep in program else (Path(found) if (found := shutil.which(program)) else None)
    if path is None or not path.exists():
        return f"{program!r} does not exist"
    if not path.is_file() or not os.access(path, os.X_OK):
        return f"{str(path)!r} is not executable"
    return None


def check_hooks(cfg: Config) -> Check:
    door = cfg.door
    problems, fixes, have = [], [], []
    for key, argv in (("unlock_command", door.unlock_command), ("relock_command", door.relock_command)):
        if not argv:
            continue
        have.append(key)
        problem = _program_problem(argv)
        if problem:
            problems.append(f"door.{key}: {problem}")
            fixes.append(f"install it and `chmod +x` it, or correct door.{key} in config.yaml")
    if door.webhook_url:  # its scheme was checked when the config loaded
        have.append("webhook_url")
    if problems:
        return Check("hooks", False, "; ".join(problems), "; ".join(dict.fromkeys(fixes)))
    if not have:
        return Check("hooks", True, "no unlock hook or webhook configured (the door only logs and speaks)")
    return Check("hooks", True, ", ".join(have) + " found")


def _writable_dir_problem(folder: Path) -> str | None:
    existing = folder
    while not existing.exists():  # the app creates missing folders: the nearest existing one must be writable
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not a writable folder"
    return None


def check_log(cfg: Config) -> Check:
    path = cfg.resolve(cfg.access_log.path)
    problem = _writable_dir_problem(path.parent)
    if problem is None and path.exists() and not os.access(path, os.W_OK):
        problem = f"{path} is not writable"
    snapshots = cfg.access_log.snapshots_dir
    if problem is None and snapshots and cfg.access_log.snapshots_keep:
        problem = _writable_dir_problem(cfg.resolve(snapshots))
    if problem:
        return Check("log", False, problem,
                     "make it writable by this user (chown/chmod) or set access_log.path / snapshots_dir")
    return Check("log", True, f"{path} is writable")


def _biometric_files(cfg: Config, images_dir: Path) -> list[Path]:
    """Every file the door keeps that holds a face, a template or who came when: photos, caches, log, snapshots."""
    from door_access.faces.photos import is_photo

    files = []
    try:
        for entry in images_dir.iterdir() if images_dir.is_dir() else ():
            files += [p for p in entry.iterdir() if p.is_file()] if entry.is_dir() else [entry]
    except OSError:
        pass  # an unreadable folder is the gallery check's problem
    files = [p for p in files if is_photo(p)]
    cache = cfg.path("cache")
    files += [*cache.glob("embeddings.sqlite*"), *cache.glob("eval.sqlite*"), *cache.glob("live_samples.npz*")]
    log_path = cfg.resolve(cfg.access_log.path)
    files += [log_path.with_name(log_path.name + s) for s in ("", "-wal", "-shm", "-journal", ".spool.jsonl")]
    if cfg.access_log.snapshots_dir:
        files += cfg.resolve(cfg.access_log.snapshots_dir).glob("*.jpg")
    return [p for p in files if p.is_file()]


def check_privacy(cfg: Config, images_dir: Path) -> Check:
    """Photos, templates, snapshots and the log must not be readable by other users of the machine. Readable by
    the group is reported but allowed: doors sharing an images folder through a group need it."""
    others, group = [], []
    for path in _biometric_files(cfg, images_dir):
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & stat.S_IROTH:
            others.append(path)
        elif mode & stat.S_IRGRP:
            group.append(path)
    if others:
        shown = ", ".join(str(p) for p in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        return Check("privacy", False, f"{len(others)} file(s) holding faces, templates or the access log are "
                     f"readable by other users: {shown}",
                     "chmod o-rwx those files (or chmod -R o-rwx their folders); the door creates them 0600")
    detail = "photos, templates, snapshots and the access log are readable only by their owner"
    if group:
        detail += (f", and by their group for {len(group)} file(s) (e.g. {group[0]}): right for an images folder "
                   f"shared by several doors' users; otherwise chmod g-rwx them")
    return Check("privacy", True, detail)


def config_secrets(cfg: Config) -> list[str]:
    """The keys in `cfg` that hold a secret: the webhook's signing key, the broker password, and a webhook
    URL or hook argument the redactor would change (a URL's path or query is often a token, `password=`)."""
    from door_access.redaction import Redactor

    d, shown = cfg.door, Redactor().text
    held = [key for key, value in (("door.webhook_secret", d.webhook_secret), ("mqtt.password", cfg.mqtt.password))
            if value]
    for key, texts in (("door.webhook_url", [d.webhook_url or ""]), ("door.unlock_command", d.unlock_command),
                       ("door.relock_command", d.relock_command)):
        if any(shown(text) != text for text in texts):
            held.append(key)
    return held


def check_secrets(cfg: Config) -> Check:
    """A config file holding a secret must be readable by its owner only (mode 0600)."""
    held = config_secrets(cfg)
    if cfg.file is None or not held:  # the defaults (no config file) hold none
        return Check("secrets", True, "the config holds no secret")
    try:
        mode = stat.S_IMODE(cfg.file.stat().st_mode)
    except OSError as exc:
        return Check("secrets", False, f"cannot read the mode of {cfg.file}: {exc}", f"check {cfg.file}")
    if mode & 0o077:
        return Check("secrets", False, f"{cfg.file} holds secrets ({', '.join(held)}) and its group or other users "
                     f"have access to it (mode {mode:04o})", f"chmod 600 {cfg.file}")
    return Check("secrets", True, f"{cfg.file} holds secrets ({', '.join(held)}) and only its owner can read it")


def run_checks(cfg: Config, images_dir: Path) -> list[Check]:
    checks = [check_camera, check_speaker, check_models, lambda c: check_gallery(images_dir), check_hooks, check_log,
              lambda c: check_privacy(c, images_dir), check_secrets]
    return [check(cfg) for check in checks]


def print_checks(checks: list[Check], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}, ensure_ascii=False))
        return
    for c in checks:
        print(f"{'ok' if c.ok else 'PROBLEM':<8} {c.name:<8} {c.detail}")
        if c.fix:
            print(f"{'':<8} {'':<8} fix: {c.fix}")
