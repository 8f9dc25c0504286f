"""Weight-space datasets: SIREN INR sets, a Small-CNN-Zoo-style CNN zoo and a ViT zoo, with builders
(``python -m dng_tgn.data.build_inrs | build_cnn_zoo | build_vit_zoo | build_wild_park``) and loaders for the public
formats. The Wild Park (:mod:`.wild_park`) mixes architectures: its items are ``(module, test accuracy)``.

Every dataset item is ``(state_dict, target)``: a PyTorch-layout state_dict that ``dng_tgn.to_event_stream``
accepts, and a class label (INRs) or a test accuracy (zoos). :class:`StateDictSet` holds a whole split in memory
as stacked parameters; :mod:`.rendered_inrs` renders the images INRs represent; :mod:`.activations` makes §7's data.
"""
from .cnn_zoo import CNNZooDataset
from .inr_datasets import DWSNetsSirenDataset, NFNSirenDataset
from .shards import CorruptShardError
from .sources import (MissingSourceError, load_cifar, load_digits, load_fashion_mnist, load_images, load_mnist,
                      read_idx)
from .vit_zoo import ViTZooDataset
from .wild_park import ParkCNN, StreamSet, WildParkDataset
from .state_dict_set import StateDictSet
from .rendered_inrs import INRSet, render_images

__all__ = [
    "NFNSirenDataset", "DWSNetsSirenDataset", "CNNZooDataset", "ViTZooDataset", "WildParkDataset", "ParkCNN", "StreamSet",
    "load_mnist", "load_fashion_mnist", "load_digits", "load_cifar", "load_images", "read_idx",
    "MissingSourceError", "CorruptShardError", "StateDictSet", "INRSet", "render_images",
]
