"""Freezing, batch-norm folding and simplifying (detserve.export.graph_optimization) on small graphs built here."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from detserve.export.graph_optimization import fold_batch_norms, freeze  # noqa: E402


def _batch_norm(channels: int, seed: int):
    """Inference batch norm (FusedBatchNormV3, what TFOD2's Keras layers trace to) with statistics far from the
    identity, as after training; returns the function applying it and its variables."""
    rng = np.random.default_rng(seed)
    params = [tf.Variable(values.astype(np.float32)) for values in (
        rng.uniform(0.5, 2.0, channels), rng.normal(0, 1, channels), rng.normal(0, 2, channels),
        rng.uniform(0.1, 4.0, channels))]

    def apply(x):
        scale, offset, mean, variance = params
        return tf.compat.v1.nn.fused_batch_norm(x, scale, offset, mean, variance, epsilon=1e-3, is_training=False)[0]

    return apply, params


def _network(shared_filter: bool = False):
    """conv -> BN -> relu6 -> depthwise -> BN -> relu6 (MobileNetV2's pattern), as a concrete function;
    ``shared_filter`` also runs the depthwise filter a second time on another branch."""
    rng = np.random.default_rng(0)
    conv = tf.Variable(rng.normal(0, 0.5, (3, 3, 3, 8)).astype(np.float32))
    depthwise = tf.Variable(rng.normal(0, 0.5, (3, 3, 8, 2)).astype(np.float32))
    (norm_conv, conv_params), (norm_depthwise, depthwise_params) = _batch_norm(8, 1), _batch_norm(16, 2)

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
    def network(images):
        x = tf.nn.relu6(norm_conv(tf.nn.conv2d(images, conv, 1, "SAME")))
        y = tf.nn.relu6(norm_depthwise(tf.nn.depthwise_conv2d(x, depthwise, [1, 1, 1, 1], "SAME")))
        outputs = {"features": y}
        if shared_filter:
            outputs["again"] = tf.nn.depthwise_conv2d(x, depthwise, [1, 1, 1, 1], "SAME")
        return outputs

    function = network.get_concrete_function()
    function.keep_alive = (conv, depthwise, conv_params, depthwise_params)  # the graph holds its variables weakly
    return function


def _op_list(function) -> list[str]:
    return [node.op for node in function.graph.as_graph_def().node]


def _ops(function) -> set[str]:
    return set(_op_list(function))


def test_frozen_network_folds_every_batch_norm_and_answers_the_same():
    function = _network()
    assert sum(op.startswith("FusedBatchNorm") for op in _op_list(function)) == 2
    frozen = freeze(function)
    images = tf.constant(np.random.default_rng(3).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32))
    expected = function(images)["features"].numpy()
    got = frozen(images)["features"].numpy()
    assert not {op for op in _ops(frozen) if op.startswith("FusedBatchNorm")}
    assert not {"ReadVariableOp", "VarHandleOp"} & _ops(frozen)
    assert float(np.abs(got - expected).max()) < 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(expected).max()) > 0.5  # the comparison is not between two all-zero maps


def test_a_filter_another_convolution_reads_is_not_folded():
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = _network(shared_filter=True)
    graph_def, folded = fold_batch_norms(convert_variables_to_constants_v2(function).graph.as_graph_def())
    assert folded == 1  # the conv's batch norm only; the shared depthwise filter keeps its values
    frozen = freeze(function)
    images = tf.constant(np.random.default_rng(4).uniform(0, 1, (1, 16, 16, 3)).astype(np.float32))
    for key, value in function(images).items():
        np.testing.assert_allclose(frozen(images)[key].numpy(), value.numpy(), rtol=1e-4, atol=1e-4)


def test_folding_replaces_each_norm_by_a_bias_add_of_its_name_and_leaves_no_input_dangling():
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    graph_def = convert_variables_to_constants_v2(_network()).graph.as_graph_def()
    norms = {node.name for node in graph_def.node if node.op.startswith("FusedBatchNorm")}
    folded_def, folded = fold_batch_norms(graph_def)
    assert folded == len(norms) == 2
    by_name = {node.name: node for node in folded_def.node}
    assert {by_name[name].op for name in norms} == {"BiasAdd"}  # their readers need no change
    # The norms' parameters go only where nothing reads them any more (here the function's control
    # dependencies still do, so they stay); no node may be left reading a removed one.
    assert all({name.lstrip("^").split(":")[0] for name in node.input} <= set(by_name) for node in folded_def.node)


def _anchored_network():
    """A conv whose output is offset by a constant computed in the graph (as SSD's anchors are), by the same
    expression of the input twice (a common subexpression), and an input the outputs do not read; per image
    through a map_fn (a loop, as TFOD2's own NMS runs; freezing lowers it to Enter/Merge/Switch/Exit)."""
    filters = tf.Variable(np.random.default_rng(5).normal(0, 0.5, (3, 3, 3, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32), tf.TensorSpec([None], tf.int32)])
    def network(images, unused):
        rows, columns = tf.meshgrid(tf.range(8), tf.range(8))  # constant: Range, Reshape, Tile ...
        offset = tf.cast(rows + columns, tf.float32)[..., tf.newaxis] * 0.125
        features = tf.nn.conv2d(images, filters, 1, "SAME") + offset
        per_image = tf.map_fn(lambda image: tf.reduce_max(image, axis=[0, 1]), features)
        return {"scores": tf.sigmoid(features) + tf.sigmoid(features), "raw": features, "per_image": per_image}

    function = network.get_concrete_function()
    function.keep_alive = filters
    return function


def test_simplify_folds_constants_and_merges_repeats_with_the_same_answers_and_no_device_kernels():
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from detserve.export.graph_optimization import _source, simplify

    function = _anchored_network()
    constant = convert_variables_to_constants_v2(function)
    graph_def = constant.graph.as_graph_def()
    simplified = simplify(graph_def, [_source(tensor.name) for tensor in [*constant.inputs, *constant.outputs]])
    before, after = Counter(node.op for node in graph_def.node), Counter(node.op for node in simplified.node)
    assert before["Range"] == 2 and before["Tile"] + before["Reshape"] > 0
    assert not after["Range"] and not after["Tile"]  # the grid is one Const now
    assert before["Sigmoid"] == 2 and after["Sigmoid"] == 1  # the repeated expression runs once
    assert not [op for op in after if op.startswith("_")]  # no fused kernels: those are the server's to pick
    placeholders = {node.name for node in simplified.node if node.op == "Placeholder"}
    assert {"images", "unused"} <= placeholders and after["Placeholder"] == before["Placeholder"]  # still feedable
    assert after["LoopCond"] == before["LoopCond"] == 1  # the loop survives
    frozen = freeze(function)
    images = tf.constant(np.random.default_rng(6).uniform(0, 1, (3, 8, 8, 3)).astype(np.float32))
    unused = tf.constant([1, 2, 3])
    for key, value in function(images, unused).items():
        np.testing.assert_allclose(frozen(images, unused)[key].numpy(), value.numpy(), rtol=1e-6, atol=1e-6)
