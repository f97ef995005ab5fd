"""Weight file formats: the codecs (:mod:`.safetensors`, :mod:`.gguf`) and
which files hold weights at all."""

# Files that hold weights, by suffix. Only safetensors and GGUF are parsed;
# the others are listed with their sizes.
WEIGHT_SUFFIXES: dict[str, str] = {
    ".safetensors": "safetensors",
    ".gguf": "gguf",
    ".bin": "pytorch",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".ckpt": "pytorch",
    ".onnx": "onnx",
    ".onnx_data": "onnx",
    ".h5": "keras",
    ".keras": "keras",
    ".msgpack": "flax",
    ".tflite": "tflite",
    ".npz": "numpy",
    ".ot": "rust-bert",
    ".pdparams": "paddle",
}
