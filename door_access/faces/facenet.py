"""FaceNet (InceptionResNetV1) built in Keras 3, and the batched face encoder.

The published Keras 2 model file pickles Python lambdas that Keras 3 cannot load, so the
network is written out here layer by layer with the same layer names, and the weights are
copied over by name (`convert_keras2_weights`). At run time only our own Keras 3 weight
file is read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from door_access.core import EMBEDDING_SIZE, INPUT_SIZE
from door_access.files import sha256_file
from door_access.quiet import native_stderr_silenced, tf_log_level

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", tf_log_level())
with native_stderr_silenced():  # the import prints its GPU probe and oneDNN notices before any log level applies
    import keras
    import tensorflow as tf
    from keras import layers

log = logging.getLogger(__name__)



class ScaledResidual(layers.Layer):
    """`shortcut + scale * residual`: the serialisable stand-in for the original Lambda."""

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, inputs):
        shortcut, residual = inputs
        return shortcut + self.scale * residual

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def _conv_bn(x, filters, kernel, name, strides=1, padding="same", activate=True):
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=name)(x)
    x = layers.BatchNormalization(axis=3, momentum=0.995, epsilon=0.001, scale=False, name=f"{name}_BatchNorm")(x)
    if activate:
        x = layers.Activation("relu", name=f"{name}_Activation")(x)
    return x


def _residual_block(x, kind: str, index: int, scale: float, activate: bool = True):
    """One Inception-ResNet block (`Block35`, `Block17` or `Block8`)."""
    p = f"{kind}_{index}"
    if kind == "Block35":
        branches = [
            _conv_bn(x, 32, 1, f"{p}_Branch_0_Conv2d_1x1"),
            _conv_bn(_conv_bn(x, 32, 1, f"{p}_Branch_1_Conv2d_0a_1x1"), 32, 3, f"{p}_Branch_1_Conv2d_0b_3x3"),
            _conv_bn(
                _conv_bn(_conv_bn(x, 32, 1, f"{p}_Branch_2_Conv2d_0a_1x1"), 32, 3, f"{p}_Branch_2_Conv2d_0b_3x3"),
                32, 3, f"{p}_Branch_2_Conv2d_0c_3x3",
            ),
        ]
        out_channels = 256
    elif kind == "Block17":
        b1 = _conv_bn(x, 128, 1, f"{p}_Branch_1_Conv2d_0a_1x1")
        b1 = _conv_bn(b1, 128, (1, 7), f"{p}_Branch_1_Conv2d_0b_1x7")
        b1 = _conv_bn(b1, 128, (7, 1), f"{p}_Branch_1_Conv2d_0c_7x1")
        branches = [_conv_bn(x, 128, 1, f"{p}_Branch_0_Conv2d_1x1"), b1]
        out_channels = 896
    else:
        b1 = _conv_bn(x, 192, 1, f"{p}_Branch_1_Conv2d_0a_1x1")
        b1 = _conv_bn(b1, 192, (1, 3), f"{p}_Branch_1_Conv2d_0b_1x3")
        b1 = _conv_bn(b1, 192, (3, 1), f"{p}_Branch_1_Conv2d_0c_3x1")
        branches = [_conv_bn(x, 192, 1, f"{p}_Branch_0_Conv2d_1x1"), b1]
        out_channels = 1792
    mixed = layers.Concatenate(axis=3, name=f"{p}_Concatenate")(branches)
    up = layers.Conv2D(out_channels, 1, padding="same", use_bias=True, name=f"{p}_Conv2d_1x1")(mixed)
    x = ScaledResidual(scale, name=f"{p}_ScaleSum")([x, up])
    if activate:
        x = layers.Activation("relu", name=f"{p}_Activation")(x)
    return x


def build_inception_resnet_v1() -> keras.Model:
    """InceptionResNetV1 as in the FaceNet Keras model: 160x160x3 in, 128-d (not normalised) out."""
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="input_1")
    x = _conv_bn(inputs, 32, 3, "Conv2d_1a_3x3", strides=2, padding="valid")
    x = _conv_bn(x, 32, 3, "Conv2d_2a_3x3", padding="valid")
    x = _conv_bn(x, 64, 3, "Conv2d_2b_3x3")
    x = layers.MaxPooling2D(3, strides=2, name="MaxPool_3a_3x3")(x)
    x = _conv_bn(x, 80, 1, "Conv2d_3b_1x1", padding="valid")
    x = _conv_bn(x, 192, 3, "Conv2d_4a_3x3", padding="valid")
    x = _conv_bn(x, 256, 3, "Conv2d_4b_3x3", strides=2, padding="valid")
    for i in range(1, 6):
        x = _residual_block(x, "Block35", i, 0.17)

    x = layers.Concatenate(axis=3, name="Mixed_6a")([
        _conv_bn(x, 384, 3, "Mixed_6a_Branch_0_Conv2d_1a_3x3", strides=2, padding="valid"),
        _conv_bn(
            _conv_bn(_conv_bn(x, 192, 1, "Mixed_6a_Branch_1_Conv2d_0a_1x1"), 192, 3, "Mixed_6a_Branch_1_Conv2d_0b_3x3"),
            256, 3, "Mixed_6a_Branch_1_Conv2d_1a_3x3", strides=2, padding="valid",
        ),
        layers.MaxPooling2D(3, strides=2, name="Mixed_6a_Branch_2_MaxPool_1a_3x3")(x),
    ])
    for i in range(1, 11):
        x = _residual_block(x, "Block17", i, 0.1)

    x = layers.Concatenate(axis=3, name="Mixed_7a")([
        _conv_bn(_conv_bn(x, 256, 1, "Mixed_7a_Branch_0_Conv2d_0a_1x1"), 384, 3,
                 "Mixed_7a_Branch_0_Conv2d_1a_3x3", strides=2, padding="valid"),
        _conv_bn(_conv_bn(x, 256, 1, "Mixed_7a_Branch_1_Conv2d_0a_1x1"), 256, 3,
                 "Mixed_7a_Branch_1_Conv2d_1a_3x3", strides=2, padding="valid"),
        _conv_bn(
            _conv_bn(_conv_bn(x, 256, 1, "Mixed_7a_Branch_2_Conv2d_0a_1x1"), 256, 3, "Mixed_7a_Branch_2_Conv2d_0b_3x3"),
            256, 3, "Mixed_7a_Branch_2_Conv2d_1a_3x3", strides=2, padding="valid",
        ),
        layers.MaxPooling2D(3, strides=2, name="Mixed_7a_Branch_3_MaxPool_1a_3x3")(x),
    ])
    for i in range(1, 6):
        x = _residual_block(x, "Block8", i, 0.2)
    x = _residual_block(x, "Block8", 6, 1.0, activate=False)

    x = layers.GlobalAveragePooling2D(name="AvgPool")(x)
    x = layers.Dropout(0.2, name="Dropout")(x)
    x = layers.Dense(EMBEDDING_SIZE, use_bias=False, name="Bottleneck")(x)
    x = layers.BatchNormalization(momentum=0.995, epsilon=0.001, scale=False, name="Bottleneck_BatchNorm")(x)
    return keras.Model(inputs, x, name="inception_resnet_v1")


def convert_keras2_weights(h5_path: Path, out_path: Path) -> int:
    """Copy the Keras 2 file's weights into our network by layer name; returns the parameter count.

    Every layer of ours that has weights must find its namesake with the same shapes, or this
    raises: a silent partial load would give embeddings that look fine and match nobody.
    """
    import h5py

    model = build_inception_resnet_v1()
    with h5py.File(h5_path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in group:
                raise ValueError(f"layer {layer.name} missing from {h5_path}")
            stored = group[layer.name]
            names = [n.decode() if isinstance(n, bytes) else n for n in stored.attrs["weight_names"]]
            arrays = [np.asarray(stored[n]) for n in names]
            by_kind = {n.split("/")[-1].split(":")[0]: a for n, a in zip(names, arrays)}
            values = []
            for w in layer.weights:
                kind = w.path.split("/")[-1]
                if kind not in by_kind or tuple(by_kind[kind].shape) != tuple(w.shape):
                    raise ValueError(f"weight {layer.name}/{kind} missing or of the wrong shape in {h5_path}")
                values.append(by_kind[kind])
            layer.set_weights(values)
    tmp = out_path.with_name(out_path.name + ".part.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, out_path)
    return int(model.count_params())


def limit_threads(threads: int) -> None:
    """Run TensorFlow's ops on `threads` threads (0: its default, one per core). It can be set only
    before TensorFlow's first op in a process; later, a different value is logged and ignored."""
    threading = tf.config.threading
    if not threads or threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.warning("encoder threads: TensorFlow is already running in this process, %d ignored", threads)


