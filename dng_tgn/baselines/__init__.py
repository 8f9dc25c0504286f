"""Baselines: Kofinas et al.'s static neural-graph GNN (NG-GNN) and the §7 static-vs-dynamic pair."""
from .nfn import HNPLinear, NFNEncoder, NFNLayout, NFNMode, NPLinear, WeightSpace, nfn_parameter_count
from .ng_gnn import NGGNN, EdgeList, NGGNNOutput, PNAEdgeLayer, node_layer_index, output_position, union_edges
from .static_vs_dynamic import ActivationFitter, DynamicMPNN, PhiPair, ScalarEncoder, StaticMPNN, input_node_values

__all__ = [
    "NGGNN", "NGGNNOutput", "PNAEdgeLayer", "EdgeList", "union_edges", "node_layer_index", "output_position",
    "NFNEncoder", "NFNLayout", "NFNMode", "NPLinear", "HNPLinear", "WeightSpace", "nfn_parameter_count",
    "ActivationFitter", "StaticMPNN", "DynamicMPNN", "PhiPair", "ScalarEncoder", "input_node_values",
]
