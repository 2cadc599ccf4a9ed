"""Ordered consumption of StateChanged events: each key's changes once and in version order, the versions a
batch lacks read from the history API. See `OrderedConsumer`."""

from state_client.consumer.marks import DynamoDBMarkStore, InMemoryMarkStore, MarkStore, create_mark_table
from state_client.consumer.ordering import (
    Change,
    ChangeEvent,
    ChangesPending,
    Operation,
    OrderedConsumer,
    Origin,
    VersionReader,
    VersionRecord,
)

__all__ = [
    "Change",
    "ChangeEvent",
    "ChangesPending",
    "DynamoDBMarkStore",
    "InMemoryMarkStore",
    "MarkStore",
    "Operation",
    "OrderedConsumer",
    "Origin",
    "VersionReader",
    "VersionRecord",
    "create_mark_table",
]
