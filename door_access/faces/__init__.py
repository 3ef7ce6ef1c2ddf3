"""Getting faces out of frames: capture, detection, alignment and FaceNet."""