class FaceEncoder:
    """Turns aligned 160x160 RGB face chips into L2-normalised 128-d embeddings, a batch per call.

    Preprocessing (per-image standardisation) and normalisation run inside the compiled graph,
    so a batch costs one call into TensorFlow and no Python loop over faces.
    """

    def __init__(self, weights_path: Path, threads: int = 0):
        limit_threads(threads)
        weights_path = Path(weights_path)
        if not weights_path.is_file():
            raise FileNotFoundError(f"FaceNet weights not found at {weights_path}: run `door-access setup`")
        self.model = build_inception_resnet_v1()
        try:
            self.model.load_weights(weights_path)
        except Exception as exc:  # corrupt or truncated file: say which and how to fix it
            raise ValueError(f"FaceNet weights at {weights_path} are unreadable ({exc}): "
                             "run `door-access setup`") from exc
        self.weights_id = sha256_file(weights_path)[:16]
        # one graph for every batch size: traced once (about 1.4 s of CPU) at the first call, where a
        # shape-specific trace per size would trace again at the first batch of another size
        chips = tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8)
        self._forward = tf.function(self._embed, input_signature=[chips])

    def _embed(self, chips):
        x = tf.cast(chips, tf.float32)
        x = tf.image.per_image_standardization(x)
        y = self.model(x, training=False)
        return tf.math.l2_normalize(y, axis=1)

    def encode(self, chips: np.ndarray) -> np.ndarray:
        """`chips`: uint8 array (N, 160, 160, 3), RGB. Returns float32 (N, 128), unit length."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected chips of shape (N, {INPUT_SIZE}, {INPUT_SIZE}, 3), got {chips.shape}")
        if chips.dtype != np.uint8:
            raise ValueError(f"expected uint8 chips (0-255), got {chips.dtype}")
        if len(chips) == 0:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        return self._forward(tf.convert_to_tensor(chips)).numpy()

