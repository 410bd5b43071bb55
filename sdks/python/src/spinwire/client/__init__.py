"""Real-time client over the bidirectional gRPC stream (``spinwire.stream.v1``)."""

from spinwire._proto.centrifugal.centrifuge.protocol import client_pb2
from spinwire.client._position import Position
from spinwire.client.client import Client
from spinwire.client.codes import ClientState, SubscriptionState
from spinwire.client.contexts import (
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ErrorContext,
    JoinLeaveContext,
    MessageContext,
    PublicationContext,
    SubscribedContext,
    SubscribingContext,
    UnsubscribedContext,
)
from spinwire.client.subscription import PublicationIterator, Subscription

__all__ = [
    "Client",
    "ClientState",
    "ConnectedContext",
    "ConnectingContext",
    "DisconnectedContext",
    "ErrorContext",
    "JoinLeaveContext",
    "MessageContext",
    "Position",
    "PublicationContext",
    "PublicationIterator",
    "SubscribedContext",
    "SubscribingContext",
    "Subscription",
    "SubscriptionState",
    "UnsubscribedContext",
    "client_pb2",
]
