# `make run` and `make test` set up everything they need first; a second run is quick and offline.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: setup run test demo espeak mosquitto clean

setup: $(STAMP) espeak mosquitto
	$(BIN)/door-access setup

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

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

test: setup
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .cache weights/*.h5 weights/*.dat weights/manifest.json

demo: setup
	$(BIN)/door-access demo $(ARGS)
