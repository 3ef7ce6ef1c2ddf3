"""Imported by the detector processes' fork server (parallel_detection), never by the door itself:
builds dlib's HOG detector there once, so every detector process forked from the server has it."""

from door_access.faces import parallel_detection

parallel_detection.hog_detector()
