"""Caffe frontend: prototxt + caffemodel -> ONNX (`convert`), for the parse stage.

`reader` parses both files with the schema in `caffe.proto` (`proto` builds its classes),
`layers` converts each layer type, `converter` drives them over the net and names tensors.
"""

from engine.frontend.caffe.converter import SUPPORTED, convert

__all__ = ["SUPPORTED", "convert"]
