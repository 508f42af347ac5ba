"""Exports of a checkpoint for other runtimes: ONNX with a KV cache (onnx.py writes it, runtime.py runs it).

Plain names only here, no imports, so that the command line can tell an exported folder from a torch
checkpoint without loading torch or onnxruntime.
"""

# An exported folder: these graphs (graphs.py says what each computes), MANIFEST, and the checkpoint's
# config.json, preprocessing and tokenizer files.
GRAPH_FILES = ("image_encoder.onnx", "image_prefill.onnx", "decoder_step.onnx")
MANIFEST = "onnx_export.json"

OPSET = 20  # the ONNX opset written by default: torch 2.13's; onnxruntime 1.17 and later run it
MIN_OPSET = 18  # the lowest the dynamo exporter writes
