"""config.yaml: the shipped file equals the defaults; mistakes name the key and the line."""

import dataclasses

import pytest

from door_access.config import Config, ConfigError, load_config

from conftest import REPO


def test_shipped_config_documents_exactly_the_defaults():
    shipped = load_config(REPO / "config.yaml")
    assert dataclasses.replace(shipped, base_dir=Config().base_dir) == Config()
    text = (REPO / "config.yaml").read_text()
    for section in dataclasses.fields(Config):
        if section.name in ("base_dir", "file"):  # where the config lives, not a section
            continue
        for f in dataclasses.fields(section.default_factory()):
            assert f"{f.name}:" in text, f"{section.name}.{f.name} is not documented in config.yaml"


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("paths:\n  images: people\n")
    assert load_config(path).path("images") == tmp_path / "people"


@pytest.mark.parametrize("text,expected", [
    ("recognition:\n  treshold: 0.5\n", r"line 2: unknown key 'recognition.treshold'"),
    ("detection:\n  upsample: two\n", r"line 2: 'detection.upsample' must be int"),
    ("detection:\n  upsample: true\n", r"'detection.upsample' must be int"),
    ("recognition:\n  threshold: 3.5\n", r"'recognition.threshold' = 3.5 is out of range"),
    ("detection:\n  model: yolo\n", r"'detection.model' must be one of hog, cnn"),
    ("detection: 5\n", r"'detection' must be a mapping"),
    ("recognition:\n  threshold: [0.5\n", r"YAML syntax error"),
    ("bogus: 1\n", r"line 1: unknown key 'bogus'"),
    ("access_log:\n  keep_days: -1\n", r"line 2: 'access_log.keep_days' = -1.0 is out of range"),
    ("door:\n  hook_timeout_s: 5\n  webhook_url: file:///etc/passwd\n",
     r"line 3: 'door.webhook_url' must be a URL starting with http:// or https://"),
    ("door:\n  webhook_url: ftp://door.example/hook\n", r"line 2: 'door.webhook_url' must be a URL"),
    ("door:\n  webhook_url: door.example/hook\n", r"line 2: 'door.webhook_url' must be a URL"),
    ("liveness:\n  challenge_steps: 5\n", r"line 2: 'liveness.challenge_steps' = 5 is out of range"),
    ("liveness:\n  challenge_steps: 0\n", r"'liveness.challenge_steps' = 0 is out of range"),
    ("lockout:\n  cooloff_s: 60\n  max_cooloff_s: 30\n", r"'lockout.max_cooloff_s' is below 'lockout.cooloff_s'"),
])
def test_mistakes_are_named(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# nothing set\n")
    assert dataclasses.replace(load_config(path), base_dir=Config().base_dir) == Config()


def test_a_webhook_url_with_http_or_https_and_a_secret_loads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("door:\n  webhook_url: https://door.example/hook\n  webhook_secret: k3y\n")
    door = load_config(path).door
    assert (door.webhook_url, door.webhook_secret) == ("https://door.example/hook", "k3y")


def test_door_id_must_be_one_topic_level(tmp_path):
    from door_access.config import ConfigError, load_config

    path = tmp_path / "config.yaml"
    path.write_text("door:\n  id: lobby/east\n")
    with pytest.raises(ConfigError, match="door.id"):
        load_config(path)
    path.write_text("door:\n  id: lobby-east\nmqtt:\n  enabled: true\n  port: 70000\n")
    with pytest.raises(ConfigError, match="line 5: 'mqtt.port'"):
        load_config(path)
    path.write_text("door:\n  id: lobby-east\nmqtt:\n  enabled: true\n  qos: 2\n")
    with pytest.raises(ConfigError, match="line 5: unknown key 'mqtt.qos'"):
        load_config(path)
