"""Names never become commands: hook templates that hand a name to a shell or an interpreter are
refused at config load, and a name that reads as an option (or holds a control character) is
refused where names come from: the images/ folder and `door-access enroll`. No model is loaded."""

import json
import shutil

import pytest

from door_access.cli import main
from door_access.config import ConfigError, load_config
from door_access.recognition.gallery import scan_images

from conftest import FR_IMAGES

SHELL_TEMPLATES = [
    pytest.param(["sh", "-c", "echo {name} >> /tmp/door.log"], "'sh'", id="sh_c"),
    pytest.param(["/bin/bash", "-lc", "relay open {name}"], "'/bin/bash'", id="bash_path"),
    pytest.param(["/usr/bin/env", "bash", "-c", "relay {name}"], "'/usr/bin/env'", id="env_bash"),
    pytest.param(["env", "-S", "sh -c 'relay {name}'"], "'env'", id="env_split_string"),
    pytest.param(["sudo", "-u", "door", "sh", "-c", "relay {name}"], "'sudo'", id="sudo_sh"),
    pytest.param(["timeout", "5", "dash", "-c", "relay {distance}"], "'dash'", id="wrapper_dash"),
    pytest.param(["/usr/bin/python3.11", "-c", "import os; os.system('relay {name}')"], "'/usr/bin/python3.11'",
                 id="python_c"),
    pytest.param(["perl", "-e", "system('relay', '{name}')"], "'perl'", id="perl_e"),
    pytest.param(["busybox", "sh", "-c", "relay {name}"], "'busybox'", id="busybox"),
    pytest.param(["/usr/local/bin/runner", "--command=sh -c 'relay {name}'"], "'sh'", id="option_value"),
    pytest.param(["{name}"], "placeholder in its program", id="name_as_program"),
]


@pytest.mark.parametrize("key", ["unlock_command", "relock_command"])
@pytest.mark.parametrize("template,named", SHELL_TEMPLATES)
def test_a_template_that_hands_the_name_to_a_shell_or_interpreter_is_refused_with_key_and_line(
        tmp_path, key, template, named):
    path = tmp_path / "config.yaml"
    path.write_text(f"door:\n  hook_timeout_s: 5\n  {key}: {json.dumps(template)}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert f"{path} line 3: 'door.{key}'" in message and named in message


@pytest.mark.parametrize("template", [
    ["/usr/local/bin/relay", "open", "--who={name}", "{distance}"],  # the name as data, glued or alone
    ["relay", "--text=Welcome at the door", "{name}"],
    ["sh", "-c", "relay open"],  # a shell with no placeholder: nothing of a name reaches it
    [],
])
def test_templates_that_keep_the_name_as_data_load(tmp_path, template):
    path = tmp_path / "config.yaml"
    path.write_text(f"door:\n  unlock_command: {json.dumps(template)}\n")
    assert load_config(path).door.unlock_command == tuple(template)


def test_a_folder_name_made_of_shell_cannot_reach_a_shell_through_run(tmp_path, capsys):
    """The attack: an enrolled 'name' that is shell, and a hook that pipes names into `sh -c`.
    `door-access run` stops at the config, naming the key and the line, before any camera or model."""
    (tmp_path / "images" / "$(touch pwned)").mkdir(parents=True)
    shutil.copy(FR_IMAGES / "obama.jpg", tmp_path / "images" / "$(touch pwned)" / "a.jpg")
    config = tmp_path / "config.yaml"
    config.write_text('door:\n  unlock_seconds: 1\n  unlock_command: ["sh", "-c", "echo {name} >> opened.txt"]\n')
    code = main(["run", "--config", str(config), "--headless", "--source", str(tmp_path / "no-camera.mp4")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{config} line 3: 'door.unlock_command' hands" in err and "'sh'" in err and "DOOR_NAME" in err
    assert not (tmp_path / "pwned").exists()


def test_names_that_read_as_options_or_hold_control_characters_are_skipped_with_the_file_named(tmp_path):
    images = tmp_path / "images"
    (images / "--help").mkdir(parents=True)
    for path in (images / "obama.jpg", images / "-rf.jpg", images / "--help" / "a.jpg", images / "bad\x1b[2Jname.jpg",
                 images / "Anne-Marie.jpg"):
        shutil.copy(FR_IMAGES / "obama.jpg", path)
    found, skipped = scan_images(images)
    assert sorted(name for name, _ in found) == ["Anne-Marie", "obama"]
    reasons = {s.path.relative_to(images).as_posix(): s.reason for s in skipped}
    assert set(reasons) == {"-rf.jpg", "--help/a.jpg", "bad\x1b[2Jname.jpg"}
    assert "'-rf'" in reasons["-rf.jpg"] and "starts with '-'" in reasons["-rf.jpg"]
    assert "'--help'" in reasons["--help/a.jpg"]
    assert "control character" in reasons["bad\x1b[2Jname.jpg"]


def test_enroll_refuses_a_name_starting_with_a_dash_before_any_model(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(f"paths:\n  cache: {tmp_path / 'cache'}\n")
    code = main(["enroll", "--from", str(FR_IMAGES / "obama.jpg"), "--images", str(images), "--config", str(config),
                 "--yes", "--", "-rf"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'-rf' is not a usable name" in err and "not starting with '.' or '-'" in err
    assert list(images.iterdir()) == []
