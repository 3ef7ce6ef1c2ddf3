"""Whether the face is alive: CONFIRM cues, DENY (spoof) cues and the spoken challenge."""
