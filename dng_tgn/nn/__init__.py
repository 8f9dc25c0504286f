"""The DNG-Encoder (paper §5): memory, messages, readouts, and the execution paths every model shares."""
from .checkpoint import EncoderFormatError, load_encoder, save_encoder
from .encoder import DNGEncoder, EncoderOutput, default_device
from .heads import ConcatReadout, MeanReadout, MLPHead, Readout
from .memory import (
    CellInput, DNGMemory, EdgeFeatures, InputMemory, MemoryState, MemoryUpdater, MessageFunction, MultiHeadMessage,
    NodeFeatures, UpdateCell,
)
from .paths import DGLStepOps, ExecutionPath, TorchStepOps, resolve_path, step_ops, validate_path
from .segment import segment_pna, segment_sum

__all__ = [
    "DNGEncoder", "EncoderOutput", "default_device", "save_encoder", "load_encoder", "EncoderFormatError",
    "Readout", "MeanReadout", "ConcatReadout", "MLPHead",
    "DNGMemory", "MemoryState", "EdgeFeatures", "NodeFeatures", "InputMemory", "MessageFunction", "MultiHeadMessage",
    "MemoryUpdater", "UpdateCell", "CellInput",
    "ExecutionPath", "resolve_path", "validate_path", "step_ops", "TorchStepOps", "DGLStepOps",
    "segment_sum", "segment_pna",
]
