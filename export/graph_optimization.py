"""Inference-only rewrites of a detection graph, applied once at export so that every server runs the cheaper graph.

``freeze`` turns a concrete function's variables into constants and folds each inference batch norm into the
convolution before it (``fold_batch_norms``). On CPU this is where a batch-1 image spent a fifth of its time
(docs/performance.md, "Where a batch-1 image spends its time"):

- a frozen graph lets grappler fuse Conv2D + bias + Relu6 into one oneDNN/Eigen kernel, which it cannot do while
  the weights are variables read at run time;
- grappler fuses a regular Conv2D with a FusedBatchNorm, but never a DepthwiseConv2dNative: after freezing, each
  depthwise batch norm still ran as a separate Mul and Add over the whole feature map. Folded into the filter, it
  is a BiasAdd that grappler fuses into the depthwise kernel with the activation.

The folding is exact algebra (filter * gamma / sqrt(var + eps), offset beta - mean * scale) done in float64 and
rounded once to float32, so detections change only by float rounding: the export's verification checks that.
A frozen SavedModel has no variables to restore and no Keras object graph to rebuild: it also loads faster.

Then ``simplify`` runs grappler's device-independent passes on the frozen graph once, at export (pruning,
constant folding, common subexpression elimination, dependency optimization: 2554 -> 658 nodes on the face-mask
model; the anchors, for one, are a constant afterwards). Every server runs these same passes when it first calls
a signature, on every load; done here, that first call costs 290 instead of 430 ms of CPU, which a version swap
under load takes from live requests (docs/performance.md). The device-specific passes (layout, remapper's
fused kernels, the arithmetic optimizer) are left to the server, so the graph holds only standard ops and
serves on CPU and GPU alike. Constant folding may rewrite arithmetic around constants, as the server's own
pass would; on the face-mask model the answers stayed the same bit for bit, and the verification checks them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

# Convolutions whose filter a following per-channel scale folds into (NHWC; channels on the filter's last axes).
_FOLDABLE_CONVOLUTIONS = ("Conv2D", "DepthwiseConv2dNative")
_BATCH_NORMS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")


def freeze(function):
    """``function`` (a ConcreteFunction) with its variables as constants and its batch norms folded, as a
    callable concrete function with the same inputs (positional, in order) and structured outputs."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(function)
    graph_def, folded = fold_batch_norms(frozen.graph.as_graph_def())
    graph_def = simplify(graph_def, [_source(tensor.name) for tensor in [*frozen.inputs, *frozen.outputs]])
    inputs = [tensor.name for tensor in frozen.inputs]
    # frozen.outputs is the flat list of function.structured_outputs, in nest order.
    outputs = tf.nest.pack_sequence_as(function.structured_outputs, [tensor.name for tensor in frozen.outputs])

    def import_graph():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    return wrapped.prune(
        [wrapped.graph.as_graph_element(name) for name in inputs],
        tf.nest.map_structure(wrapped.graph.as_graph_element, outputs))


# Grappler's optimizers (meta_optimizer.cc names) whose rewrites hold on any device. Constant folding may rewrite
# arithmetic around constants (as every server's grappler does at load anyway); the export's verification
# checks the answers.
SIMPLIFY_PASSES = ("pruning", "constfold", "common_subgraph_elimination", "dependency")


