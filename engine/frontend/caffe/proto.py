"""Caffe message classes, built at import time from the committed descriptor of `caffe.proto`.

Why not a protoc-generated `caffe_pb2.py`: generated modules check the protobuf runtime against
the protoc that wrote them and refuse to import across major versions, while this project allows
protobuf >= 4.25 and runs on 7. A serialized FileDescriptorProto (`_descriptor.py`, written by
`build_descriptor.py`) is plain data every runtime reads. The classes live in a private
descriptor pool, so another library that registers its own `caffe.*` messages (many ship a
`caffe.proto`) cannot clash with ours.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from engine.frontend.caffe._descriptor import SERIALIZED

PACKAGE = "caffe"

POOL = descriptor_pool.DescriptorPool()
FILE = POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(SERIALIZED))


def message_class(name: str) -> type:
    """The Python class of message `caffe.<name>`."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


NetParameter = message_class("NetParameter")
LayerParameter = message_class("LayerParameter")
V1LayerParameter = message_class("V1LayerParameter")
BlobProto = message_class("BlobProto")
BlobShape = message_class("BlobShape")
CaffeModelWeights = message_class("CaffeModelWeights")

# Enum values used by the converter, looked up by name so the numbers stay in one place.
PoolMethod = POOL.FindEnumTypeByName("caffe.PoolingParameter.PoolMethod").values_by_name
RoundMode = POOL.FindEnumTypeByName("caffe.PoolingParameter.RoundMode").values_by_name
EltwiseOp = POOL.FindEnumTypeByName("caffe.EltwiseParameter.EltwiseOp").values_by_name
Phase = POOL.FindEnumTypeByName("caffe.Phase").values_by_name
V1LayerType = POOL.FindEnumTypeByName("caffe.V1LayerParameter.LayerType")
