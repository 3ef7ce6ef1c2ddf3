"""The door: tracks, decisions, the door controller, actions, the access log, policy and MQTT."""
