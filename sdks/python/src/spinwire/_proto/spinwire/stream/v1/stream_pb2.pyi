from spinwire._proto.centrifugal.centrifuge.protocol import client_pb2 as _client_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
