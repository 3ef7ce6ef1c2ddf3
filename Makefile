# `make run` and `make test` set up everything they need first; a second run is quick and offline.
# The versions installed are the ones in requirements/ (made by `make lock`), checked by their sha256.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements/lock.txt
BENCH_LOCK := requirements/bench.txt
UV     := .cache/uv/bin/uv
ARGS   ?=
JOBS   ?= 3

.PHONY: setup setup-bench lock run test demo espeak mosquitto clean

setup: $(STAMP) espeak mosquitto
	$(BIN)/door-access setup

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# the locked app and test extra, hashes checked, then the project itself on top (no deps, no download)
$(STAMP): $(LOCK) setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK) || { \
		echo "could not install $(LOCK), made for: $$(sed -n 2p $(LOCK) | sed 's/.*# //')."; \
		echo "On another Python or platform, run 'make lock' to resolve one for it (then 'make test')."; exit 1; }
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# the peer of `door-access bench pipeline --sizes`; --no-deps, as dlib comes from dlib-bin
setup-bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(BENCH_LOCK)

# Re-resolve setup.cfg for this venv's Python and platform, keeping the locked versions that still
# fit; `make lock UPGRADE=1` takes the newest allowed versions of everything. Then run `make test`.
# The bench extra bounds the app's lock too (setuptools), and the bench lock repeats the app's pins.
lock: $(UV) | $(BIN)/python
	@pyver=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	made_for="make lock  # Python $$pyver, $$(uname -sm)"; \
	set -ex; \
	$(BIN)/python -c 'import configparser as c; p = c.ConfigParser(); p.read("setup.cfg"); \
	print(p["options.extras_require"]["bench"])' > .cache/bench.in; \
	$(UV) pip compile --quiet setup.cfg --extra test -c .cache/bench.in --generate-hashes $(if $(UPGRADE),--upgrade) \
		--python-version $$pyver --custom-compile-command "$$made_for" -o $(LOCK); \
	$(UV) pip compile --quiet .cache/bench.in -c $(LOCK) --no-deps --generate-hashes $(if $(UPGRADE),--upgrade) \
		--python-version $$pyver --custom-compile-command "$$made_for" -o $(BENCH_LOCK)

$(UV): | $(BIN)/python  # the lock tool, kept out of the app's venv
	$(BIN)/python -m pip install --quiet --target .cache/uv 'uv==0.13.9'

espeak:  # pyttsx3 speaks with espeak-ng and plays the sound through `aplay` (alsa-utils)
	@if command -v espeak-ng >/dev/null 2>&1 && command -v aplay >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing espeak-ng and alsa-utils (speech for the welcome message, and its player)"; \
		(apt-get install -y -qq espeak-ng alsa-utils >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null && apt-get install -y -qq espeak-ng alsa-utils >/dev/null)) || \
		echo "WARNING: could not install espeak-ng and alsa-utils: welcomes will not be spoken"; \
	else \
		echo "WARNING: espeak-ng or aplay is missing and this is not root: install them (apt-get install espeak-ng alsa-utils) to hear welcomes"; \
	fi

# the MQTT tests run against a real broker; the door itself only needs one when mqtt.enabled
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing mosquitto (MQTT broker for the MQTT tests)"; \
		(apt-get install -y -qq mosquitto >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null && apt-get install -y -qq mosquitto >/dev/null)) || \
		echo "WARNING: could not install mosquitto: the MQTT tests will be skipped"; \
	else \
		echo "WARNING: mosquitto is missing and this is not root: the MQTT tests will be skipped"; \
	fi

run: setup
	$(BIN)/door-access run $(ARGS)

# three workers (pytest-xdist), each test module on one of them (its clips and fixtures made once): much of
# the suite waits on real time, processes and the broker, which a third worker fills; the slowest modules
# are handed out first, in tests/conftest.py's order (SLOW_FIRST); JOBS=0: one process
test: setup
	$(BIN)/python -m pytest -n $(JOBS) --dist loadscope --no-loadscope-reorder $(ARGS)

clean:
	rm -rf $(VENV) .cache weights/*.h5 weights/*.dat weights/manifest.json

demo: setup
	$(BIN)/door-access demo $(ARGS)
