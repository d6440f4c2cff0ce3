"""Exports run without Keras or TensorFlow: an ONNX export in ONNX Runtime alone.

`cifarlab export` writes what this reads: the model takes uint8 RGB pixels and returns
probabilities, and its metadata property `METADATA_KEY` holds the export's description as JSON
(input size, class names, source).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cifarlab.errors import UserError

METADATA_KEY = "cifarlab"
INPUT_NAME = "pixels"


class OnnxModel:
    """An ONNX export run by ONNX Runtime alone: no Keras, no TensorFlow."""

    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError as error:
            raise UserError(
                "Running an ONNX export needs ONNX Runtime: pip install 'cifarlab[onnx]'."
            ) from error
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ONNX Runtime raises its own kinds for a damaged file.
            message = f"{path} is not an ONNX model ONNX Runtime can run ({error})."
            raise UserError(message.splitlines()[0]) from error
        properties = self.session.get_modelmeta().custom_metadata_map
        outputs = self.session.get_outputs()[0].shape[-1]
        try:
            self.metadata = json.loads(properties[METADATA_KEY])
            self.image_size = int(self.metadata["input"]["shape"][1])
            names = self.metadata["class_names"]
        except (KeyError, ValueError, TypeError, IndexError):
            names = None
        if not isinstance(names, list) or len(names) != outputs:
            raise UserError(
                f"{path} is an ONNX model without cifarlab's metadata; export it with "
                "cifarlab export."
            )
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, images: np.ndarray) -> np.ndarray:
        (outputs,) = self.session.run(None, {self.input_name: np.asarray(images, np.uint8)})
        return np.asarray(outputs, np.float32)