def simplify(graph_def, keep: list[str]):
    """``graph_def`` after one round of SIMPLIFY_PASSES, keeping the nodes ``keep`` names (the function's inputs
    and outputs: an input nothing reads any more must stay, or the signature could not feed it) and what they
    need."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer
    from tensorflow.python.training import saver

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    meta_graph = saver.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
    meta_graph.collection_def["train_op"].node_list.value.extend(keep)  # what grappler must keep
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers.extend(SIMPLIFY_PASSES)
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    rewrite.min_graph_nodes = -1  # also small graphs (grappler skips graphs under 4 nodes by default)
    return tf_optimizer.OptimizeGraph(config, meta_graph)


def fold_batch_norms(graph_def):
    """(a copy of ``graph_def`` with every inference batch norm after a constant-filter convolution folded into
    it, the number folded). A batch norm is folded only when nothing else reads the convolution's output or the
    norm's statistics outputs, so the rewrite never changes another node's input."""
    from tensorflow.core.framework import graph_pb2
    from tensorflow.python.framework import tensor_util

    result = graph_pb2.GraphDef()
    result.CopyFrom(graph_def)
    nodes = {node.name: node for node in result.node}
    readers = _readers(result.node)
    replaced: dict[str, list] = {}  # batch norm name -> [offset constant, the BiasAdd replacing it]
    removed: set[str] = set()
    for node in result.node:
        if node.op not in _BATCH_NORMS or node.attr["is_training"].b:
            continue
        convolution = nodes.get(_source(node.input[0]))
        if convolution is None or convolution.op not in _FOLDABLE_CONVOLUTIONS:
            continue
        if node.attr["data_format"].s not in (b"", b"NHWC") or convolution.attr["data_format"].s not in (b"", b"NHWC"):
            continue
        chains = [_constant_chain(nodes, name) for name in [convolution.input[1], *node.input[1:5]]]
        if not all(chains):
            continue
        if readers[convolution.name] != {f"{convolution.name}:0": 1} or set(readers[node.name]) - {node.name + ":0", "^"}:
            continue
        if any(_value_readers(readers[link.name]) != {link.name + ":0": 1} for link in chains[0]):
            continue  # a filter shared with another convolution must keep its values
        constants = [chain[-1] for chain in chains]
        filter_node = constants[0]
        weights, gamma, beta, mean, variance = (
            tensor_util.MakeNdarray(constant.attr["value"].tensor).astype(np.float64) for constant in constants)
        scale = gamma / np.sqrt(variance + node.attr["epsilon"].f)
        if convolution.op == "DepthwiseConv2dNative":  # [h, w, in, multiplier]; output channel = in * m + j
            folded = weights * scale.reshape(weights.shape[2], weights.shape[3])
        else:  # [h, w, in, out]
            folded = weights * scale
        dtype = tensor_util.MakeNdarray(filter_node.attr["value"].tensor).dtype
        filter_node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(folded.astype(dtype)))
        offset = _constant(f"{node.name}/folded_offset", (beta - mean * scale).astype(dtype), node.device)
        replaced[node.name] = [offset, _bias_add(node, convolution.name, offset.name)]
        removed.update(link.name for chain in chains[1:] for link in chain)
    if not replaced:
        return result, 0
    nodes = [node for node in result.node if node.name not in replaced]
    nodes.extend(new for pair in replaced.values() for new in pair)
    del result.node[:]
    result.node.extend(_without_unread(nodes, removed))
    return result, len(replaced)


def _without_unread(nodes: list, candidates: set[str]) -> list:
    """``nodes`` minus those ``candidates`` (the folded norms' parameter chains) that no remaining node reads,
    directly or through a candidate that stays."""
    by_name = {node.name: node for node in nodes}
    needed = {node.name for node in nodes if node.name not in candidates}
    pending = list(needed)
    while pending:
        for name in by_name[pending.pop()].input:
            source = _source(name)
            if source not in needed and source in by_name:
                needed.add(source)
                pending.append(source)
    return [node for node in nodes if node.name in needed]


def _constant(name: str, value: np.ndarray, device: str):
    from tensorflow.core.framework import node_def_pb2
    from tensorflow.python.framework import dtypes, tensor_util

    node = node_def_pb2.NodeDef(name=name, op="Const", device=device)
    node.attr["dtype"].type = dtypes.as_dtype(value.dtype).as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(value))
    return node


def _bias_add(batch_norm, convolution: str, offset: str):
    """A BiasAdd named as ``batch_norm`` (so its readers need no change) adding ``offset`` to the convolution."""
    from tensorflow.core.framework import node_def_pb2

    node = node_def_pb2.NodeDef(name=batch_norm.name, op="BiasAdd", input=[convolution, offset],
                                device=batch_norm.device)
    node.attr["T"].CopyFrom(batch_norm.attr["T"])
    node.attr["data_format"].s = b"NHWC"
    node.input.extend(name for name in batch_norm.input if name.startswith("^"))
    return node


def _constant_chain(nodes: dict, name: str) -> list | None:
    """The nodes from ``name`` through Identity ops to a Const (a frozen variable reads as Identity(Const)),
    or None when ``name`` is not a constant."""
    chain = []
    node = nodes.get(_source(name))
    while node is not None and node.op == "Identity" and len(chain) < 8:
        chain.append(node)
        node = nodes.get(_source(node.input[0]))
    if node is None or node.op != "Const":
        return None
    return [*chain, node]


def _value_readers(readers: Counter) -> dict:
    """The reads of a node's outputs, without control dependencies (which read no value)."""
    return {output: count for output, count in readers.items() if output != "^"}


def _source(name: str) -> str:
    """The node an input string names ('^ctrl', 'node:1' and 'node' all name 'node')."""
    return name.lstrip("^").split(":")[0]


def _readers(nodes: Iterable) -> dict[str, Counter]:
    """For each node, how often each of its output tensors is read ('name:index'; a control input is '^')."""
    readers: dict[str, Counter] = {}
    for node in nodes:
        readers.setdefault(node.name, Counter())
    for node in nodes:
        for name in node.input:
            source = _source(name)
            output = "^" if name.startswith("^") else (name if ":" in name else name + ":0")
            readers.setdefault(source, Counter())[output] += 1
    return readers
