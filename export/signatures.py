"""The serving signatures every detserve export has, built as TensorFlow graphs. The names are the contract
(detserve.client.contract): the server, the client and docs/export.md rely on them; change them only with a
new major version.

``serving_default``  images uint8 [B, H, W, 3] (any H, W; B free) -> detections
``serving_bytes``    encoded_images string [B] (JPEG/PNG/BMP/GIF bytes; REST {"b64": ...}) -> detections
``model_info``       images uint8 [B, input_height, input_width, 3] -> input_height, input_width int32 [B],
                     class_ids int32 [B, C], class_names string [B, C]

Detections (both detection signatures, method ``tensorflow/serving/predict``):
``detection_boxes`` float32 [B, N, 4] normalised (ymin, xmin, ymax, xmax); ``detection_scores`` float32
[B, N]; ``detection_classes`` float32 [B, N] label-map ids (1-based, floats as TFOD2 exports them);
``num_detections`` float32 [B]; ``detection_class_names`` string [B, N] (label-map name, "" beyond
num_detections or for an id not in the label map). N is the model's max_total_detections (100).

The model's input size is exposed through TF Serving's GetModelMetadata (which returns signature_defs
with shapes, never values): it is the static shape of ``model_info``'s input, [-1, 320, 320, 3].
``model_info`` also returns the values when called with one image of that size.

Nothing in this module imports object_detection: the graphs are built from callables passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

# The names are the contract's (detserve.client.contract); those docs/export.md lists are importable from here.
from detserve.client.contract import (  # noqa: F401  (re-exported)
    BYTES_SIGNATURE,
    CLASS_NAMES_OUTPUT,
    DEFAULT_SIGNATURE,
    DETECTION_CLASSES,
    DETECTION_OUTPUTS,
    ENCODED_INPUT,
    IMAGES_INPUT,
    INFO_INPUT,
    INFO_OUTPUTS,
    INFO_SIGNATURE,
    NUM_DETECTIONS,
    NUMERIC_OUTPUTS,
    PREDICT_METHOD,
)

# Callables from a batch to the model's DETECTION_OUTPUTS, the four NUMERIC_OUTPUTS among them (float32, batch first).
DetectFn = Callable[..., Mapping]


def to_numpy(outputs: Mapping) -> dict:
    """A signature's outputs (eager tensors) as numpy arrays: the form detserve.export.parity compares."""
    return {key: value.numpy() for key, value in outputs.items()}


def class_name_lookup(label_map: Mapping[int, str]):
    """A constant string vector indexed by label-map id ("" where the id has no name)."""
    import tensorflow as tf

    size = max(label_map) + 1 if label_map else 1
    names = [""] * size
    for class_id, name in label_map.items():
        names[class_id] = name
    return tf.constant(names, dtype=tf.string)


def finish_detections(outputs: Mapping, names) -> dict:
    """The four numeric outputs as float32 plus ``detection_class_names`` ("" for padded slots)."""
    import tensorflow as tf

    result = {key: tf.cast(outputs[key], tf.float32) for key in NUMERIC_OUTPUTS}
    classes = result[DETECTION_CLASSES]
    ids = tf.cast(tf.round(classes), tf.int32)
    size = tf.shape(names)[0]
    slots = tf.range(tf.shape(classes)[1])[tf.newaxis, :]
    valid = (ids >= 0) & (ids < size) & (slots < tf.cast(result[NUM_DETECTIONS], tf.int32)[:, tf.newaxis])
    looked_up = tf.gather(names, tf.clip_by_value(ids, 0, size - 1))
    result[CLASS_NAMES_OUTPUT] = tf.where(valid, looked_up, tf.zeros_like(looked_up))
    return result


