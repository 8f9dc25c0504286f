"""Networks as dynamic neural graphs: events, conversions, features, snapshots."""
from .batch import StepBatch, StreamBatch, batch_state_dicts, batch_streams
from .convert import to_event_stream
from .events import NODE_SLOTS, EdgeKind, Event, EventStream, NodeKind, Op, Snapshot
from .export import draw_snapshot, stream_to_networkx
from .io import StreamFormatError, load_stream, save_stream
from .features import NodeFeaturizer, RandomFourierFeatures
from .replay import replay

__all__ = [
    "EventStream", "Event", "Op", "NodeKind", "EdgeKind", "NODE_SLOTS", "Snapshot", "StreamBatch", "StepBatch",
    "to_event_stream", "batch_streams", "batch_state_dicts", "replay", "draw_snapshot", "stream_to_networkx",
    "RandomFourierFeatures", "NodeFeaturizer", "save_stream", "load_stream", "StreamFormatError",
]
