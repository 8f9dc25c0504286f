"""dng_tgn: trained networks as dynamic neural graphs, learned with a TGN-style memory (DNG-Encoder)."""
from .errors import (
    DNGError, EmptyModelError, InvalidParameterError, MissingParameterError, NonFiniteWeightsError, ShapeMismatchError,
    StreamValidationError, UnsupportedLayerError, UnsupportedOptionError,
)
from .graph import (
    EventStream, Op, StreamBatch, batch_state_dicts, batch_streams, draw_snapshot, load_stream, replay, save_stream,
    to_event_stream,
)
from .nn import DNGEncoder

__version__ = "0.1.0"

__all__ = [
    "to_event_stream", "batch_streams", "batch_state_dicts", "EventStream", "StreamBatch", "Op", "replay", "draw_snapshot",
    "save_stream", "load_stream",
    "DNGError", "UnsupportedLayerError", "ShapeMismatchError", "NonFiniteWeightsError", "MissingParameterError",
    "EmptyModelError", "StreamValidationError", "UnsupportedOptionError", "InvalidParameterError",
    "DNGEncoder",
]