def decode_image(encoded):
    """JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, 3] (first frame of a GIF), as TFOD2's exporter decodes."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def build_module(
    detect_images: DetectFn,
    detect_encoded: DetectFn,
    label_map: Mapping[int, str],
    input_size: tuple[int, int] | None,
    trackables: Mapping[str, object],
):
    """A tf.Module with the three signature functions, and the ``signatures`` dict for tf.saved_model.save.

    ``detect_images(uint8 [B, H, W, 3])`` and ``detect_encoded(string [B])`` return the numeric outputs;
    ``trackables`` (the model, a loaded SavedModel) are attached so their variables are saved.
    """
    import tensorflow as tf

    module = tf.Module()
    for name, value in trackables.items():
        setattr(module, name, value)
    names = class_name_lookup(label_map)
    ids = sorted(label_map)
    height, width = input_size if input_size else (None, None)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)])
    def serving_default(images):
        return finish_detections(detect_images(images), names)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=ENCODED_INPUT)])
    def serving_bytes(encoded_images):
        return finish_detections(detect_encoded(encoded_images), names)

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name=INFO_INPUT)])
    def model_info(images):
        batch = tf.shape(images)[0]
        return {
            "input_height": tf.fill([batch], tf.constant(height or -1, tf.int32)),
            "input_width": tf.fill([batch], tf.constant(width or -1, tf.int32)),
            "class_ids": tf.tile(tf.constant([ids], tf.int32), [batch, 1]),
            "class_names": tf.tile(tf.constant([[label_map[i] for i in ids]], tf.string), [batch, 1]),
        }

    module.serving_default = serving_default
    module.serving_bytes = serving_bytes
    module.model_info = model_info
    signatures = {
        DEFAULT_SIGNATURE: serving_default.get_concrete_function(),
        BYTES_SIGNATURE: serving_bytes.get_concrete_function(),
        INFO_SIGNATURE: model_info.get_concrete_function(),
    }
    return module, signatures


# ------------------------------------------------------------------------------------------------
# Detection callables for the two sources: a TFOD2 model restored from a checkpoint, a TFOD2 SavedModel.


def checkpoint_detect_fns(model, input_size: tuple[int, int] | None,
                          nms: Callable | None = None) -> tuple[DetectFn, DetectFn]:
    """Batched detection for a TFOD2 DetectionModel, on TFOD2's exporter path (preprocess -> predict ->
    postprocess, as in detserve.training.evaluation.predictors). Both signatures call one shared graph
    function after preprocessing, so the SavedModel holds the network once: frozen, with its batch norms
    folded into the convolutions (detserve.export.graph_optimization), so it needs no variables.
    ``nms``: the batch NMS to trace postprocess with instead of the model's (detserve.export.combined_nms).

    This traces the model, which creates its variables: a checkpoint that does not fit fails here."""
    import tensorflow as tf

    from detserve.training.evaluation.predictors import detections_from_preprocessed

    from .combined_nms import nms_replaced
    from .graph_optimization import freeze

    height, width = input_size if input_size else (None, None)

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32),
                                  tf.TensorSpec([None, 3], tf.int32)])
    def detect_network(preprocessed, true_shapes):
        return detections_from_preprocessed(model, preprocessed, true_shapes)

    with nms_replaced(model, nms):
        detect_preprocessed = freeze(detect_network.get_concrete_function())

    def detect_images(images):
        preprocessed, true_shapes = model.preprocess(tf.cast(images, tf.float32))
        return detect_preprocessed(preprocessed, true_shapes)

    def detect_encoded(encoded):
        def one(single):
            preprocessed, true_shape = model.preprocess(tf.cast(decode_image(single), tf.float32)[tf.newaxis])
            return preprocessed[0], true_shape[0]

        preprocessed, true_shapes = tf.map_fn(
            one, encoded, fn_output_signature=(tf.TensorSpec([height, width, 3], tf.float32),
                                               tf.TensorSpec([3], tf.int32)),
            parallel_iterations=32)
        return detect_preprocessed(preprocessed, true_shapes)

    return detect_images, detect_encoded


class SourceSignature:
    """The detection signature of an existing SavedModel (e.g. from TFOD2's exporter_main_v2)."""

    def __init__(self, loaded, name: str):
        import tensorflow as tf

        if name not in loaded.signatures:
            raise ValueError(f"the SavedModel has no signature {name!r}; it has {sorted(loaded.signatures)}")
        self.function = loaded.signatures[name]
        _, inputs = self.function.structured_input_signature
        if len(inputs) != 1:
            raise ValueError(f"signature {name!r} takes {len(inputs)} inputs {sorted(inputs)}; expected one image input")
        (self.input_key, self.spec), = inputs.items()
        outputs = self.function.structured_outputs
        missing = [key for key in NUMERIC_OUTPUTS if key not in outputs]
        if missing:
            raise ValueError(f"signature {name!r} returns {sorted(outputs)}; missing {missing}")
        # The contract's numeric outputs the source has pass through to finish_detections, so a new output
        # tensor is a change to the contract and finish_detections only; others are not computed.
        self.output_specs = {key: spec for key, spec in outputs.items()
                             if key in DETECTION_OUTPUTS and (spec.dtype.is_floating or spec.dtype.is_integer)}
        if self.spec.dtype == tf.string:
            self.kind = "encoded"
            if _graph_has_op(self.function, ("ParseExample", "ParseExampleV2", "ParseSingleExample")):
                raise ValueError(f"signature {name!r} takes serialized tf.Examples (TFOD2 input_type tf_example); "
                                 "export with input_type image_tensor or encoded_image_string_tensor")
        elif self.spec.dtype in (tf.uint8, tf.float32):
            self.kind = "image"
            if self.spec.shape.rank not in (None, 4):
                raise ValueError(f"signature {name!r} input {self.input_key!r} has shape {self.spec.shape}; expected [B, H, W, 3]")
        else:
            raise ValueError(f"signature {name!r} input {self.input_key!r} is {self.spec.dtype.name}; "
                             "expected uint8 or float32 images or encoded image strings")
        batch = self.spec.shape[0] if self.spec.shape.rank else None
        self.fixed_batch = batch  # 1 for TFOD2's image_tensor export

    @property
    def batch_mapped(self) -> bool:
        """True when the source takes a fixed batch, so batches are mapped one image at a time."""
        return self.fixed_batch is not None

    def __call__(self, value):
        import tensorflow as tf

        if self.kind == "image":
            value = tf.cast(value, self.spec.dtype)
        outputs = self.function(**{self.input_key: value})
        return {key: outputs[key] for key in self.output_specs}

    def per_item_specs(self):
        import tensorflow as tf

        return {key: tf.TensorSpec(spec.shape[1:], tf.float32) for key, spec in self.output_specs.items()}


def _graph_has_op(function, op_types: tuple[str, ...]) -> bool:
    graph_def = function.graph.as_graph_def()
    nodes = list(graph_def.node)
    for library_function in graph_def.library.function:
        nodes.extend(library_function.node_def)
    return any(node.op in op_types for node in nodes)


def saved_model_detect_fns(source: SourceSignature) -> tuple[DetectFn, DetectFn]:
    """Batched detection around an existing SavedModel's signature. A fixed-batch source (TFOD2's image
    export is [1, H, W, 3]) runs once per image of the batch (tf.map_fn); a free batch is passed through."""
    import tensorflow as tf

    specs = source.per_item_specs()

    def per_item(convert):
        def one(item):
            outputs = source(convert(item)[tf.newaxis])
            return {key: tf.cast(value[0], tf.float32) for key, value in outputs.items()}

        return one

    def mapped(convert, values):
        return tf.map_fn(per_item(convert), values, fn_output_signature=specs, parallel_iterations=1)

    def encode_png(image):
        return tf.io.encode_png(image)

    if source.kind == "image":
        def detect_images(images):
            return mapped(lambda image: image, images) if source.batch_mapped else source(images)

        def detect_encoded(encoded):
            return mapped(decode_image, encoded)  # decoded images may differ in size: one at a time
    else:
        def detect_images(images):
            if source.batch_mapped:
                return mapped(encode_png, images)
            return source(tf.map_fn(encode_png, images, fn_output_signature=tf.TensorSpec([], tf.string)))

        def detect_encoded(encoded):
            return mapped(lambda item: item, encoded) if source.batch_mapped else source(encoded)

    return detect_images, detect_encoded


def resize_input_size(function) -> tuple[int, int] | None:
    """The constant output size of the image resize ops in a graph (TFOD2's fixed_shape_resizer), if unique."""
    from tensorflow.python.framework import tensor_util

    graph_def = function.graph.as_graph_def()
    bodies = [list(graph_def.node)] + [list(f.node_def) for f in graph_def.library.function]
    resize_ops = {"ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic", "ResizeArea"}
    sizes = set()
    for nodes in bodies:
        by_name = {node.name: node for node in nodes}
        for node in nodes:
            if node.op not in resize_ops or len(node.input) < 2:
                continue
            const = by_name.get(node.input[1].lstrip("^").split(":")[0])
            if const is not None and const.op == "Const":
                value = tensor_util.MakeNdarray(const.attr["value"].tensor).reshape(-1)
                if value.size == 2:
                    sizes.add((int(value[0]), int(value[1])))
    return sizes.pop() if len(sizes) == 1 else None
