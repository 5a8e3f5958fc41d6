"""The `onnx` format (tf2onnx, run by onnxruntime) and `onnx_int8` (onnxruntime `quantize_dynamic`
of the float one: 8-bit weights stored as uint8 with a zero point, activations quantized on the
fly at each call)."""

import contextlib
import logging

import numpy as np
import tensorflow as tf

from amcl_keras.export.formats import OUTPUT_NAME, Format, register


@contextlib.contextmanager
def _quiet_logging():
    """onnxruntime.quantization logs a root-logger warning on every call (a hint about its shape
    pre-processing, which dynamic quantization does not need)."""
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(previous)


def _rename_onnx_output(model_proto, new_name):
    old_name = model_proto.graph.output[0].name
    for node in model_proto.graph.node:
        node.output[:] = [new_name if name == old_name else name for name in node.output]
        node.input[:] = [new_name if name == old_name else name for name in node.input]
    model_proto.graph.output[0].name = new_name
    return model_proto


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx handler: TensorFlow's exact GELU (ViT, ConvNeXt) uses Erfc, which ONNX lacks: 1 − Erf(x)."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.ones((), dtype))
    ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]],
                                  name=utils.make_name(f"{node.name}_erfc"))


def _write_onnx(build, path):
    """Convert the uint8 serving function. The graph is frozen with only the signature's input as input: the
    function's other captures (variables, and constants such as a `Normalization(mean=...)` layer's, in
    EfficientNetV2 and ConvNeXt) become constants (tf2onnx's `from_function` would leave the constants as inputs)."""
    import onnx
    import tf2onnx

    concrete = build.serve_uint8.get_concrete_function(build.uint8_spec)
    input_names = [t.name for t in concrete.inputs[:len(tf.nest.flatten(concrete.structured_input_signature))]]
    output_names = [t.name for t in concrete.outputs]
    from tensorflow.python.util import deprecation  # tf2onnx calls TF1 APIs: 8 deprecation warnings per export

    with deprecation.silence():
        frozen = tf2onnx.tf_loader.from_function(concrete, input_names, output_names)
        model_proto, _ = tf2onnx.convert.from_graph_def(
            frozen, name=concrete.name, input_names=input_names, output_names=output_names, opset=build.opset,
            custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])},
            tensors_to_rename=tf2onnx.convert.tensor_names_from_structed(concrete, input_names, output_names),
        )
    model_proto = _rename_onnx_output(model_proto, OUTPUT_NAME)
    onnx.checker.check_model(model_proto)
    onnx.save(model_proto, str(path))
    return {"opset": build.opset, "input_name": model_proto.graph.input[0].name, "converter": "tf2onnx"}


def _write_onnx_int8(build, path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_logging():
        # uint8 weights (with a zero point): onnxruntime's u8u8 ConvInteger kernels, 4-6x faster than its int8-weight
        # (u8s8) path on small_convnet and ResNet-18 (onnxruntime 1.32), as accurate, and free of the u8s8
        # saturation of AVX2 / non-VNNI CPUs (no reduce_range needed)
        quantize_dynamic(str(build.source("onnx")), str(path), weight_type=QuantType.QUInt8)
    model_proto = onnx.load(str(path))
    return {"opset": build.opset, "input_name": model_proto.graph.input[0].name,
            "converter": "tf2onnx, then onnxruntime.quantization.quantize_dynamic (QUInt8 weights, per tensor; "
                         "activations quantized to uint8 at each call)"}


def _open_onnx(path, info):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = info["input_name"]
    return lambda images: session.run([OUTPUT_NAME], {input_name: np.asarray(images, np.uint8)})[0]


register("onnx", Format("encoder.onnx", _write_onnx, _open_onnx, "onnxruntime"))
register("onnx_int8", Format("encoder_int8.onnx", _write_onnx_int8, _open_onnx, "onnxruntime", weights="uint8"))
