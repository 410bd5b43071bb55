"""Server API clients: :class:`ApiClient` (gRPC) and :class:`HttpApiClient` (HTTP JSON).

Both expose the same typed async methods (publish, broadcast, subscribe, unsubscribe,
disconnect, refresh, presence, presence_stats, history, history_remove, channels, info,
batch) and return the generated ``*Result`` messages of ``api_pb2``.
"""

from spinwire._proto.centrifugal.centrifugo.api import api_pb2
from spinwire.api import requests
from spinwire.api.grpc_client import ApiClient
from spinwire.api.http_client import HttpApiClient

__all__ = ["ApiClient", "HttpApiClient", "api_pb2", "requests"]
