"""The networks that get encoded: reference architectures whose parameter layouts the converters, dataset builders and loaders share (not dng_tgn's own trainable models, which live in dng_tgn.nn)."""
from .siren import Sine, SirenLayer, NFNSiren, DWSNetsSiren
from .zoo_cnn import ZooCNN
from .simple_vit import SimpleViT

__all__ = ["Sine", "SirenLayer", "NFNSiren", "DWSNetsSiren", "ZooCNN", "SimpleViT"]
